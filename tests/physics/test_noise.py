import warnings

import numpy as np
import pytest
from scipy import ndimage, signal

from deconflow import DeconflowError, DeconflowWarning
from deconflow.physics._out_of_band import _filter_diagonal, out_of_band_variance
from deconflow.physics.noise import (
    estimate_background,
    estimate_camera_noise,
    estimate_noise_sigma,
)
from deconflow.psf import confocal_psf, widefield_psf


def _blurred_structure(rng, shape=(16, 96, 96)):
    x = np.zeros(shape)
    x[tuple(rng.integers(0, s, 60) for s in shape)] = 400.0
    return ndimage.gaussian_filter(x, (1.5, 2.5, 2.5))


def test_noise_sigma_of_gaussian_noise_on_smooth_signal():
    rng = np.random.default_rng(0)
    clean = _blurred_structure(rng)
    for sigma in (0.5, 3.0, 10.0):
        noisy = clean + rng.normal(0, sigma, clean.shape)
        assert abs(estimate_noise_sigma(noisy) / sigma - 1) < 0.1


def test_background_of_sparse_poisson_stack_with_offset():
    rng = np.random.default_rng(1)
    clean = _blurred_structure(rng)
    for offset in (5.0, 100.0):
        noisy = rng.poisson(clean + offset).astype(np.float32)
        estimate = estimate_background(noisy)
        assert abs(estimate - offset) < 0.1 * offset + 0.5


@pytest.mark.parametrize(
    ("gain", "offset", "read_sigma", "peak_photons"),
    [
        (2.5, 100.0, 3.0, 200.0),
        (1.0, 0.0, 2.0, 80.0),
        (4.0, 1000.0, 6.0, 750.0),
        (1.5, 200.0, 2.0, 20.0),
    ],
)
def test_camera_noise_is_recovered_within_10_percent(gain, offset, read_sigma, peak_photons):
    rng = np.random.default_rng(int(gain * 10))
    points = np.zeros((24, 128, 128))
    points[tuple(rng.integers(0, [24, 128, 128], (300, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 3.0, 3.0))
    photons *= peak_photons / photons.max()
    image = offset + gain * rng.poisson(photons) + rng.normal(0.0, read_sigma, photons.shape)
    noise = estimate_camera_noise(image)
    assert abs(noise.gain / gain - 1) < 0.1
    assert abs(noise.read_sigma / read_sigma - 1) < 0.1
    assert abs(noise.offset - offset) < 0.1 * read_sigma + 0.01 * offset
    # a given offset is kept
    assert estimate_camera_noise(image, offset=offset).offset == offset
    np.testing.assert_allclose(noise.to_photons(offset + 3 * gain), 3.0, rtol=0.15)


def _sharp_confocal_stack(blobs: int, seed: int, gain: float = 2.0):
    """Blobs of ~1 voxel under a band-limited confocal PSF at 1000 photons: sharp signal."""
    rng = np.random.default_rng(seed)
    shape = (24, 64, 64)
    psf = confocal_psf(
        (21, 31, 31),
        (0.2, 0.1, 0.1),
        na=1.2,
        excitation_wavelength_nm=488,
        emission_wavelength_nm=520,
        refractive_index=1.33,
    )
    psf = psf / psf.sum()
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (blobs, 3)).T)] = 1.0
    photons = ndimage.convolve(ndimage.gaussian_filter(points, 1.0), psf, mode="constant")
    photons *= 1000.0 / photons.max()
    image = 100.0 + gain * rng.poisson(photons + 2.0) + rng.normal(0.0, 2.0, shape)
    return image, psf, gain


def test_sharp_confocal_signal_does_not_fool_the_gain():
    # the 4-neighbour residual passed this stack's curvature on as noise (gain x2.6); the
    # residual that cancels curvature and the PSF's out-of-band noise both see the noise
    image, psf, gain = _sharp_confocal_stack(3000, seed=0)
    assert abs(estimate_camera_noise(image).gain / gain - 1) < 0.1
    assert abs(estimate_camera_noise(image, psf=psf).gain / gain - 1) < 0.1
    # sparse bright blobs remain harder for the residual; the out-of-band estimate gave
    # 1.31 times the gain when it read the filtered stack's square against a Gaussian mean
    image, psf, gain = _sharp_confocal_stack(150, seed=1)
    assert abs(estimate_camera_noise(image).gain / gain - 1) < 0.2
    assert abs(estimate_camera_noise(image, psf=psf).gain / gain - 1) < 0.1


