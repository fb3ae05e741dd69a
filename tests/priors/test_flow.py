"""Flow-matching convention, loss, training steps and the prior object."""

from __future__ import annotations

import pytest
import torch

from deconflow import DeconflowError
from deconflow.priors import FlowPrior, NetworkConfig, cfm_loss, estimate_loss, interpolate
from deconflow.priors.flow import ESTIMATE_TIMES


def test_time_convention_endpoints():
    x1, eps = torch.randn(2, 1, 4, 8, 8), torch.randn(2, 1, 4, 8, 8)
    torch.testing.assert_close(interpolate(x1, eps, 1.0), x1)
    torch.testing.assert_close(interpolate(x1, eps, 0.0), eps)
    mid = interpolate(x1, eps, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(mid[1], 0.75 * x1[1] + 0.25 * eps[1])


def test_denoiser_is_x_plus_one_minus_t_times_velocity(tiny_net):
    prior = FlowPrior(tiny_net, voxel_aspect=3.0)
    x = torch.randn(5, 12, 12)
    for t in (0.0, 0.4, 0.9):
        expected = x + (1 - t) * prior.velocity(x, t)
        torch.testing.assert_close(prior.denoise(x, t), expected)
    torch.testing.assert_close(prior.denoise(x, 1.0), x)


def test_exact_velocity_makes_denoiser_return_the_data():
    # a "network" that knows x1: v = (x1 - x_t) / (1 - t) is the exact conditional velocity
    x1 = torch.rand(1, 1, 4, 8, 8)

    class Oracle(torch.nn.Module):
        config = NetworkConfig()  # the architecture a FlowPrior reads: unconditioned

        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, aspect=1.0, condition=None):
            return (x1 - x) / (1 - torch.as_tensor(t).reshape(-1, 1, 1, 1, 1))

    prior = FlowPrior(Oracle())  # type: ignore[arg-type]
    x_t = interpolate(x1, torch.randn_like(x1), 0.3)
    torch.testing.assert_close(prior.denoise(x_t, 0.3), x1)


def test_prior_velocity_accepts_spatial_and_batched_and_keeps_grad_optional(tiny_net):
    prior = FlowPrior(tiny_net).for_voxel_size((0.4, 0.1, 0.1))
    assert prior.voxel_aspect == 4.0
    x = torch.randn(6, 10, 10)
    v = prior.velocity(x, 0.5)
    assert v.shape == x.shape and not v.requires_grad
    xb = x[None, None].clone().requires_grad_(True)
    prior.velocity(xb, torch.tensor([0.5])).sum().backward()
    assert xb.grad is not None and xb.grad.abs().sum() > 0
    torch.testing.assert_close(prior.velocity(x[None, None], 0.5)[0, 0], v)


def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch(tiny_factory):
    torch.manual_seed(0)
    net = tiny_factory(seed=1, randomise_zero_init=False)
    x1 = torch.zeros(2, 1, 4, 16, 16)
    x1[:, :, 1:3, 4:12, 6:10] = 1.0  # one simple, learnable structure

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(cfm_loss(net, x1, 2.0, torch.Generator().manual_seed(123)))

    before = fixed_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(25):
        opt.zero_grad()
        cfm_loss(net, x1, 2.0, gen).backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.85 * before, (before, after)


