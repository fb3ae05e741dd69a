"""Parametric bootstrap of Richardson–Lucy: the spread matches the estimator's noise."""

import numpy as np
import pytest
import torch
from tests.conftest import gaussian_psf, random_beads

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator
from deconflow.solvers import RichardsonLucy
from deconflow.solvers.bootstrap import bootstrap_std

BACKGROUND = 3.0


@pytest.fixture(scope="module")
def blurred():
    rng = np.random.default_rng(0)
    psf = gaussian_psf((7, 9, 9), (1.2, 1.5, 1.5))
    op = ConvolutionOperator(psf, (8, 32, 32), dtype=torch.float64)
    truth = torch.tensor(random_beads(op.object_shape, 60, 0.8, rng) * 2000.0)
    return op, op.A(truth) + BACKGROUND


def _rl(op, counts, iterations=8):
    return RichardsonLucy(iterations)(counts, op, BACKGROUND)


def test_spread_matches_the_estimators_noise_over_fresh_measurements(blurred):
    op, mean = blurred
    generator = torch.Generator().manual_seed(1)
    # the truth of what the bootstrap estimates: RL's spread over independent measurements
    fresh = torch.stack([_rl(op, torch.poisson(mean, generator=generator)) for _ in range(16)])
    actual = fresh.std(dim=0)
    measured = torch.poisson(mean, generator=generator)
    spread = bootstrap_std(
        measured, op, BACKGROUND, iterations=8, replicates=8, generator=generator
    )
    assert spread.shape == op.object_shape and float(spread.min()) >= 0.0
    window = tuple(slice(m, m + n) for m, n in zip(op.margin, op.image_shape, strict=True))
    a, s = actual[window].flatten(), spread[window].flatten()
    ratio = float(s.square().mean().sqrt() / a.square().mean().sqrt())
    assert 0.7 < ratio < 1.4, ratio
    # and it is large where the estimate is noisy, voxel by voxel
    assert float(torch.corrcoef(torch.stack([a, s]))[0, 1]) > 0.6


def test_noiseless_counts_spread_only_by_their_redraw_and_seed_reproduces(blurred):
    op, mean = blurred

    def run(seed, scale=1.0):
        return bootstrap_std(
            mean * scale,
            op,
            BACKGROUND * scale,
            iterations=8,
            replicates=3,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(2), run(2))
    assert not torch.equal(run(2), run(3))
    # 100x the photons: relative noise 10x lower, so the spread relative to the signal too
    low, high = run(2), run(2, scale=100.0)
    assert float(high.mean()) / 100.0 < 0.2 * float(low.mean())


def test_needs_two_replicates(blurred):
    op, mean = blurred
    with pytest.raises(DeconflowError, match="replicates"):
        bootstrap_std(mean, op, BACKGROUND, iterations=2, replicates=1, generator=torch.Generator())


def test_integer_counts_are_resampled_like_their_float_copy(blurred):
    op, mean = blurred
    counts = torch.poisson(mean, generator=torch.Generator().manual_seed(3))
    expected = bootstrap_std(
        counts,
        op,
        BACKGROUND,
        iterations=3,
        replicates=2,
        generator=torch.Generator().manual_seed(4),
    )
    got = bootstrap_std(
        counts.to(torch.int64),
        op,
        BACKGROUND,
        iterations=3,
        replicates=2,
        generator=torch.Generator().manual_seed(4),
    )
    assert got.dtype == op.dtype
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
