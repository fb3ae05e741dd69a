"""Cross-validated stopping of Richardson–Lucy on thinned photon counts."""

import numpy as np
import pytest
import torch
from tests.conftest import gaussian_psf, random_beads

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator
from deconflow.solvers import RichardsonLucy
from deconflow.solvers.stopping import CrossValidatedStop, split_counts


def test_split_counts_is_exact_and_keeps_the_expected_share():
    rng = np.random.default_rng(0)
    counts = rng.poisson(40.0, (64, 64)).astype(np.float32) + 0.3  # non-integer: rounded
    kept, held = split_counts(counts, 0.8, np.random.default_rng(1))
    np.testing.assert_array_equal(kept + held, np.rint(counts))
    assert kept.dtype == np.float32 and kept.min() >= 0 and held.min() >= 0
    assert kept.mean() / np.rint(counts).mean() == pytest.approx(0.8, abs=0.01)


def test_split_halves_are_independent_poisson():
    # thinning Poisson(mu) gives independent Poisson(p mu) and Poisson((1 - p) mu): the
    # halves' variances equal their means and they do not correlate (a plain random split
    # of a fixed total would correlate them negatively)
    counts = np.random.default_rng(2).poisson(25.0, 200_000).astype(np.float32)
    kept, held = split_counts(counts, 0.7, np.random.default_rng(3))
    assert kept.var() / kept.mean() == pytest.approx(1.0, abs=0.03)
    assert held.var() / held.mean() == pytest.approx(1.0, abs=0.03)
    assert abs(np.corrcoef(kept, held)[0, 1]) < 0.01


def _blurred_beads(photons: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    # beads of about 2 voxels
    truth = random_beads((10, 32, 32), 40, (0.6, 1.0, 1.0), rng, margin=2).astype(np.float32)
    psf = gaussian_psf((9, 11, 11), (1.6, 1.3, 1.3))
    op = ConvolutionOperator(psf, truth.shape, dtype=torch.float32)
    mean = op.A(op.extend_image(torch.from_numpy(truth))).numpy()
    mean = photons * mean / mean.max() + 2.0
    counts = torch.from_numpy(rng.poisson(mean).astype(np.float32))
    return truth, op, counts


def _rl_errors(op, counts, truth, iterations):
    errors = []
    for x in RichardsonLucy(iterations).iterate(counts, op, 2.0):
        out = op.crop_to_image(x).numpy()
        scale = float((out * truth).sum() / max((out * out).sum(), 1e-20))
        errors.append(float(((scale * out - truth) ** 2).mean()))
    return np.array(errors)


def test_chosen_iteration_is_near_the_oracle_and_grows_with_photons():
    chosen = {}
    for photons in (30.0, 3000.0):
        truth, op, counts = _blurred_beads(photons)
        stop = CrossValidatedStop(max_iterations=60)
        k = stop.iterations(counts, op, 2.0)
        errors = _rl_errors(op, counts, truth, 60)
        best = int(errors.argmin()) + 1
        chosen[photons] = k
        # the choice costs little against the truly best iteration (which needs the truth)
        assert errors[k - 1] <= 1.5 * errors[best - 1], (photons, k, best)
    # more photons support more iterations before noise dominates
    assert chosen[3000.0] > chosen[30.0]


def test_choice_is_reproducible_and_seeded():
    _, op, counts = _blurred_beads(300.0)
    curve = CrossValidatedStop(seed=4).holdout_curve(counts, op, 2.0)
    again = CrossValidatedStop(seed=4).holdout_curve(counts, op, 2.0)
    np.testing.assert_array_equal(curve, again)
    other = CrossValidatedStop(seed=5).holdout_curve(counts, op, 2.0)
    assert not np.array_equal(curve[: len(other)], other[: len(curve)])


def test_fold_stops_after_patience():
    _, op, counts = _blurred_beads(30.0)
    stop = CrossValidatedStop(folds=1, max_iterations=200, patience=3)
    curve = stop.holdout_curve(counts, op, 2.0)
    assert len(curve) < 200
    assert int(np.argmin(curve)) == len(curve) - 1 - 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"holdout": 0.0}, "holdout"),
        ({"holdout": 1.0}, "holdout"),
        ({"folds": 0}, "folds"),
        ({"patience": 0}, "patience"),
        ({"max_iterations": 0}, "max_iterations"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(DeconflowError, match=match):
        CrossValidatedStop(**kwargs)


def test_invalid_background_and_share():
    _, op, counts = _blurred_beads(30.0)
    with pytest.raises(DeconflowError, match="background"):
        CrossValidatedStop().iterations(counts, op, 0.0)
    with pytest.raises(DeconflowError, match="keep"):
        split_counts(counts.numpy(), 1.5, np.random.default_rng(0))
