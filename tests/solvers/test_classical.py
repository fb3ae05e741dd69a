import itertools

import numpy as np
import pytest
import torch
from tests.conftest import gaussian_psf

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator, PoissonLikelihood
from deconflow.solvers import RichardsonLucy, RichardsonLucyTV, Wiener
from deconflow.solvers.tv import tv_divergence
from deconflow.solvers.wiener import (
    _laplacian_symbol,
    _negative_laplacian,
    fourier_tikhonov_inverse,
    noise_to_signal_regularization,
)


def _blurred(op, x):
    return op.A(torch.as_tensor(x, dtype=op.dtype))


def test_rl_with_identity_psf_returns_the_data_after_one_step():
    delta = np.zeros((1, 1, 1))
    delta[0, 0, 0] = 1.0
    y = torch.rand(5, 6, 7, dtype=torch.float64) * 10 + 1
    op = ConvolutionOperator(delta, y.shape, dtype=torch.float64)
    x = RichardsonLucy(iterations=1, accelerate=False)(y, op)
    np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-10)


def test_rl_conserves_flux_in_the_measured_window():
    """sum(H x_k) = sum(y) after every plain RL step without background (an EM invariant)."""
    rng = np.random.default_rng(0)
    psf = gaussian_psf((7, 9, 9), (1.5, 2.0, 2.0))
    op = ConvolutionOperator(psf, (12, 20, 20), dtype=torch.float64)
    y = torch.tensor(rng.poisson(20.0, op.image_shape).astype(float))
    for x in RichardsonLucy(iterations=5, accelerate=False).iterate(y, op):
        np.testing.assert_allclose(op.A(x).sum().item(), y.sum().item(), rtol=1e-9)


def test_rl_decreases_the_poisson_negative_log_likelihood():
    rng = np.random.default_rng(1)
    psf = gaussian_psf((7, 9, 9), (1.5, 2.0, 2.0))
    op = ConvolutionOperator(psf, (12, 24, 24), dtype=torch.float64)
    truth = rng.gamma(0.3, 50.0, op.object_shape)
    y = torch.tensor(rng.poisson(_blurred(op, truth).numpy() + 3.0).astype(float))
    lik = PoissonLikelihood()
    values = [
        lik.value(y, op.A(x) + 3.0).item()
        for x in RichardsonLucy(iterations=15, accelerate=False).iterate(y, op, 3.0)
    ]
    assert all(b <= a + 1e-9 * abs(a) for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("accelerate", [False, True])
def test_rl_recovers_a_gaussian_blob_width(accelerate):
    """Noiseless Gaussian object (sigma 1.5), Gaussian PSF (sigma 2): RL sharpens it back."""
    shape = (33, 33)
    psf = gaussian_psf((17, 17), (2.0, 2.0))
    op = ConvolutionOperator(psf, shape, dtype=torch.float64)
    truth = np.pad(gaussian_psf(shape, (1.5, 1.5)) * 1e4, 8)
    y = _blurred(op, truth)
    iterations = 400 if not accelerate else 60
    x = op.crop_to_image(RichardsonLucy(iterations, accelerate=accelerate)(y, op)).numpy()
    grid = np.arange(33) - 16
    profile = x.sum(axis=0)
    width = np.sqrt(np.sum(grid**2 * profile) / profile.sum())
    blurred_width = np.sqrt(1.5**2 + 2.0**2)
    assert abs(width - 1.5) < 0.15, f"recovered sigma {width:.2f}, blurred {blurred_width:.2f}"


def _noiseless_beads() -> tuple[ConvolutionOperator, torch.Tensor]:
    """30 point sources of 500 blurred by a Gaussian PSF, background 1, no noise."""
    rng = np.random.default_rng(2)
    psf = gaussian_psf((9, 11, 11), (2.0, 2.0, 2.0))
    op = ConvolutionOperator(psf, (16, 32, 32), dtype=torch.float64)
    truth = np.zeros(op.object_shape)
    truth[tuple(rng.integers(4, 20, (3, 30)))] = 500.0
    return op, _blurred(op, truth) + 1.0


def test_acceleration_reaches_plain_rl_quality_in_fewer_iterations():
    op, y = _noiseless_beads()
    lik = PoissonLikelihood()
    plain = RichardsonLucy(40, accelerate=False)(y, op, 1.0)
    fast = RichardsonLucy(15, accelerate=True)(y, op, 1.0)
    assert lik.value(y, op.A(fast) + 1.0) <= lik.value(y, op.A(plain) + 1.0)


def test_rl_background_only_image_gives_near_zero_object():
    psf = gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5))
    op = ConvolutionOperator(psf, (8, 16, 16), dtype=torch.float64)
    y = torch.full(op.image_shape, 100.0, dtype=torch.float64)
    x = RichardsonLucy(20)(y, op, 100.0)
    assert x.max().item() < 1e-3 * 100


