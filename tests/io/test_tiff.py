import numpy as np
import pytest
import tifffile

from deconflow import DeconflowError
from deconflow.io import read_ome_description, read_tiff, write_ome_tiff, write_tiff
from deconflow.io._atomic import atomic_destination


def test_round_trip_keeps_data_and_voxel_size(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    path = write_tiff(
        tmp_path / "a.tif", data, voxel_size_um=(0.3, 0.065, 0.065), metadata={"method": "rl"}
    )
    image = read_tiff(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.axes == "ZYX"
    np.testing.assert_allclose(image.voxel_size_um, (0.3, 0.065, 0.065), rtol=1e-6)
    assert '"method": "rl"' in tifffile.TiffFile(path).imagej_metadata["Info"]


def test_2d_round_trip(tmp_path):
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    image = read_tiff(write_tiff(tmp_path / "b.tif", data, voxel_size_um=(0.1, 0.2)))
    np.testing.assert_array_equal(image.data, data)
    np.testing.assert_allclose(image.voxel_size_um, (0.1, 0.2), rtol=1e-6)


def test_sample_data_voxel_sizes(sample_image, sample_bead):
    np.testing.assert_allclose(sample_image.voxel_size_um, (0.125, 0.02196, 0.02196), rtol=1e-3)
    np.testing.assert_allclose(sample_bead.voxel_size_um, (0.125, 0.0225, 0.0225), rtol=1e-3)


def test_ome_tiff_physical_sizes_in_nanometres(tmp_path):
    path = tmp_path / "c.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 5, 6), np.uint16),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeZ": 250.0,
            "PhysicalSizeZUnit": "nm",
            "PhysicalSizeY": 0.1,
            "PhysicalSizeX": 0.1,
        },
    )
    np.testing.assert_allclose(read_tiff(path).voxel_size_um, (0.25, 0.1, 0.1))


def test_plain_tiff_has_no_voxel_size(tmp_path):
    path = tmp_path / "d.tif"
    tifffile.imwrite(path, np.zeros((4, 5, 6), np.uint16), photometric="minisblack")
    assert read_tiff(path).voxel_size_um is None


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DeconflowError, match="No such file"):
        read_tiff(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(DeconflowError, match="Could not read"):
        read_tiff(bad)


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    dest = tmp_path / "out.tif"
    dest.write_bytes(b"previous result")

    def interrupted_write():
        with atomic_destination(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        interrupted_write()
    assert dest.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


@pytest.mark.parametrize(
    ("axes", "shape", "voxel"),
    [
        ("ZYX", (4, 5, 6), (0.3, 0.1, 0.1)),
        ("ZCYX", (4, 2, 5, 6), (0.3, 0.1, 0.1)),
        ("TCZYX", (2, 2, 3, 5, 6), (0.25, 0.065, 0.07)),
        ("TYX", (3, 5, 6), (0.2, 0.2)),
    ],
)
def test_ome_round_trip_keeps_axes_voxel_size_and_description(tmp_path, axes, shape, voxel):
    data = np.random.default_rng(1).random(shape).astype(np.float32)
    record = {"method": "rl", "psf_sha256": ["ab" * 32], "weights_sha256": None}
    path = write_ome_tiff(
        tmp_path / "x.ome.tif", data, axes=axes, voxel_size_um=voxel, description=record
    )
    image = read_tiff(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.axes == axes
    np.testing.assert_allclose(image.voxel_size_um, voxel, rtol=1e-6)
    assert read_ome_description(path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["x.ome.tif"]  # no temporary left


def test_ome_writer_refuses_axes_it_cannot_store(tmp_path):
    with pytest.raises(DeconflowError, match="Cannot write axes"):
        write_ome_tiff(tmp_path / "x.ome.tif", np.zeros((2, 3, 4)), axes="YXZ")
    with pytest.raises(DeconflowError, match="does not match the spatial axes"):
        write_ome_tiff(
            tmp_path / "x.ome.tif", np.zeros((2, 3, 4)), axes="ZYX", voxel_size_um=(1, 1)
        )
    assert not list(tmp_path.iterdir())


def test_description_of_foreign_or_broken_files_is_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 5), np.uint8))
    broken = tmp_path / "broken.ome.tif"
    broken.write_bytes(b"II*\x00garbage")
    other = tmp_path / "other.ome.tif"
    tifffile.imwrite(other, np.zeros((4, 5), np.uint8), ome=True, metadata={"Description": "hi"})
    for path in (plain, broken, other, tmp_path / "missing.ome.tif"):
        assert read_ome_description(path) is None


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [
        (np.float64, np.float32),
        (np.int32, np.float32),
        (np.uint32, np.float32),
        (np.int8, np.int16),
        (bool, np.uint8),
        (np.uint16, np.uint16),
        (np.float32, np.float32),
    ],
)
def test_write_tiff_stores_any_real_dtype_as_an_imagej_type(tmp_path, dtype, stored):
    # numpy's default float64 (and int32, bool) are not ImageJ types; they are converted
    data = (np.arange(2 * 3 * 4).reshape(2, 3, 4) % 7 - (dtype == np.int8)).astype(dtype)
    image = read_tiff(write_tiff(tmp_path / "a.tif", data, voxel_size_um=(0.5, 0.2, 0.1)))
    assert image.data.dtype == stored
    np.testing.assert_array_equal(image.data, data.astype(stored))
    np.testing.assert_allclose(image.voxel_size_um, (0.5, 0.2, 0.1), rtol=1e-6)


