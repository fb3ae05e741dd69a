import numpy as np
import pytest
from scipy import ndimage

from deconflow import DeconflowError
from deconflow.physics.noise import estimate_background, estimate_camera_noise, estimate_noise_sigma
from deconflow.psf import confocal_psf


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
    # residual that cancels curvature and the PSF's out-of-band power both see the noise
    image, psf, gain = _sharp_confocal_stack(3000, seed=0)
    assert abs(estimate_camera_noise(image).gain / gain - 1) < 0.1
    assert abs(estimate_camera_noise(image, psf=psf).gain / gain - 1) < 0.15
    # sparse bright blobs remain harder (the smoothed level flattens their peaks)
    image, psf, gain = _sharp_confocal_stack(150, seed=1)
    assert abs(estimate_camera_noise(image).gain / gain - 1) < 0.2
    assert abs(estimate_camera_noise(image, psf=psf).gain / gain - 1) < 0.35


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
