"""Camera noise of images clipped at a floor: offset subtracted and negatives set to 0."""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from deconflow import DeconflowWarning
from deconflow.physics._clipping import censored_gaussian
from deconflow.physics.noise import estimate_camera_noise, floor_clipped_voxels

GAIN, OFFSET, READ_SIGMA = 1.0, 100.0, 4.0

#: The blobs' blur (a Gaussian of sigma 2, 3, 3 voxels, truncated at 4 sigma): the PSF an
#: out-of-band estimate is given must be the one that blurred the image.
PSF = ndimage.gaussian_filter(np.pad([[[1.0]]], ((8, 8), (12, 12), (12, 12))), (2, 3, 3))


def _blobs(seed: int = 0, shape=(24, 128, 128), peak_photons: float = 100.0) -> np.ndarray:
    """Sparse blobs blurred by :data:`PSF` (photons): most of the stack is dark background."""
    rng = np.random.default_rng(seed)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (100, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 3.0, 3.0))  # = a convolution with PSF
    return photons * peak_photons / photons.max()


def _camera(photons: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return OFFSET + GAIN * rng.poisson(photons) + rng.normal(0.0, READ_SIGMA, photons.shape)


def _offset_subtracted(raw: np.ndarray, dark_sigmas: float, dtype: type) -> np.ndarray:
    """Subtract the offset less ``dark_sigmas`` read-noise sigmas and clip at 0."""
    subtracted = raw - (OFFSET - dark_sigmas * READ_SIGMA)
    if np.issubdtype(dtype, np.integer):
        subtracted = np.round(subtracted)
    return np.clip(subtracted, 0, None).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("dark_sigmas", [0.0, 1.0])
def test_a_floor_of_clipped_read_noise_is_detected(dtype, dark_sigmas):
    image = _offset_subtracted(_camera(_blobs()), dark_sigmas, dtype)
    clipped = floor_clipped_voxels(image)
    assert clipped.any()
    np.testing.assert_array_equal(clipped, image == 0)


@pytest.mark.parametrize("read_sigma", [0.5, 1.0])
def test_a_uint16_minimum_repeated_by_read_noise_is_not_a_floor(read_sigma):
    # quantised read noise of 0.5-1 ADU holds its lowest value several times over
    rng = np.random.default_rng(1)
    photons = _blobs(1)
    image = np.round(100.0 + rng.poisson(photons) + rng.normal(0.0, read_sigma, photons.shape))
    image = image.astype(np.uint16)
    assert np.count_nonzero(image == image.min()) >= 10  # the premise
    assert not floor_clipped_voxels(image).any()
    assert not floor_clipped_voxels(_camera(photons)).any()  # float, unclipped


@pytest.mark.parametrize("background_photons", [0.01, 0.5])
def test_zeros_of_photon_counts_are_not_a_floor(background_photons):
    # a photon-counting detector: 0 is a count, not clipping, even where nearly all are 0
    rng = np.random.default_rng(2)
    image = rng.poisson(_blobs(2) + background_photons).astype(np.uint16)
    assert np.mean(image == 0) > 0.4  # the premise
    assert not floor_clipped_voxels(image).any()


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("dark_sigmas", [0.0, 0.5])
def test_camera_noise_of_an_offset_subtracted_clipped_stack(dtype, dark_sigmas):
    """Known answer: gain 1, read noise 4 ADU, offset subtracted (less 0 or 2 ADU) and
    negatives clipped at 0; 25-45 % of the voxels at 0. The clipped dark voxels' variance
    is low and their mean high: before, the gain came out 1.50-1.77, the offset 0.8-1.6
    ADU high and the read noise 2.0-2.7 ADU; the out-of-band gain (the flow's) 1.22-1.23,
    1.17 unclipped, when it read the filtered stack's square against a Gaussian mean."""
    photons = _blobs()
    image = _offset_subtracted(_camera(photons), dark_sigmas, dtype)
    assert 0.2 < np.mean(image == 0) < 0.5  # the premise: moderately clipped
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeconflowWarning)  # estimable: no warning
        noise = estimate_camera_noise(image)
    assert abs(noise.gain / GAIN - 1) < 0.1
    assert abs(noise.read_sigma / READ_SIGMA - 1) < 0.1
    assert abs(noise.offset - dark_sigmas * READ_SIGMA) < 0.1 * READ_SIGMA
    for stack in (image, _camera(photons)):  # clipped and not
        assert abs(estimate_camera_noise(stack, psf=PSF).gain / GAIN - 1) < 0.1


def test_a_dark_level_below_the_floor_warns_and_names_the_settings():
    # a dark level 1 sigma below 0: three quarters of the darkest voxels are at 0
    image = _offset_subtracted(_camera(_blobs()), -1.0, np.uint16)
    with pytest.warns(DeconflowWarning, match=r"offset was subtracted.*clipped at 0") as caught:
        estimate_camera_noise(image)
    message = str(caught[0].message)
    assert all(name in message for name in ("gain", "camera_offset", "read_sigma", "--config"))


def test_the_censored_gaussian_recovers_mean_and_variance():
    rng = np.random.default_rng(3)
    draws = rng.normal(1.0, 3.0, 200_000)
    for values in (np.clip(draws, 0, None), np.clip(np.round(draws), 0, None)):
        share, mean, variance = censored_gaussian(values, 0.0) or (0.0, 0.0, 0.0)
        assert share > 0.3
        assert mean == pytest.approx(1.0, abs=0.05)
        assert variance == pytest.approx(9.0, rel=0.03)
    assert censored_gaussian(np.zeros(100), 0.0) is None  # nothing above the floor
