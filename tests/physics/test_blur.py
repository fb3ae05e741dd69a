import numpy as np
import pytest
import torch
from scipy import signal

from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator, adjointness_error
from deconflow.physics._fftsize import next_smooth_length, smooth_shape

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
CASES = [
    # (image shape, psf shape): 2D/3D, odd/even, anisotropic, PSF larger than image
    ((32, 33), (7, 7)),
    ((31, 40), (8, 5)),
    ((12, 21, 20), (5, 6, 7)),
    ((9, 16, 17), (15, 9, 9)),
    ((6, 10, 11), (13, 13, 13)),
]


# the periodic model needs the PSF inside the image (its error is tested below)
MODELS = [
    (image_shape, psf_shape, boundary)
    for image_shape, psf_shape in CASES
    for boundary in ("valid", "periodic")
    if boundary == "valid" or all(k <= n for k, n in zip(psf_shape, image_shape))
]


@pytest.mark.parametrize(("image_shape", "psf_shape", "boundary"), MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_adjointness(image_shape, psf_shape, boundary, dtype, device):
    psf = np.random.default_rng(1).random(psf_shape)
    op = ConvolutionOperator(psf, image_shape, boundary=boundary, device=device, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert adjointness_error(op, device=device, dtype=dtype) < tol
    assert op.check_adjoint() < tol


@pytest.mark.parametrize(("image_shape", "psf_shape"), CASES)
def test_valid_model_equals_linear_convolution(image_shape, psf_shape):
    """A equals scipy's 'valid' linear convolution of the extended object: no wrap-around."""
    rng = np.random.default_rng(2)
    psf = rng.random(psf_shape)
    op = ConvolutionOperator(psf, image_shape, dtype=torch.float64)
    x = rng.random(op.object_shape)
    expected = signal.convolve(x, psf, mode="full", method="direct")
    # measured voxel n sees object voxel n + c through the PSF centre c = psf_shape // 2
    start = [2 * (k // 2) for k in psf_shape]
    expected = expected[tuple(slice(s, s + n) for s, n in zip(start, image_shape))]
    got = op.A(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_point_source_in_last_plane_does_not_wrap_to_first():
    psf = np.zeros((7, 7, 7))
    psf[:, 3, 3] = [0.05, 0.1, 0.15, 0.4, 0.15, 0.1, 0.05]
    op = ConvolutionOperator(psf, (10, 12, 12), dtype=torch.float64)
    x = torch.zeros(op.object_shape, dtype=torch.float64)
    cz, cy, cx = op.margin
    x[cz + 9, cy + 5, cx + 5] = 1.0  # under the last measured plane, z = 9
    y = op.A(x)
    np.testing.assert_allclose(y[:, 5, 5].numpy()[-4:], [0.05, 0.1, 0.15, 0.4], atol=1e-12)
    assert torch.all(y[:6].abs() < 1e-12), "light wrapped to the top planes"
    # light from an object voxel *outside* the field of view enters the window
    x.zero_()
    x[cz + 11, cy + 5, cx + 5] = 1.0
    np.testing.assert_allclose(op.A(x)[-1, 5, 5].item(), 0.1, atol=1e-12)


def test_periodic_model_wraps_and_matches_circular_convolution():
    rng = np.random.default_rng(3)
    psf = rng.random((5, 5))
    x = rng.random((16, 18))
    op = ConvolutionOperator(psf, x.shape, boundary="periodic", dtype=torch.float64)
    kernel = np.zeros(x.shape)
    kernel[:5, :5] = psf
    kernel = np.roll(kernel, (-2, -2), axis=(0, 1))
    expected = np.real(np.fft.ifft2(np.fft.fft2(x) * np.fft.fft2(kernel)))
    np.testing.assert_allclose(op.A(torch.from_numpy(x)).numpy(), expected, atol=1e-12)


def test_operator_is_not_mutated_by_calls_and_handles_batches():
    psf = np.random.default_rng(4).random((3, 5, 5))
    op = ConvolutionOperator(psf, (8, 10, 10), dtype=torch.float64)
    otf_before = op.otf.clone()
    x = torch.rand(2, 1, *op.object_shape, dtype=torch.float64)
    batched = op.A(x)
    assert batched.shape == (2, 1, 8, 10, 10)
    np.testing.assert_allclose(batched[1, 0].numpy(), op.A(x[1, 0]).numpy(), atol=1e-12)
    op.A_adjoint(batched)
    assert torch.equal(op.otf, otf_before)


def test_fft_grid_is_7_smooth_and_large_enough():
    op = ConvolutionOperator(np.ones((11, 11, 11)), (61, 127, 97))
    assert op.object_shape == op.fft_shape
    for n, m in zip(op.fft_shape, (71, 137, 107)):  # image + 2 x half-support
        assert n >= m
        k = n
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        assert k == 1
    assert next_smooth_length(121) == 125
    assert smooth_shape((11, 13, 1)) == (12, 14, 1)


def test_adjoint_of_ones_is_one_inside_window_for_normalised_psf():
    psf = np.random.default_rng(5).random((5, 7, 7))
    psf /= psf.sum()
    # image + 2c = (11, 16, 16); the FFT grid rounds z up to 12, leaving one slack plane
    op = ConvolutionOperator(psf, (7, 10, 10), dtype=torch.float64)
    assert op.object_shape == (12, 16, 16)
    weight = op.adjoint_of_ones()
    # object voxels whose whole PSF lands in the window: 2c .. N - 1 (c = 2, 3, 3)
    inner = weight[4:7, 6:10, 6:10]
    np.testing.assert_allclose(inner.numpy(), 1.0, atol=1e-12)
    reach = weight[:11]  # image + 2c: every voxel sends some light into the window
    assert reach.min() > 0 and weight.max() <= 1 + 1e-12
    np.testing.assert_allclose(weight[11].numpy(), 0.0, atol=1e-12)  # the FFT grid's slack


def test_crop_and_extend_are_consistent():
    op = ConvolutionOperator(np.ones((3, 5, 5)), (4, 6, 6), dtype=torch.float64)
    y = torch.arange(4 * 36, dtype=torch.float64).reshape(4, 6, 6)
    extended = op.extend_image(y)
    assert extended.shape == op.object_shape
    assert torch.equal(op.crop_to_image(extended), y)
    assert torch.equal(extended[0, 0, 0], y[0, 0, 0])  # replicated corner


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(DeconflowError, match="both must be 2D"):
        ConvolutionOperator(np.ones((3, 3)), (4, 4, 4))
    with pytest.raises(DeconflowError, match="periodic"):
        ConvolutionOperator(np.ones((9, 9)), (4, 4), boundary="periodic")
    op = ConvolutionOperator(np.ones((3, 3)), (4, 4))
    with pytest.raises(DeconflowError, match="spatial shape"):
        op.A(torch.zeros(4, 4))


def test_big_endian_and_integer_psfs_give_the_native_float_operator():
    """FITS and some TIFF readers return big-endian arrays; the operator must accept them."""
    rng = np.random.default_rng(5)
    psf = rng.random((5, 6, 7))
    x = torch.tensor(rng.random((9, 10, 11)))
    native = ConvolutionOperator(psf, x.shape, dtype=torch.float64)
    swapped = ConvolutionOperator(psf.astype(">f8"), x.shape, dtype=torch.float64)
    xo = native.extend_image(x)
    np.testing.assert_array_equal(swapped.A(xo).numpy(), native.A(xo).numpy())
    counts = (psf * 1000).astype(">u2")
    as_int = ConvolutionOperator(counts, x.shape, dtype=torch.float64)
    as_float = ConvolutionOperator(counts.astype(np.float64), x.shape, dtype=torch.float64)
    np.testing.assert_allclose(as_int.A(xo).numpy(), as_float.A(xo).numpy(), rtol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_psf_is_refused_instead_of_blurring_to_nan(bad):
    psf = np.ones((3, 3, 3)) / 27.0
    psf[1, 1, 1] = bad
    with pytest.raises(DeconflowError, match=r"NaN or Inf.*finite PSF"):
        ConvolutionOperator(psf, (8, 8, 8))
    with pytest.raises(DeconflowError, match="empty"):
        ConvolutionOperator(np.ones((0, 3)), (8, 8))
