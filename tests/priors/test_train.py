"""Training function, data sources, checkpoint/resume and the CLI registration."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from deconflow import DeconflowError
from deconflow.io import write_tiff
from deconflow.priors import cfm_loss, estimate_loss, load_prior
from deconflow.priors._cli import main, register
from deconflow.priors._loader import BatchStream
from deconflow.priors.data import Batch, EstimatePairs, FolderSource, GeneratorSource
from deconflow.priors.train import TrainConfig, _batch_loss, train_prior


def _tiny_config(tmp_path, **kw) -> TrainConfig:
    base = {
        "out": tmp_path / "w.pt",
        "steps": 3,
        "batch": 1,
        "patch": (4, 16, 16),
        "channels": (4, 8, 8),
        "plane_every": 2,
        "threads": 1,
        "checkpoint_every": 2,
        "device": "cpu",
        "command": "test",
    }
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_weights_card_and_checkpoint(tmp_path):
    path = train_prior(_tiny_config(tmp_path), progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["steps"] == 3 and card["command"] == "test"
    assert card["loss_curve"][-1][0] == 3 and card["final_loss"] > 0
    for key in ("flops_per_voxel", "software", "voxel_aspect", "data", "wall_time_s", "network"):
        assert key in card
    assert (tmp_path / "w.ckpt.pt").is_file()
    assert load_prior(path).network.config.channels == (4, 8, 8)


def test_a_fine_tune_keeps_the_cards_of_the_runs_before_it(tmp_path):
    first = train_prior(_tiny_config(tmp_path / "a", command="first"), progress=False)
    second = train_prior(
        _tiny_config(tmp_path / "b", init=first, steps=2, command="second"), progress=False
    )
    third = train_prior(
        _tiny_config(tmp_path / "c", init=second, steps=1, command="third"), progress=False
    )
    card = load_prior(third).card
    assert card["command"] == "third" and card["steps"] == 1
    assert card["fine_tuned_from"]["command"] == "second"
    assert card["fine_tuned_from"]["fine_tuned_from"] == load_prior(first).card
    assert "fine_tuned_from" not in load_prior(first).card
    # the JSON beside the weights holds the same history (JSON turns tuples into lists)
    assert json.loads(third.with_suffix(".json").read_text()) == json.loads(json.dumps(card))


def test_resume_continues_exactly(tmp_path):
    straight = train_prior(_tiny_config(tmp_path / "a", steps=4), progress=False)
    train_prior(_tiny_config(tmp_path / "b", steps=2), progress=False)
    resumed = train_prior(_tiny_config(tmp_path / "b", steps=4, resume=True), progress=False)
    a, b = load_prior(straight).network.state_dict(), load_prior(resumed).network.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_resuming_with_settings_that_change_what_is_learned_is_refused(tmp_path):
    train_prior(_tiny_config(tmp_path, steps=2), progress=False)
    ckpt = tmp_path / "w.ckpt.pt"
    before = ckpt.read_bytes()
    with pytest.raises(DeconflowError, match=r"other settings \(batch 1 -> 2; lr 0.002 -> 0.01\)"):
        train_prior(_tiny_config(tmp_path, steps=4, batch=2, lr=1e-2, resume=True), progress=False)
    assert ckpt.read_bytes() == before  # the refused run leaves the checkpoint alone
    # how long and where it runs may change: more steps, another thread count
    path = train_prior(
        _tiny_config(tmp_path, steps=3, threads=2, checkpoint_every=1, resume=True),
        progress=False,
    )
    assert load_prior(path).card["steps"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA training path")
def test_training_on_cuda_writes_cpu_weights_and_resumes(tmp_path):
    # mixed precision on the GPU, a CUDA generator in the checkpoint, weights saved on the CPU
    train_prior(_tiny_config(tmp_path, steps=2, device="cuda"), progress=False)
    path = train_prior(_tiny_config(tmp_path, steps=4, device="cuda", resume=True), progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["steps"] == 4 and card["device"].startswith("cuda")
    assert card["autocast"] in ("bfloat16", "float16")
    prior = load_prior(path)
    assert all(p.device.type == "cpu" for p in prior.network.parameters())


def test_generator_source_batches_are_normalised_with_aspects():
    src = GeneratorSource(patch=(4, 16, 16), aspect_range=(2.0, 5.0))
    batch = src.sample(3, np.random.default_rng(0))
    assert batch.x1.shape == (3, 1, 4, 16, 16)
    assert torch.all((batch.aspect >= 2.0) & (batch.aspect <= 5.0))
    assert 0.3 < float(batch.x1.amax()) < 3.0
    planes = src.sample(2, np.random.default_rng(0), plane=True)
    assert planes.x1.shape == (2, 1, 16, 16) and torch.all(planes.aspect == 1.0)


def test_folder_source_reads_tiffs_with_voxel_size(tmp_path):
    rng = np.random.default_rng(0)
    write_tiff(
        tmp_path / "a.tif",
        rng.random((6, 20, 24)).astype(np.float32),
        voxel_size_um=(0.5, 0.1, 0.1),
    )
    (tmp_path / "sub").mkdir()
    write_tiff(
        tmp_path / "sub" / "b.tif",
        rng.random((3, 12, 12)).astype(np.float32),
        voxel_size_um=(0.2, 0.1, 0.1),
    )
    src = FolderSource(tmp_path, patch=(4, 16, 16))
    assert sorted(src.aspects) == pytest.approx([2.0, 5.0])
    batch = src.sample(4, rng)
    assert batch.x1.shape == (4, 1, 4, 16, 16)
    assert set(np.round(batch.aspect.numpy(), 3)) <= {2.0, 5.0}


def test_folder_source_errors(tmp_path):
    with pytest.raises(DeconflowError, match="not found"):
        FolderSource(tmp_path / "missing")
    with pytest.raises(DeconflowError, match=r"No \.tif"):
        FolderSource(tmp_path)


def test_cli_registers_train_and_runs(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--out", str(tmp_path / "x.pt"), "--steps", "5"])
    assert callable(args.handler) and args.steps == 5 and args.verbose is False
    out = tmp_path / "cli.pt"
    code = main(
        [
            "train",
            "--out",
            str(out),
            "--steps",
            "1",
            "--batch",
            "1",
            "--patch",
            "4",
            "16",
            "16",
            "--plane-every",
            "0",
            "--threads",
            "1",
            "--precision",
            "float32",
            "--t-min",
            "0.5",
            "--estimate-pairs",
            "0.5",
            "-q",
        ]
    )
    assert code == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["command"].startswith("python -m deconflow.priors._cli train --out")
    assert card["training"]["precision"] == "float32" and card["autocast"] == "off (float32)"
    assert card["training"]["t_min"] == 0.5 and card["training"]["estimate_pairs"] == 0.5
    assert "estimate pairs" in card["data"]


@pytest.mark.parametrize("t_min", [-0.1, 1.0])
def test_t_min_outside_zero_to_one_is_refused(tmp_path, t_min):
    with pytest.raises(DeconflowError, match="t_min must be in"):
        _tiny_config(tmp_path, t_min=t_min)


@pytest.mark.parametrize("share", [-0.1, 1.1])
def test_estimate_pair_share_outside_zero_to_one_is_refused(tmp_path, share):
    with pytest.raises(DeconflowError, match="share in"):
        _tiny_config(tmp_path, estimate_pairs=share)


def test_estimate_pairs_with_a_data_folder_are_refused(tmp_path):
    with pytest.raises(DeconflowError, match="drop --estimate-pairs"):
        _tiny_config(tmp_path, estimate_pairs=0.5, data=tmp_path)


def test_batch_loss_weights_flow_items_and_pairs_by_their_counts(tiny_net):
    x1, truth, estimate = (torch.rand(n, 1, 4, 16, 16) for n in (1, 3, 3))
    batch = Batch(x1, torch.tensor([2.0]), EstimatePairs(truth, estimate, torch.full((3,), 2.0)))
    loss = _batch_loss(tiny_net, batch, torch.device("cpu"), torch.Generator().manual_seed(4), 0.0)
    gen = torch.Generator().manual_seed(4)  # the flow items draw first, then the pairs
    flow = cfm_loss(tiny_net, x1, torch.tensor([2.0]), gen)
    pairs = estimate_loss(tiny_net, truth, estimate, torch.full((3,), 2.0), gen)
    torch.testing.assert_close(loss, (flow + 3 * pairs) / 4)
    only_pairs = Batch(x1[:0], torch.zeros(0), batch.pairs)
    alone = _batch_loss(tiny_net, only_pairs, torch.device("cpu"), torch.Generator(), 0.0)
    assert torch.isfinite(alone)


def test_cli_reports_bad_data_folder(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "x.pt"), "--data", str(tmp_path / "none"), "-q"])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_batches_depend_on_the_step_not_on_the_workers():
    source = GeneratorSource(patch=(4, 16, 16))
    with BatchStream(source, 2, plane_every=3, seed=7, start=1) as alone:
        here = [alone.next() for _ in range(4)]  # steps 1-4; step 2 is a plane step
    with BatchStream(source, 2, plane_every=3, seed=7, start=1, workers=2) as pool:
        ahead = [pool.next() for _ in range(4)]
    assert [b.x1.shape[0] for b in here] == [2, 8, 2, 2]
    assert here[1].x1.shape == (8, 1, 16, 16)  # 2D planes, four times as many
    for a, b in zip(here, ahead, strict=True):
        assert torch.equal(a.x1, b.x1) and torch.equal(a.aspect, b.aspect)
    assert not torch.equal(here[0].x1, here[2].x1)


def test_estimate_pair_batches_do_not_depend_on_the_drawing_process_threads():
    # a worker draws with one torch thread; torch's multi-threaded FFTs and sums round
    # differently, and a pair's estimate (and the Poisson draws after it) followed them
    from deconflow.solvers.estimate_pairs import EstimatePairSource

    source = EstimatePairSource((6, 24, 24), share=1.0)
    threads = torch.get_num_threads()
    drawn = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with BatchStream(source, 2, plane_every=0, seed=3) as alone:
                drawn.append(alone.next().pairs)
            assert torch.get_num_threads() == n  # the stream leaves the caller's setting
    finally:
        torch.set_num_threads(threads)
    one, two = drawn
    assert one is not None and two is not None
    assert torch.equal(one.truth, two.truth) and torch.equal(one.estimate, two.estimate)


@pytest.mark.parametrize("pairs", [0.0, 0.5])
def test_training_with_workers_equals_training_without(tmp_path, pairs):
    alone = train_prior(_tiny_config(tmp_path / "a", estimate_pairs=pairs), progress=False)
    pooled = train_prior(
        _tiny_config(tmp_path / "b", workers=1, estimate_pairs=pairs), progress=False
    )
    a, b = load_prior(alone).network.state_dict(), load_prior(pooled).network.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_folder_source_refuses_channels_time_and_rgb_axes(tmp_path):
    # a 2-channel image or an RGB snapshot squeezes to three axes: it must not pass as z
    import tifffile

    rng = np.random.default_rng(0)
    two_channels = tmp_path / "cyx" / "two_channels.tif"
    two_channels.parent.mkdir()
    tifffile.imwrite(
        two_channels,
        rng.integers(0, 255, (2, 24, 24), dtype=np.uint8),
        imagej=True,
        metadata={"axes": "CYX"},
    )
    rgb = tmp_path / "rgb" / "snapshot.tif"
    rgb.parent.mkdir()
    tifffile.imwrite(rgb, rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), photometric="rgb")
    for path in (two_channels, rgb):
        with pytest.raises(DeconflowError, match=rf"{path.name}.*non-spatial axes"):
            FolderSource(path.parent, patch=(4, 16, 16), voxel_size_um=(0.3, 0.1, 0.1))


def test_folder_source_uses_2d_images_for_plane_steps_only(tmp_path):
    rng = np.random.default_rng(0)
    write_tiff(
        tmp_path / "stack.tif",
        rng.random((6, 20, 20)).astype(np.float32),
        voxel_size_um=(0.4, 0.1, 0.1),
    )
    write_tiff(tmp_path / "plane.tif", rng.random((20, 20)).astype(np.float32))
    # the user's voxel size is a 3D stack's: it must not make the plane a z-column of aspect 3
    src = FolderSource(tmp_path, patch=(4, 16, 16), voxel_size_um=(0.3, 0.1, 0.1))
    batch = src.sample(16, rng)
    # a 2D image repeated along z would give patches whose planes are all equal
    assert all(not torch.equal(x[0, 0], x[0, 1]) for x in batch.x1)
    assert batch.aspect.numpy() == pytest.approx([3.0] * 16)
    assert "1 2D image" in src.describe()
    planes = src.sample(16, rng, plane=True)
    assert planes.x1.shape == (16, 1, 16, 16) and torch.all(planes.aspect == 1.0)

    only_2d = tmp_path / "only2d"
    only_2d.mkdir()
    write_tiff(only_2d / "a.tif", rng.random((20, 20)).astype(np.float32))
    batch = FolderSource(only_2d, patch=(4, 16, 16)).sample(2, rng)
    assert batch.x1.shape == (2, 1, 16, 16) and torch.all(batch.aspect == 1.0)


def test_folder_source_names_a_file_with_nan(tmp_path):
    data = np.ones((6, 20, 20), np.float32)
    data[2, 3, 4] = np.nan
    write_tiff(
        tmp_path / "good.tif", np.ones((6, 20, 20), np.float32), voxel_size_um=(0.3, 0.1, 0.1)
    )
    write_tiff(tmp_path / "masked.tif", data, voxel_size_um=(0.3, 0.1, 0.1))
    with pytest.raises(DeconflowError, match=r"masked\.tif holds NaN"):
        FolderSource(tmp_path, patch=(4, 16, 16))


def test_a_killed_run_resumes_to_the_uninterrupted_weights_and_card(tmp_path, monkeypatch):
    # past the 20-step warm-up, so the cosine schedule matters; the checkpoint (every 7
    # steps) falls between two points of the loss curve (every 10 steps)
    import deconflow.priors.train as train

    config = {"steps": 24, "checkpoint_every": 7, "plane_every": 5}
    straight = train_prior(_tiny_config(tmp_path / "a", **config), progress=False)
    real, calls = train.cfm_loss, {"n": 0}

    def killed_at_step_17(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 17:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "cfm_loss", killed_at_step_17)
    with pytest.raises(KeyboardInterrupt):
        train_prior(_tiny_config(tmp_path / "b", **config), progress=False)
    monkeypatch.setattr(train, "cfm_loss", real)
    assert torch.load(tmp_path / "b" / "w.ckpt.pt", weights_only=True)["step"] == 14
    resumed = train_prior(_tiny_config(tmp_path / "b", resume=True, **config), progress=False)
    a, b = load_prior(straight), load_prior(resumed)
    for k, v in a.network.state_dict().items():
        torch.testing.assert_close(v, b.network.state_dict()[k], rtol=0, atol=0, msg=k)
    assert b.card["loss_curve"] == a.card["loss_curve"]
    assert b.card["final_loss"] == a.card["final_loss"]


def test_the_non_finite_loss_advice_is_what_resume_accepts(tmp_path, monkeypatch):
    """The advice names only changes ``--resume`` takes: a lower lr needs a new run."""
    import re

    import deconflow.priors.train as train_module

    train_prior(_tiny_config(tmp_path, steps=2), progress=False)  # a checkpoint at step 2
    real = train_module.cfm_loss
    monkeypatch.setattr(train_module, "cfm_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(DeconflowError, match="not finite at step 3") as info:
        train_prior(_tiny_config(tmp_path, steps=4, resume=True), progress=False)
    advice = str(info.value)
    resume_advice = re.search(r"resume from the last checkpoint with ([^,;]*)", advice)
    assert resume_advice is not None and "lr" not in resume_advice[1], advice
    assert "float32" in resume_advice[1]
    monkeypatch.setattr(train_module, "cfm_loss", real)
    # following it works: the precision may change on resume
    path = train_prior(
        _tiny_config(tmp_path, steps=4, precision="float32", resume=True), progress=False
    )
    assert load_prior(path).card["steps"] == 4


def test_resuming_into_float16_loss_scaling_from_a_run_without_it(tmp_path, monkeypatch):
    """A run without loss scaling (CPU, or bfloat16) resumed where float16 needs it (a CUDA
    GPU without bfloat16): the precision may change, so the empty scaler state is skipped."""
    import deconflow.priors.train as train_module

    train_prior(_tiny_config(tmp_path, steps=2), progress=False)
    monkeypatch.setattr(train_module, "_autocast_dtype", lambda precision, device: torch.float16)
    path = train_prior(_tiny_config(tmp_path, steps=3, resume=True), progress=False)
    assert load_prior(path).card["steps"] == 3


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"checkpoint_every": 0}, "checkpoint-every"),
        ({"threads": 0}, "threads"),
        ({"max_minutes": 0.0}, "max-minutes"),
        ({"max_minutes": -1.0}, "max-minutes"),
        ({"lr": -1e-3}, "lr"),
    ],
)
def test_impossible_run_settings_are_refused_before_training(tmp_path, settings, match):
    # they were a ZeroDivisionError or RuntimeError after the first step, or (a negative
    # time budget) silently ignored
    with pytest.raises(DeconflowError, match=match):
        _tiny_config(tmp_path, **settings)
    assert not (tmp_path / "w.ckpt.pt").exists()


@pytest.mark.parametrize("voxel_size", [(0.0, 0.1, 0.1), (-0.3, 0.1, 0.1), (0.3, 0.1, np.nan)])
def test_folder_source_refuses_a_voxel_size_that_gives_no_aspect(tmp_path, voxel_size):
    # a zero or negative z step made every loss NaN, reported as a learning-rate problem
    write_tiff(tmp_path / "a.tif", np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    with pytest.raises(DeconflowError, match=r"voxel_size_um.*positive"):
        FolderSource(tmp_path, patch=(4, 16, 16), voxel_size_um=voxel_size)


@pytest.mark.parametrize("damage", ["truncated", "weights"])
def test_a_damaged_checkpoint_is_named_on_resume(tmp_path, damage):
    # a cut copy, or a weights file under the checkpoint's name, gave a torch
    # RuntimeError or KeyError 'net' with a traceback
    weights = train_prior(_tiny_config(tmp_path, steps=2), progress=False)
    ckpt = tmp_path / "w.ckpt.pt"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else weights.read_bytes())
    with pytest.raises(DeconflowError, match=r"Cannot resume from .*w\.ckpt\.pt.*without --resume"):
        train_prior(_tiny_config(tmp_path, steps=3, resume=True), progress=False)


def test_training_leaves_torch_global_random_stream_alone(tmp_path):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    first = train_prior(_tiny_config(tmp_path / "a", steps=1), progress=False)
    # was re-seeded with the run's seed: the caller's own random numbers changed
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    # the seed still decides the new network's initial weights
    again = train_prior(_tiny_config(tmp_path / "b", steps=1), progress=False)
    a, b = load_prior(first).network.state_dict(), load_prior(again).network.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