def _theoretical_psf(optics: str, voxel_um: tuple[float, float, float]) -> np.ndarray:
    """NA 1.2 water-immersion PSF at 520 nm emission (488 nm excitation), summing to 1."""
    in_plane = 31 if voxel_um[1] >= 0.09 else 47  # the same extent in µm
    shape = (21, in_plane, in_plane)
    if optics == "widefield":
        psf = widefield_psf(shape, voxel_um, na=1.2, wavelength_nm=520)
    else:
        psf = confocal_psf(
            shape, voxel_um, na=1.2, excitation_wavelength_nm=488, emission_wavelength_nm=520
        )
    return np.asarray(psf, dtype=np.float64) / float(psf.sum())


def _blobs_through(psf: np.ndarray, blobs: int, peak_photons: float) -> np.ndarray:
    """Photons of small blobs (sigma 1 voxel) blurred by ``psf``: what the microscope records."""
    rng = np.random.default_rng(9)
    shape = (24, 128, 128)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (blobs, 3)).T)] = 1.0
    blurred = signal.fftconvolve(ndimage.gaussian_filter(points, 1.0), psf, mode="same")
    photons = np.clip(blurred, 0.0, None)
    return photons * peak_photons / photons.max()


@pytest.mark.parametrize(
    ("optics", "voxel_um", "blobs", "peak_photons", "gain", "read_sigma"),
    [
        ("widefield", (0.2, 0.1, 0.1), 100, 1000.0, 2.0, 3.0),
        ("widefield", (0.3, 0.065, 0.065), 100, 100.0, 0.5, 1.5),
        ("confocal", (0.2, 0.1, 0.1), 100, 1000.0, 2.0, 3.0),
        ("confocal", (0.3, 0.065, 0.065), 3000, 100.0, 4.0, 5.0),
    ],
)
def test_out_of_band_gain_of_blobs_blurred_by_the_psf_is_within_10_percent(
    optics, voxel_um, blobs, peak_photons, gain, read_sigma
):
    """Known answer: blobs blurred by the very PSF the estimate is given, Poisson photons
    times the gain plus offset and Gaussian read noise. Reading the out-of-band stack's
    square against a Gaussian mean of the stack gave 1.15-1.61 times the gain here (most
    under widefield at 1000 photons)."""
    psf = _theoretical_psf(optics, voxel_um)
    photons = _blobs_through(psf, blobs, peak_photons)
    rng = np.random.default_rng(10)
    image = 100.0 + gain * rng.poisson(photons) + rng.normal(0.0, read_sigma, photons.shape)
    assert abs(estimate_camera_noise(image, psf=psf).gain / gain - 1) < 0.1


