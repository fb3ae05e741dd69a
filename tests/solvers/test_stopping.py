"""Cross-validated stopping of Richardson–Lucy on thinned photon counts."""

import numpy as np
import pytest
import torch
from tests.conftest import gaussian_psf, random_beads

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator
from deconflow.solvers import RichardsonLucy
from deconflow.solvers.stopping import CrossValidatedStop, DeblurredHeldOutError, split_counts


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


def test_deblurred_score_is_unbiased_for_the_deblurred_error():
    # for the same held-out draw, score(estimate) - score(truth) = ||W d||^2 + 2 <W n, W d>
    # with d the difference of the two predictions and n the held-out noise (mean 0), so
    # its average over draws is the noise-free score of the estimate: ||W d||^2
    truth, op, _ = _blurred_beads(100.0)
    holdout, background = 0.2, 2.0
    keep = 1.0 - holdout
    photons = op.extend_image(torch.from_numpy(100.0 * truth))
    reblurred = op.A_adjoint_A(photons)
    blurry = reblurred * float(photons.sum() / reblurred.sum())
    score = DeblurredHeldOutError(op, 1e-3)
    expected = holdout * (op.A(photons).double() + background)
    exact = score(expected, op.A(keep * blurry), keep * background, holdout)
    assert score(expected, op.A(keep * photons), keep * background, holdout) < 1e-6 * exact
    rng = np.random.default_rng(7)
    differences = []
    for _ in range(200):
        held = torch.from_numpy(rng.poisson(expected.numpy()).astype(np.float64))
        differences.append(
            score(held, op.A(keep * blurry), keep * background, holdout)
            - score(held, op.A(keep * photons), keep * background, holdout)
        )
    mean = float(np.mean(differences))
    standard_error = float(np.std(differences)) / np.sqrt(len(differences))
    assert abs(mean - exact) < 4 * standard_error
    assert exact > 10 * standard_error  # the score tells the blurred estimate apart


def test_deblurred_score_stops_closer_to_the_best_iteration_on_sparse_beads():
    # the held-out likelihood weighs the blurred estimate, where sharpening the beads
    # hardly shows, and stops early; the deblurred error weighs the object itself
    excess = {"deblurred": [], "poisson": []}
    for seed in range(3):
        truth, op, counts = _blurred_beads(30.0, seed)
        errors = _rl_errors(op, counts, truth, 60)
        for score in excess:
            k = CrossValidatedStop(max_iterations=60, score=score).iterations(counts, op, 2.0)
            excess[score].append(errors[k - 1] / errors.min() - 1.0)
    assert np.mean(excess["deblurred"]) < 0.5 * np.mean(excess["poisson"])
    assert max(excess["deblurred"]) < 0.15


def test_choice_is_reproducible_and_seeded():
    _, op, counts = _blurred_beads(300.0)
    curve = CrossValidatedStop(seed=4).holdout_curve(counts, op, 2.0)
    again = CrossValidatedStop(seed=4).holdout_curve(counts, op, 2.0)
    np.testing.assert_array_equal(curve, again)
    other = CrossValidatedStop(seed=5).holdout_curve(counts, op, 2.0)
    assert not np.array_equal(curve[: len(other)], other[: len(curve)])


def test_the_choice_as_a_generator_reports_each_iteration_and_chooses_the_same():
    # the pipeline reports progress (and the widget can cancel) between the iterations
    _, op, counts = _blurred_beads(300.0)
    stop = CrossValidatedStop(folds=2, max_iterations=40, patience=3)
    steps, reported = stop.iter_iterations(counts, op, 2.0), []
    while True:
        try:
            reported.append(next(steps))
        except StopIteration as done:
            chosen = done.value
            break
    assert chosen == stop.iterations(counts, op, 2.0)
    per_fold = [[k for f, k in reported if f == fold] for fold in range(2)]
    assert [f for f, _ in reported] == sorted(f for f, _ in reported)
    assert all(ks == list(range(len(ks))) and len(ks) > 3 for ks in per_fold)
    assert min(len(ks) for ks in per_fold) == len(stop.holdout_curve(counts, op, 2.0))


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
        ({"score": "gaussian"}, "score"),
        ({"regularization": 0.0}, "regularization"),
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
