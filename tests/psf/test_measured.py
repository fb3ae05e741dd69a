import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from tests.conftest import gaussian_psf

from deconflow import DeconflowError, DeconflowWarning, prepare_psf
from deconflow.psf import resample_psf
from deconflow.psf.measured import centre_of_mass_near_peak, find_saturation

# real measured bead stacks in ../shared/data/real with their voxel sizes (z, y, x) in µm
REAL_BEADS = {
    "bioimagenotebooks_confocal_beads/psf_45cube_from_commit_ec13757.tif": (0.125, 0.0225, 0.0225),
    "cudadecon_llsm_widefield_psfs/wideFieldPSF_560_z100nm.tif": (0.1, 0.1003, 0.1003),
    "pycudadecon_lls_psf/psf.tif": (0.1, 0.101, 0.101),
    "pyotf_measured_psfs/psf_wl520nm_z300nm_x130nm_na0.85_n1.0.tif": (0.3, 0.13, 0.13),
    "pyotf_measured_psfs/BIL113_zstack_z300nm_current.tif": (0.3, 0.0867, 0.0867),
    "redlionfish_rfi_psf/PSF_RFI_8bit.tif": (0.3, 0.3, 0.3),
}


def _centring_error(psf):
    return np.abs(centre_of_mass_near_peak(psf.astype(np.float64)) - np.asarray(psf.shape) // 2)


@pytest.mark.parametrize("name", sorted(REAL_BEADS))
def test_real_bead_stacks_are_centred_normalised_and_odd(shared_real, name):
    raw = tifffile.imread(shared_real / name)
    before = raw.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconflowWarning)  # some beads are off-centre
        prepared = prepare_psf(raw, voxel_size_um=REAL_BEADS[name])
    psf = prepared.data
    assert np.array_equal(raw, before), "the input stack was modified"
    assert psf.dtype == np.float32
    assert all(n % 2 == 1 for n in psf.shape)
    assert abs(float(psf.sum(dtype=np.float64)) - 1.0) < 1e-5
    assert psf.min() >= 0
    assert np.all(_centring_error(psf) < 0.1)
    # the brightest voxel of the lightly smoothed PSF is the centre voxel (or a neighbour)
    smooth = ndimage.gaussian_filter(psf.astype(np.float64), 1.0)
    peak = np.unravel_index(int(np.argmax(smooth)), psf.shape)
    assert np.all(np.abs(np.asarray(peak) - np.asarray(psf.shape) // 2) <= 1)


def _synthetic_bead(shape, centre, sigma, peak, background, rng, dtype=np.uint16):
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma))
    clean = background + peak * np.exp(-0.5 * r2)
    return rng.poisson(clean).astype(dtype)


