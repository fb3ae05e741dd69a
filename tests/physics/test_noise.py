import numpy as np
from scipy import ndimage

from deconflow.physics.noise import estimate_background, estimate_noise_sigma


def _blurred_structure(rng, shape=(16, 96, 96)):
    x = np.zeros(shape)
    x[tuple(rng.integers(0, s, 60) for s in shape)] = 400.0
    return ndimage.gaussian_filter(x, (1.5, 2.5, 2.5))


def test_noise_sigma_of_gaussian_noise_on_smooth_signal():
    rng = np.random.default_rng(0)
    clean = _blurred_structure(rng)
    for sigma in (0.5, 3.0, 10.0):
        noisy = clean + rng.normal(0, sigma, clean.shape)
        assert abs(estimate_noise_sigma(noisy) / sigma - 1) < 0.1


def test_background_of_sparse_poisson_stack_with_offset():
    rng = np.random.default_rng(1)
    clean = _blurred_structure(rng)
    for offset in (5.0, 100.0):
        noisy = rng.poisson(clean + offset).astype(np.float32)
        estimate = estimate_background(noisy)
        assert abs(estimate - offset) < 0.1 * offset + 0.5
