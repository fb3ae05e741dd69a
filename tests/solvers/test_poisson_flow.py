"""The Poisson flow sampler: MAP-EM data step invariants, prior window, seeds."""

import itertools

import numpy as np
import pytest
import torch
from tests.conftest import gaussian_psf

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator
from deconflow.physics.noise import CameraNoise
from deconflow.solvers.flow import posterior_variance
from deconflow.solvers.poisson_flow import (
    PoissonFlowSampler,
    PoissonMeasurement,
    map_em_update,
    prior_window,
)


class ConstantPrior:
    """Denoiser that always answers ``value``; records the shapes it was called on."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.shapes: list[tuple[int, ...]] = []

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.shapes.append(tuple(x_t.shape))
        return torch.full_like(x_t, self.value)


def _blurred_counts(shape=(8, 24, 24), seed=0, peak=200.0, background=3.0):
    rng = np.random.default_rng(seed)
    psf = gaussian_psf((5, 7, 7), (1.0, 1.2, 1.2))
    op = ConvolutionOperator(psf, shape, dtype=torch.float64)
    truth = torch.tensor(rng.random(op.object_shape) ** 8 * peak)
    counts = torch.tensor(rng.poisson(op.A(truth).numpy() + background), dtype=torch.float64)
    model = PoissonMeasurement(op, counts, torch.tensor(background, dtype=torch.float64), 1.0, 0.0)
    return model, truth


def _objective(model, v, anchor, precision):
    return model.negative_log_likelihood(v) + 0.5 * precision * float(((v - anchor) ** 2).sum())


def test_map_em_decreases_its_objective_every_iteration():
    model, truth = _blurred_counts()
    s = model.operator.adjoint_of_ones()
    anchor = truth * 0.5 + 10.0
    v = torch.full_like(truth, 20.0)
    precision = 0.01
    values = [_objective(model, v, anchor, precision)]
    for _ in range(15):
        v = map_em_update(model, v, s, anchor, precision)
        assert float(v.min()) >= 0.0
        values.append(_objective(model, v, anchor, precision))
    assert all(b <= a + 1e-9 * abs(a) for a, b in itertools.pairwise(values))
    assert values[-1] < values[0]


def test_converged_map_em_satisfies_the_optimality_condition():
    """Where v > 0: S - H^T(z / (H v + c)) + P (v - a) = 0."""
    model, truth = _blurred_counts(shape=(4, 12, 12), seed=1)
    op = model.operator
    s = op.adjoint_of_ones()
    anchor = torch.full_like(truth, 30.0)
    precision = 0.05
    v = torch.full_like(truth, 30.0)
    for _ in range(3000):
        v = map_em_update(model, v, s, anchor, precision)
    gradient = s - op.A_adjoint(model.counts / (op.A(v) + model.background))
    gradient += precision * (v - anchor)
    inside = v > 1e-3
    assert float(gradient[inside].abs().max()) < 1e-3


def test_zero_precision_is_the_richardson_lucy_update():
    model, _ = _blurred_counts(seed=2)
    op = model.operator
    v = torch.full(op.object_shape, 7.0, dtype=torch.float64)
    s = op.adjoint_of_ones()
    expected = v * op.A_adjoint(model.counts / (op.A(v) + model.background)) / s
    got = map_em_update(model, v, s, torch.zeros_like(v), 0.0)
    torch.testing.assert_close(got, expected)


def test_identity_psf_single_step_is_the_closed_form_map():
    """Delta PSF, no perturbation: 1 - z / (v + c) + P (v - a) = 0 per voxel, solved exactly."""
    op = ConvolutionOperator(np.ones((1, 1, 1)), (2, 4, 4), dtype=torch.float64)
    rng = np.random.default_rng(3)
    counts = torch.tensor(rng.poisson(50.0, op.image_shape), dtype=torch.float64)
    c, scale, offset, value = 2.0, 40.0, 5.0, 0.8
    model = PoissonMeasurement(op, counts, torch.tensor(c, dtype=torch.float64), scale, offset)
    sampler = PoissonFlowSampler(
        steps=1, t_start=0.5, prior_weight=0.2, em_iterations=400, perturb=False
    )
    u = list(sampler.iterate(model, ConstantPrior(value), torch.Generator().manual_seed(0)))[-1]
    precision = 0.2 / (posterior_variance(0.5, sampler.data_variance) * scale**2)
    a = scale * value + offset
    # (v + c)(1 + P (v - a)) = z  ->  P v^2 + (1 + P c - P a) v + (c - P a c - z) = 0
    z = counts.numpy()
    qa, qb, qc = precision, 1 + precision * c - precision * a, c - precision * a * c - z
    v = (-qb + np.sqrt(qb**2 - 4 * qa * qc)) / (2 * qa)
    np.testing.assert_allclose(model.to_photons(u).numpy(), v, rtol=1e-6)


def test_strong_prior_returns_the_prior_and_weak_prior_follows_the_data():
    model, truth = _blurred_counts(seed=4)
    op = model.operator
    strong = PoissonFlowSampler(steps=2, prior_weight=1e6, perturb=False)
    u = list(strong.iterate(model, ConstantPrior(0.3), torch.Generator().manual_seed(0)))[-1]
    window = prior_window(op)
    np.testing.assert_allclose(u[window].numpy(), 0.3, atol=1e-3)
    weak = PoissonFlowSampler(steps=4, prior_weight=1e-9, em_iterations=25, perturb=False)
    u = list(weak.iterate(model, ConstantPrior(0.0), torch.Generator().manual_seed(0)))[-1]
    # a negligible prior leaves 4 x 25 Richardson–Lucy iterations from the flat start
    v = torch.full_like(u, float((model.counts - model.background).mean()))
    s = op.adjoint_of_ones()
    for _ in range(100):
        v = map_em_update(model, v, s, v, 0.0)
    n = model.counts.numel()
    # the far corners of the margin, which barely reach the data, may differ; the fit may not
    # (deviance: 0 for a perfect fit, ~ one per voxel for a fit at the noise level)
    assert model.deviance(model.to_photons(u)) == pytest.approx(model.deviance(v), rel=0.02)
    assert model.deviance(v) < 1.5 * n
    assert model.deviance(torch.full_like(v, float(v.mean()))) > 3 * n


def test_em_stops_at_the_initial_estimates_fit_unless_told_not_to(monkeypatch):
    import deconflow.solvers.poisson_flow as module

    model, truth = _blurred_counts(seed=6)
    op = model.operator
    # an initial estimate that fits the data loosely: 3 RL iterations from flat
    v = torch.full_like(truth, float((model.counts - model.background).mean()))
    s = op.adjoint_of_ones()
    for _ in range(3):
        v = map_em_update(model, v, s, v, 0.0)
    updates = []

    def counting_update(*args, **kwargs):
        updates.append(1)
        return map_em_update(*args, **kwargs)

    monkeypatch.setattr(module, "map_em_update", counting_update)

    def run(stop):
        updates.clear()
        sampler = PoissonFlowSampler(
            steps=3, prior_weight=1e-9, em_iterations=6, perturb=False, stop_at_initial_fit=stop
        )
        generator = torch.Generator().manual_seed(0)
        *_, u = sampler.iterate(model, ConstantPrior(0.0), generator, initial=model.to_prior(v))
        return model.deviance(model.to_photons(u)), len(updates)

    fit_stopped, count_stopped = run(True)
    fit_free, count_free = run(False)
    # with a negligible prior every update fits closer than the start: one update per step
    assert count_stopped == 3 and count_free == 18
    assert fit_stopped <= model.deviance(v)
    assert fit_free < fit_stopped


def test_prior_runs_on_the_measured_window_plus_context_only():
    psf = gaussian_psf((9, 31, 31), (1.5, 3.0, 3.0))
    op = ConvolutionOperator(psf, (10, 40, 40), dtype=torch.float64)
    window = prior_window(op)
    assert [w.stop - w.start for w in window] == [18, 56, 56]
    model = PoissonMeasurement(
        op,
        torch.full(op.image_shape, 5.0, dtype=torch.float64),
        torch.tensor(1.0, dtype=torch.float64),
        10.0,
        0.0,
    )
    prior = ConstantPrior(0.1)
    list(PoissonFlowSampler(steps=3).iterate(model, prior, torch.Generator().manual_seed(0)))
    assert prior.shapes == [(1, 1, 18, 56, 56)] * 3


class ShrinkingPrior:
    """``D_t(x_t) = x_t / 2``: an estimate that depends on the noisy input."""

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        return 0.5 * x_t


@pytest.mark.parametrize(
    ("perturb", "prior"), [(True, ConstantPrior(0.2)), (False, ShrinkingPrior())]
)
def test_seeds_reproduce_and_differ(perturb, prior):
    # perturbed: the prior's error model makes samples differ even for a constant prior;
    # unperturbed (the default): the re-noised trajectories do, through the prior
    model, _ = _blurred_counts(seed=5)
    sampler = PoissonFlowSampler(steps=3, t_start=0.3, perturb=perturb)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return list(sampler.iterate(model, prior, generator))[-1]

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_unperturbed_samples_agree_where_the_prior_ignores_its_input():
    # without perturbation the only randomness enters through x_t: a prior that
    # ignores x_t gives every seed the same answer
    model, _ = _blurred_counts(seed=5)
    sampler = PoissonFlowSampler(steps=3, t_start=0.3, perturb=False)
    runs = [
        list(sampler.iterate(model, ConstantPrior(0.2), torch.Generator().manual_seed(s)))[-1]
        for s in (1, 2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_from_camera_converts_adu_to_photons(dtype):
    # integer ADU: the background took the image's dtype, so 4.25 photons became 4
    op = ConvolutionOperator(np.ones((1, 1, 1)), (2, 3, 3))
    image = torch.full(op.image_shape, 140, dtype=dtype)
    noise = CameraNoise(gain=2.0, offset=100.0, read_sigma=3.0)
    model = PoissonMeasurement.from_camera(op, image, 104.0, noise, scale_adu=50.0, offset_adu=4.0)
    np.testing.assert_allclose(model.counts.numpy(), 20.0 + 2.25)
    assert model.background.dtype == model.counts.dtype and model.counts.is_floating_point()
    assert float(model.background) == pytest.approx(2.0 + 2.25)
    assert model.scale == 25.0 and model.offset == 2.0
    # 0.25 photons of read variance alone: truncated to 0 for integers, and refused
    quiet = CameraNoise(gain=2.0, offset=100.0, read_sigma=1.0)
    dim = PoissonMeasurement.from_camera(op, image, 100.0, quiet, scale_adu=50.0, offset_adu=4.0)
    assert float(dim.background) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"steps": 0}, "steps"),
        ({"prior_weight": 0}, "prior_weight"),
        ({"em_iterations": 0}, "em_iterations"),
        ({"t_start": 1.0}, "t_start"),
        ({"em_start": "anchor"}, "em_start"),
    ],
)
def test_invalid_settings(kwargs, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        PoissonFlowSampler(**kwargs)


def _loose_start(model, iterations=3):
    """An initial estimate (prior units) fitting the data loosely: RL from flat."""
    v = torch.full(model.operator.object_shape, float((model.counts - model.background).mean()))
    v = v.to(model.counts.dtype)
    s = model.operator.adjoint_of_ones()
    for _ in range(iterations):
        v = map_em_update(model, v, s, v, 0.0)
    return model.to_prior(v)


class NoiseSignPrior:
    """Pulls hard towards a huge value or not at all, by the sign of ``x_t``'s checkerboard
    component (noise, not signal): samples with different seeds then need different
    numbers of EM iterations. Works on one volume and on a batch alike."""

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        grid = torch.meshgrid(*(torch.arange(n) for n in x_t.shape[-3:]), indexing="ij")
        checker = ((-1.0) ** (grid[0] + grid[1] + grid[2])).to(x_t)
        sign = (x_t * checker).mean(dim=(-3, -2, -1), keepdim=True)
        return torch.where(sign > 0, 1e8, 0.0).to(x_t.dtype).expand_as(x_t)


def test_a_batch_of_samples_equals_the_samples_drawn_one_by_one(monkeypatch):
    import deconflow.solvers.poisson_flow as module

    model, _ = _blurred_counts(seed=6)
    initial = _loose_start(model)
    sampler = PoissonFlowSampler(steps=3, t_start=0.4, prior_weight=1e-9, em_iterations=6)
    seeds = (1, 2, 4, 5)
    updates: list[int] = []

    def counting_update(*args, **kwargs):
        updates.append(1)
        return map_em_update(*args, **kwargs)

    monkeypatch.setattr(module, "map_em_update", counting_update)
    one_by_one, counts = [], []
    for seed in seeds:
        updates.clear()
        generator = torch.Generator().manual_seed(seed)
        one_by_one.append(list(sampler.iterate(model, NoiseSignPrior(), generator, initial)))
        counts.append(len(updates))
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batched = list(sampler.iterate_batch(model, NoiseSignPrior(), generators, initial))
    assert len(set(counts)) > 1, "the samples should stop their EM iterations differently"
    assert len(batched) == 3 and batched[-1].shape == (len(seeds), *model.operator.object_shape)
    for step, stacked in enumerate(batched):
        for k in range(len(seeds)):
            torch.testing.assert_close(stacked[k], one_by_one[k][step], rtol=1e-9, atol=1e-9)


def test_iterate_batch_needs_a_generator():
    model, _ = _blurred_counts()
    with pytest.raises(DeconflowError, match="at least one generator"):
        next(PoissonFlowSampler().iterate_batch(model, ShrinkingPrior(), []))


@pytest.mark.parametrize("em_start", ["previous", "prior"])
def test_em_starts_where_told(em_start):
    # one step of one EM update from t_start: the update begins at the prior's estimate
    # ("prior") or at the initial estimate carried over ("previous")
    model, truth = _blurred_counts(seed=3)
    initial = model.to_prior(truth * 0.7 + 1.0)
    sampler = PoissonFlowSampler(
        steps=1, t_start=0.5, em_iterations=1, prior_weight=0.5, em_start=em_start
    )
    (u,) = sampler.iterate(model, ConstantPrior(40.0), torch.Generator().manual_seed(0), initial)
    t = 0.5
    gamma2 = posterior_variance(t, sampler.data_variance)
    window = prior_window(model.operator)
    anchor = model.to_photons(initial).clamp_min(1e-3)
    anchor[window] = model.to_photons(torch.full_like(anchor[window], 40.0))
    start = anchor if em_start == "prior" else model.to_photons(initial).clamp_min(1e-3)
    expected = map_em_update(
        model,
        start.clamp_min(1e-3),
        model.operator.adjoint_of_ones().clamp_min(0.0),
        anchor,
        sampler.prior_weight / (gamma2 * model.scale**2),
    )
    torch.testing.assert_close(model.to_photons(u), expected)