def test_rl_tv_with_zero_weight_equals_rl():
    rng = np.random.default_rng(3)
    psf = gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5))
    op = ConvolutionOperator(psf, (8, 16, 16), dtype=torch.float64)
    y = torch.tensor(rng.poisson(10.0, op.image_shape).astype(float))
    a = RichardsonLucy(8)(y, op, 2.0)
    b = RichardsonLucyTV(8, tv_weight=0.0)(y, op, 2.0)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


def test_rl_tv_smooths_noise_more_than_rl():
    rng = np.random.default_rng(4)
    psf = gaussian_psf((5, 9, 9), (1.0, 2.0, 2.0))
    op = ConvolutionOperator(psf, (8, 32, 32), dtype=torch.float64)
    y = torch.tensor(rng.poisson(30.0, op.image_shape).astype(float))  # flat object + noise
    inner = (slice(2, -2), slice(4, -4), slice(4, -4))
    rl = op.crop_to_image(RichardsonLucy(30)(y, op))[inner]
    tv = op.crop_to_image(RichardsonLucyTV(30, tv_weight=0.02)(y, op))[inner]
    assert tv.std() < 0.7 * rl.std()


def test_rl_tv_acceleration_works_despite_the_tv_oscillation():
    # the TV term flips sign where the gradient crosses zero, so successive RL-TV updates
    # are anti-correlated and plain Biggs-Andrews extrapolation stayed off (4 % of the fit
    # that 30 more plain iterations add); the two-step form extrapolates (33 %)
    op, y = _noiseless_beads()
    lik = PoissonLikelihood()

    def misfit(solver):
        return lik.value(y, op.A(solver(y, op, 1.0)) + 1.0)

    plain30 = misfit(RichardsonLucyTV(30, accelerate=False))
    plain60 = misfit(RichardsonLucyTV(60, accelerate=False))
    fast30 = misfit(RichardsonLucyTV(30))
    assert plain30 - fast30 > 0.2 * (plain30 - plain60)


@pytest.mark.parametrize(
    "solver",
    [RichardsonLucy(iterations=4), RichardsonLucyTV(iterations=4), Wiener(iterations=3)],
    ids=["rl", "rl-tv", "wiener"],
)
def test_integer_counts_give_the_same_estimate_as_their_float_copy(solver):
    """Photon counts often arrive as integers; the flat start must not be truncated."""
    rng = np.random.default_rng(6)
    op = ConvolutionOperator(
        gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5)), (6, 14, 14), dtype=torch.float64
    )
    counts = torch.tensor(rng.poisson(17.3, op.image_shape))
    assert counts.dtype == torch.int64
    expected = solver(counts.to(torch.float64), op, 2.0)
    got = solver(counts, op, 2.0)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-10)


def test_tv_divergence_is_minus_adjoint_of_forward_difference():
    """<grad u, p> = -<u, div p> makes div(grad/|grad|) the TV gradient; checked by autograd."""
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.random((6, 7, 8)), requires_grad=True)
    spacing = (3.0, 1.0, 1.0)
    eps = 1e-3
    grads = [
        torch.diff(x, dim=i, append=x.narrow(i, x.shape[i] - 1, 1)) / h
        for i, h in enumerate(spacing)
    ]
    tv = torch.sqrt(sum(g * g for g in grads) + eps**2).sum()
    (auto,) = torch.autograd.grad(tv, x)
    np.testing.assert_allclose(
        tv_divergence(x.detach(), spacing, eps).numpy(), -auto.numpy(), atol=1e-10
    )


def test_wiener_with_tiny_regularization_inverts_noiseless_blur():
    rng = np.random.default_rng(6)
    psf = gaussian_psf((7, 7), (1.0, 1.0))
    op = ConvolutionOperator(psf, (40, 40), dtype=torch.float64)
    truth = np.zeros(op.object_shape)
    truth[10:36, 10:36] = rng.random((26, 26)) * 100
    y = _blurred(op, truth)
    x = Wiener(regularization=1e-8, iterations=300, clip_negative=False)(y, op)
    interior = (slice(8, -8), slice(8, -8))
    got = op.crop_to_image(x)[interior].numpy()
    expected = op.crop_to_image(torch.tensor(truth))[interior].numpy()
    blurred = op.crop_to_image(op.extend_image(y))[interior].numpy()
    error = np.linalg.norm(got - expected)
    assert error < 0.05 * np.linalg.norm(expected)
    assert error < 0.2 * np.linalg.norm(blurred - expected)


