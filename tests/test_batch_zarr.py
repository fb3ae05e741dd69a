"""OME-Zarr in batches: store discovery, hashing, leftovers, zarr outputs and their resume."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import deconflow
from deconflow.batch.files import expand_inputs, remove_partials, sha256_input
from deconflow.io import (
    _atomic,
    read_description,
    write_ome_zarr,
)

from .test_batch import VOXEL, files_in, gaussian_psf, run_cli, stack, write_imagej


class _Stop(Exception):
    pass


def zarr_input(path: Path, data: np.ndarray, axes: str = "ZYX", voxel=VOXEL) -> Path:
    return write_ome_zarr(path, data, axes=axes, voxel_size_um=voxel)


def test_leftovers_of_a_killed_write_are_found_by_remove_partials(tmp_path, monkeypatch):
    dest = tmp_path / "a_deconvolved.ome.zarr"

    def killed(root):
        raise _Stop

    # kill -9: no exception handler runs, so nothing is cleaned up
    monkeypatch.setattr(_atomic, "_fsync_tree", killed)
    monkeypatch.setattr(_atomic, "_remove", lambda path: None)
    with pytest.raises(_Stop):
        write_ome_zarr(dest, np.ones((2, 3, 4), np.float32), axes="ZYX")
    (leftover,) = tmp_path.iterdir()
    assert leftover.is_dir() and leftover.name.startswith(".a_deconvolved.ome.")
    assert (leftover / ".zgroup").is_file()
    # a store set aside by a kill between the two renames of an overwrite
    aside = tmp_path / ".a_deconvolved.ome.x1y2.partial-old.zarr"
    shutil.copytree(leftover, aside)
    other = tmp_path / ".b_deconvolved.ome.x1y2.partial.zarr"
    other.mkdir()
    removed = remove_partials([dest])
    assert sorted(removed) == sorted([leftover, aside])
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


def test_store_hash_covers_names_and_bytes(tmp_path):
    store = write_ome_zarr(tmp_path / "a.zarr", np.arange(24.0).reshape(2, 3, 4), axes="ZYX")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    digest = sha256_input(store)
    assert sha256_input(copy) == digest and len(digest) == 64
    chunk = next(p for p in (copy / "0").rglob("*") if p.is_file() and p.name[0] != ".")
    content = bytearray(chunk.read_bytes())
    content[-1] ^= 1
    chunk.write_bytes(bytes(content))
    assert sha256_input(copy) != digest
    shutil.rmtree(copy)
    shutil.copytree(store, copy)
    (copy / "0" / "0").rename(copy / "0" / "1")  # same bytes, another chunk index
    assert sha256_input(copy) != digest


def test_folders_and_globs_take_each_store_as_one_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_imagej(data / "a.tif", np.zeros((2, 4, 4), np.uint16), "ZYX")
    zarr_input(data / "b.ome.zarr", np.zeros((2, 4, 4), np.uint16))
    zarr_input(data / "c.zarr", np.zeros((2, 4, 4), np.uint16))
    (data / "empty.zarr").mkdir()  # no zarr metadata: not a store
    out = data / "out"
    # an earlier zarr output inside the data folder, and its leftover temporary store
    zarr_input(out / "b_deconvolved.ome.zarr", np.zeros((2, 4, 4), np.float32))
    zarr_input(data / ".b_deconvolved.ome.x1y2.partial.zarr", np.zeros((2, 4, 4), np.float32))
    pairs = expand_inputs([str(data)], out, output_suffix="_deconvolved.ome.zarr")
    assert [(s.name, o.relative_to(out).as_posix()) for s, o in pairs] == [
        ("a.tif", "a_deconvolved.ome.zarr"),
        ("b.ome.zarr", "b_deconvolved.ome.zarr"),
        ("c.zarr", "c_deconvolved.ome.zarr"),
    ]
    # '**' matches folders inside the stores too ("0", its chunk folders, a store kept
    # inside another): never inputs
    zarr_input(data / "c.zarr" / "nested.zarr", np.zeros((2, 4, 4), np.uint16))
    globbed = expand_inputs([f"{tmp_path}/**"], out)
    assert [(s.name, o.name) for s, o in globbed] == [
        ("a.tif", "a_deconvolved.ome.tif"),
        ("b.ome.zarr", "b_deconvolved.ome.tif"),
        ("c.zarr", "c_deconvolved.ome.tif"),
    ]
    # a store given by name counts whatever its name
    plain = zarr_input(tmp_path / "field0", np.zeros((2, 4, 4), np.uint16))
    assert [o.name for _, o in expand_inputs([str(plain)], out)] == ["field0_deconvolved.ome.tif"]


@pytest.mark.parametrize("output_format", ["ome-zarr", "ome-tiff"])
def test_batch_of_zarr_stores_resumes_with_exactly_the_missing_output(tmp_path, output_format):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    psf_file = write_imagej(tmp_path / "bead.tif", gaussian_psf(1.2), "ZYX", VOXEL)
    raw = {"a": stack((8, 32, 32), 0), "b": stack((2, 6, 24, 24), 1)}
    zarr_input(data_dir / "a.ome.zarr", raw["a"])
    zarr_input(data_dir / "b.zarr", raw["b"], axes="CZYX")
    before = {p.name: sha256_input(p) for p in data_dir.iterdir()}
    out = data_dir / "out"  # inside the data folder: outputs must not become inputs
    ext = ".ome.zarr" if output_format == "ome-zarr" else ".ome.tif"
    args = [data_dir, "--psf", psf_file, "-o", out, "--iterations", "2"]
    args += ["--output-format", output_format]
    done = run_cli(*args, "-q")
    assert done.returncode == 0, done.stderr
    assert {p.name: sha256_input(p) for p in data_dir.iterdir() if p != out} == before
    names = {f"{s}_deconvolved{e}" for s in "ab" for e in (ext, ".json")}
    assert files_in(out) == names | {"deconflow-batch.log"}
    for stem, axes in (("a", "ZYX"), ("b", "CZYX")):
        output = out / f"{stem}_deconvolved{ext}"
        result = deconflow.io.read_image(output)
        assert result.axes == axes and result.data.shape == raw[stem].shape
        assert result.data.dtype == np.float32
        np.testing.assert_allclose(result.voxel_size_um, VOXEL, rtol=1e-6)
        record = json.loads((out / f"{stem}_deconvolved.json").read_text())
        assert read_description(output) == record
        assert record["input"]["sha256"] == before["a.ome.zarr" if stem == "a" else "b.zarr"]
        assert record["output"] == {"path": str(output), "axes": axes, "dtype": "float32"}
    expected = deconflow.deconvolve(
        raw["a"], gaussian_psf(1.2), iterations=2, voxel_size=VOXEL, device="cpu"
    )
    a_out = deconflow.io.read_image(out / f"a_deconvolved{ext}").data
    np.testing.assert_allclose(a_out, expected, rtol=1e-4, atol=1e-4)

    # b's output lost, and a temporary store a killed run left
    kept = out / f"a_deconvolved{ext}"
    stamp = (kept / ".zattrs" if kept.is_dir() else kept).stat().st_mtime_ns
    lost = out / f"b_deconvolved{ext}"
    shutil.rmtree(lost) if lost.is_dir() else lost.unlink()
    (out / f".b_deconvolved.ome.x1y2.partial{ext}").mkdir()
    again = run_cli(*args)  # without -q: the table says what was done
    assert again.returncode == 0, again.stderr
    status = {line.split()[-1]: line.split()[0] for line in again.stdout.splitlines()[2:4]}
    assert status == {f"a_deconvolved{ext}": "skipped", f"b_deconvolved{ext}": "done"}
    assert (kept / ".zattrs" if kept.is_dir() else kept).stat().st_mtime_ns == stamp
    assert files_in(out) == names | {"deconflow-batch.log"}


def test_zarr_and_tiff_outputs_have_different_resume_keys(tmp_path):
    from deconflow.batch.task import FileJob, resume_key
    from deconflow.config import DeconvolutionSettings

    settings = DeconvolutionSettings(method="rl")
    tiff = FileJob("in.tif", "out/a_deconvolved.ome.tif", ("psf.tif",), settings)
    store = FileJob("in.tif", "out/a_deconvolved.ome.zarr", ("psf.tif",), settings)
    keys = {resume_key(job, "0" * 64, ["1" * 64]) for job in (tiff, store)}
    assert len(keys) == 2


def test_killed_zarr_batch_resumes_with_exactly_the_missing_outputs(tmp_path):
    from .test_batch import _start_and_stop

    data_dir = tmp_path / "data"
    psf_file = write_imagej(tmp_path / "bead.tif", gaussian_psf(1.2), "ZYX", VOXEL)
    # a is quick and b takes seconds, so the kill lands inside b; c is never started
    shapes = {"a": (8, 32, 32), "b": (32, 256, 256), "c": (8, 32, 32)}
    for seed, (name, shape) in enumerate(shapes.items()):
        zarr_input(data_dir / f"{name}.ome.zarr", stack(shape, seed))
    before = {p.name: sha256_input(p) for p in data_dir.iterdir()}
    out = tmp_path / "out"
    args = [str(data_dir), "--psf", str(psf_file), "-o", str(out), "--iterations", "10"]
    args += ["--output-format", "ome-zarr", "--device", "cpu"]
    code = _start_and_stop([*args, "-q"], out / "a_deconvolved.json", signal.SIGKILL)
    assert code == -signal.SIGKILL
    finished = {"a_deconvolved.ome.zarr", "a_deconvolved.json"}
    assert {n for n in files_in(out) if not n.startswith(".")} == finished | {"deconflow-batch.log"}
    stamp = (out / "a_deconvolved.ome.zarr" / ".zattrs").stat().st_mtime_ns

    done = run_cli(*args[:-2])  # run_cli adds --device cpu
    assert done.returncode == 0, done.stderr
    lines = {line.split()[-1]: line.split()[0] for line in done.stdout.splitlines()[2:5]}
    assert lines == {
        "a_deconvolved.ome.zarr": "skipped",
        "b_deconvolved.ome.zarr": "done",
        "c_deconvolved.ome.zarr": "done",
    }
    assert (out / "a_deconvolved.ome.zarr" / ".zattrs").stat().st_mtime_ns == stamp
    # b's half-written temporary store is gone, and every output is complete
    expected = {f"{s}_deconvolved{e}" for s in "abc" for e in (".ome.zarr", ".json")}
    assert files_in(out) == expected | {"deconflow-batch.log"}
    assert deconflow.io.read_ome_zarr(out / "b_deconvolved.ome.zarr").data.shape == (32, 256, 256)
    assert {p.name: sha256_input(p) for p in data_dir.iterdir()} == before