def test_write_tiff_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(DeconflowError, match="write_ome_tiff"):
        write_tiff(tmp_path / "a.tif", np.zeros((2, 2, 3, 4), np.float32))
    with pytest.raises(DeconflowError, match="complex"):
        write_tiff(tmp_path / "a.tif", np.zeros((3, 4), complex))
    with pytest.raises(DeconflowError, match="does not fit a 3D"):
        write_tiff(tmp_path / "a.tif", np.zeros((2, 3, 4), np.float32), voxel_size_um=(0.1, 0.1))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
def test_uncalibrated_imagej_files_have_no_voxel_size(tmp_path, shape):
    # without a voxel size the file must not read back as 1 µm pixels (a 2D bead measured
    # at 0.1 µm would then be shrunk tenfold to "match" the image)
    data = np.zeros(shape, np.uint16)
    assert read_tiff(write_tiff(tmp_path / "a.tif", data)).voxel_size_um is None
    tifffile.imwrite(tmp_path / "b.tif", data, imagej=True)
    assert read_tiff(tmp_path / "b.tif").voxel_size_um is None
    # a calibration without a unit is still read (as µm)
    tifffile.imwrite(tmp_path / "c.tif", data, imagej=True, resolution=(10.0, 10.0))
    np.testing.assert_allclose(read_tiff(tmp_path / "c.tif").voxel_size_um[-2:], (0.1, 0.1))


@pytest.mark.parametrize("voxel", [(0.3, 0.0, 0.1), (0.3, -0.1, -0.1), (0.3, float("nan"), 0.1)])
def test_writers_refuse_voxel_sizes_that_are_not_positive(tmp_path, voxel):
    # before: ZeroDivisionError / struct.error from tifffile, or a file silently written
    # with a calibration that reads back as "no voxel size"
    data = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(DeconflowError, match="positive micrometres"):
        write_tiff(tmp_path / "a.tif", data, voxel_size_um=voxel)
    with pytest.raises(DeconflowError, match="positive micrometres"):
        write_ome_tiff(tmp_path / "a.ome.tif", data, axes="ZYX", voxel_size_um=voxel)
    assert not list(tmp_path.iterdir())


def test_atomic_write_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    # a power cut after an unsynced rename can leave an empty file under the final name
    import os

    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dest = tmp_path / "out.tif"
    with atomic_destination(dest) as tmp:
        tmp.write_bytes(b"result")
    inode = dest.stat().st_ino  # the rename keeps the temporary file's inode
    assert events == [("fsync", inode), ("replace", inode)]
    assert dest.read_bytes() == b"result"


