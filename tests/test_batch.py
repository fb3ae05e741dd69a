"""``deconflow batch`` run as a subprocess on small real and simulated stacks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import deconflow
from deconflow.batch.settings import build_settings
from deconflow.cli import main
from deconflow.config import DeconvolutionSettings
from deconflow.io import read_ome_description, read_tiff

from .conftest import SAMPLE_DATA

VOXEL = (0.3, 0.1, 0.1)
PSF_VOXEL = (0.3, 0.1, 0.1)


def gaussian_psf(sigma: float, shape: tuple[int, int, int] = (7, 9, 9)) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(n) - n // 2 for n in shape), indexing="ij")
    g = np.exp(-0.5 * sum((x / s) ** 2 for x, s in zip(grids, (sigma, sigma, sigma))))
    return (1000 * g / g.max() + 5).astype(np.uint16)


def stack(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Poisson counts of a few bright blobs on a background: something to deconvolve."""
    rng = np.random.default_rng(seed)
    truth = np.full(shape, 3.0)
    for _ in range(4):
        index = tuple(rng.integers(0, n) for n in shape)
        truth[index] += 400.0
    return rng.poisson(truth).astype(np.uint16)


def write_imagej(path: Path, data: np.ndarray, axes: str, voxel=VOXEL) -> Path:
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / voxel[-1], 1 / voxel[-2]),
        metadata={"axes": axes, "spacing": voxel[0], "unit": "um"},
    )
    return path


