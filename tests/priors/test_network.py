"""The velocity network: shapes, 2D/3D, conditioning, cost."""

from __future__ import annotations

import pytest
import torch

from deconflow.priors import NetworkConfig, VelocityUNet, flops_per_voxel
from deconflow.priors import network as network_module
from deconflow.priors.network import group_norm_by_reduction


@pytest.mark.parametrize(
    "shape", [(1, 1, 5, 13, 17), (2, 1, 1, 8, 8), (1, 1, 9, 31, 7), (3, 1, 13, 17)]
)
def test_any_shape_in_same_shape_out(tiny_net, shape):
    x = torch.randn(shape)
    v = tiny_net(x, torch.rand(shape[0]), 2.5)
    assert v.shape == x.shape
    assert torch.isfinite(v).all()
    assert v.abs().mean() > 0  # the randomised net really computed something


def test_padding_does_not_leak_between_batch_items(tiny_net):
    a, b = torch.randn(1, 1, 6, 18, 22), torch.randn(1, 1, 6, 18, 22)
    t = torch.tensor([0.3])
    both = tiny_net(torch.cat([a, b]), torch.tensor([0.3, 0.3]), 3.0)
    torch.testing.assert_close(both[:1], tiny_net(a, t, 3.0), rtol=1e-4, atol=1e-5)


def test_time_and_aspect_change_the_output(tiny_net):
    x = torch.randn(1, 1, 8, 16, 16)
    v = tiny_net(x, torch.tensor([0.2]), 1.0)
    assert not torch.allclose(v, tiny_net(x, torch.tensor([0.8]), 1.0))
    assert not torch.allclose(v, tiny_net(x, torch.tensor([0.2]), 4.0))


def test_2d_input_is_a_single_plane_without_z_pooling(tiny_net):
    x = torch.randn(1, 1, 16, 24)
    v2 = tiny_net(x, torch.tensor([0.5]), 1.0)
    v3 = tiny_net(x[:, :, None], torch.tensor([0.5]), 1.0)
    assert v2.shape == x.shape
    # a one-plane 3D input is padded to the z stride, so it differs from the 2D path
    assert v3.shape == (1, 1, 1, 16, 24)


def test_default_network_is_within_the_flop_budget():
    net = VelocityUNet()
    fpv = flops_per_voxel(net)
    print(f"default VelocityUNet: {fpv / 1e3:.1f} kFLOP/voxel")
    assert 50e3 < fpv <= 150e3


def test_flop_count_of_a_one_level_network_is_known():
    # input conv 1->8, one block (two 8->8 convs), output conv 8->1, all 3x3x3; three
    # norms over 8 channels at 10 FLOP per element (the CPU fuses them in inference,
    # where forward hooks would miss them)
    net = VelocityUNet(NetworkConfig(channels=(8,), z_pool=(), groups=4))
    convs = 2 * 27 * (1 * 8 + 8 * 8 + 8 * 8 + 8 * 1)
    assert flops_per_voxel(net) == pytest.approx(convs + 10 * 3 * 8)


def test_flop_count_scales_with_width():
    small = flops_per_voxel(VelocityUNet(NetworkConfig(channels=(8, 16, 16), z_pool=(False, True))))
    big = flops_per_voxel(VelocityUNet(NetworkConfig(channels=(16, 32, 32), z_pool=(False, True))))
    assert 3.0 < big / small < 4.5  # convolutions dominate and scale with channels squared


def test_config_round_trip_and_validation():
    cfg = NetworkConfig(channels=(8, 16), z_pool=(True,), embed_dim=32, groups=4)
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="z_pool"):
        NetworkConfig(channels=(8, 16), z_pool=(True, True))
    with pytest.raises(ValueError, match="groups"):
        NetworkConfig(channels=(6, 16), z_pool=(True,), groups=4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 16, 3, 9, 11), (3, 8, 5, 7)])
def test_group_norm_by_reduction_matches_torch(dtype, shape):
    # the GPU inference path's normalisation must be F.group_norm's arithmetic
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(dtype)
    weight = torch.randn(shape[1], dtype=torch.float64)
    bias = torch.randn(shape[1], dtype=torch.float64)
    expected = torch.nn.functional.group_norm(x.double(), 4, weight, bias, 1e-5)
    got = group_norm_by_reduction(x, 4, weight, bias, 1e-5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the reduction path runs on CUDA")
def test_network_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    net = VelocityUNet(NetworkConfig(channels=(8, 16), z_pool=(True,), groups=4)).eval()
    for p in net.parameters():  # the zero-initialised output layer would hide differences
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 1, 6, 20, 24), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        expected = net(x, t, 2.0)
        got = net.cuda()(x.cuda(), t.cuda(), 2.0).cpu()
    # cuDNN may run the convolutions in TF32 (10-bit mantissa): agree to ~1e-3 relative
    assert float((got - expected).norm() / expected.norm()) < 1e-2


@pytest.mark.parametrize("shape", [(1, 5, 16, 16), (2, 3, 4, 8, 8), (4, 8, 8)])
def test_a_wrong_shape_is_named_as_given(tiny_net, shape):
    # a (B, Z, Y, X) stack without its channel axis was reported as (B, Z, 1, Y, X)
    with pytest.raises(ValueError, match=rf"got \({shape[0]}, {shape[1]}, {shape[2]}"):
        tiny_net(torch.zeros(shape), torch.zeros(shape[0]))


def _randomised_net() -> VelocityUNet:
    torch.manual_seed(0)
    net = VelocityUNet(NetworkConfig(channels=(8, 16, 16), z_pool=(False, True), groups=4))
    for p in net.parameters():  # the zero-initialised layers would hide differences
        torch.nn.init.normal_(p, std=0.2)
    return net


@pytest.mark.parametrize("shape", [(2, 1, 6, 20, 24), (2, 1, 18, 22)])
def test_cpu_inference_path_matches_the_training_path(shape):
    # without gradients the CPU folds FiLM into the norm per batch item and pools by a
    # strided convolution; with them it runs the native kernels it trained with
    net = _randomised_net()
    x, t = torch.randn(shape), torch.tensor([0.2, 0.9])
    trained = net(x.clone().requires_grad_(True), t, 3.0).detach()
    with torch.no_grad():
        inferred = net(x, t, 3.0)
    torch.testing.assert_close(inferred, trained, rtol=1e-5, atol=1e-5)


def test_bfloat16_channels_last_inference_stays_close_to_float32():
    net = _randomised_net()
    x, t = torch.randn(1, 1, 16, 32, 40), torch.tensor([0.6])
    with torch.no_grad():
        expected = net(x, t, 2.0)
        fast = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x.contiguous(memory_format=torch.channels_last_3d), t, 2.0).float()
    # bfloat16 keeps 8 significant bits: ~0.4 % per rounding
    assert float((got - expected).norm() / expected.norm()) < 2e-2


@pytest.mark.parametrize("kz", [1, 2])
def test_average_pool_matches_avg_pool3d(kz):
    x = torch.randn(2, 3, 4, 6, 10)
    with torch.no_grad():
        got = network_module._average_pool(x, kz)
    torch.testing.assert_close(got, torch.nn.functional.avg_pool3d(x, (kz, 2, 2)))