def test_a_2d_confocal_image_reads_its_gain_where_the_otf_is_nearly_out_of_band():
    """A 2D confocal PSF at 0.1 µm pixels leaves 1.2 % of the frequencies below 1e-3 of its
    OTF's peak, too few, so the in-plane residual was used, and it counted point-like
    structure as noise: 1.35 times the gain here (sparse blobs of sigma 1 pixel at 1000
    photons). Those below 1e-2 (19 %) are used."""
    psf3 = _theoretical_psf("confocal", (0.2, 0.1, 0.1))
    psf = psf3[psf3.shape[0] // 2] / psf3[psf3.shape[0] // 2].sum()
    rng = np.random.default_rng(6)
    points = np.zeros((256, 256))
    points[tuple(rng.integers(0, 256, (300, 2)).T)] = 1.0
    blurred = signal.fftconvolve(ndimage.gaussian_filter(points, 1.0), psf, "same")
    photons = np.clip(blurred, 0, None) * 1000.0 / blurred.max()
    image = np.round(100.0 + 2.5 * rng.poisson(photons + 2.0) + rng.normal(0.0, 2.0, photons.shape))
    assert abs(estimate_camera_noise(image, psf=psf).gain / 2.5 - 1) < 0.1


@pytest.mark.parametrize("optics", ["widefield", "confocal"])
def test_the_out_of_band_noise_variance_holds_at_the_faces(optics):
    """Pure noise of variance 9: every plane's estimate, the faces' included, is 9 (mean
    of 4 draws). The filtered stack's power, scaled by the share of frequencies kept, gave
    half of it on the z faces of a confocal stack."""
    psf = _theoretical_psf(optics, (0.2, 0.1, 0.1))
    rng = np.random.default_rng(15)
    total = np.zeros((16, 128, 128))
    for _ in range(4):
        image = 100.0 + rng.normal(0.0, 3.0, total.shape)
        variance, level = out_of_band_variance(image, psf) or (image, image)
        total += variance / 4
        np.testing.assert_allclose(level[:, 1:-1, 1:-1].mean(), 100.0, atol=0.05)
    np.testing.assert_allclose(total[:, 1:-1, 1:-1].mean(axis=(1, 2)), 9.0, rtol=0.06)
    np.testing.assert_allclose(total[:, [1, -2], 1:-1].mean(axis=(0, 2)), 9.0, rtol=0.06)


def test_the_filter_diagonal_is_exact():
    """The diagonal of C^T diag(m) C (C the orthonormal DCT-II), against the brute force."""
    from scipy import fft

    shape = (5, 7, 6)
    multiplier = np.random.default_rng(16).random(shape)
    brute = np.empty(shape)
    for index in np.ndindex(shape):
        impulse = np.zeros(shape)
        impulse[index] = 1.0
        brute[index] = fft.idctn(fft.dctn(impulse, norm="ortho") * multiplier, norm="ortho")[index]
    np.testing.assert_allclose(_filter_diagonal(multiplier), brute, atol=1e-12)


@pytest.mark.parametrize("with_psf", [False, True])
def test_a_gain_the_levels_cannot_tell_warns_and_takes_at_least_one(with_psf):
    """Two photons of haze with blobs that add at most a fifth of a photon: the levels span
    less than the noise, and the regression's slope is noise (0.1-0.8 +- 0.2-0.6 on the
    flow benchmark's beaded rings at 20 photons, gain 1). It says so and takes the larger
    of the slope and 1 (here 1-1.01 for a camera at 3 ADU per photon)."""
    psf = _theoretical_psf("widefield", (0.2, 0.1, 0.1))
    blobs = _blobs_through(psf, 100, 1.0)
    rng = np.random.default_rng(17)
    photons = 2.0 + 0.2 * blobs
    image = 100.0 + 3.0 * rng.poisson(photons) + rng.normal(0.0, 2.0, photons.shape)
    with pytest.warns(DeconflowWarning, match=r"varies too little.*Give the camera's gain"):
        noise = estimate_camera_noise(image, psf=psf if with_psf else None)
    assert 1.0 <= noise.gain < 1.1
    # with contrast (blobs of 100 photons) the same camera is measured, silently
    photons = 2.0 + 100.0 * blobs
    image = 100.0 + 3.0 * rng.poisson(photons) + rng.normal(0.0, 2.0, photons.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeconflowWarning)
        noise = estimate_camera_noise(image, psf=psf if with_psf else None)
    assert abs(noise.gain / 3.0 - 1) < 0.1


@pytest.mark.parametrize(("sigma_xy", "peak_photons"), [(1.5, 1000.0), (3.0, 5000.0)])
def test_gain_of_sparse_bright_blobs_is_within_10_percent(sigma_xy, peak_photons):
    # known answer: Poisson-Gaussian camera; bright blobs' curvature must not count as noise
    rng = np.random.default_rng(7)
    shape = (24, 128, 128)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (300, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, sigma_xy, sigma_xy))
    photons *= peak_photons / photons.max()
    gain, offset, read_sigma = 2.0, 100.0, 2.0
    image = offset + gain * rng.poisson(photons) + rng.normal(0.0, read_sigma, shape)
    noise = estimate_camera_noise(np.round(image))
    assert abs(noise.gain / gain - 1) < 0.1
    assert abs(noise.offset - offset) < 0.01 * offset


def test_psf_without_an_out_of_band_region_falls_back_to_the_residual():
    image, _, _ = _sharp_confocal_stack(3000, seed=2)
    delta = np.zeros((3, 3, 3))
    delta[1, 1, 1] = 1.0  # passes every frequency: nothing is out of band
    assert estimate_camera_noise(image, psf=delta) == estimate_camera_noise(image)


def _dense_stack(seed: int = 3):
    """Dense blurred structure with no dark region: every neighbourhood holds signal."""
    rng = np.random.default_rng(seed)
    shape = (16, 64, 64)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (4000, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 4.0, 4.0))
    photons *= 1000.0 / photons.max()
    offset, haze = 100.0, 2.0
    image = offset + rng.poisson(photons + haze) + rng.normal(0.0, 1.5, shape)
    return image, offset + haze, float(photons.min())