def _ome_file_with(path, z_size: str) -> None:
    """Write an OME-TIFF whose z size reads ``z_size``, as another program might write it."""
    data = np.zeros((4, 5, 6), np.uint16)
    meta = {"axes": "ZYX", "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata.replace('PhysicalSizeZ="0.3"', z_size)
    tifffile.imwrite(path, data, description=xml, metadata=None, photometric="minisblack")


@pytest.mark.parametrize(
    ("z_size", "expected"),
    [
        ('PhysicalSizeZ="0,3"', (0.3, 0.1, 0.1)),  # a decimal comma from some locales
        ('PhysicalSizeZ="3000" PhysicalSizeZUnit="&#197;"', (0.3, 0.1, 0.1)),
        ('PhysicalSizeZ="0.03" PhysicalSizeZUnit="cm"', (300.0, 0.1, 0.1)),
        ('PhysicalSizeZ="n/a"', None),  # unreadable: no voxel size, the data still read
    ],
)
def test_ome_sizes_in_other_spellings(tmp_path, z_size, expected):
    path = tmp_path / "other.ome.tif"
    _ome_file_with(path, z_size)
    image = read_tiff(path)
    assert image.data.shape == (4, 5, 6)
    if expected is None:
        assert image.voxel_size_um is None
    else:
        np.testing.assert_allclose(image.voxel_size_um, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("unit", "factor"), [("micrometres", 1.0), ("cm", 1e4), ("nanometers", 1e-3)]
)
def test_imagej_units_in_other_spellings(tmp_path, unit, factor):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 5, 6), np.uint16),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": unit},
    )
    np.testing.assert_allclose(
        read_tiff(path).voxel_size_um, (2.0 * factor, 0.5 * factor, 0.5 * factor)
    )


def test_running_out_of_memory_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    write_tiff(path, np.zeros((2, 4, 4), np.float32))

    def no_memory(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 64. GiB")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_memory)
    with pytest.raises(DeconflowError, match="Not enough memory") as info:
        read_tiff(path)
    assert "complete" not in str(info.value)


def test_imagej_stack_with_a_one_unit_z_step_keeps_its_voxel_size(tmp_path):
    # ImageJ leaves "spacing" out of a calibrated stack whose z step is 1 (its default):
    # a 1 µm confocal stack then read back with no voxel size at all
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 5, 6), np.uint16),
        imagej=True,
        resolution=(1 / 0.1, 1 / 0.1),
        metadata={"axes": "ZYX", "unit": "micron"},
    )
    assert "spacing" not in tifffile.TiffFile(path).imagej_metadata
    np.testing.assert_allclose(read_tiff(path).voxel_size_um, (1.0, 0.1, 0.1))


def test_ome_tiff_with_broken_xml_is_read_without_a_voxel_size(tmp_path):
    # an unescaped "&" from another program: tifffile still reads the pixels, and the file
    # was refused as damaged ("is the file complete?")
    path = tmp_path / "ok.ome.tif"
    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    meta = {"axes": "ZYX", "Name": "x", "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata.replace('Name="x"', 'Name="A & B"')
    broken = tmp_path / "broken.ome.tif"
    tifffile.imwrite(broken, data, description=xml, metadata=None, photometric="minisblack")
    image = read_tiff(broken)
    np.testing.assert_array_equal(image.data, data)
    assert image.axes == "ZYX"
    assert image.voxel_size_um is None


def test_ome_tiff_with_several_images_is_refused(tmp_path):
    # a multi-position file: only the first position was read, silently
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for _ in range(2):
            tif.write(np.zeros((4, 5, 6), np.uint16), photometric="minisblack")
    with pytest.raises(DeconflowError, match="2 images"):
        read_tiff(path)


def test_ome_writer_refuses_a_repeated_axis(tmp_path):
    # before: tifffile's OmeXmlError, not the documented DeconflowError
    with pytest.raises(DeconflowError, match="Cannot write axes 'ZZYX'"):
        write_ome_tiff(tmp_path / "x.ome.tif", np.zeros((2, 3, 4, 5)), axes="ZZYX")
    assert not list(tmp_path.iterdir())


def test_imagej_units_of_y_and_z_that_differ_from_x(tmp_path):
    # ImageJ writes "yunit"/"zunit" when an axis has its own unit; reading the z step of
    # 300 nm as 300 µm made the stack a thousand times too deep
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        np.zeros((4, 5, 6), np.uint16),
        imagej=True,
        resolution=(1 / 0.1, 1 / 100.0),
        metadata={"axes": "ZYX", "unit": "micron", "yunit": "nm", "zunit": "nm", "spacing": 300},
    )
    np.testing.assert_allclose(read_tiff(path).voxel_size_um, (0.3, 0.1, 0.1))


