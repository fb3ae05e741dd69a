"""Camera noise read through the frequencies the PSF does not pass (DCT-domain filters).

Why a module of its own: the exact diagonal of a mirrored DCT-domain filter and the
PSF's OTF at DCT frequencies are signal processing that
:func:`~deconflow.physics.noise.estimate_camera_noise` only consumes, through
:func:`out_of_band_variance`.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import fft, ndimage

__all__ = ["out_of_band_variance"]

#: Spatial frequencies where the OTF is below this share of its peak carry (almost) no
#: signal; their content is noise. At 3e-3 point-like objects under a confocal PSF at
#: 5000 photons still leaked enough for a gain 18 % high (1e-3: 1 % low); 1e-3 keeps
#: 15-37 % of the frequencies under a confocal PSF sampled at 0.1-0.065 µm in-plane.
_OUT_OF_BAND_OTF = 1e-3

#: Where under 5 % of the frequencies lie below ``_OUT_OF_BAND_OTF`` (a 2D confocal image
#: at 0.1 µm pixels: 1.2 %), those below this share are used (19 % there). The signal
#: leaks more, but far less than into the in-plane residual used before: on 2D confocal
#: images of sparse point-like blobs at 1000 / 5000 / 20000 photons the gain came out
#: 0.90 / 1.39 / 2.16 times the truth, against 5.7 / - / 98.6 with the residual, and
#: bench_noise.py's 2D confocal rows (20-1000 photons) went from 61 to 92 % within 10 %.
#: The first of 2e-3, 5e-3 and 1e-2 that leaves 5 % (5e-3 there) leaked less at those
#: peaks (0.94 / 1.23 / 1.53) but, with fewer frequencies, scattered more at 20 photons:
#: 85 % within 10 %, down to 0.77 times the gain, the costlier direction.
_OUT_OF_BAND_OTF_RELAXED = 1e-2

#: Fewest share of the frequencies out of band that the estimate is made on.
_MIN_OUT_OF_BAND_SHARE = 0.05

#: The in-plane residual's kernel (Immerkær 1996; ``noise._second_order_free_residual``).
_SECOND_ORDER_FREE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0


def out_of_band_variance(arr: np.ndarray, psf: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-voxel noise variance read through the frequencies the PSF does not pass.

    ``W y`` keeps the stack's frequencies where ``|OTF| < 1e-3`` of its peak (``1e-2``
    where that leaves under 5 % of them; for every sign of every axis), in the DCT-II
    domain: the stack mirrored at its faces, so no
    jump leaks high frequencies the way the FFT's wrap-around does. ``R y`` is the
    in-plane residual that cancels smooth signal up to its curvature (Immerkær's 3x3
    kernel, mirrored at the faces too). For independent noise of variance ``v_j``,
    ``E[(W y)_i (R y)_i] = sum_j W_ij R_ij v_j``, a sum over the 3x3 in-plane
    neighbourhood ``R`` reaches, so ``(W y)_i (R y)_i / (W R)_ii`` estimates the noise
    variance there, weighted ``W_ij R_ij / (W R)_ii`` (0.5-0.8 on the voxel itself). The
    same weighted mean of the stack is the level it belongs to: the variance is linear
    in the mean, so ``E[variance] = gain * (level - offset) + read_sigma^2`` voxel by
    voxel, however sharp the structure. The signal leaves only ``(W s)_i (R s)_i``, the
    product of two small remainders.

    The square ``(W y)_i^2`` used before is no local measure: its mean weights ``v`` by
    ``W_ij^2``, spread over the PSF's extent (and, through the mirror, the faces), and
    read against a Gaussian mean of the stack it made the gain of correctly blurred
    sparse blobs 10-60 % high; it also holds the signal's leak ``(W s)_i^2``, large
    under widefield at thousands of photons.

    Returns the variance and the level, or ``None`` when fewer than 5 % of the
    frequencies lie below 1e-2 of the OTF's peak.
    """
    magnitude = _dct_otf_magnitude(psf, arr.shape)
    for threshold in (_OUT_OF_BAND_OTF, _OUT_OF_BAND_OTF_RELAXED):
        keep = magnitude < threshold * magnitude.max()
        if keep.mean() >= _MIN_OUT_OF_BAND_SHARE:
            break
    else:
        return None
    coefficients = fft.dctn(arr, norm="ortho")
    residual = _second_order_free_transfer(arr.shape)
    variance = fft.idctn(coefficients * keep, norm="ortho")
    variance *= fft.idctn(coefficients * residual, norm="ortho")
    del coefficients
    variance /= _filter_diagonal(keep * residual)
    # the weights W_ij R_ij away from the faces (at a face the mirror shifts them a little)
    weights = _in_plane_response(keep) * _SECOND_ORDER_FREE_KERNEL
    weights = weights.reshape((1,) * (arr.ndim - 2) + (3, 3)) / weights.sum()
    return variance, ndimage.correlate(arr, weights, mode="reflect")


