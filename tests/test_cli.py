import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile

from deconflow import cli
from deconflow.cli import main
from deconflow.io import read_ome_description, read_tiff

from .conftest import SAMPLE_DATA


def test_console_script_resolves_and_help_exits_zero():
    exe = shutil.which("deconflow")
    assert exe is not None, "the deconflow console script is not installed"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert all(name in done.stdout for name in ("demo", "run", "batch"))
    batch = subprocess.run([exe, "batch", "--help"], capture_output=True, text=True, timeout=60)
    assert batch.returncode == 0 and "--scheduler" in batch.stdout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "deconflow" in version.stdout


def test_demo_writes_tiff_and_figure(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "deconflow.cli", "demo", "--out", str(tmp_path / "demo"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    tiff = tmp_path / "demo" / "confocal_grid_deconvolved.tif"
    png = tmp_path / "demo" / "confocal_grid_comparison.png"
    assert str(tmp_path / "demo") in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = read_tiff(tiff)
    assert result.data.shape == (21, 150, 150) and result.data.dtype == np.float32
    np.testing.assert_allclose(result.voxel_size_um, (0.125, 0.02196, 0.02196), rtol=1e-3)
    record = json.loads((tiff.with_suffix(".json")).read_text())
    assert record["settings"]["method"] == "rl"
    assert any("resampled" in note for note in record["psf_notes"])


def test_run_one_file_and_refuse_to_overwrite_inputs(tmp_path, capsys):
    image = tmp_path / "grid.tif"
    shutil.copy(SAMPLE_DATA / "confocal_grid.tif", image)
    before = image.read_bytes()
    out = tmp_path / "out" / "grid_rl.tif"
    args = [
        "run",
        str(image),
        "--psf",
        str(SAMPLE_DATA / "confocal_bead.tif"),
        "-o",
        str(out),
        "--method",
        "wiener",
        "-q",
    ]
    assert main(args) == 0
    assert read_tiff(out).data.shape == (21, 150, 150)
    assert image.read_bytes() == before
    assert main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                str(image),
                "--psf",
                str(SAMPLE_DATA / "confocal_bead.tif"),
                "-o",
                str(image),
                "-q",
            ]
        )
        == 2
    )
    assert "inputs are never written" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_run_names_the_stages_before_the_solver_unless_quiet(tmp_path, capsys):
    args = [
        "run",
        str(SAMPLE_DATA / "confocal_grid.tif"),
        "--psf",
        str(SAMPLE_DATA / "confocal_bead.tif"),
        "--method",
        "wiener",
    ]
    assert main([*args, "-o", str(tmp_path / "a.tif")]) == 0
    err = capsys.readouterr().err
    # the stage line comes before the solver's bar
    assert "preparing the PSF ..." in err
    assert err.index("preparing the PSF") < err.index("deconvolving")
    assert main([*args, "-o", str(tmp_path / "b.tif"), "-q"]) == 0
    assert "preparing the PSF" not in capsys.readouterr().err


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    code = main(
        [
            "run",
            str(tmp_path / "missing.tif"),
            "--psf",
            str(tmp_path / "p.tif"),
            "-o",
            str(tmp_path / "o.tif"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "No such file" in err and "Traceback" not in err


def test_config_file_and_bad_method(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("method: rl-tv\nrl_tv:\n  iterations: 3\n")
    out = tmp_path / "o.tif"
    code = main(
        [
            "run",
            str(SAMPLE_DATA / "confocal_grid.tif"),
            "--psf",
            str(SAMPLE_DATA / "confocal_bead.tif"),
            "-o",
            str(out),
            "--config",
            str(config),
            "-q",
        ]
    )
    assert code == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["method"] == "rl-tv"
    assert record["settings"]["rl_tv"]["iterations"] == 3
    code = main(
        [
            "run",
            str(SAMPLE_DATA / "confocal_grid.tif"),
            "--psf",
            str(SAMPLE_DATA / "confocal_bead.tif"),
            "-o",
            str(tmp_path / "x.tif"),
            "--method",
            "rll",
        ]
    )
    assert code == 2 and "Did you mean 'rl'" in capsys.readouterr().err


def test_run_a_hyperstack_keeps_axes_and_voxel_size(tmp_path):
    rng = np.random.default_rng(0)
    image = tmp_path / "cells.tif"
    tifffile.imwrite(
        image,
        rng.poisson(10.0, (6, 2, 20, 20)).astype(np.uint16),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "um"},
    )
    out = tmp_path / "cells_rl.tif"
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    options = ["--iterations", "2", "--psf-voxel-size", "0.125", "0.0225", "0.0225", "-q"]
    code = main(["run", str(image), "--psf", psf, "-o", str(out), *options])
    assert code == 0
    result = read_tiff(out)
    assert result.axes == "ZCYX" and result.data.shape == (6, 2, 20, 20)
    np.testing.assert_allclose(result.voxel_size_um, (0.3, 0.1, 0.1), rtol=1e-6)
    record = json.loads(out.with_suffix(".json").read_text())
    assert read_ome_description(out) == record
    assert record["settings"]["psf_voxel_size_um"] == [0.125, 0.0225, 0.0225]


def test_run_takes_a_psf_per_channel_in_channel_order(tmp_path):
    # --psf given twice kept only the last: both channels used the second channel's PSF
    rng = np.random.default_rng(0)
    image = tmp_path / "two.tif"
    plane = rng.poisson(10.0, (6, 20, 20)).astype(np.uint16)
    tifffile.imwrite(
        image,
        np.stack([plane, plane], axis=1),  # the same data in both channels
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "um"},
    )
    psfs = []
    for name, sigma in (("narrow.tif", 0.7), ("wide.tif", 2.0)):
        z, y, x = np.mgrid[-3:4, -5:6, -5:6]
        psf = np.exp(-(z**2 + y**2 + x**2) / (2 * sigma**2)).astype(np.float32)
        tifffile.imwrite(tmp_path / name, psf)
        psfs += ["--psf", str(tmp_path / name)]
    out = tmp_path / "two_rl.tif"
    assert main(["run", str(image), *psfs, "-o", str(out), "--iterations", "3", "-q"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert [Path(p["path"]).name for p in record["psf_files"]] == ["narrow.tif", "wide.tif"]
    result = read_tiff(out).data
    assert not np.allclose(result[:, 0], result[:, 1])


def test_another_module_can_register_a_subcommand(monkeypatch, capsys):
    def register(subparsers):
        train = subparsers.add_parser("fake-train", help="train a fake prior")
        train.add_argument("--epochs", type=int, default=1)
        train.set_defaults(handler=lambda args: print(f"trained {args.epochs}") or 0)

    module = types.ModuleType("fake_train_cli")
    module.register = register
    monkeypatch.setitem(sys.modules, "fake_train_cli", module)
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "fake_train_cli"))
    assert main(["fake-train", "--epochs", "3"]) == 0
    assert capsys.readouterr().out == "trained 3\n"


def test_a_3d_psf_for_a_2d_image_is_named_as_the_problem(tmp_path, capsys):
    # both files carry voxel sizes: the mismatch is the PSF's axes, not the voxel sizes
    image = tmp_path / "plane.tif"
    tifffile.imwrite(
        image,
        np.random.default_rng(0).poisson(10.0, (20, 20)).astype(np.uint16),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"unit": "um"},
    )
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    code = main(["run", str(image), "--psf", psf, "-o", str(tmp_path / "o.tif"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "confocal_bead.tif is 3D" in err and "2 spatial axes" in err, err
    assert "voxel_size_um" not in err


def test_iterations_for_a_method_without_them_is_a_bad_input_error(tmp_path, capsys):
    args = ["run", str(SAMPLE_DATA / "confocal_grid.tif"), "--psf"]
    args += [str(SAMPLE_DATA / "confocal_bead.tif"), "-o", str(tmp_path / "o.tif")]
    # was exit 1, "unexpected error: TypeError: FlowDeconvolution.__init__() got an ..."
    assert main([*args, "--method", "flow", "--iterations", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--iterations does not apply to method 'flow'" in err and "steps" in err, err
    assert "TypeError" not in err and not (tmp_path / "o.tif").exists()


def test_the_progress_bar_follows_a_step_count_that_changes(monkeypatch, capsys):
    from deconflow.batch import task

    def retried_with_tiles(job, progress, status):
        progress(5, 20)  # one tile of 20 steps, out of memory at step 5
        progress(80, 160)  # retried with 8 tiles of 20 steps
        progress(160, 160)
        return task.FileOutcome(job.source, job.output, "done", 0.1, "cpu")

    monkeypatch.setattr(task, "process_file", retried_with_tiles)
    job = types.SimpleNamespace(source="in.tif", output="out.tif")
    assert cli._run_one(job, quiet=False).status == "done"
    err = capsys.readouterr().err
    # was "0/20" then "160it": past its total the bar dropped the percentage
    assert "160/160" in err and "100%" in err, err


def test_run_with_a_folder_as_output_says_to_name_a_file(tmp_path, capsys, monkeypatch):
    # "-o decon/" as for batch: --overwrite, the old hint, then failed after the whole run
    import deconflow.batch.task

    def never(*args, **kwargs):
        raise AssertionError("nothing must run for a folder output")

    monkeypatch.setattr(deconflow.batch.task, "process_file", never)
    folder = tmp_path / "decon"
    folder.mkdir()
    base = ["run", str(SAMPLE_DATA / "confocal_grid.tif")]
    base += ["--psf", str(SAMPLE_DATA / "confocal_bead.tif"), "-o", str(folder), "-q"]
    for extra in ([], ["--overwrite"]):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert "is a folder" in err and "confocal_grid_deconvolved.ome.tif" in err, err
    assert folder.is_dir() and not any(folder.iterdir())


def test_run_with_a_folder_as_psf_says_it_is_a_folder(tmp_path, capsys):
    # an OME-Zarr store as the PSF was answered "No such file: .../bead.zarr"
    store = tmp_path / "bead.zarr"
    store.mkdir()
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    args = ["run", str(SAMPLE_DATA / "confocal_grid.tif"), "--psf", str(store)]
    assert main([*args, "-o", str(tmp_path / "o.tif"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "TIFF" in err and "No such file" not in err, err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("name", ["grid.png", "grid.json", "grid"])
def test_run_refuses_an_output_name_of_a_format_it_does_not_write(tmp_path, capsys, name):
    # "-o grid.png" wrote a float32 TIFF named .png; "-o grid.json" wrote the TIFF and
    # then its provenance record under the same name
    args = ["run", str(SAMPLE_DATA / "confocal_grid.tif")]
    args += ["--psf", str(SAMPLE_DATA / "confocal_bead.tif"), "-o", str(tmp_path / name)]
    assert main([*args, "--iterations", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert "neither an OME-TIFF" in err and "confocal_grid_deconvolved.ome.tif" in err, err
    assert not any(tmp_path.iterdir())


def test_run_reads_and_writes_ome_zarr(tmp_path, capsys):
    from deconflow.batch.files import sha256_input
    from deconflow.io import read_description, read_ome_zarr, write_ome_zarr

    grid = read_tiff(SAMPLE_DATA / "confocal_grid.tif")
    store = write_ome_zarr(
        tmp_path / "grid.ome.zarr", grid.data, axes="ZYX", voxel_size_um=grid.voxel_size_um
    )
    before = sha256_input(store)
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    options = ["--method", "wiener", "--device", "cpu", "-q"]
    out = tmp_path / "out" / "grid_wiener.ome.zarr"
    assert main(["run", str(store), "--psf", psf, "-o", str(out), *options]) == 0
    # the same run from the TIFF: reading the store changes nothing downstream
    tiff_out = tmp_path / "tiff" / "grid_wiener.ome.tif"  # its own folder: same record name
    tiff_args = ["run", str(SAMPLE_DATA / "confocal_grid.tif"), "--psf", psf]
    assert main([*tiff_args, "-o", str(tiff_out), *options]) == 0
    result = read_ome_zarr(out)
    assert result.axes == "ZYX" and result.data.dtype == np.float32
    np.testing.assert_allclose(result.voxel_size_um, grid.voxel_size_um, rtol=1e-6)
    np.testing.assert_array_equal(result.data, read_tiff(tiff_out).data)
    record = json.loads((tmp_path / "out" / "grid_wiener.json").read_text())
    assert read_description(out) == record
    assert record["input"]["sha256"] == before and record["method"] == "wiener"
    assert sha256_input(store) == before
    assert main(["run", str(store), "--psf", psf, "-o", str(out), *options]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["run", str(store), "--psf", psf, "-o", str(out), "--overwrite", *options]) == 0
    inside = store / "deconvolved.ome.zarr"
    assert main(["run", str(store), "--psf", psf, "-o", str(inside), *options]) == 2
    assert "inputs are never written" in capsys.readouterr().err
    assert sha256_input(store) == before and not inside.exists()
    # an existing path inside the store: refused as part of the input, not "pass --overwrite"
    inside_file = store / ".zattrs"
    assert inside_file.is_file()
    assert main(["run", str(store), "--psf", psf, "-o", str(inside_file), *options]) == 2
    err = capsys.readouterr().err
    assert "inputs are never written" in err and "--overwrite" not in err
    assert sha256_input(store) == before
    # a plain folder is named as such (before any hashing of its files)
    (tmp_path / "folder").mkdir()
    code = main(["run", str(tmp_path / "folder"), "--psf", psf, "-o", str(tmp_path / "f.tif")])
    assert code == 2 and "not an OME-Zarr store" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("axes", "shape"), [("TCZYX", (2, 1, 6, 20, 20)), ("CZYX", (1, 6, 20, 20))]
)
def test_run_keeps_the_length_1_axes_of_an_ome_tiff(tmp_path, axes, shape):
    # tifffile squeezes length-1 axes: a one-channel OME-TIFF was deconvolved as "TZYX" and
    # its output written without the C axis (in another order, and none at all in OME-Zarr)
    from deconflow.io import read_ome_zarr

    image = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        image,
        np.random.default_rng(0).poisson(10.0, shape).astype(np.uint16),
        ome=True,
        photometric="minisblack",
        metadata={"axes": axes, "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1},
    )
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    options = ["--iterations", "2", "--psf-voxel-size", "0.125", "0.0225", "0.0225", "-q"]
    for name in ("cells_rl.ome.tif", "cells_rl.ome.zarr"):
        assert main(["run", str(image), "--psf", psf, "-o", str(tmp_path / name), *options]) == 0

    def layout(path):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return series.get_axes(squeeze=False), series.get_shape(squeeze=False)

    out = tmp_path / "cells_rl.ome.tif"
    assert layout(out) == layout(image)
    raw, result = read_tiff(image), read_tiff(out)
    assert result.declared_axes == raw.declared_axes == "TCZYX"
    # OME gives every image a SizeT: a CZYX file declares a length-1 T too
    assert result.declared_shape == raw.declared_shape == (1,) * (5 - len(shape)) + shape
    np.testing.assert_allclose(result.voxel_size_um, (0.3, 0.1, 0.1), rtol=1e-6)
    assert read_ome_description(out)["output"]["axes"] == "TCZYX"
    store = read_ome_zarr(tmp_path / "cells_rl.ome.zarr")
    assert store.axes == "TCZYX" and store.data.shape == result.declared_shape
    np.testing.assert_array_equal(store.data, result.data.reshape(result.declared_shape))


def test_run_asks_for_the_z_step_an_ome_tiff_lacks(tmp_path, capsys):
    # PhysicalSizeX/Y without PhysicalSizeZ read as no voxel size at all: the run took the
    # PSF at the stack's own grid, silently, and dropped the pixel size the file records
    in_plane = {"PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1}
    image = tmp_path / "cells.ome.tif"
    data = np.random.default_rng(0).poisson(10.0, (6, 20, 20)).astype(np.uint16)
    tifffile.imwrite(image, data, ome=True, metadata={"axes": "ZYX", **in_plane})
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    out = tmp_path / "cells_rl.ome.tif"
    options = ["--iterations", "2", "-q"]
    assert main(["run", str(image), "--psf", psf, "-o", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert "cells.ome.tif" in err and "PhysicalSizeZ" in err, err
    assert "--voxel-size Z 0.1 0.1" in err and not out.exists(), err
    # the short form is offered too: the z step alone, y and x from the file
    assert "--voxel-size 0.3 (y and x are then read from the file)" in err, err
    voxel = ["--voxel-size", "0.3", "0.1", "0.1"]
    assert main(["run", str(image), "--psf", psf, "-o", str(out), *voxel, *options]) == 0
    np.testing.assert_allclose(read_tiff(out).voxel_size_um, (0.3, 0.1, 0.1), rtol=1e-6)
    # a PSF without its z step: needed to resample it to the image's voxel size
    bead = tmp_path / "bead.ome.tif"
    tifffile.imwrite(bead, read_tiff(psf).data, ome=True, metadata={"axes": "ZYX", **in_plane})
    other = tmp_path / "other.ome.tif"
    assert main(["run", str(image), "--psf", str(bead), "-o", str(other), *voxel, *options]) == 2
    err = capsys.readouterr().err
    assert "bead.ome.tif" in err and "--psf-voxel-size Z 0.1 0.1" in err, err
    assert "--psf-voxel-size 0.3 (y and x" in err and "psf_voxel_size_um: [Z]" in err, err


def _write_ome_in_plane(path, data, y: float, x: float):
    """An OME-TIFF with PhysicalSizeY/X but no PhysicalSizeZ (as some exporters write)."""
    in_plane = {"PhysicalSizeY": y, "PhysicalSizeX": x}
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZYX", **in_plane})
    return path


def test_run_takes_a_z_step_alone_and_the_pixel_size_from_the_file(tmp_path):
    # --voxel-size took 2 or 3 numbers: a file recording y and x but no z needed them all
    # typed again, the pixel size copied by hand from the error message
    data = np.random.default_rng(0).poisson(10.0, (6, 20, 20)).astype(np.uint16)
    image = _write_ome_in_plane(tmp_path / "cells.ome.tif", data, 0.1, 0.12)
    bead = _write_ome_in_plane(
        tmp_path / "bead.ome.tif", read_tiff(SAMPLE_DATA / "confocal_bead.tif").data, 0.02, 0.02
    )
    options = ["--psf", str(bead), "--iterations", "2", "-q"]
    out = tmp_path / "short.ome.tif"
    z_alone = ["--voxel-size", "0.3", "--psf-voxel-size", "0.125"]
    assert main(["run", str(image), "-o", str(out), *z_alone, *options]) == 0
    np.testing.assert_allclose(read_tiff(out).voxel_size_um, (0.3, 0.1, 0.12), rtol=1e-6)
    record = read_ome_description(out)
    np.testing.assert_allclose(record["settings"]["voxel_size_um"], (0.3, 0.1, 0.12))
    np.testing.assert_allclose(record["settings"]["psf_voxel_size_um"], (0.125, 0.02, 0.02))
    # three numbers override the file, as before
    full = tmp_path / "full.ome.tif"
    three = ["--voxel-size", "0.5", "0.2", "0.2", "--psf-voxel-size", "0.125", "0.02", "0.02"]
    assert main(["run", str(image), "-o", str(full), *three, *options]) == 0
    np.testing.assert_allclose(read_tiff(full).voxel_size_um, (0.5, 0.2, 0.2), rtol=1e-6)
    # a file with a whole voxel size: the z step alone replaces its z, y and x stay the file's
    tifffile.imwrite(
        tmp_path / "known.ome.tif",
        data,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 0.2, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1},
    )
    known = tmp_path / "known_out.ome.tif"
    assert main(["run", str(tmp_path / "known.ome.tif"), "-o", str(known), *z_alone, *options]) == 0
    np.testing.assert_allclose(read_tiff(known).voxel_size_um, (0.3, 0.1, 0.1), rtol=1e-6)


def test_a_z_step_alone_for_a_file_without_pixel_size_names_the_fix(tmp_path, capsys):
    data = np.random.default_rng(0).poisson(10.0, (6, 20, 20)).astype(np.uint16)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data)  # no calibration at all
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    out = tmp_path / "out.ome.tif"
    args = ["run", str(plain), "--psf", psf, "-o", str(out), "--iterations", "2", "-q"]
    assert main([*args, "--voxel-size", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "plain.tif records no pixel size" in err and "--voxel-size 0.3 Y X" in err, err
    assert not out.exists()
    # a 2D image has no z step to give
    flat, flat_psf = tmp_path / "flat.tif", tmp_path / "flat_psf.tif"
    tifffile.imwrite(flat, data[0])
    tifffile.imwrite(flat_psf, read_tiff(psf).data[16])
    args_2d = ["run", str(flat), "--psf", str(flat_psf), "-o", str(out), "-q"]
    args_2d += ["--voxel-size", "0.3"]
    assert main(args_2d) == 2
    assert "flat.tif is a 2D image" in capsys.readouterr().err
    # four numbers are still refused by the flag itself, which now names the short form
    assert main([*args, "--voxel-size", "0.3", "0.1", "0.1", "0.1"]) == 2
    assert "1 (the z step alone" in capsys.readouterr().err


def test_run_a_hyperstack_into_ome_zarr_writes_ngff_axis_order(tmp_path):
    from deconflow.io import read_ome_zarr

    image = tmp_path / "cells.tif"
    tifffile.imwrite(
        image,
        np.random.default_rng(0).poisson(10.0, (6, 2, 20, 20)).astype(np.uint16),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "um"},
    )
    psf = str(SAMPLE_DATA / "confocal_bead.tif")
    options = ["--iterations", "2", "--psf-voxel-size", "0.125", "0.0225", "0.0225", "-q"]
    for name in ("cells.ome.zarr", "cells.ome.tif"):
        assert main(["run", str(image), "--psf", psf, "-o", str(tmp_path / name), *options]) == 0
    store, tiff = read_ome_zarr(tmp_path / "cells.ome.zarr"), read_tiff(tmp_path / "cells.ome.tif")
    assert store.axes == "CZYX" and tiff.axes == "ZCYX"
    np.testing.assert_allclose(store.voxel_size_um, (0.3, 0.1, 0.1), rtol=1e-6)
    np.testing.assert_array_equal(store.data, np.moveaxis(tiff.data, 1, 0))