def _tifffile_layout(path):
    """The axes and shape tifffile reads from a file, length-1 axes included."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return series.get_axes(squeeze=False), series.get_shape(squeeze=False)


@pytest.mark.parametrize(
    ("axes", "shape", "declared", "declared_shape"),
    [
        ("TCZYX", (2, 1, 3, 4, 5), "TCZYX", (2, 1, 3, 4, 5)),
        ("CZYX", (1, 3, 4, 5), "TCZYX", (1, 1, 3, 4, 5)),  # OME gives every image a SizeT
        ("CTYX", (1, 2, 4, 5), "CTYX", (1, 2, 4, 5)),  # 2D, in the file's order
    ],
)
def test_ome_tiff_keeps_its_length_1_axes(tmp_path, axes, shape, declared, declared_shape):
    # tifffile squeezes length-1 axes: a one-channel OME-TIFF read as "ZYX", and its
    # result was written without the C axis
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    path = tmp_path / "one_channel.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={"axes": axes})
    image = read_tiff(path)
    assert image.axes == "".join(a for a, n in zip(axes, shape) if n > 1 or a in "YX")
    assert image.declared_axes == declared and image.declared_shape == declared_shape
    # written back with the declared axes, the file has the input's layout
    out = write_ome_tiff(
        tmp_path / "out.ome.tif",
        image.data.reshape(image.declared_shape),
        axes=image.declared_axes,
    )
    assert _tifffile_layout(out) == _tifffile_layout(path)
    np.testing.assert_array_equal(read_tiff(out).data, image.data)


@pytest.mark.parametrize(("description", "declared"), [("", "ZYX"), ("channels=1\n", "ZCYX")])
def test_imagej_hyperstack_declares_a_length_1_channel_only_by_name(
    tmp_path, description, declared
):
    # ImageJ writes channels= only above 1: a one-channel hyperstack from Fiji is a Z stack
    data = np.zeros((3, 4, 5), np.uint16)
    text = f"ImageJ=1.54f\nimages=3\n{description}slices=3\nhyperstack=true\nmode=grayscale\n"
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, description=text, metadata=None, photometric="minisblack")
    image = read_tiff(path)
    assert image.axes == "ZYX" and image.declared_axes == declared


def test_plain_tiff_declares_only_its_axes(tmp_path):
    path = write_tiff(tmp_path / "a.tif", np.zeros((3, 4, 5), np.float32))
    image = read_tiff(path)
    assert image.declared_axes == image.axes == "ZYX" and image.declared_shape == (3, 4, 5)


def test_ome_tiff_without_a_z_step_keeps_its_pixel_size(tmp_path):
    # PhysicalSizeX/Y but no PhysicalSizeZ gave no voxel size at all, dropping what is known
    path = tmp_path / "no_z.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeY": 65.0, "PhysicalSizeYUnit": "nm", "PhysicalSizeX": 0.065}
    tifffile.imwrite(path, np.zeros((4, 5, 6), np.uint16), ome=True, metadata=meta)
    image = read_tiff(path)
    assert image.voxel_size_um is None  # a z step is never guessed
    np.testing.assert_allclose(image.pixel_size_um, (0.065, 0.065))
    # a single plane needs no z step
    plane = tmp_path / "plane.ome.tif"
    tifffile.imwrite(plane, np.zeros((5, 6), np.uint16), ome=True, metadata={**meta, "axes": "YX"})
    np.testing.assert_allclose(read_tiff(plane).voxel_size_um, (0.065, 0.065))


def test_pixel_size_comes_with_a_full_voxel_size(tmp_path, sample_image):
    np.testing.assert_allclose(sample_image.pixel_size_um, sample_image.voxel_size_um[1:])
    path = write_tiff(tmp_path / "a.tif", np.zeros((3, 4, 5), np.float32))
    assert read_tiff(path).pixel_size_um is None


@pytest.mark.parametrize("kind", ["imagej", "ome", "plain"])
def test_truncated_stack_is_refused_not_read_as_its_first_plane(tmp_path, kind):
    # a copy cut short: tifffile read the first plane alone, and the 3D stack was then
    # deconvolved (with a 2D PSF) as a 2D image, or lost its voxel size, with exit status 0
    path = tmp_path / f"{kind}.tif"
    data = np.arange(6 * 16 * 16, dtype=np.uint16).reshape(6, 16, 16)
    options = {
        "imagej": {"imagej": True, "metadata": {"axes": "ZYX", "spacing": 0.2, "unit": "um"}},
        "ome": {"ome": True, "metadata": {"axes": "ZYX", "PhysicalSizeZ": 0.2}},
        "plain": {"shaped": False, "photometric": "minisblack"},
    }[kind]
    tifffile.imwrite(path, data, **options)
    np.testing.assert_array_equal(read_tiff(path).data, data)
    cut = tmp_path / f"{kind}_cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DeconflowError, match="is the file complete"):
        read_tiff(cut)