def _in_plane_response(multiplier: np.ndarray) -> np.ndarray:
    """Impulse response of a DCT-II-domain filter at in-plane offsets -1, 0, 1 (3x3).

    Away from the faces the filter convolves with
    ``f(m) = sum_k multiplier_k prod_a w_k cos(pi k_a m_a / n_a) / (2 n_a)``
    (``w_0 = 1``, else 2); here ``m`` is 0 along the leading axes.
    """

    def cosines(n: int, offsets: np.ndarray) -> np.ndarray:
        k = np.arange(n)
        return np.where(k == 0, 1.0, 2.0) * np.cos(np.pi * np.outer(offsets, k) / n) / (2 * n)

    plane = multiplier.astype(np.float64)
    for n in multiplier.shape[:-2]:
        plane = np.tensordot(cosines(n, np.zeros(1))[0], plane, axes=(0, 0))
    offsets = np.arange(-1, 2)
    rows, columns = (cosines(n, offsets) for n in multiplier.shape[-2:])
    return np.asarray(rows @ plane @ columns.T)


def _second_order_free_transfer(shape: tuple[int, ...]) -> np.ndarray:
    """DCT-II multiplier of :func:`_second_order_free_residual`'s kernel, mirrored at the faces.

    The kernel ``[1, -2, 1] x [1, -2, 1] / 6`` on the last two axes multiplies
    coefficient ``k`` by ``(2 - 2 cos(pi k_y / n_y)) (2 - 2 cos(pi k_x / n_x)) / 6``;
    the result broadcasts against ``shape``.
    """
    rows, columns = (2.0 - 2.0 * np.cos(np.pi * np.arange(n) / n) for n in shape[-2:])
    return (np.multiply.outer(rows, columns) / 6.0).reshape(
        (1,) * (len(shape) - 2) + tuple(shape[-2:])
    )


def _dct_otf_magnitude(psf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``|OTF|`` at the DCT-II frequencies ``k / (2 n)``, the largest over the axes' signs.

    A DCT-domain filter acts on the mirrored stack as a filter even in every axis; taking
    the largest ``|OTF|`` over ``(f_0, +-f_1, ..., +-f_d)`` keeps out every frequency a
    PSF without that symmetry (a measured one) passes. The PSF is cropped (centred) to
    at most twice the stack, the period of the mirrored stack.
    """
    kernel = np.asarray(psf, dtype=np.float64)
    kernel = kernel[
        tuple(
            slice((p - min(p, 2 * n)) // 2, (p - min(p, 2 * n)) // 2 + min(p, 2 * n))
            for p, n in zip(kernel.shape, shape, strict=True)
        )
    ]

    def phases(axis: int) -> np.ndarray:
        n, length = shape[axis], kernel.shape[axis]
        return np.exp(-1j * np.pi * np.outer(np.arange(n), np.arange(length)) / n)

    # a separable DTFT, axis 0 last: only that product has the stack's size, and it needs
    # +f_0 alone (a real PSF has |OTF(-f)| = |OTF(f)|)
    partial = [kernel.astype(np.complex128)]
    for axis in range(kernel.ndim - 1, 0, -1):
        forward = phases(axis)
        partial = [
            np.moveaxis(np.tensordot(sign, t, axes=(1, axis)), 0, axis)
            for t in partial
            for sign in (forward, forward.conj())
        ]
    first = phases(0).astype(np.complex64)
    magnitude = np.zeros(shape, dtype=np.float32)
    for t in partial:
        product = np.tensordot(first, t.astype(np.complex64), axes=(1, 0))
        np.maximum(magnitude, np.abs(product), out=magnitude)
    return magnitude


def _filter_diagonal(multiplier: np.ndarray) -> np.ndarray:
    """Diagonal ``F_ii`` of the filter that multiplies the DCT-II coefficients by ``multiplier``.

    ``F = C^T diag(multiplier) C`` (``C`` the orthonormal DCT-II) convolves the stack
    mirrored at its faces (period ``2 n_a``) with an even kernel
    ``f(m) = sum_k multiplier_k prod_a w_k cos(pi k_a m_a / n_a) / (2 n_a)`` (``w_0 = 1``,
    else 2). Voxel ``i`` has a mirror image at offset ``2 i_a + 1`` along each axis, so
    ``F_ii`` sums ``f`` at the offsets to its images across every subset of the axes:
    along an axis the offset is 0 (a sum) or ``2 i + 1`` (a DCT-III of the multiplier
    folded onto even indices). Exact, at the cost of ``2^d`` inverse DCTs of shrinking size.
    """
    diagonal = np.zeros(multiplier.shape)
    for mirrored in itertools.product((False, True), repeat=multiplier.ndim):
        term = multiplier.astype(np.float64)
        for axis in np.argsort(mirrored, kind="stable"):  # the sums first: they shrink it
            n = multiplier.shape[axis]
            if mirrored[axis]:
                term = fft.idct(_fold_to_even(term, axis), type=2, axis=axis)
            else:
                first = term.take([0], axis=axis)
                term = (2.0 * term.sum(axis=axis, keepdims=True) - first) / (2 * n)
        diagonal += term
    return diagonal


def _fold_to_even(coefficients: np.ndarray, axis: int) -> np.ndarray:
    """Move coefficient ``k`` to index ``2 k`` (``2 n - 2 k``, negated, past ``n / 2``).

    Then ``cos(pi k (2 i + 1) / n)`` becomes the DCT-III's ``cos(pi j (2 i + 1) / (2 n))``;
    ``k = n / 2`` drops out (its cosine is 0).
    """
    source = np.moveaxis(coefficients, axis, 0)
    n = source.shape[0]
    folded = np.zeros_like(source)
    folded[0::2] = source[: (n + 1) // 2]
    upper = np.arange(n // 2 + 1, n)
    folded[2 * n - 2 * upper] -= source[upper]
    return np.moveaxis(folded, 0, axis)