def test_a_given_background_bounds_the_offset_where_no_region_is_dark():
    image, background, floor = _dense_stack()
    assert floor > 50  # the premise: the darkest voxels still hold many photons
    unbounded = estimate_camera_noise(image)
    assert unbounded.offset > background + 30  # blurred signal read as offset
    bounded = estimate_camera_noise(image, max_offset=background)
    assert bounded.offset == background and bounded.gain == unbounded.gain
    # the photons at the darkest level now count as signal, not as read noise
    assert bounded.read_sigma < 0.5 * unbounded.read_sigma
    # a given offset wins over the bound
    assert estimate_camera_noise(image, offset=90.0, max_offset=background).offset == 90.0


def test_the_bound_leaves_a_stack_with_dark_regions_alone():
    image, _, _ = _sharp_confocal_stack(150, seed=1)
    assert estimate_camera_noise(image, max_offset=150.0) == estimate_camera_noise(image)


def test_given_or_bounded_offset_is_kept_on_a_stack_too_small_for_the_regression():
    """Fewer than two intensity bins (small or flat stacks) must still honour ``offset``."""
    rng = np.random.default_rng(4)
    shape = (4, 12, 12)  # 400 interior voxels: every bin has fewer than 50
    image = 100.0 + 2.0 * rng.poisson(30.0, shape) + rng.normal(0.0, 3.0, shape)
    dark = estimate_camera_noise(image).offset
    assert dark > 140.0  # the darkest neighbourhoods, not the camera offset
    assert estimate_camera_noise(image, offset=100.0).offset == 100.0
    assert estimate_camera_noise(image, max_offset=120.0).offset == 120.0
    # a bound above the dark level does not move it
    assert estimate_camera_noise(image, max_offset=dark + 50.0).offset == dark


def test_a_calibrated_gain_splits_the_dark_levels_variance_with_itself():
    """With gain and offset given, the model's variance at the darkest voxels' level must be
    the variance measured there: read noise = dark variance - gain * (dark level - offset)
    with the *given* gain, not with a regression's gain the run then does not use."""
    from deconflow._flow_run import calibrate_noise
    from deconflow.solvers.flow import FlowDeconvolution

    gain, offset, read_sigma = 4.0, 100.0, 2.0
    rng = np.random.default_rng(11)
    points = np.zeros((24, 96, 96))
    points[tuple(rng.integers(0, [24, 96, 96], (150, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 3.0, 3.0))
    photons = 2.0 + photons * 300.0 / photons.max()  # 2 photons of haze at the dark level
    image = offset + gain * rng.poisson(photons) + rng.normal(0.0, read_sigma, photons.shape)
    image = image.astype(np.float32)
    dark_level = estimate_camera_noise(image).offset  # no offset given: the darkest level
    psf = np.ones((1, 1, 1))
    regression = calibrate_noise(image, psf, FlowDeconvolution(camera_offset=offset))
    # the regression's gain is a few percent off: enough to move the read noise
    assert regression.gain != pytest.approx(gain, rel=1e-3)
    given = calibrate_noise(image, psf, FlowDeconvolution(gain=gain, camera_offset=offset))
    assert (given.gain, given.offset) == (gain, offset)
    assert given.variance(dark_level) == pytest.approx(regression.variance(dark_level), rel=1e-9)
    assert abs(given.read_sigma / read_sigma - 1) < 0.25
    with pytest.raises(DeconflowError, match="gain must be > 0"):
        estimate_camera_noise(image, gain=0.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])  # the pipeline passes float32
def test_saturated_voxels_do_not_inflate_the_gain(dtype):
    """Known answer: a 16-bit sCMOS stack whose brightest blobs sit at 65535 (about 2 % of
    the voxels). Clipped voxels hold no noise and the residual jumps at their edges: the
    gain came out 4 times too high."""
    rng = np.random.default_rng(12)
    shape = (16, 96, 96)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (150, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 3.0, 3.0))
    photons *= 100_000.0 / photons.max()
    gain, offset, read_sigma = 2.0, 100.0, 2.0
    image = offset + gain * rng.poisson(photons) + rng.normal(0.0, read_sigma, shape)
    image = np.clip(np.round(image), 0, 65535).astype(dtype)
    assert 0.005 < np.mean(image == 65535) < 0.05  # the premise: a few percent clipped
    noise = estimate_camera_noise(image)
    assert abs(noise.gain / gain - 1) < 0.1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_refused_not_returned_as_nan(bad):
    rng = np.random.default_rng(13)
    image = 100.0 + 2.0 * rng.poisson(20.0, (4, 32, 32)) + rng.normal(0.0, 2.0, (4, 32, 32))
    image[0, 5, 5] = bad
    for estimate in (estimate_camera_noise, estimate_background, estimate_noise_sigma):
        with pytest.raises(DeconflowError, match=r"1 NaN or Inf values.*nan_to_num"):
            estimate(image)