def write_ome(path: Path, data: np.ndarray, axes: str, voxel=VOXEL) -> Path:
    # z in nanometres: the reader must convert units, not just copy numbers
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": axes,
            "PhysicalSizeZ": voxel[0] * 1000,
            "PhysicalSizeZUnit": "nm",
            "PhysicalSizeY": voxel[1],
            "PhysicalSizeX": voxel[2],
        },
    )
    return path


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``deconflow batch ARGS --device cpu`` in a fresh process.

    On the CPU: these tests compare outputs with CPU runs, and a GPU would finish the
    "slow" file of the resume test before the kill lands.
    """
    return subprocess.run(
        [sys.executable, "-m", "deconflow.cli", "batch", *map(str, args), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def psf_file(tmp_path: Path) -> Path:
    return write_imagej(tmp_path / "bead.tif", gaussian_psf(1.2), "ZYX", PSF_VOXEL)


def test_metadata_round_trip_for_every_layout(tmp_path, psf_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    inputs = {
        "zyx.tif": write_imagej(data_dir / "zyx.tif", stack((8, 32, 32), 0), "ZYX"),
        # ImageJ stores hyperstacks in TZCYX order
        "czyx.tif": write_imagej(data_dir / "czyx.tif", stack((8, 2, 24, 24), 1), "ZCYX"),
        "tzyx.tif": write_imagej(data_dir / "tzyx.tif", stack((2, 8, 24, 24), 2), "TZYX"),
        "tczyx.tif": write_imagej(data_dir / "tczyx.tif", stack((2, 6, 2, 24, 24), 3), "TZCYX"),
        "ome_tczyx.ome.tif": write_ome(
            data_dir / "ome_tczyx.ome.tif", stack((2, 2, 6, 24, 24), 4), "TCZYX"
        ),
        "grid.tif": SAMPLE_DATA / "confocal_grid.tif",  # real confocal data, read in place
    }
    before = {name: sha256(path) for name, path in inputs.items()}
    out = tmp_path / "out"
    done = run_cli(
        data_dir, inputs["grid.tif"], "--psf", psf_file, "--out", out, "--iterations", "2", "-q"
    )
    assert done.returncode == 0, done.stderr
    assert {name: sha256(path) for name, path in inputs.items()} == before
    psf_hash = sha256(psf_file)
    for name, source in inputs.items():
        stem = source.name.removesuffix(".tif").removesuffix(".ome")
        output = out / f"{stem}_deconvolved.ome.tif"
        raw, result = read_tiff(source), read_tiff(output)
        assert result.axes == raw.axes, name
        assert result.data.shape == raw.data.shape and result.data.dtype == np.float32
        np.testing.assert_allclose(result.voxel_size_um, raw.voxel_size_um, rtol=1e-6)
        assert np.isfinite(result.data).all() and result.data.max() > 0
        record = json.loads((out / f"{stem}_deconvolved.json").read_text())
        assert read_ome_description(output) == record
        assert record["deconflow_version"] == deconflow.__version__
        assert record["method"] == "rl" and record["settings"]["rl"]["iterations"] == 2
        assert record["psf_files"] == [{"path": str(psf_file), "sha256": psf_hash}]
        assert "weights_sha256" in record and record["weights_sha256"] is None
        assert record["input"] == {
            "path": str(source.resolve()),
            "sha256": before[name],
            "axes": raw.axes,
            "shape": list(raw.data.shape),
            "dtype": "uint16" if name != "grid.tif" else "uint8",
            "voxel_size_um": list(raw.voxel_size_um),
        }
        assert record["device"] == "cpu" and record["finished_utc"] >= record["started_utc"]
    # the PSF in the input folder would have been picked up had it not been excluded
    assert "bead_deconvolved.ome.tif" not in files_in(out)
    assert (out / "deconflow-batch.log").read_text().count(" done ") == len(inputs)


def test_one_psf_per_channel(tmp_path):
    psfs = [
        write_imagej(tmp_path / "psf_c0.tif", gaussian_psf(1.0), "ZYX"),
        write_imagej(tmp_path / "psf_c1.tif", gaussian_psf(2.0), "ZYX"),
    ]
    data = stack((2, 8, 24, 24), 5)
    source = write_ome(tmp_path / "cells.ome.tif", data, "CZYX")
    out = tmp_path / "out"
    done = run_cli(source, "--psf", psfs[0], "--psf", psfs[1], "-o", out, "--iterations", "2")
    assert done.returncode == 0, done.stderr
    result = read_tiff(out / "cells_deconvolved.ome.tif").data
    record = json.loads((out / "cells_deconvolved.json").read_text())
    assert [p["path"] for p in record["psf_files"]] == [str(p) for p in psfs]
    for channel in range(2):
        own, other = (tifffile.imread(psfs[c]) for c in (channel, 1 - channel))
        kwargs = {"iterations": 2, "voxel_size": VOXEL, "device": "cpu"}
        expected = deconflow.deconvolve(data[channel], own, **kwargs)
        np.testing.assert_allclose(result[channel], expected, rtol=1e-4, atol=1e-4)
        assert not np.allclose(
            result[channel], deconflow.deconvolve(data[channel], other, **kwargs)
        )


def _start_and_stop(args: list[str], first_output: Path, how: signal.Signals) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "deconflow.cli", "batch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell runs background jobs with SIGINT ignored, and Python keeps an ignored
        # SIGINT ignored: give the child the default so Ctrl-C reaches it as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 90
        while not first_output.exists():
            assert process.poll() is None, f"batch ended early: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no output appeared within 90 s"
            time.sleep(0.02)
        os.kill(process.pid, how)
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_with_exactly_the_missing_outputs(tmp_path, psf_file, how):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # a is quick and b takes seconds (even on an idle machine: a loaded one may poll late),
    # so the kill lands inside b; c is never started
    write_imagej(data_dir / "a.tif", stack((8, 32, 32), 0), "ZYX")
    write_imagej(data_dir / "b.tif", stack((32, 256, 256), 1), "ZYX")
    write_imagej(data_dir / "c.tif", stack((8, 32, 32), 2), "ZYX")
    before = {p.name: sha256(p) for p in data_dir.iterdir()}
    out = tmp_path / "out"
    args = [str(data_dir), "--psf", str(psf_file), "-o", str(out), "--iterations", "10"]
    args += ["--device", "cpu", "-q"]  # on a GPU, b would be done before the kill lands
    # a file is finished when its record, written after the TIFF, is in place
    code = _start_and_stop(args, out / "a_deconvolved.json", how)
    assert code == (-signal.SIGKILL if how == signal.SIGKILL else 130)
    # nothing half-written under a final name: only a's output and record exist
    finished = {"a_deconvolved.ome.tif", "a_deconvolved.json"}
    assert {n for n in files_in(out) if not n.startswith(".")} == finished | {"deconflow-batch.log"}
    stamps = {name: (out / name).stat().st_mtime_ns for name in finished}

    done = run_cli(*args[:-1])
    assert done.returncode == 0, done.stderr
    assert {(out / name).stat().st_mtime_ns for name in finished} == set(stamps.values())
    lines = {line.split()[-1]: line.split()[0] for line in done.stdout.splitlines()[2:5]}
    assert lines == {
        "a_deconvolved.ome.tif": "skipped",
        "b_deconvolved.ome.tif": "done",
        "c_deconvolved.ome.tif": "done",
    }
    expected = finished | {f"{s}_deconvolved{e}" for s in "bc" for e in (".ome.tif", ".json")}
    assert files_in(out) == expected | {"deconflow-batch.log"}
    assert {p.name: sha256(p) for p in data_dir.iterdir()} == before


def test_rerun_restores_a_lost_record_and_removes_leftovers(tmp_path, psf_file):
    source = write_imagej(tmp_path / "a.tif", stack((8, 32, 32), 0), "ZYX")
    out = tmp_path / "out"
    args = [source, "--psf", psf_file, "-o", out, "--iterations", "2", "-q"]
    assert run_cli(*args).returncode == 0
    output, record = out / "a_deconvolved.ome.tif", out / "a_deconvolved.json"
    stamp, text = output.stat().st_mtime_ns, record.read_text()
    # what kill -9 between the TIFF's and the record's rename, or inside a write, leaves
    record.unlink()
    (out / ".a_deconvolved.ome.x1y2.partial.tif").write_bytes(b"half")
    assert run_cli(*args).returncode == 0
    assert output.stat().st_mtime_ns == stamp
    assert json.loads(record.read_text()) == json.loads(text)
    assert files_in(out) == {output.name, record.name, "deconflow-batch.log"}
    # other settings: the finished output is not silently replaced
    changed = run_cli(*args, "--method", "wiener")
    assert changed.returncode == 3 and "--overwrite" in changed.stderr
    assert run_cli(*args, "--method", "wiener", "--overwrite").returncode == 0
    assert json.loads(record.read_text())["method"] == "wiener"


def test_outputs_named_near_the_length_limit_are_written_and_their_leftovers_found(tmp_path):
    from deconflow.batch.files import remove_partials
    from deconflow.io._atomic import atomic_destination

    # 240 bytes: the old temporary name (".<stem>.XXXXXXXX.partial.tif") was 258
    output = tmp_path / ("é" * 110 + "_deconvolved.ome.tif")
    with atomic_destination(output) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_bytes(b"done")
        os.link(tmp, tmp_path / "stash")
    assert output.read_bytes() == b"done"
    # what kill -9 inside the write leaves: the next run must find and remove it
    (tmp_path / "stash").rename(tmp)
    assert remove_partials([output]) == [tmp] and not tmp.exists() and output.is_file()


def test_bad_files_are_reported_and_the_others_still_run(tmp_path, psf_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = write_imagej(data_dir / "b_good.tif", stack((8, 32, 32), 0), "ZYX")
    truncated = data_dir / "a_truncated.tif"
    truncated.write_bytes(good.read_bytes()[:3000])
    (data_dir / "c_garbage.tif").write_bytes(b"II*\x00garbage")
    # a 4D array without axis metadata: deconflow cannot know which axis is which
    tifffile.imwrite(data_dir / "d_4d.tif", stack((2, 3, 16, 16), 1), photometric="minisblack")
    write_imagej(data_dir / "e_2d.tif", stack((32, 32), 2), "YX")  # 2D against a 3D PSF
    before = {p.name: sha256(p) for p in data_dir.iterdir()}
    out = tmp_path / "out"
    done = run_cli(data_dir, "--psf", psf_file, "-o", out, "--iterations", "2")
    assert done.returncode == 3, done.stderr
    status = {line.split()[3]: line.split()[0] for line in done.stdout.splitlines()[2:7]}
    assert status == {
        "a_truncated.tif": "failed",
        "b_good.tif": "done",
        "c_garbage.tif": "failed",
        "d_4d.tif": "failed",
        "e_2d.tif": "failed",
    }
    assert "5 files: 1 done, 0 skipped, 4 failed" in done.stdout
    assert "Unsupported axes" in done.stdout or "axes 'ZQYX'" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert files_in(out) == {
        "b_good_deconvolved.ome.tif",
        "b_good_deconvolved.json",
        "deconflow-batch.log",
    }
    assert {p.name: sha256(p) for p in data_dir.iterdir()} == before
    log = (out / "deconflow-batch.log").read_text()
    assert log.count("ERROR failed") == 4


def test_write_config_prints_commented_defaults_that_parse_back(capsys):
    assert main(["batch", "--write-config"]) == 0
    text = capsys.readouterr().out
    assert DeconvolutionSettings.from_yaml(text) == DeconvolutionSettings()
    assert "# Biggs" in text and "iterations: 20" in text
    assert main(["batch", "--write-config", "--method", "wiener", "--iterations", "4"]) == 0
    settings = DeconvolutionSettings.from_yaml(capsys.readouterr().out)
    assert settings.method == "wiener" and settings.wiener.iterations == 4


def test_commented_config_keeps_exponent_like_text_as_text():
    from deconflow.batch.settings import commented_yaml
    from deconflow.solvers.flow import FlowDeconvolution

    settings = DeconvolutionSettings(method="flow", flow=FlowDeconvolution(weights="1e5"))
    assert DeconvolutionSettings.from_yaml(commented_yaml(settings)) == settings


def test_commented_config_names_classes_without_their_docstring_markup():
    # the comments showed "(:class:`~deconflow.solvers.stopping.CrossValidatedStop`)"
    from deconflow.batch.settings import commented_yaml

    text = commented_yaml()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "`" not in comments and ":class:" not in comments and ":func:" not in comments
    assert "CrossValidatedStop" in comments and "noise_to_signal_regularization" in comments
    assert DeconvolutionSettings.from_yaml(text) == DeconvolutionSettings()


def test_config_file_and_argument_errors(tmp_path, psf_file, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("method: rl-tv\nrl_tv:\n  iterations: 2\n")
    source = write_imagej(tmp_path / "a.tif", stack((8, 32, 32), 0), "ZYX")
    out = tmp_path / "out"
    base = ["batch", str(source), "--psf", str(psf_file), "-o", str(out)]
    assert main([*base, "--config", str(config), "-q"]) == 0
    record = json.loads((out / "a_deconvolved.json").read_text())
    assert record["method"] == "rl-tv" and record["settings"]["rl_tv"]["iterations"] == 2
    capsys.readouterr()
    for args, fragment in [
        (["batch", str(source)], "needs --psf, --out"),
        (["batch", str(tmp_path / "nope*.tif"), *base[2:]], "matches no files"),
        ([*base, "--workers", "2", "--scheduler", "tcp://x:1"], "not both"),
        ([*base, "--voxel-size", "1", "2", "3", "4"], "--voxel-size takes"),
        ([*base, "--config", str(tmp_path / "none.yaml")], "--write-config"),
        ([*base, "--device", "gpu"], "Unknown device 'gpu'"),
        (["batch", str(source), "--psf", str(tmp_path), "-o", str(out)], "is a folder"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err


def test_quiet_prints_one_line_per_failed_file(tmp_path, psf_file, capsys):
    # docs/batch.md: "-q/--quiet: no bars and no table, only one line per failed file"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "c_garbage.tif").write_bytes(b"II*\x00garbage")
    out = tmp_path / "out"
    assert main(["batch", str(data_dir), "--psf", str(psf_file), "-o", str(out), "-q"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "c_garbage.tif" in lines[0] and "Could not read" in lines[0], lines
    assert (out / "deconflow-batch.log").read_text().count("ERROR failed") == 1


def test_glob_keeps_sub_folders_so_same_names_do_not_collide(tmp_path, psf_file, monkeypatch):
    # acquisition software names every position or day's stack alike: day1/cell.tif,
    # day2/cell.tif; docs/batch.md: "'**' recurses" and sub-folders are kept under --out
    for day, seed in (("day1", 0), ("day2", 1)):
        (tmp_path / "data" / day).mkdir(parents=True)
        write_imagej(tmp_path / "data" / day / "cell.tif", stack((8, 32, 32), seed), "ZYX")
    write_imagej(tmp_path / "data" / "top.tif", stack((8, 32, 32), 2), "ZYX")
    monkeypatch.chdir(tmp_path)  # a relative glob, as typed in a shell
    args = ["batch", "data/**/*.tif", "--psf", str(psf_file), "-o", "out", "--iterations", "1"]
    assert main([*args, "-q"]) == 0
    out = tmp_path / "out"
    for day in ("day1", "day2"):
        record = json.loads((out / day / "cell_deconvolved.json").read_text())
        assert record["input"]["path"] == str(tmp_path / "data" / day / "cell.tif")
        assert read_ome_description(out / day / "cell_deconvolved.ome.tif") == record
    assert (out / "top_deconvolved.ome.tif").is_file()  # the glob's own folder: no sub-folder
    # a re-run finds every output where it wrote it
    assert main([*args, "-q"]) == 0
    log = (out / "deconflow-batch.log").read_text()
    assert log.count("INFO skipped") == 3 and log.count("INFO done") == 3


def test_rerun_replaces_a_stale_record_left_by_an_interrupted_overwrite(tmp_path, psf_file):
    source = write_imagej(tmp_path / "a.tif", stack((8, 32, 32), 0), "ZYX")
    out = tmp_path / "out"
    args = ["batch", str(source), "--psf", str(psf_file), "-o", str(out), "--iterations", "1"]
    assert main([*args, "-q"]) == 0
    output, record = out / "a_deconvolved.ome.tif", out / "a_deconvolved.json"
    old_record = record.read_text()
    assert main([*args, "--method", "wiener", "--overwrite", "-q"]) == 0
    # kill -9 between the TIFF's rename and the record's: the new TIFF beside the old record
    record.write_text(old_record)
    stamp = output.stat().st_mtime_ns
    assert main([*args, "--method", "wiener", "-q"]) == 0
    assert output.stat().st_mtime_ns == stamp  # skipped, not redone
    # the record describes the TIFF beside it, not the rl run it replaced
    assert json.loads(record.read_text()) == read_ome_description(output)
    assert json.loads(record.read_text())["method"] == "wiener"


def test_a_given_psf_voxel_size_without_the_images_is_refused_not_dropped():
    from deconflow import DeconflowError
    from deconflow.batch.settings import resolve_voxel_sizes

    base = DeconvolutionSettings()
    # the PSF file's own metadata: the PSF is taken at the image's (unknown) grid
    quiet = resolve_voxel_sizes(base, flag=None, psf_flag=None, from_image=None, from_psf=PSF_VOXEL)
    assert quiet.voxel_size_um is None and quiet.psf_voxel_size_um is None
    # a size the user typed must not vanish silently
    with pytest.raises(DeconflowError, match="--voxel-size too"):
        resolve_voxel_sizes(base, flag=None, psf_flag=PSF_VOXEL, from_image=None, from_psf=None)
    with_config = DeconvolutionSettings(psf_voxel_size_um=PSF_VOXEL)
    with pytest.raises(DeconflowError, match="image's voxel size is unknown"):
        resolve_voxel_sizes(with_config, flag=None, psf_flag=None, from_image=None, from_psf=None)
    both = resolve_voxel_sizes(
        base, flag=VOXEL, psf_flag=(0.2, 0.05, 0.05), from_image=None, from_psf=PSF_VOXEL
    )
    assert both.voxel_size_um == VOXEL and both.psf_voxel_size_um == (0.2, 0.05, 0.05)


def test_a_second_batch_into_the_same_folder_is_refused_while_the_first_runs(
    tmp_path, psf_file, capsys
):
    # each run removes the partial files it finds: two at once would delete each other's
    import fcntl

    source = write_imagej(tmp_path / "a.tif", stack((8, 32, 32), 0), "ZYX")
    out = tmp_path / "out"
    args = ["batch", str(source), "--psf", str(psf_file), "-o", str(out), "--iterations", "1"]
    out.mkdir()
    with open(out / "deconflow-batch.log", "a") as running:  # what the first batch holds
        fcntl.flock(running.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*args, "-q"]) == 2
        err = capsys.readouterr().err
        assert "Another deconflow batch is writing to" in err and "--out" in err
        assert not (out / "a_deconvolved.ome.tif").exists()
    # the lock goes with its holder (a killed run included): the folder is free again
    assert main([*args, "-q"]) == 0
    assert (out / "a_deconvolved.ome.tif").is_file()


def test_write_config_keeps_the_voxel_size_flags(capsys):
    # docs/batch.md: the voxel-size flags override --config like the others; a file written
    # with them must not silently fall back to each file's metadata
    flags = ["--voxel-size", "0.5", "0.1", "0.1", "--psf-voxel-size", "0.2", "0.05", "0.05"]
    assert main(["batch", "--write-config", "--method", "rl", *flags]) == 0
    settings = DeconvolutionSettings.from_yaml(capsys.readouterr().out)
    assert settings.voxel_size_um == (0.5, 0.1, 0.1)
    assert settings.psf_voxel_size_um == (0.2, 0.05, 0.05)
    assert main(["batch", "--write-config", "--voxel-size", "1", "2", "3", "4"]) == 2
    assert "--voxel-size takes" in capsys.readouterr().err


@pytest.mark.parametrize("psf_as", ["target", "link"])
def test_a_psf_linked_into_the_data_folder_is_not_an_input(tmp_path, psf_file, psf_as):
    # beads kept once and linked into each day's folder: "the PSF files ... are never
    # taken as inputs" whichever of the two paths --psf names
    from deconflow.batch.files import expand_inputs

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_imagej(data_dir / "a.tif", stack((8, 32, 32), 0), "ZYX")
    (data_dir / "bead.tif").symlink_to(psf_file)
    psf = psf_file if psf_as == "target" else data_dir / "bead.tif"
    exclude = [psf.resolve()]  # as the command passes them
    for entry in (data_dir, data_dir / "*.tif"):
        pairs = expand_inputs([str(entry)], tmp_path / "out", exclude=exclude)
        assert [source.name for source, _ in pairs] == ["a.tif"], entry


def test_same_named_inputs_in_one_folder_are_refused_with_a_fix_that_applies(tmp_path):
    from deconflow import DeconflowError
    from deconflow.batch.files import expand_inputs

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("cell.tif", "cell.ome.tif"):  # raw stack and its OME export
        write_imagej(data_dir / name, stack((8, 16, 16), 0), "ZYX")
    with pytest.raises(DeconflowError) as error:
        expand_inputs([str(data_dir)], tmp_path / "out")
    message = str(error.value)
    assert "cell.ome.tif" in message and "cell_deconvolved.ome.tif" in message
    # a glob of their common folder, the hint for day1/cell.tif and day2/cell.tif, keeps
    # the same clash: the hint must be one that resolves it
    assert "glob" not in message and "rename" in message.lower()


def test_an_output_folder_holding_the_inputs_is_named_as_the_problem(tmp_path):
    from deconflow import DeconflowError
    from deconflow.batch.files import expand_inputs

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_imagej(data_dir / "a.tif", stack((8, 16, 16), 0), "ZYX")
    for out in (data_dir, tmp_path):  # --out the data folder itself, or a folder above it
        with pytest.raises(DeconflowError, match="inside the output folder") as error:
            expand_inputs([str(data_dir)], out)
        assert "--out" in str(error.value)


def test_a_provenance_record_given_as_config_is_named_as_such(tmp_path, psf_file, capsys):
    # "reprocess with the settings of this result": the record holds them under "settings"
    source = write_imagej(tmp_path / "a.tif", stack((8, 32, 32), 0), "ZYX")
    base = ["batch", str(source), "--psf", str(psf_file), "--iterations", "1", "-q"]
    assert main([*base, "-o", str(tmp_path / "out")]) == 0
    record = tmp_path / "out" / "a_deconvolved.json"
    assert main([*base, "-o", str(tmp_path / "again"), "--config", str(record)]) == 2
    err = capsys.readouterr().err
    assert "provenance record" in err and "'settings'" in err and "--write-config" in err, err
    assert "schema_version" not in err  # the old "Did you mean 'schema_version'?"


def test_a_relative_weights_path_is_made_absolute_for_the_workers(tmp_path, monkeypatch):
    # Dask workers run in their own folders: "prior.pt" must name the client's file
    config = tmp_path / "s.yaml"
    config.write_text("method: flow\nflow:\n  weights: models/prior.pt\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = build_settings(config)
    assert settings.flow.weights == str(tmp_path / "models" / "prior.pt")
    config.write_text("method: flow\nflow:\n  weights: ~/prior.pt\n")
    assert build_settings(config).flow.weights == str(tmp_path / "home" / "prior.pt")
    config.write_text(f"method: flow\nflow:\n  weights: {tmp_path / 'prior.pt'}\n")
    assert build_settings(config).flow.weights == str(tmp_path / "prior.pt")
    assert build_settings(None).flow.weights is None


def write_ome_in_plane(path: Path, data: np.ndarray, pixel: tuple[float, float]) -> Path:
    """An OME-TIFF with PhysicalSizeY/X but no PhysicalSizeZ."""
    meta = {"axes": "ZYX", "PhysicalSizeY": pixel[0], "PhysicalSizeX": pixel[1]}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    return path


def test_a_z_step_alone_takes_each_files_own_pixel_size(tmp_path, psf_file, capsys):
    # one z step for a batch whose files differ in pixel size: each output gets its own
    # file's y and x, not the first file's (the z step is completed where a file is read)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pixels = {"fine": (0.1, 0.1), "coarse": (0.2, 0.25)}
    for seed, (name, pixel) in enumerate(pixels.items()):
        write_ome_in_plane(data_dir / f"{name}.ome.tif", stack((8, 24, 24), seed), pixel)
    common = ["--psf", str(psf_file), "--iterations", "1", "-q"]
    out = tmp_path / "out"
    assert main(["batch", str(data_dir), "-o", str(out), "--voxel-size", "0.4", *common]) == 0
    for name, pixel in pixels.items():
        result = read_tiff(out / f"{name}_deconvolved.ome.tif")
        np.testing.assert_allclose(result.voxel_size_um, (0.4, *pixel), rtol=1e-6)
    # the same from a settings file: --write-config keeps the z step alone, not a pixel size
    assert main(["batch", "--write-config", "--voxel-size", "0.4"]) == 0
    config = tmp_path / "settings.yaml"
    config.write_text(capsys.readouterr().out)
    assert DeconvolutionSettings.from_yaml(config.read_text()).voxel_size_um == (0.4,)
    from_config = tmp_path / "from_config"
    args = ["batch", str(data_dir), "-o", str(from_config), "--config", str(config), *common]
    assert main(args) == 0
    for name, pixel in pixels.items():
        result = read_tiff(from_config / f"{name}_deconvolved.ome.tif")
        np.testing.assert_allclose(result.voxel_size_um, (0.4, *pixel), rtol=1e-6)


def _psfs_and_cells(tmp_path: Path, *psf_voxels: tuple[float, ...]) -> tuple[Path, list[Path]]:
    """A two-channel OME-TIFF and one PSF per channel, each ImageJ file at its own voxel size."""
    psfs = [
        write_imagej(tmp_path / f"psf_c{c}.tif", gaussian_psf(1.0 + c), "ZYX", voxel)
        for c, voxel in enumerate(psf_voxels)
    ]
    return write_ome(tmp_path / "cells.ome.tif", stack((2, 8, 24, 24), 5), "CZYX"), psfs


def _batch_with(source: Path, psfs: list[Path], out: Path, *extra: str) -> int:
    args = ["batch", str(source), "-o", str(out), "--iterations", "1", "-q", "--device", "cpu"]
    return main([*args, *(a for p in psfs for a in ("--psf", str(p))), *extra])


def _settings_file(tmp_path: Path, psf_voxel: tuple[float, ...]) -> str:
    config = tmp_path / "settings.yaml"
    config.write_text(f"psf_voxel_size_um: {list(psf_voxel)}\n")
    return str(config)


@pytest.mark.parametrize("given", ["flag", "settings"])
@pytest.mark.parametrize(
    ("psf_voxel", "expected"),
    [
        ((0.25, 0.1, 0.1), (0.25, 0.1, 0.1)),  # all three: the files' sizes are overridden
        ((0.25,), (0.25, 0.1, 0.1)),  # the z step alone: the files differ in z only
    ],
)
def test_psf_files_of_different_voxel_sizes_take_the_psf_voxel_size_given(
    tmp_path, capsys, given, psf_voxel, expected
):
    # a settings file's psf_voxel_size_um was ignored by the check: refused with "give
    # --psf-voxel-size", which it had been given in the settings file
    source, psfs = _psfs_and_cells(tmp_path, (0.3, 0.1, 0.1), (0.2, 0.1, 0.1))
    out = tmp_path / "out"
    extra = (
        ["--psf-voxel-size", *map(str, psf_voxel)]
        if given == "flag"
        else ["--config", _settings_file(tmp_path, psf_voxel)]
    )
    assert _batch_with(source, psfs, out, *extra) == 0, capsys.readouterr().err
    record = json.loads((out / "cells_deconvolved.json").read_text())
    np.testing.assert_allclose(record["settings"]["psf_voxel_size_um"], expected)


@pytest.mark.parametrize("given", ["flag", "settings"])
def test_a_z_step_alone_refuses_psf_files_of_different_pixel_sizes(tmp_path, capsys, given):
    source, psfs = _psfs_and_cells(tmp_path, (0.3, 0.1, 0.1), (0.3, 0.05, 0.05))
    extra = (
        ["--psf-voxel-size", "0.25"]
        if given == "flag"
        else ["--config", _settings_file(tmp_path, (0.25,))]
    )
    assert _batch_with(source, psfs, tmp_path / "out", *extra) == 3
    err = capsys.readouterr().err
    assert "different pixel sizes" in err, err
    # both places a PSF voxel size can be given, whichever this run used
    assert "--psf-voxel-size Z Y X" in err and "psf_voxel_size_um: [Z, Y, X]" in err, err


def test_psf_files_of_different_voxel_sizes_name_both_places_to_give_one(tmp_path, capsys):
    source, psfs = _psfs_and_cells(tmp_path, (0.3, 0.1, 0.1), (0.2, 0.1, 0.1))
    assert _batch_with(source, psfs, tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert "different voxel sizes" in err, err
    assert "--psf-voxel-size" in err and "psf_voxel_size_um" in err, err