def test_synthetic_bead_sub_voxel_centre_and_background_are_recovered():
    rng = np.random.default_rng(0)
    raw = _synthetic_bead((32, 40, 41), (15.3, 20.6, 19.8), (3.0, 1.6, 1.6), 3000, 100, rng)
    prepared = prepare_psf(raw)
    assert abs(prepared.background - 100) < 2
    np.testing.assert_allclose(prepared.shift_vox, [-0.3, 0.4, 0.2], atol=0.05)
    assert np.all(_centring_error(prepared.data) < 0.05)
    # background removed: the PSF's width matches the bead's sigma, not a flat pedestal
    profile = prepared.data[prepared.data.shape[0] // 2, prepared.data.shape[1] // 2]
    half = profile.max() / 2
    fwhm = np.count_nonzero(profile > half)
    assert abs(fwhm - 2.355 * 1.6) <= 1.5


def test_saturated_bead_is_reported():
    rng = np.random.default_rng(1)
    raw = _synthetic_bead((21, 31, 31), (10, 15, 15), (2.5, 1.5, 1.5), 9000, 100, rng)
    raw = np.minimum(raw, 4095).astype(np.uint16)  # 12-bit camera clips the core
    assert find_saturation(raw) > 1
    with pytest.warns(DeconflowWarning, match="saturated"):
        prepared = prepare_psf(raw)
    assert prepared.saturated_voxels > 1
    assert any("saturated" in note for note in prepared.notes)


def test_single_bright_voxel_is_not_saturation():
    raw = np.zeros((5, 5, 5), np.uint8)
    raw[2, 2, 2] = 255
    assert find_saturation(raw) == 0


def test_off_centre_bead_warns_and_is_centred():
    rng = np.random.default_rng(2)
    raw = _synthetic_bead((31, 41, 41), (8, 30, 12), (2.5, 1.5, 1.5), 2000, 50, rng)
    with pytest.warns(DeconflowWarning, match="off the stack's centre"):
        prepared = prepare_psf(raw)
    assert np.all(_centring_error(prepared.data) < 0.1)


def test_psf_larger_than_image_is_cropped_with_a_note():
    rng = np.random.default_rng(3)
    raw = _synthetic_bead((41, 41, 41), (20, 20, 20), (6.0, 5.0, 5.0), 5000, 10, rng)
    prepared = prepare_psf(raw, max_shape=(12, 30, 31))
    assert all(p <= m for p, m in zip(prepared.data.shape, (12, 30, 31)))
    assert all(n % 2 == 1 for n in prepared.data.shape)
    assert any("cropped" in note for note in prepared.notes)
    assert abs(float(prepared.data.sum()) - 1) < 1e-5


def test_resampling_round_trip_and_physical_width():
    psf = gaussian_psf((25, 41, 41), (3.0, 3.0, 3.0))  # sigma 3 voxels of (0.1, 0.05, 0.05) µm
    fine = resample_psf(psf, (0.1, 0.05, 0.05), (0.05, 0.025, 0.025))
    assert all(n % 2 == 1 for n in fine.shape)
    assert abs(fine.sum() - 1) < 1e-9
    # same physical width: sigma 0.3 µm = 6 voxels of 0.05 µm along z
    z_profile = fine[:, fine.shape[1] // 2, fine.shape[2] // 2]
    z = np.arange(fine.shape[0]) - fine.shape[0] // 2
    width = np.sqrt(np.sum(z**2 * z_profile) / np.sum(z_profile))
    assert abs(width - 6.0) < 0.15
    back = resample_psf(fine, (0.05, 0.025, 0.025), (0.1, 0.05, 0.05))
    crop = tuple(
        slice((b - p) // 2, (b - p) // 2 + p) if b > p else slice(None)
        for b, p in zip(back.shape, psf.shape)
    )
    core = back[crop]
    ref = psf[tuple(slice((p - c) // 2, (p - c) // 2 + c) for p, c in zip(psf.shape, core.shape))]
    assert np.max(np.abs(core - ref)) < 0.03 * psf.max()


def test_prepare_resamples_to_image_voxel_size():
    psf = gaussian_psf((21, 31, 31), (2.0, 2.0, 2.0)) * 1e4 + 5
    prepared = prepare_psf(psf, voxel_size_um=(0.2, 0.1, 0.1), target_voxel_size_um=(0.4, 0.1, 0.1))
    assert prepared.voxel_size_um == (0.4, 0.1, 0.1)
    z = prepared.data[:, prepared.data.shape[1] // 2, prepared.data.shape[2] // 2]
    zz = np.arange(z.size) - z.size // 2
    assert abs(np.sqrt(np.sum(zz**2 * z) / z.sum()) - 1.0) < 0.1  # 2 voxels -> 1 voxel
    assert any("resampled" in note for note in prepared.notes)


def test_a_psf_that_becomes_a_point_at_the_image_voxels_warns_about_units():
    psf = gaussian_psf((21, 31, 31), (2.0, 2.0, 2.0)) * 1e4 + 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeconflowWarning)  # a plausible pair stays silent
        prepare_psf(psf, voxel_size_um=(0.2, 0.1, 0.1), target_voxel_size_um=(0.3, 0.1, 0.1))
    # the image's voxel size typed in nm: the PSF shrinks to one voxel, the output is the input
    with pytest.warns(DeconflowWarning, match="in micrometres"):
        prepared = prepare_psf(
            psf, voxel_size_um=(0.2, 0.1, 0.1), target_voxel_size_um=(200.0, 100.0, 100.0)
        )
    assert any("cannot sharpen" in note for note in prepared.notes)


def test_an_undersampled_bead_upsampled_to_the_image_warns():
    # a bead imaged with 3x3 binning: its core spans one of its voxels, and upsampling it
    # to the image's voxels interpolated a shape that was never measured, without a word
    coarse = gaussian_psf((21, 15, 15), (2.0, 0.6, 0.6)) * 1e4 + 5
    with pytest.warns(DeconflowWarning, match="3x coarser along y, 3x coarser along x"):
        prepared = prepare_psf(
            coarse, voxel_size_um=(0.2, 0.3, 0.3), target_voxel_size_um=(0.2, 0.1, 0.1)
        )
    assert any("interpolated, not measured" in note for note in prepared.notes)
    assert not any("along z" in note for note in prepared.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeconflowWarning)
        # the same bead at the image's voxels, and a sampled one upsampled as much: silent
        prepare_psf(coarse, voxel_size_um=(0.2, 0.3, 0.3), target_voxel_size_um=(0.2, 0.3, 0.3))
        sampled = gaussian_psf((21, 15, 15), (2.0, 1.2, 1.2)) * 1e4 + 5
        prepare_psf(sampled, voxel_size_um=(0.2, 0.3, 0.3), target_voxel_size_um=(0.2, 0.1, 0.1))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (np.zeros((0, 5, 5)), "non-empty"),
        (np.ones((2, 2, 2, 2)), "2D"),
        (np.full((5, 5, 5), np.nan), "NaN"),
        (np.full((9, 9, 9), 7.0), "no signal"),
        (np.zeros((9, 9, 9)), "no signal"),
        (np.ones((5, 5), dtype=complex), "real numbers"),
    ],
)
def test_bad_psf_inputs(raw, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        prepare_psf(raw)


def test_noiseless_psf_is_kept_down_to_its_faint_tails():
    psf = gaussian_psf((31, 31, 31), (2.0, 2.0, 2.0))
    prepared = prepare_psf(psf)
    shape = prepared.data.shape
    assert shape[0] >= 17, "support cropped into the PSF's visible tail"
    crop = tuple(slice((31 - n) // 2, (31 - n) // 2 + n) for n in shape)
    kept = psf[crop]
    assert kept.sum() > 0.9999
    np.testing.assert_allclose(prepared.data, kept / kept.sum(), atol=1e-6)


def test_blurred_delta_is_its_own_psf():
    raw = np.zeros((15, 21, 21))
    raw[7, 10, 10] = 1.0
    raw = ndimage.gaussian_filter(raw, (2.0, 1.2, 1.2)) * 1000
    prepared = prepare_psf(raw)
    assert prepared.data.shape[0] % 2 == 1
    assert np.unravel_index(np.argmax(prepared.data), prepared.data.shape) == tuple(
        np.asarray(prepared.data.shape) // 2
    )


@pytest.mark.parametrize(("background", "peak"), [(3, 200), (1000, 500), (100, 2000)])
def test_background_noise_leaves_no_pedestal(background, peak):
    # Clipping the background's zero-mean noise at 0 leaves ~0.4 sigma per voxel: 36-72 %
    # of the PSF's sum sat where the bead has no light. Known answer: the clean bead.
    rng = np.random.default_rng(4)
    shape, centre, sigma = (41, 51, 51), (20, 25, 25), (3.0, 1.5, 1.5)
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    clean = peak * np.exp(-0.5 * sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma)))
    prepared = prepare_psf(rng.poisson(clean + background).astype(np.uint16))
    psf = prepared.data.astype(np.float64)
    box = tuple(slice(c - n // 2, c + n // 2 + 1) for c, n in zip(centre, psf.shape))
    truth = clean[box] / clean.sum()
    dark = truth < 1e-3 * truth.max()
    assert psf[dark].sum() < 0.2
    assert 0.65 < psf.max() / truth.max() < 1.35


@pytest.mark.parametrize(
    ("to_voxel", "oversample"), [((0.3, 0.04, 0.04), 2), ((0.1, 0.12, 0.12), 8)]
)
def test_resampling_matches_the_psf_computed_at_the_new_voxel_size(to_voxel, oversample):
    # Known answer: the model PSF computed directly on the coarser grid. z planes are
    # point samples; coarser pixels integrate. A Gaussian anti-aliasing filter of
    # (r - 1) / 2 voxels lowered the peak by 14 % (z 0.1 -> 0.3 um) and 7 % (xy 3x).
    from deconflow.psf import confocal_psf

    def model(shape, voxel):
        return confocal_psf(
            shape,
            voxel,
            na=1.4,
            excitation_wavelength_nm=488,
            emission_wavelength_nm=520,
            refractive_index=1.515,
            oversample=oversample,
        ).astype(np.float64)

    fine_voxel = (0.1, 0.04, 0.04)
    coarse = resample_psf(model((31, 61, 61), fine_voxel), fine_voxel, to_voxel)
    direct = model(coarse.shape, to_voxel)
    assert abs(coarse.max() / direct.max() - 1) < 0.02
    assert np.abs(coarse - direct).sum() < 0.02


def test_uneven_background_is_fitted_not_kept_as_psf():
    # illumination falling off towards one corner (a shading of 60 counts over the field)
    rng = np.random.default_rng(7)
    shape = (15, 96, 96)
    z, y, x = np.indices(shape, dtype=float)
    shading = (
        200.0 + 80.0 * x / shape[2] - 40.0 * (y / shape[1]) * (x / shape[2]) + 10.0 * z / shape[0]
    )
    bead = 5000.0 * np.exp(
        -0.5 * (((z - 7) / 2.0) ** 2 + ((y - 48) / 2.5) ** 2 + ((x - 48) / 2.5) ** 2)
    )
    prepared = prepare_psf(rng.poisson(shading + bead).astype(np.uint16))
    psf = prepared.data.astype(float)
    centre = np.asarray(psf.shape) // 2
    _, yy, xx = np.indices(psf.shape)
    far = np.hypot(yy - centre[1], xx - centre[2]) > 12  # > 4.8 bead sigmas
    assert psf[far].sum() < 0.01
    assert any("smooth trend" in note for note in prepared.notes)
    assert abs(prepared.background - shading.mean()) < 0.5  # the median alone: 1.5 off


def test_a_real_vignetted_bead_keeps_no_background_far_from_its_centre(shared_real):
    # pyotf's widefield bead (NA 0.85, 0.13 um pixels): one corner of the field ~50 counts
    # darker; with a single background level 17 % of the PSF's sum lay beyond 100 px
    raw = tifffile.imread(
        shared_real / "pyotf_measured_psfs/psf_wl520nm_z300nm_x130nm_na0.85_n1.0.tif"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconflowWarning)
        psf = prepare_psf(raw).data.astype(float)
    centre = np.asarray(psf.shape) // 2
    _, yy, xx = np.indices(psf.shape)
    assert psf[np.hypot(yy - centre[1], xx - centre[2]) > 100].sum() < 0.08


def test_flat_background_is_not_fitted():
    rng = np.random.default_rng(8)
    shape = (15, 64, 64)
    z, y, x = np.indices(shape, dtype=float)
    bead = 3000.0 * np.exp(
        -0.5 * (((z - 7) / 2.0) ** 2 + ((y - 32) / 2.5) ** 2 + ((x - 32) / 2.5) ** 2)
    )
    prepared = prepare_psf(rng.poisson(100.0 + bead).astype(np.uint16))
    assert not any("trend" in note for note in prepared.notes)


@pytest.mark.parametrize(
    ("to_voxel", "shape"),
    [((0.05, 0.05, 0.05), (16, 32, 32)), ((0.2, 0.1, 0.1), (16, 32, 32)), ((0.1, 0.2), (32, 32))],
)
def test_resampling_an_even_shaped_psf_keeps_its_peak_on_the_centre_voxel(to_voxel, shape):
    # theoretical PSFs and PSFs from other tools peak at shape // 2 on an even axis too;
    # taking (shape - 1) / 2 as the centre shifted them by half a source voxel
    from_voxel = (0.1, 0.1, 0.1)[-len(shape) :]
    psf = gaussian_psf(shape, (2.0,) * len(shape))
    out = resample_psf(psf, from_voxel, to_voxel)
    assert all(n % 2 == 1 for n in out.shape)
    assert np.all(_centring_error(out) < 0.02)


@pytest.mark.parametrize("n_planes", [1, 3])
def test_bead_stack_of_few_planes_has_its_background_subtracted(n_planes):
    # a single plane saved as (1, Y, X), or a stack of a few planes, was taken as
    # background-free: a camera offset of 100 stayed in the PSF as a pedestal
    rng = np.random.default_rng(9)
    z, y, x = np.indices((n_planes, 64, 64), dtype=float)
    bead = 3000.0 * np.exp(
        -0.5 * (((z - n_planes // 2) / 1.5) ** 2 + ((y - 32) / 2.0) ** 2 + ((x - 32) / 2.0) ** 2)
    )
    prepared = prepare_psf(rng.poisson(100.0 + bead).astype(np.uint16))
    assert abs(prepared.background - 100.0) < 2
    psf = prepared.data.astype(np.float64)
    centre = np.asarray(psf.shape) // 2
    _, yy, xx = np.indices(psf.shape)
    assert psf[np.hypot(yy - centre[1], xx - centre[2]) > 10].sum() < 0.01


def test_off_centre_2d_bead_names_two_axes():
    rng = np.random.default_rng(10)
    raw = _synthetic_bead((41, 41), (30, 12), (1.5, 1.5), 2000, 50, rng)
    with pytest.warns(DeconflowWarning, match=r"voxels \(y, x\)"):
        prepare_psf(raw)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"voxel_size_um": (0.1, 0.1), "target_voxel_size_um": (0.2, 0.1, 0.1)}, "voxel_size_um"),
        ({"voxel_size_um": (0.2, 0.1, 0.1), "target_voxel_size_um": (0.4, 0.1)}, "target_voxel"),
        ({"voxel_size_um": (0.2, 0.0, 0.1), "target_voxel_size_um": (0.2, 0.1, 0.1)}, "positive"),
        ({"voxel_size_um": (0.2, 0.1, 0.1), "target_voxel_size_um": (np.nan, 0.1, 0.1)}, "posi"),
        ({"max_shape": (30, 30)}, "max_shape"),
    ],
)
def test_voxel_sizes_and_max_shape_that_do_not_fit_the_psf_are_named(kwargs, fragment):
    # these raised numpy's broadcast, overflow or zip errors, or said the PSF 'vanished'
    psf = gaussian_psf((21, 31, 31), (2.0, 2.0, 2.0)) * 1e4 + 5
    with pytest.raises(DeconflowError, match=fragment):
        prepare_psf(psf, **kwargs)


def test_resample_names_a_voxel_size_that_does_not_fit_the_psf():
    psf = gaussian_psf((21, 31, 31), (2.0, 2.0, 2.0))
    with pytest.raises(DeconflowError, match="from_voxel_um has 2 entries"):
        resample_psf(psf, (0.1, 0.1), (0.2, 0.1, 0.1))