@pytest.mark.parametrize("shape", [(2, 2), (5, 1, 100), (5, 100, 2)])
def test_camera_noise_of_a_stack_too_thin_for_the_residual_names_the_fix(shape):
    image = np.random.default_rng(14).poisson(10.0, shape).astype(np.float64)
    with pytest.raises(DeconflowError, match=r"at least 3x3 in-plane.*give gain"):
        estimate_camera_noise(image)


@pytest.mark.parametrize("with_psf", [False, True])
def test_camera_noise_scales_with_the_image_units(with_psf):
    # a float image in small units (scaled to a sum of 1: gain ~1e-9 units per photon) is
    # the same camera: every estimate scales with the image (an absolute 1e-6 floor on
    # the gain made it 1000 times too high). A power of 2 scales every float exactly.
    image, psf, _ = _sharp_confocal_stack(40, seed=4)
    scale = 2.0**-30
    kwargs = {"psf": psf} if with_psf else {}
    ref = estimate_camera_noise(image, **kwargs)
    small = estimate_camera_noise(image * scale, **kwargs)
    assert small.gain / scale == pytest.approx(ref.gain, rel=1e-6)
    assert small.offset / scale == pytest.approx(ref.offset, rel=1e-6)
    assert small.read_sigma / scale == pytest.approx(ref.read_sigma, rel=1e-6)


def test_too_few_voxels_for_the_regression_warn_and_assume_one():
    """Every intensity group needs 50 voxels: a 4x12x12 stack has 400 interior voxels for
    24 groups, so there is no regression. 1 ADU per photon is assumed, aloud (it used to
    be silent: 0.4 times the gain of a camera at 2.5 ADU per photon)."""
    rng = np.random.default_rng(3)
    image = 100.0 + 2.5 * rng.poisson(20.0, (4, 12, 12)) + rng.normal(0.0, 2.0, (4, 12, 12))
    with pytest.warns(DeconflowWarning, match=r"too few voxels.*Give the camera's gain"):
        noise = estimate_camera_noise(image)
    assert noise.gain == 1.0
    # a given gain needs no regression, and nothing is said
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeconflowWarning)
        assert estimate_camera_noise(image, gain=2.5).gain == 2.5


@pytest.mark.parametrize("seed", [0, 1])
def test_a_noise_variance_that_barely_rises_declines_the_gain(seed):
    """Dense blobs adding at most 4 photons to 10 of haze (confocal, gain 2.5, read noise
    2 ADU): the noise variance rises by under a quarter across the levels, so a bias of a
    few per cent in the groups' variances moves the slope by tens of per cent while their
    scatter stays small. The regression's error let 1.31x and 1.43x the gain through
    silently; the estimator says it cannot tell. It takes the larger of the slope and 1,
    the slope here: 1 was 0.4 times this camera's gain, where too low a gain costs the
    flow far more than too high (docs/benchmarks/gain_sensitivity.md). With blobs of 100
    photons the same camera is measured, silently, within 10 %."""
    psf = _theoretical_psf("confocal", (0.2, 0.1, 0.1))
    blobs = _blobs_through(psf, 3000, 1.0)
    rng = np.random.default_rng(seed)
    faint = np.round(
        100.0 + 2.5 * rng.poisson(10.0 + 4.0 * blobs) + rng.normal(0.0, 2.0, blobs.shape)
    )
    with pytest.warns(
        DeconflowWarning,
        match=r"variance rises by \d+ %.*the regression's slope, above 1\) is taken.*Give the",
    ):
        assert 1.2 * 2.5 < estimate_camera_noise(faint, psf=psf).gain < 1.5 * 2.5
    bright = np.round(
        100.0 + 2.5 * rng.poisson(10.0 + 100.0 * blobs) + rng.normal(0.0, 2.0, blobs.shape)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeconflowWarning)
        assert estimate_camera_noise(bright, psf=psf).gain == pytest.approx(2.5, rel=0.1)
