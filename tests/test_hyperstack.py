import numpy as np
import pytest

import deconflow
from deconflow import DeconflowError, DeconvolutionSettings, Progress
from deconflow.hyperstack import HyperstackResult, iter_deconvolve_hyperstack, split_axes
from deconflow.pipeline import run_to_result
from tests.conftest import gaussian_psf


@pytest.fixture(scope="module")
def tczyx():
    rng = np.random.default_rng(0)
    return rng.poisson(20.0, (2, 3, 6, 20, 20)).astype(np.uint16)


def test_each_volume_equals_its_single_stack_run(tczyx):
    psfs = [
        gaussian_psf((5, 7, 7), (1.0, 1.5, 1.5)),
        gaussian_psf((5, 7, 7), (1.5, 2.0, 2.0)),
        None,
    ]
    psfs[2] = psfs[0]
    settings = DeconvolutionSettings(device="cpu", rl=deconflow.solvers.RichardsonLucy(3))
    events = list(iter_deconvolve_hyperstack(tczyx, psfs, settings, axes="TCZYX"))
    result = events[-1]
    assert isinstance(result, HyperstackResult)
    assert result.image.shape == tczyx.shape and result.image.dtype == np.float32
    assert len(result.psfs) == 3 and len(result.backgrounds) == 6
    volumes = {e.volume for e in events if isinstance(e, Progress)}
    assert volumes == set(range(6))
    assert all(e.volumes == 6 for e in events if isinstance(e, Progress))
    for t, c in [(0, 0), (1, 1), (1, 2)]:
        single = deconflow.deconvolve(tczyx[t, c], psfs[c], iterations=3, device="cpu")
        np.testing.assert_allclose(result.image[t, c], single, rtol=1e-5, atol=1e-5)


def test_one_psf_for_all_channels(tczyx):
    events = list(
        iter_deconvolve_hyperstack(tczyx[0], gaussian_psf((5, 7, 7), (1, 1, 1)), axes="CZYX")
    )
    assert events[-1].image.shape == tczyx[0].shape


@pytest.mark.parametrize(
    ("axes", "ndim", "fragment"),
    [
        ("ZYX", 4, "name 3 dimensions"),
        ("XYZ", 3, "Unsupported axes"),
        ("CCZYX", 5, "Unsupported axes"),
        ("QZYX", 4, "Unsupported axes"),
    ],
)
def test_bad_axes(axes, ndim, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        split_axes(axes, ndim)


def test_wrong_number_of_psfs(tczyx):
    psf = gaussian_psf((5, 7, 7), (1, 1, 1))
    with pytest.raises(DeconflowError, match="2 PSFs for 3 channels"):
        list(iter_deconvolve_hyperstack(tczyx, [psf, psf], axes="TCZYX"))


def test_a_psf_with_other_axes_than_the_volumes_is_named(tczyx):
    psf = gaussian_psf((5, 7, 7), (1, 1, 1))
    with pytest.raises(DeconflowError, match=r"volumes are 3D \(ZYX\) but a PSF is 2D"):
        list(iter_deconvolve_hyperstack(tczyx[0], psf[2], axes="CZYX"))
    with pytest.raises(DeconflowError, match=r"volumes are 2D \(YX\) but a PSF is 3D"):
        list(iter_deconvolve_hyperstack(tczyx[0, :, 0], psf, axes="CYX"))


def test_a_psf_voxel_size_without_the_image_voxel_size_is_refused(tczyx):
    # as for one stack: the PSF cannot be resampled to an unknown image voxel size
    psf = gaussian_psf((5, 7, 7), (1, 1, 1))
    settings = DeconvolutionSettings(device="cpu", psf_voxel_size_um=(0.1, 0.05, 0.05))
    with pytest.raises(DeconflowError, match="psf_voxel_size was given without voxel_size"):
        list(iter_deconvolve_hyperstack(tczyx[0], psf, settings, axes="CZYX"))


def test_the_result_records_the_voxel_sizes_that_applied_as_a_single_stack_does(tczyx):
    psf = gaussian_psf((5, 7, 7), (1, 1, 1))
    settings = DeconvolutionSettings(
        device="cpu", rl=deconflow.solvers.RichardsonLucy(1), voxel_size_um=[0.3, 0.1, 0.1]
    )
    stacked = list(iter_deconvolve_hyperstack(tczyx[0, :1], psf, settings, axes="CZYX"))[-1]
    single = run_to_result(deconflow.iter_deconvolve(tczyx[0, 0], psf, settings))
    assert stacked.settings.voxel_size_um == single.settings.voxel_size_um == (0.3, 0.1, 0.1)
    # no PSF voxel size given: the PSF was taken at the image's, and the record says so
    assert stacked.settings.psf_voxel_size_um == single.settings.psf_voxel_size_um
    assert stacked.settings.psf_voxel_size_um == (0.3, 0.1, 0.1)


def test_the_result_keeps_each_volumes_run_notes_with_its_index():
    data = np.random.default_rng(1).poisson(20.0, (2, 12, 40, 40)).astype(np.uint16)
    psf = gaussian_psf((5, 7, 7), (1, 1, 1))
    settings = DeconvolutionSettings(
        device="cpu", rl=deconflow.solvers.RichardsonLucy(1), tile_shape=(12, 20, 20)
    )
    stacked = list(iter_deconvolve_hyperstack(data, psf, settings, axes="TZYX"))[-1]
    single = run_to_result(deconflow.iter_deconvolve(data[1], psf, settings))
    assert single.notes and any("tiles" in note for note in single.notes)
    # were dropped: a tiled or retried hyperstack kept no record of it
    assert stacked.notes == tuple(f"T{t}: {note}" for t in (0, 1) for note in single.notes)
    assert stacked.provenance()["run_notes"] == list(stacked.notes)
