"""bfloat16 arithmetic of the prior network: choice, accuracy, the thin-volume guard, training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from deconflow import DeconflowError
from deconflow._device import cpu_has_native_bfloat16, resolve_precision
from deconflow.priors import FlowPrior, load_prior, save_prior
from deconflow.priors.flow import cfm_loss
from deconflow.priors.train import TrainConfig, train_prior
from deconflow.solvers.flow import FlowDeconvolution

CPU = torch.device("cpu")


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_precision_settings_resolve_to_dtypes():
    assert resolve_precision("float32", CPU) == torch.float32
    assert resolve_precision("bfloat16", CPU) == torch.bfloat16
    native = torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    assert resolve_precision("auto", CPU) == native


@pytest.mark.parametrize(
    "make",
    [
        lambda: resolve_precision("fp16", CPU),
        lambda: FlowDeconvolution(precision="half"),
        lambda: TrainConfig(out="w.pt", precision="float16"),
    ],
)
def test_unknown_precision_names_the_choices(make):
    with pytest.raises(DeconflowError, match="auto, float32, bfloat16"):
        make()


def test_bfloat16_velocity_is_close_to_float32_and_keeps_the_input_dtype(tiny_net, tmp_path):
    path = save_prior(tiny_net, tmp_path / "w.pt", {})
    exact = load_prior(path, precision="float32")
    fast = load_prior(path, precision="bfloat16").for_voxel_size((0.3, 0.1, 0.1))
    assert fast.compute_dtype == torch.bfloat16  # for_voxel_size keeps the precision
    exact = exact.for_voxel_size((0.3, 0.1, 0.1))
    x = torch.randn(16, 24, 24, dtype=torch.float64)
    v_fast, v_exact = fast.velocity(x, 0.6), exact.velocity(x, 0.6)
    assert v_fast.dtype == torch.float64 and v_fast.shape == x.shape
    err = _relative_error(v_fast, v_exact)
    assert 0 < err < 0.02, err  # bfloat16 did run (not bit-equal) and stays accurate


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 1, 1, 32, 32), (1, 1, 2, 32, 32)])
def test_thin_volumes_run_in_float32_under_bfloat16_autocast(tiny_net, shape):
    # oneDNN's bfloat16 Conv3d returns inf/NaN for one input channel and one z plane
    x = torch.randn(shape)
    with torch.no_grad():
        expected = tiny_net(x, torch.tensor([0.5]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = tiny_net(x, torch.tensor([0.5]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_bfloat16_training_with_plane_steps_stays_finite_and_learns(tmp_path):
    config = TrainConfig(
        out=tmp_path / "w.pt",
        steps=12,
        batch=2,
        patch=(16, 16, 16),
        channels=(4, 8, 8),
        plane_every=3,  # 2D plane batches, the path oneDNN miscomputes in bfloat16
        threads=1,
        device="cpu",
        precision="bfloat16",
        lr=5e-3,
    )
    path = train_prior(config, progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["autocast"] == "bfloat16"
    losses = [loss for _, loss in card["loss_curve"]]
    assert all(loss == loss for loss in losses)  # no NaN
    net = load_prior(path).network
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_non_finite_loss_stops_training_with_advice(tmp_path, monkeypatch):
    import deconflow.priors.train as train_module

    def nan_loss(*args, **kwargs):
        return cfm_loss(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train_module, "cfm_loss", nan_loss)
    config = TrainConfig(
        out=tmp_path / "w.pt", steps=3, batch=1, patch=(4, 16, 16), channels=(4, 8, 8)
    )
    with pytest.raises(DeconflowError, match=r"not finite at step 1.*float32"):
        train_prior(dataclasses.replace(config, device="cpu", threads=1), progress=False)


def test_flow_prior_refuses_other_compute_dtypes(tiny_net):
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        FlowPrior(tiny_net, compute_dtype=torch.float16)
