"""Flow samplers checked against a Gaussian prior, whose posterior is known in closed form."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator
from deconflow.solvers.flow import (
    ExactDataFlowSampler,
    FlowDeconvolution,
    MeasurementModel,
    PnPFlowSampler,
    posterior_variance,
)


@dataclass(frozen=True)
class GaussianPrior:
    """x1 ~ N(mean, variance I): D_t(x_t) = E[x1 | x_t] exactly."""

    mean: float
    variance: float

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        gain = t * self.variance / (t**2 * self.variance + (1 - t) ** 2)
        return self.mean + gain * (x_t - t * self.mean)


def _delta_operator(shape):
    return ConvolutionOperator(np.ones((1,) * len(shape)), shape, dtype=torch.float64)


def _last(iterator):
    out = None
    for out in iterator:  # noqa: B007
        pass
    return out


def test_denoiser_of_the_gaussian_prior_matches_its_variance_formula():
    prior = GaussianPrior(0.0, 0.3)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(200_000, generator=gen, dtype=torch.float64) * 0.3**0.5
    t = 0.4
    x_t = t * x1 + (1 - t) * torch.randn(200_000, generator=gen, dtype=torch.float64)
    err = (prior.denoise(x_t, t) - x1).var().item()
    assert abs(err / posterior_variance(t, 0.3) - 1) < 0.02


@pytest.mark.parametrize("steps", [1, 4])
def test_identity_psf_samples_have_the_exact_posterior_mean_and_variance(steps):
    """Noisy identity measurement: every sample must follow N(posterior mean, posterior var)."""
    prior = GaussianPrior(mean=0.5, variance=0.2)
    scale, sigma_n = 3.0, 0.6  # image units per prior unit, noise std in image units
    y_value = 2.4
    op = _delta_operator((16, 24, 24))
    model = MeasurementModel(
        op,
        torch.full(op.image_shape, y_value, dtype=torch.float64),
        torch.tensor(1 / sigma_n**2, dtype=torch.float64),
        scale,
    )
    sampler = ExactDataFlowSampler(steps=steps, data_variance=prior.variance, cg_iterations=3)
    u = _last(sampler.iterate(model, prior, torch.Generator().manual_seed(1)))
    precision = 1 / prior.variance + scale**2 / sigma_n**2
    mean = (prior.mean / prior.variance + scale * y_value / sigma_n**2) / precision
    assert abs(u.mean().item() - mean) < 0.01
    assert abs(u.var().item() * precision - 1) < 0.05


def test_single_step_point_estimate_is_the_tikhonov_solution():
    """Step 1 from t = 0 with a zero-mean prior: (s^2 w H^T H + rho / v) u = s w H^T d."""
    rng = np.random.default_rng(0)
    psf = rng.random((3, 5, 5))
    psf /= psf.sum()
    op = ConvolutionOperator(psf, (8, 12, 12), boundary="periodic", dtype=torch.float64)
    d = torch.tensor(rng.random(op.image_shape))
    scale, weight, rho, variance = 2.0, 4.0, 0.5, 0.1
    model = MeasurementModel(op, d, torch.tensor(weight, dtype=torch.float64), scale)
    sampler = ExactDataFlowSampler(
        steps=1, prior_weight=rho, data_variance=variance, perturb=False, cg_iterations=5
    )
    u = _last(sampler.iterate(model, GaussianPrior(0.0, variance), torch.Generator()))
    otf = op.otf
    expected = torch.fft.irfftn(
        scale
        * weight
        * otf.conj()
        * torch.fft.rfftn(d)
        / (scale**2 * weight * otf.abs() ** 2 + rho / variance),
        s=op.image_shape,
    )
    np.testing.assert_allclose(u.numpy(), expected.numpy(), atol=1e-8)


def test_weak_prior_reproduces_the_data_only_answer_on_the_valid_model():
    rng = np.random.default_rng(1)
    psf = np.ones((1, 3, 3)) / 9
    op = ConvolutionOperator(psf, (4, 16, 16), dtype=torch.float64)
    truth = torch.tensor(rng.random(op.object_shape))
    d = op.A(truth)
    model = MeasurementModel(op, d, torch.tensor(1.0, dtype=torch.float64), 1.0)
    sampler = ExactDataFlowSampler(steps=2, prior_weight=1e-9, perturb=False, cg_iterations=60)
    u = _last(sampler.iterate(model, GaussianPrior(0.0, 1.0), torch.Generator().manual_seed(0)))
    assert (op.A(u) - d).norm() < 1e-3 * d.norm()


def _ones_model() -> MeasurementModel:
    """Data of ones seen through the identity, unit weights and scale."""
    op = _delta_operator((4, 8, 8))
    ones = torch.ones(op.image_shape, dtype=torch.float64)
    return MeasurementModel(op, ones, torch.tensor(1.0, dtype=torch.float64), 1.0)


def test_seeds_reproduce_and_differ():
    model = _ones_model()
    prior = GaussianPrior(0.0, 1.0)
    for sampler in (ExactDataFlowSampler(steps=3), PnPFlowSampler(steps=3)):
        a = _last(sampler.iterate(model, prior, torch.Generator().manual_seed(5)))
        b = _last(sampler.iterate(model, prior, torch.Generator().manual_seed(5)))
        c = _last(sampler.iterate(model, prior, torch.Generator().manual_seed(6)))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_pnp_flow_moves_from_the_prior_mean_towards_the_data():
    prior = GaussianPrior(0.0, 1.0)
    op = _delta_operator((4, 16, 16))
    d = torch.full(op.image_shape, 0.8, dtype=torch.float64)
    model = MeasurementModel(op, d, torch.tensor(100.0, dtype=torch.float64), 1.0)
    u = _last(PnPFlowSampler(steps=10).iterate(model, prior, torch.Generator().manual_seed(0)))
    assert torch.all(torch.isfinite(u))
    assert abs(u.mean().item() - 0.8) < 0.1


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: ExactDataFlowSampler(steps=0), "steps"),
        (lambda: ExactDataFlowSampler(prior_weight=0), "prior_weight"),
        (lambda: ExactDataFlowSampler(t_start=1.0), "t_start"),
        (lambda: PnPFlowSampler(step_size=0), "step_size"),
    ],
)
def test_invalid_sampler_settings(factory, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        factory()


@pytest.mark.parametrize("sampler", ["poisson", "exact"])
@pytest.mark.parametrize("perturb", [False, True])
def test_flow_settings_hand_their_values_to_the_sampler(sampler, perturb):
    settings = FlowDeconvolution(
        sampler=sampler, steps=4, t_start=0.25, prior_weight=0.7, perturb=perturb
    )
    built = settings.build_sampler()
    assert (built.steps, built.t_start, built.prior_weight, built.perturb) == (
        4,
        0.25,
        0.7,
        perturb,
    )


def test_iterate_batch_stacks_the_samples_drawn_one_by_one():
    model = _ones_model()
    prior = GaussianPrior(0.0, 1.0)
    for sampler in (ExactDataFlowSampler(steps=3), PnPFlowSampler(steps=3)):
        gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
        batched = _last(sampler.iterate_batch(model, prior, gens))
        for k, seed in enumerate((5, 6)):
            alone = _last(sampler.iterate(model, prior, torch.Generator().manual_seed(seed)))
            assert torch.equal(batched[k], alone)
