"""Bad input at the API boundary: our own error type, a message that names the fix.

(The CLI and the widget route through the same checks; their own tests check
that the message reaches the user as one line or a notification.)
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import deconflow
from deconflow import DeconflowError, DeconflowWarning


def _bead(shape=(15, 21, 21), centre=None, peak=1000.0, dtype=np.float32):
    centre = centre or tuple(n // 2 for n in shape)
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    r2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, (2.0, 1.5, 1.5)))
    return (10 + peak * np.exp(-0.5 * r2)).astype(dtype)


def _structured_image():
    rng = np.random.default_rng(0)
    points = np.zeros((12, 40, 40))
    points[tuple(rng.integers(2, 38, (3, 30)) % np.array([12, 40, 40])[:, None])] = 1.0
    from scipy import ndimage

    return rng.poisson(ndimage.gaussian_filter(points, (2.0, 1.5, 1.5)) * 3e4 + 20).astype(
        np.uint16
    )


IMAGE = _structured_image()
PSF = _bead()

BAD_CALLS = [
    # (description, image, psf, kwargs, message fragment)
    ("4D image", np.zeros((2, 4, 8, 8)), PSF, {}, "Split channels"),
    ("1D image", np.zeros(8), PSF, {}, "1 axes"),
    ("2D PSF for 3D image", IMAGE, PSF[7], {}, "same axes"),
    ("empty image", np.zeros((0, 8, 8)), PSF, {}, "empty"),
    ("empty PSF", IMAGE, np.zeros((0, 3, 3)), {}, "empty"),
    ("NaN in image", np.where(IMAGE > 40, np.nan, IMAGE), PSF, {}, "NaN"),
    ("Inf in PSF", IMAGE, np.where(PSF > 500, np.inf, PSF), {}, "NaN or Inf"),
    ("all-zero PSF", IMAGE, np.zeros((5, 5, 5)), {}, "no signal"),
    ("negative-sum PSF", IMAGE, -PSF, {"prepare_psf": False}, "sums to"),
    ("flat PSF", IMAGE, np.full((5, 5, 5), 3.0), {}, "no signal"),
    ("complex image", IMAGE.astype(complex), PSF, {}, "complex"),
    ("boolean image", IMAGE > 30, PSF, {}, "bool"),
    ("string image", np.array([["a"]]), PSF, {}, "dtype"),
    ("RGB screenshot", np.zeros((64, 64, 3), np.uint8), PSF, {}, "RGB"),
    ("RGBA screenshot", np.zeros((64, 64, 4), np.uint8), PSF, {}, "RGBA"),
    ("voxel size wrong length", IMAGE, PSF, {"voxel_size": (0.1, 0.1)}, "(z, y, x)"),
    ("zero voxel size", IMAGE, PSF, {"voxel_size": (0.0, 0.1, 0.1)}, "positive"),
    (
        "negative PSF voxel size",
        IMAGE,
        PSF,
        {"voxel_size": (0.3, 0.1, 0.1), "psf_voxel_size": (0.3, -0.1, 0.1)},
        "positive",
    ),
    ("PSF voxel size alone", IMAGE, PSF, {"psf_voxel_size": (0.3, 0.1, 0.1)}, "voxel_size"),
    ("voxel size one number", IMAGE, PSF, {"voxel_size": 0.1}, r"voxel_size.*\(z, y, x\)"),
    ("voxel size as text", IMAGE, PSF, {"voxel_size": "0.3,0.1,0.1"}, r"voxel_size.*numbers"),
    (
        "PSF voxel size with a word",
        IMAGE,
        PSF,
        {"voxel_size": (0.3, 0.1, 0.1), "psf_voxel_size": (0.3, "a", 0.1)},
        r"psf_voxel_size.*numbers",
    ),
    (
        "values beyond float32",
        IMAGE.astype(np.float64) * 1e36,
        PSF,
        {},
        "float32",
    ),
    ("unknown method", IMAGE, PSF, {"method": "richardson-lucy"}, "Did you mean 'rl'"),
    ("unknown option", IMAGE, PSF, {"iterations_": 3}, "Did you mean 'iterations'"),
    ("option of another method", IMAGE, PSF, {"regularization": 0.1}, "belongs to 'wiener'"),
    ("wrong option type", IMAGE, PSF, {"iterations": "ten"}, "integer"),
    ("negative background", IMAGE, PSF, {"background": -5.0}, "background"),
    ("tiny tiles", IMAGE, PSF, {"tile_shape": (2, 2, 2)}, "tile_shape"),
    ("zero memory budget", IMAGE, PSF, {"memory_budget_gb": 0.0}, "memory_budget_gb"),
    ("unknown device", IMAGE, PSF, {"device": "gpu0"}, "device"),
    (
        "missing weights file",
        IMAGE,
        PSF,
        {"method": "flow", "weights": "/nonexistent/w.pt"},
        "not found",
    ),
    (
        "weights file of another kind",
        IMAGE,
        PSF,
        {"method": "flow", "weights": str(Path(__file__))},
        "truncated, corrupt or not a torch",
    ),
    ("unknown flow sampler", IMAGE, PSF, {"method": "flow", "sampler": "ddim"}, "sampler"),
]


@pytest.mark.parametrize(
    ("description", "image", "psf", "kwargs", "fragment"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_raises_our_error_with_the_fix(description, image, psf, kwargs, fragment):
    with pytest.raises(DeconflowError, match=fragment) as info:
        deconflow.deconvolve(
            image, psf, device="cpu", **kwargs
        ) if "device" not in kwargs else deconflow.deconvolve(image, psf, **kwargs)
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) > 30, "the message should say what to do, not just what failed"


def test_uncertainty_with_a_method_names_the_flow():
    # was a TypeError: "got multiple values for argument 'method'"
    with pytest.raises(DeconflowError, match="always uses method='flow'"):
        deconflow.deconvolve_with_uncertainty(IMAGE, PSF, device="cpu", method="rl")


def test_uncertainty_takes_method_flow_as_said():
    # method="flow", carried over from a deconvolve call, was refused with "always uses
    # method='flow' (got method='flow')"; it is what this function does, so it runs
    kwargs = {"device": "cpu", "samples": 2, "steps": 2, "seed": 3, "choose_strength": False}
    said = deconflow.deconvolve_with_uncertainty(IMAGE, PSF, method="flow", **kwargs)
    unsaid = deconflow.deconvolve_with_uncertainty(IMAGE, PSF, **kwargs)
    np.testing.assert_array_equal(said.mean, unsaid.mean)
    np.testing.assert_array_equal(said.std, unsaid.std)


@pytest.mark.parametrize("method", ["rl", "wiener"])
def test_a_single_voxel_image_is_not_reported_as_holding_nan(method):
    # its background came out 0 / 0 (no neighbour to average), and Wiener then said
    # "The image contains 1 NaN or Inf values"
    from deconflow.physics.noise import estimate_background

    assert estimate_background(np.array([[7.0]])) == 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = deconflow.deconvolve(np.full((1, 1), 5.0, np.float32), np.ones((3, 3)), method=method)
    assert out.shape == (1, 1) and np.all(np.isfinite(out))


def test_saturated_bead_warns_and_still_runs():
    bead = np.minimum(_bead(peak=8000.0), 4095).astype(np.uint16)
    with pytest.warns(DeconflowWarning, match="saturated"):
        out = deconflow.deconvolve(IMAGE, bead, iterations=2)
    assert out.shape == IMAGE.shape


def test_off_centre_psf_warns_and_is_centred():
    bead = _bead(shape=(21, 31, 31), centre=(5, 24, 8))
    with pytest.warns(DeconflowWarning, match="re-centred"):
        result = deconflow.pipeline.run_to_result(
            deconflow.iter_deconvolve(IMAGE, bead, deconflow.DeconvolutionSettings())
        )
    peak = np.unravel_index(np.argmax(result.psf.data), result.psf.data.shape)
    assert peak == tuple(n // 2 for n in result.psf.data.shape)


def test_psf_larger_than_image_is_cropped_with_a_note():
    small = IMAGE[:6, :12, :12]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconflowWarning)
        result = deconflow.pipeline.run_to_result(
            deconflow.iter_deconvolve(
                small, _bead(shape=(31, 41, 41), peak=5e4), deconflow.DeconvolutionSettings()
            )
        )
    assert all(p <= n for p, n in zip(result.psf.data.shape, small.shape))
    assert any("cropped" in note for note in result.psf.notes)


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.uint16, np.uint32, np.int16, np.int64, np.float16, np.float32, np.float64],
)
def test_every_real_dtype_keeps_its_intensity_scale(dtype):
    big = {np.uint32: 3_000_000_000, np.int64: 2**40}.get(dtype, 100)
    image = (IMAGE.astype(np.float64) / IMAGE.max() * big).astype(dtype)
    out = deconflow.deconvolve(image, PSF, iterations=2)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    # not squeezed into 0-1 or 0-255: the brightest output is of the input's order
    assert 0.3 * big < out.max() < 20 * big


def _peaked_psf(ndim, side):
    psf = np.zeros((side,) * ndim)
    psf[(side // 2,) * ndim] = 1.0
    return np.cumsum(np.cumsum(psf, 0)[::-1], 0)[::-1] + psf * 10  # peaked, not flat


ANY_DTYPE = st.sampled_from(
    [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.complex64]
)
REAL_DTYPE = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=hnp.arrays(
        dtype=ANY_DTYPE, shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=12)
    ),
    psf_side=st.integers(1, 7),
    method=st.sampled_from(["rl", "rl-tv", "wiener"]),
)
def test_deconvolve_returns_a_finite_array_or_raises_our_error(image, psf_side, method):
    psf = _peaked_psf(max(min(image.ndim, 3), 2), psf_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeconflowWarning)
            out = deconflow.deconvolve(image, psf, method=method, iterations=2, device="cpu")
    except DeconflowError:
        return
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=hnp.arrays(
        dtype=REAL_DTYPE,
        shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=12),
        elements=st.integers(0, 200),
    ),
    psf_side=st.integers(1, 7),
    method=st.sampled_from(["rl", "rl-tv", "wiener"]),
)
def test_any_valid_stack_gives_a_finite_non_negative_result(image, psf_side, method):
    if image.ndim == 3 and image.shape[-1] in (3, 4) and min(image.shape[:2]) > 4 * image.shape[-1]:
        return  # looks like an RGB picture: refused on purpose (tested above)
    psf = _peaked_psf(image.ndim, psf_side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconflowWarning)
        out = deconflow.deconvolve(image, psf, method=method, iterations=2, device="cpu")
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert out.min() >= 0
