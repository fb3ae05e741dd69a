"""Saving, loading and the errors for bad weights files; the shipped default weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deconflow import DeconflowError
from deconflow.priors import (
    FlowPrior,
    NetworkConfig,
    VelocityUNet,
    default_weights_path,
    fit_normalization,
    generate_volume,
    interpolate,
    load_prior,
    save_prior,
)


def test_save_load_round_trip_gives_identical_outputs(tiny_net, tmp_path):
    path = save_prior(tiny_net, tmp_path / "w.pt", {"steps": 3})
    assert json.loads(path.with_suffix(".json").read_text())["steps"] == 3
    prior = load_prior(path)
    assert prior.card["steps"] == 3
    x = torch.randn(1, 1, 5, 12, 12)
    expected = FlowPrior(tiny_net).velocity(x, 0.4)
    torch.testing.assert_close(prior.velocity(x, 0.4), expected, rtol=0, atol=0)


def test_missing_file(tmp_path):
    with pytest.raises(DeconflowError, match="not found"):
        load_prior(tmp_path / "nope.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_named_before_the_file_is_read(tmp_path):
    with pytest.raises(DeconflowError, match="no usable CUDA GPU"):
        load_prior(tmp_path / "nope.pt", device="cuda")
    with pytest.raises(DeconflowError, match="Unknown device"):
        load_prior(device="gpu0")


def test_truncated_file(tiny_net, tmp_path):
    path = save_prior(tiny_net, tmp_path / "w.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DeconflowError, match="truncated"):
        load_prior(path)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, path)
    with pytest.raises(DeconflowError, match="not a deconflow flow-prior"):
        load_prior(path)


def test_wrong_architecture(tiny_net, tmp_path):
    path = save_prior(tiny_net, tmp_path / "w.pt")
    blob = torch.load(path, weights_only=True)
    blob["network"] = NetworkConfig(channels=(8, 8, 8), z_pool=(False, True), groups=2).to_dict()
    torch.save(blob, path)
    with pytest.raises(DeconflowError, match="do not match the network architecture"):
        load_prior(path)


def test_shipped_weights_load_and_denoise():
    path = default_weights_path()
    assert path.is_file(), "the package must ship default weights"
    assert path.stat().st_size < 5e6
    prior = load_prior()
    card = prior.card
    assert card["flops_per_voxel"] <= 150e3
    assert "command" in card and card["steps"] > 0 and card["wall_time_s"] > 0
    assert isinstance(prior.network, VelocityUNet)

    rng = np.random.default_rng(123)
    vol = generate_volume((8, 32, 32), (0.3, 0.1, 0.1), rng)
    x1 = torch.from_numpy(fit_normalization(vol).apply(vol))
    prior = prior.for_voxel_size((0.3, 0.1, 0.1))
    gen = torch.Generator().manual_seed(0)
    x_t = interpolate(x1, torch.randn(x1.shape, generator=gen), 0.6)
    with torch.no_grad():
        d = prior.denoise(x_t, 0.6)
    assert torch.isfinite(d).all()
    # a trained denoiser is much closer to the data than its noisy input is
    assert torch.mean((d - x1) ** 2) < 0.5 * torch.mean((x_t - x1) ** 2)


def test_a_training_checkpoint_is_named_as_such(tmp_path):
    from deconflow.priors.train import TrainConfig, train_prior

    out = tmp_path / "mine.pt"
    config = TrainConfig(
        out=out,
        steps=1,
        batch=1,
        patch=(4, 16, 16),
        channels=(4, 8, 8),
        plane_every=0,
        threads=1,
        device="cpu",
    )
    train_prior(config, progress=False)
    with pytest.raises(DeconflowError, match=r"training checkpoint.*mine\.pt"):
        load_prior(tmp_path / "mine.ckpt.pt")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda b: b.__setitem__("format_version", "one"), "format version"),
        (lambda b: b.__setitem__("card", [1, 2]), "card"),
        (lambda b: b["network"].__setitem__("groups", 0), "architecture"),
        (lambda b: b["network"].__setitem__("channels", [4, 0, 8]), "architecture"),
        (lambda b: b["state_dict"]["inp.weight"].fill_(float("nan")), "NaN or Inf"),
    ],
)
def test_edited_or_corrupt_contents_are_named(tiny_net, tmp_path, edit, fragment):
    path = save_prior(tiny_net, tmp_path / "w.pt")
    blob = torch.load(path, weights_only=True)
    edit(blob)
    torch.save(blob, path)
    with pytest.raises(DeconflowError, match=fragment):
        load_prior(path)


def test_loading_leaves_torch_global_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_prior()  # builds the network, whose initialisation draws random weights
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