def test_wiener_solves_the_regularised_normal_equations():
    rng = np.random.default_rng(7)
    psf = gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5))
    op = ConvolutionOperator(psf, (8, 16, 16), dtype=torch.float64)
    y = torch.tensor(rng.poisson(40.0, op.image_shape).astype(float))
    lam = 0.05
    x = Wiener(regularization=lam, iterations=60, clip_negative=False)(y, op, 5.0)
    residual = op.A_adjoint(op.A(x)) + lam * _negative_laplacian(x, 3) - op.A_adjoint(y - 5.0)
    assert residual.norm() < 1e-6 * op.A_adjoint(y).norm()


def test_wiener_zero_iterations_is_the_fourier_filter():
    psf = gaussian_psf((5, 5), (1.0, 1.0))
    op = ConvolutionOperator(psf, (12, 12), boundary="periodic", dtype=torch.float64)
    y = torch.rand(12, 12, dtype=torch.float64)
    x = Wiener(regularization=0.01, iterations=0, clip_negative=False)(y, op)
    # the -Laplacian's symbol: sum over axes of 2 - 2 cos(2 pi k / n)
    k = torch.fft.fftfreq(12, dtype=torch.float64)
    kr = torch.fft.rfftfreq(12, dtype=torch.float64)
    symbol = (2 - 2 * torch.cos(2 * torch.pi * k))[:, None] + (2 - 2 * torch.cos(2 * torch.pi * kr))
    np.testing.assert_allclose(_laplacian_symbol(op).numpy(), symbol.numpy(), atol=1e-12)
    expected = torch.fft.irfftn(
        torch.fft.rfftn(y) * op.otf.conj() / (op.otf.abs() ** 2 + 0.01 * symbol), s=(12, 12)
    )
    np.testing.assert_allclose(x.numpy(), expected.numpy(), atol=1e-7)
    np.testing.assert_allclose(
        fourier_tikhonov_inverse(op, op.A_adjoint(y), 0.01, symbol).numpy(),
        expected.numpy(),
        atol=1e-7,
    )


def test_wiener_keeps_total_flux():
    """The gradient penalty leaves the zero frequency alone: no shrinkage of intensities."""
    rng = np.random.default_rng(8)
    psf = gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5))
    op = ConvolutionOperator(psf, (8, 16, 16), boundary="periodic", dtype=torch.float64)
    y = torch.tensor(rng.poisson(40.0, op.image_shape).astype(float))
    x = Wiener(regularization=10.0, iterations=0, clip_negative=False)(y, op, 5.0)
    np.testing.assert_allclose(x.sum().item(), (y - 5.0).sum().item(), rtol=1e-9)


def test_default_regularization_follows_the_noise_to_signal_ratio():
    rng = np.random.default_rng(9)
    psf = gaussian_psf((5, 9, 9), (1.0, 2.0, 2.0))
    op = ConvolutionOperator(psf, (12, 32, 32), dtype=torch.float64)
    truth = np.zeros(op.object_shape)
    truth[tuple(rng.integers(0, 16, (3, 40)))] = 400.0
    clean = op.A(torch.tensor(truth))
    lams = [
        noise_to_signal_regularization(clean + sigma * torch.randn_like(clean), sigma)
        for sigma in (0.5, 5.0)
    ]
    power = clean.square().mean().item()
    np.testing.assert_allclose(lams[0], 0.25 / (power + 0.25), rtol=0.05)
    assert lams[1] > 5 * lams[0]


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: RichardsonLucy(iterations=0), "iterations"),
        (lambda: RichardsonLucyTV(tv_weight=-1.0), "tv_weight"),
        (lambda: RichardsonLucyTV(spacing=(0.0, 1.0, 1.0)), "spacing"),
        (lambda: Wiener(regularization=0.0), "regularization"),
        (lambda: Wiener(regularization=float("inf")), "finite number > 0"),
        (lambda: Wiener(iterations=-1), "iterations"),
    ],
)
def test_invalid_solver_settings(factory, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        factory()
