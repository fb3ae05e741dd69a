import numpy as np
import pytest
import torch

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator, GaussianLikelihood, PoissonLikelihood
from deconflow.physics.likelihoods import data_gradient


@pytest.mark.parametrize("likelihood", [PoissonLikelihood(), GaussianLikelihood(sigma=2.0)])
def test_data_gradient_matches_autograd(likelihood):
    rng = np.random.default_rng(0)
    psf = rng.random((3, 5, 5))
    psf /= psf.sum()
    op = ConvolutionOperator(psf, (6, 8, 8), dtype=torch.float64)
    x = torch.tensor(rng.random(op.object_shape) + 0.5, requires_grad=True)
    y = torch.tensor(rng.poisson(3.0, op.image_shape).astype(float))
    value = likelihood.value(y, op.A(x) + 1.5)
    (auto,) = torch.autograd.grad(value, x)
    np.testing.assert_allclose(
        data_gradient(likelihood, op, x.detach(), y, 1.5).numpy(), auto.numpy(), rtol=1e-10
    )


def test_poisson_is_finite_where_model_is_dark():
    lik = PoissonLikelihood()
    y = torch.tensor([0.0, 3.0])
    mu = torch.tensor([0.0, 0.0])
    assert torch.isfinite(lik.value(y, mu))
    assert torch.all(torch.isfinite(lik.gradient(y, mu)))


def test_poisson_minimum_is_at_the_data():
    lik = PoissonLikelihood()
    y = torch.tensor([2.0, 5.0, 9.0])
    best = lik.value(y, y)
    for factor in (0.9, 1.1):
        assert lik.value(y, y * factor) > best
    np.testing.assert_allclose(lik.gradient(y, y).numpy(), 0.0, atol=1e-12)


def test_invalid_parameters():
    with pytest.raises(DeconflowError, match="sigma"):
        GaussianLikelihood(sigma=0.0)
    with pytest.raises(DeconflowError, match="finite"):
        GaussianLikelihood(sigma=float("inf"))
    with pytest.raises(DeconflowError, match="floor"):
        PoissonLikelihood(floor=0.0)


def test_poisson_deviance_is_twice_the_likelihood_ratio_and_about_one_per_voxel():
    lik = PoissonLikelihood()
    rng = np.random.default_rng(1)
    mu = torch.full((20000,), 30.0, dtype=torch.float64)
    y = torch.tensor(rng.poisson(30.0, mu.shape).astype(float))
    # definition: 2 (NLL(mu) - NLL(y)), the saturated model's NLL being that at mu = y
    expected = 2.0 * (lik.value(y, mu) - lik.value(y, y))
    np.testing.assert_allclose(lik.deviance(y, mu).item(), expected.item(), rtol=1e-9)
    assert lik.deviance(y, y).item() == pytest.approx(0.0, abs=1e-9)
    # at the true mean each voxel contributes ~1 (chi-square with one degree of freedom)
    assert lik.deviance(y, mu).item() / y.numel() == pytest.approx(1.0, abs=0.05)
    # zero counts contribute 2 mu, not NaN
    assert lik.deviance(torch.tensor([0.0]), torch.tensor([2.0])).item() == pytest.approx(4.0)
