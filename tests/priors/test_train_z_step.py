"""``deconflow train --voxel-size Z``: the z step alone, y and x from each training file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from deconflow import DeconflowError
from deconflow.priors._cli import main
from deconflow.priors.data import FolderSource
from deconflow.priors.train import TrainConfig


def _stack(seed: int, shape: tuple[int, ...] = (6, 20, 20)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _ome_pixel_size_only(path: Path, data: np.ndarray, pixel: tuple[float, float]) -> Path:
    """An OME-TIFF with PhysicalSizeY/X but no PhysicalSizeZ."""
    meta = {"axes": "ZYX", "PhysicalSizeY": pixel[0], "PhysicalSizeX": pixel[1]}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    return path


def _imagej(path: Path, data: np.ndarray, voxel: tuple[float, float, float]) -> Path:
    """An ImageJ TIFF with its whole voxel size (z spacing and y/x resolution)."""
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / voxel[2], 1 / voxel[1]),
        metadata={"axes": "ZYX", "spacing": voxel[0], "unit": "um"},
    )
    return path


@pytest.fixture
def mixed_pixel_sizes(tmp_path: Path) -> Path:
    """Two stacks of different pixel sizes: OME without a z step, ImageJ with one."""
    folder = tmp_path / "sharp"
    folder.mkdir()
    _ome_pixel_size_only(folder / "fine.ome.tif", _stack(0), (0.1, 0.1))
    # its own z step, 0.6 µm, is replaced by the one given; its pixel size stays
    _imagej(folder / "coarse.tif", _stack(1), (0.6, 0.2, 0.2))
    return folder


def test_a_z_step_alone_takes_each_files_own_pixel_size(mixed_pixel_sizes):
    src = FolderSource(mixed_pixel_sizes, patch=(4, 16, 16), voxel_size_um=(0.4,))
    # files are read sorted: coarse.tif (0.4 / 0.2), fine.ome.tif (0.4 / 0.1)
    assert src.aspects == pytest.approx([2.0, 4.0])
    batch = src.sample(8, np.random.default_rng(0))
    assert set(np.round(batch.aspect.numpy(), 3)) <= {2.0, 4.0}


def test_a_z_step_alone_refuses_a_stack_without_a_pixel_size(mixed_pixel_sizes):
    tifffile.imwrite(mixed_pixel_sizes / "bare.tif", _stack(2))  # no metadata at all
    with pytest.raises(DeconflowError, match=r"bare\.tif records no pixel size") as caught:
        FolderSource(mixed_pixel_sizes, patch=(4, 16, 16), voxel_size_um=(0.4,))
    assert "--voxel-size 0.4 Y X" in str(caught.value)  # the fix: all three sizes


def test_a_z_step_alone_leaves_2d_images_to_the_plane_steps(mixed_pixel_sizes):
    # a 2D image is told aspect 1 whatever voxel size is given (as with three sizes), so
    # one without a pixel size is not refused for the want of one
    tifffile.imwrite(mixed_pixel_sizes / "plane.tif", _stack(3, (20, 20)))
    src = FolderSource(mixed_pixel_sizes, patch=(4, 16, 16), voxel_size_um=(0.4,))
    assert src.aspects == pytest.approx([2.0, 4.0, 1.0])
    assert "1 2D image" in src.describe()


def test_a_stack_with_a_pixel_size_but_no_z_step_is_told_the_z_step_suffices(tmp_path):
    _ome_pixel_size_only(tmp_path / "fine.ome.tif", _stack(0), (0.1, 0.05))
    with pytest.raises(DeconflowError, match="no z step") as caught:
        FolderSource(tmp_path, patch=(4, 16, 16))
    message = str(caught.value)
    assert "fine.ome.tif" in message and "--voxel-size Z (" in message
    assert "--voxel-size Z 0.1 0.05" in message


@pytest.mark.parametrize("voxel_size", [(0.4, 0.1), (0.4, 0.1, 0.1, 0.1)])
def test_a_voxel_size_of_two_or_four_sizes_is_refused(tmp_path, voxel_size):
    with pytest.raises(DeconflowError, match=r"3 sizes \(z, y, x\) or 1"):
        TrainConfig(out=tmp_path / "w.pt", data=tmp_path, voxel_size_um=voxel_size)


def test_a_pair_psf_needs_all_three_sizes(tmp_path):
    with pytest.raises(DeconflowError, match="not the z step alone"):
        TrainConfig(
            out=tmp_path / "w.pt",
            estimate_pairs=0.5,
            pair_psf=tmp_path / "psf.tif",
            voxel_size_um=(0.3,),
        )


def _train(out: Path, data: Path, *voxel: str) -> int:
    args = ["train", "--out", str(out), "--data", str(data), "--voxel-size", *voxel]
    small = ["--steps", "1", "--batch", "1", "--patch", "4", "16", "16", "--plane-every", "0"]
    return main([*args, *small, "--threads", "1", "--precision", "float32", "--device", "cpu"])


def test_cli_trains_on_a_z_step_alone(mixed_pixel_sizes, tmp_path):
    out = tmp_path / "z_step.pt"
    assert _train(out, mixed_pixel_sizes, "0.4", "-q") == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert "voxel aspects [2.0, 4.0]" in card["data"]
    assert card["training"]["voxel_size_um"] == [0.4]


def test_cli_names_the_file_without_a_pixel_size(mixed_pixel_sizes, tmp_path, capsys):
    tifffile.imwrite(mixed_pixel_sizes / "bare.tif", _stack(2))
    assert _train(tmp_path / "x.pt", mixed_pixel_sizes, "0.4", "-q") == 2
    err = capsys.readouterr().err
    assert "bare.tif records no pixel size" in err and "--voxel-size 0.4 Y X" in err, err
    assert not (tmp_path / "x.pt").exists()