def test_loss_draws_times_from_t_min_to_one():
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, aspect=1.0, condition=None):
            seen.append(t.clone())
            return torch.zeros_like(x)

    x1 = torch.zeros(4000, 1, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    cfm_loss(Recorder(), x1, 1.0, gen)  # type: ignore[arg-type]
    cfm_loss(Recorder(), x1, 1.0, gen, t_min=0.6)  # type: ignore[arg-type]
    full, late = seen
    assert full.min() < 0.01 and full.max() > 0.99
    assert late.min() >= 0.6 and late.min() < 0.61 and late.max() > 0.99
    # uniform on [0.6, 1): mean 0.8, standard deviation 0.4 / sqrt(12)
    assert abs(float(late.mean()) - 0.8) < 4 * 0.4 / (12 * 4000) ** 0.5


def test_sampling_is_seeded(tiny_net):
    prior = FlowPrior(tiny_net)
    a = prior.sample((1, 1, 4, 8, 8), steps=3, generator=torch.Generator().manual_seed(2))
    b = prior.sample((1, 1, 4, 8, 8), steps=3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)


def test_voxel_sizes_that_give_no_aspect_are_refused(tiny_net):
    import pytest

    from deconflow import DeconflowError

    prior = FlowPrior(tiny_net)
    for bad in [(0.0, 0.1, 0.1), (-0.3, 0.1, 0.1), (float("nan"), 0.1, 0.1), (0.3, 0.1, 0.0)]:
        with pytest.raises(DeconflowError, match="positive"):
            prior.for_voxel_size(bad)
    with pytest.raises(DeconflowError, match=r"\(z, y, x\)"):
        prior.for_voxel_size((0.1,))
    assert prior.for_voxel_size((0.1, 0.1)).voxel_aspect == 1.0
    assert prior.for_voxel_size((0.5, 0.2, 0.1)).voxel_aspect == 5.0


def test_a_2d_input_is_told_aspect_1_whatever_the_prior_holds(tiny_net):
    # training shows the 2D path aspect 1 only; a 3D prior's aspect must not reach it
    flat = FlowPrior(tiny_net)
    tall = flat.for_voxel_size((0.4, 0.1, 0.1))
    plane = torch.randn(16, 24)
    torch.testing.assert_close(tall.velocity(plane, 0.5), flat.velocity(plane, 0.5))
    batch = torch.randn(2, 1, 16, 24)
    torch.testing.assert_close(tall.denoise(batch, 0.3), flat.denoise(batch, 0.3))
    vol = torch.randn(4, 16, 24)
    assert not torch.allclose(tall.velocity(vol, 0.5), flat.velocity(vol, 0.5))


def test_estimate_loss_is_the_denoising_error_against_the_truth():
    truth, estimate = torch.rand(3, 1, 4, 8, 8), torch.rand(3, 1, 4, 8, 8)

    class Zero(torch.nn.Module):  # D_t(x_t) = x_t
        def forward(self, x, t, aspect=1.0, condition=None):
            return torch.zeros_like(x)

    loss = estimate_loss(Zero(), truth, estimate, 2.0, torch.Generator().manual_seed(5))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(5)  # the same draws, in the same order
    t = 0.5 + 0.45 * torch.rand(3, generator=gen)
    eps = torch.randn(truth.shape, generator=gen)
    x_t = interpolate(estimate, eps, t)
    torch.testing.assert_close(loss, torch.mean((x_t - truth) ** 2) / 0.09)
    assert float(t.min()) >= ESTIMATE_TIMES[0] and float(t.max()) < ESTIMATE_TIMES[1]

    class Oracle(torch.nn.Module):  # the exact velocity towards the truth: D_t = truth
        def forward(self, x, t, aspect=1.0, condition=None):
            return (truth - x) / (1 - t.reshape(-1, 1, 1, 1, 1))

    oracle = estimate_loss(Oracle(), truth, estimate, 2.0, torch.Generator())  # type: ignore[arg-type]
    assert float(oracle) < 1e-10
    with pytest.raises(DeconflowError, match="shapes differ"):
        estimate_loss(Zero(), truth, estimate[:2])  # type: ignore[arg-type]


def test_a_few_estimate_steps_teach_the_denoiser_to_sharpen(tiny_factory):
    net = tiny_factory(seed=1, randomise_zero_init=False)
    truth = torch.zeros(2, 1, 4, 16, 16)
    truth[:, :, 1:3, 6:10, 6:10] = 1.0
    blurred = torch.nn.functional.avg_pool3d(truth, 3, stride=1, padding=1)  # a "first estimate"

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(estimate_loss(net, truth, blurred, 2.0, torch.Generator().manual_seed(9)))

    before = fixed_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(25):
        opt.zero_grad()
        estimate_loss(net, truth, blurred, 2.0, gen).backward()
        opt.step()
    assert fixed_loss() < 0.7 * before, (before, fixed_loss())
