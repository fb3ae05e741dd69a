import json

import numpy as np
import pytest
import tifffile
import zarr
from zarr.storage import LocalStore

from deconflow import DeconflowError
from deconflow.io import (
    _atomic,
    read_description,
    read_image,
    read_ome_zarr,
    read_ome_zarr_description,
    write_ome_zarr,
)


def ome_group(path, meta, *, fmt=2, arrays=None):
    """An OME-Zarr group written by hand: ``meta`` as NGFF attributes, ``arrays`` by path."""
    root = zarr.open_group(store=LocalStore(path), mode="w", zarr_format=fmt)
    for name, data in (arrays or {}).items():
        root.create_array(name, data=data)
    root.attrs.update({"ome": meta} if fmt == 3 else meta)
    return path


def image_meta(axes, scale, units, path="0", version="0.4"):
    return {
        "multiscales": [
            {
                "version": version,
                "axes": [
                    {"name": a, **({"unit": u} if u else {})}
                    for a, u in zip(axes, units, strict=True)
                ],
                "datasets": [
                    {"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ]
    }


@pytest.mark.parametrize(
    ("axes", "shape", "dtype", "voxel"),
    [
        ("ZYX", (5, 6, 7), np.uint16, (0.3, 0.065, 0.07)),
        ("CZYX", (2, 4, 6, 5), np.float32, (1.5, 0.2, 0.2)),
        ("TCZYX", (2, 3, 4, 5, 6), np.int16, (0.25, 0.1, 0.11)),
        ("YX", (9, 8), np.uint8, (0.2, 0.3)),
    ],
)
def test_round_trip_keeps_data_dtype_axes_and_voxel_size(tmp_path, axes, shape, dtype, voxel):
    rng = np.random.default_rng(len(shape))
    data = (rng.random(shape) * 100).astype(dtype)
    record = {"method": "rl", "nested": {"x": [1, 2]}, "bad": float("nan")}
    path = write_ome_zarr(
        tmp_path / "a.ome.zarr", data, axes=axes, voxel_size_um=voxel, description=record
    )
    image = read_ome_zarr(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.data.dtype == dtype and image.axes == axes
    np.testing.assert_allclose(image.voxel_size_um, voxel, rtol=1e-12)
    # strict JSON: NaN is stored as null, which Java readers accept
    assert read_ome_zarr_description(path) == {**record, "bad": None}
    assert read_description(path) == read_ome_zarr_description(path)
    # NGFF 0.4 on zarr format 2, as viewers read it
    attrs = json.loads((path / ".zattrs").read_text())
    assert (path / ".zgroup").is_file() and not (path / "zarr.json").exists()
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4" and ms["datasets"][0]["path"] == "0"
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    assert [a["name"] for a in ms["axes"]] == list(axes.lower())
    assert [a["type"] for a in ms["axes"]] == [types[a] for a in axes.lower()]
    assert [a.get("unit") for a in ms["axes"]] == [
        "micrometer" if a in "ZYX" else None for a in axes
    ]
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/"
    # whole planes: one per chunk in the non-spatial axes, all of y and x
    assert zarray["chunks"][-2:] == list(shape[-2:])
    assert all(c == 1 for c, a in zip(zarray["chunks"], axes) if a in "TC")


def test_large_planes_are_split_into_chunks_of_at_most_4_mb(tmp_path):
    data = np.zeros((3, 1500, 1200), np.float32)  # 7.2 MB a plane
    path = write_ome_zarr(tmp_path / "big.zarr", data, axes="ZYX")
    chunks = json.loads((path / "0" / ".zarray").read_text())["chunks"]
    assert chunks == [1, 750, 1200]


def test_without_voxel_size_reads_back_none_and_writes_no_units(tmp_path):
    path = write_ome_zarr(tmp_path / "a.zarr", np.ones((3, 4, 5), np.float32), axes="ZYX")
    image = read_ome_zarr(path)
    assert image.voxel_size_um is None and image.axes == "ZYX"
    axes = json.loads((path / ".zattrs").read_text())["multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes)
    assert read_ome_zarr_description(path) is None


def test_reads_ngff_05_on_zarr_v3_level_0_with_units_and_an_image_scale(tmp_path):
    level0 = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    meta = image_meta("zyx", [500.0, 0.2, 0.2], ["nanometer", "micrometer", "micrometer"], "s0")
    meta["version"] = "0.5"
    ms = meta["multiscales"][0]
    ms["datasets"].append(
        {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1000, 0.4, 0.4]}]}
    )
    # applies on top of each level's scale
    ms["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 1.0, 1.5]}]
    path = ome_group(
        tmp_path / "v3.ome.zarr",
        meta,
        fmt=3,
        arrays={"s0": level0, "s1": level0[::2, ::2, ::2].copy()},
    )
    assert (path / "zarr.json").is_file()
    image = read_image(path)
    np.testing.assert_array_equal(image.data, level0)
    assert image.axes == "ZYX"
    np.testing.assert_allclose(image.voxel_size_um, (1.0, 0.2, 0.3), rtol=1e-12)


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (["nanometer"] * 3, (0.3, 0.1, 0.1)),
        (["micrometer", "angstrom", "angstrom"], (300.0, 0.01, 0.01)),
        # NGFF has no default unit: a missing one is not taken for µm
        (["micrometer", "micrometer", None], None),
        (["micrometer", "micrometer", "furlong"], None),
    ],
)
def test_units_convert_to_micrometres_and_a_missing_unit_gives_no_voxel_size(
    tmp_path, units, expected
):
    meta = image_meta("czyx", [1.0, 300.0, 100.0, 100.0], [None, *units])
    path = ome_group(tmp_path / "u.zarr", meta, arrays={"0": np.zeros((2, 3, 4, 5), np.uint8)})
    image = read_ome_zarr(path)
    assert image.axes == "CZYX"
    if expected is None:
        assert image.voxel_size_um is None
    else:
        np.testing.assert_allclose(image.voxel_size_um, expected, rtol=1e-12)


def test_missing_scale_gives_no_voxel_size(tmp_path):
    meta = image_meta("zyx", [1, 1, 1], ["micrometer"] * 3)
    del meta["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    path = ome_group(tmp_path / "s.zarr", meta, arrays={"0": np.zeros((2, 3, 4), np.uint8)})
    image = read_ome_zarr(path)
    assert image.axes == "ZYX" and image.voxel_size_um is None


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize(("ndim", "axes"), [(2, "YX"), (3, "ZYX"), (4, "CZYX"), (5, "TCZYX")])
def test_a_plain_array_reads_with_axes_by_dimensions(tmp_path, fmt, ndim, axes):
    data = np.arange(2**ndim * 3, dtype=np.int32).reshape((2,) * (ndim - 1) + (6,))
    zarr.create_array(store=LocalStore(tmp_path / "p.zarr"), data=data, zarr_format=fmt)
    image = read_image(tmp_path / "p.zarr")
    np.testing.assert_array_equal(image.data, data)
    assert image.axes == axes and image.voxel_size_um is None


def _errors(tmp_path):
    """Stores that must be refused, each with a phrase its message must hold."""
    arr = {"0": np.zeros((2, 3, 4), np.uint8)}
    good = image_meta("zyx", [1, 1, 1], ["micrometer"] * 3)
    two = {"multiscales": [good["multiscales"][0], {**good["multiscales"][0], "name": "b"}]}
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.zarr").write_bytes(b"not a folder")
    yield tmp_path / "missing.zarr", "No such OME-Zarr store"
    yield tmp_path / "folder", "is not a zarr store"
    yield tmp_path / "file.zarr", "is not a zarr store"
    yield ome_group(tmp_path / "plate.zarr", {"plate": {"wells": []}}), "OME-Zarr plate"
    yield ome_group(tmp_path / "well.zarr", {"well": {"images": []}}), "well.zarr/0."
    yield ome_group(tmp_path / "labels", {"labels": ["cells"]}), "labels group"
    yield (
        ome_group(tmp_path / "lab.zarr", {**good, "image-label": {}}, arrays=arr),
        "label image",
    )
    yield ome_group(tmp_path / "two.zarr", two, arrays=arr), "holds 2 multiscales images"
    yield ome_group(tmp_path / "group.zarr", {}, arrays=arr), "without OME-Zarr image metadata"
    bad_axis = image_meta("zyq", [1, 1, 1], [None] * 3)
    yield ome_group(tmp_path / "q.zarr", bad_axis, arrays=arr), "axes ['z', 'y', 'q']"
    twice = image_meta("zyy", [1, 1, 1], [None] * 3)
    yield ome_group(tmp_path / "yy.zarr", twice, arrays=arr), "each at most once"
    yield ome_group(tmp_path / "nodata.zarr", good), "cannot be opened"
    broken = ome_group(tmp_path / "chunk.zarr", good, arrays={"0": np.ones((2, 3, 4), np.uint8)})
    for chunk in (broken / "0").rglob("*"):
        if chunk.is_file() and not chunk.name.startswith("."):
            chunk.write_bytes(b"garbage")
    yield broken, "Could not read the data"


def test_each_unreadable_store_is_refused_with_its_reason(tmp_path):
    cases = list(_errors(tmp_path))
    assert len(cases) == 13
    for path, phrase in cases:
        with pytest.raises(DeconflowError, match=None) as info:
            read_image(path)
        assert phrase in str(info.value), (path, str(info.value))


@pytest.mark.parametrize(
    ("axes", "voxel", "phrase"),
    [
        ("ZCYX", None, "in the order T, C, Z, Y, X"),
        ("ZYX", (0.1, 0.1), "does not match the spatial axes ZYX"),
        ("ZYX", (0.1, -1.0, 0.1), "voxel_size_um"),
    ],
)
def test_write_refuses_axes_out_of_ngff_order_and_bad_voxel_sizes(tmp_path, axes, voxel, phrase):
    data = np.zeros((2, 3, 4, 5)[: len(axes)], np.float32)
    with pytest.raises(DeconflowError, match=phrase.replace("(", r"\(")):
        write_ome_zarr(tmp_path / "a.zarr", data, axes=axes, voxel_size_um=voxel)
    assert list(tmp_path.iterdir()) == []


def test_read_image_picks_the_reader_by_path(tmp_path):
    tiff = tmp_path / "a.tif"
    tifffile.imwrite(tiff, np.full((3, 4, 5), 7, np.uint16), photometric="minisblack")
    assert read_image(tiff).data[0, 0, 0] == 7
    store = write_ome_zarr(tmp_path / "b", np.full((3, 4, 5), 9.0, np.float32), axes="ZYX")
    # no .zarr suffix: found by its .zgroup
    assert read_image(store).data[0, 0, 0] == 9.0


class _Stop(Exception):
    pass


def test_a_failed_write_leaves_nothing_and_keeps_an_existing_store(tmp_path, monkeypatch):
    dest = tmp_path / "a_deconvolved.ome.zarr"
    old = np.full((2, 3, 4), 1.0, np.float32)
    write_ome_zarr(dest, old, axes="ZYX", description={"run": "old"})
    real_fsync = _atomic._fsync_tree
    seen = {}

    def fail_after_writing(root):
        real_fsync(root)
        # the new store is complete in the temporary folder; the final name is still the old
        seen["during"] = read_ome_zarr_description(dest)
        seen["tmp"] = read_ome_zarr(root).data[0, 0, 0]
        raise _Stop

    monkeypatch.setattr(_atomic, "_fsync_tree", fail_after_writing)
    with pytest.raises(_Stop):
        write_ome_zarr(dest, old + 1, axes="ZYX", description={"run": "new"})
    assert seen == {"during": {"run": "old"}, "tmp": 2.0}
    np.testing.assert_array_equal(read_ome_zarr(dest).data, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]
    # a new store is not left behind under the final name either
    with pytest.raises(_Stop):
        write_ome_zarr(tmp_path / "b.ome.zarr", old, axes="ZYX")
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]
    # success replaces the old store and removes it from aside
    monkeypatch.setattr(_atomic, "_fsync_tree", real_fsync)
    write_ome_zarr(dest, old + 5, axes="ZYX", description={"run": "newer"})
    np.testing.assert_array_equal(read_ome_zarr(dest).data, old + 5)
    assert read_ome_zarr_description(dest) == {"run": "newer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]


def test_write_never_replaces_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "results.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DeconflowError, match="is a folder but not a zarr store"):
        write_ome_zarr(folder, np.zeros((2, 3, 4), np.float32), axes="ZYX")
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.zarr"]
