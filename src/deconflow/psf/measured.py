"""Turn a raw bead stack into a PSF the forward model can use.

Steps, in order (each a small function so tests can check it alone):

1. background: median of the stack's outer faces (the bead sits in the middle
   of a bead stack), noise from their MAD; where the faces show a trend across
   the field larger than the noise (uneven illumination, a camera's shading),
   a smooth background (linear along each axis plus a y·x twist) is fitted to
   them and subtracted instead; the signed values are kept until the support is
   known (clipping noise at 0 leaves a positive pedestal);
2. saturation: a flat top at the top of the integer range is reported;
3. centring: the peak is found on a lightly smoothed copy, the centre of mass
   is taken in a small box around it, and the stack is moved by a Fourier
   shift so that this centre lands exactly on the centre voxel;
4. support: the box around the centre that holds every voxel clearly above
   the noise, kept symmetric and odd-sized so the centre stays the centre;
   voxels in it that are not within one voxel of significant signal are set
   to 0 and negatives clipped;
5. resampling to the image's voxel size (z step and pixel size each): coarser
   pixels integrate the PSF over their area, z planes sample it at points;
6. normalisation to sum 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from deconflow._errors import DeconflowError, DeconflowWarning
from deconflow._types import FloatArray, Shape, VoxelSize
from deconflow._validate import check_voxel_size
from deconflow.physics.noise import saturated_voxels

__all__ = [
    "PreparedPSF",
    "background_trend",
    "centre_of_mass_near_peak",
    "estimate_psf_background",
    "find_saturation",
    "prepare_psf",
    "resample_psf",
]

#: A resampled PSF with more than this share of its light in one voxel is a point.
_POINT_LIKE_SHARE = 0.8

#: Upsampling of the PSF (its voxel over the image's) above which an undersampled core is
#: said: 1.3-1.5 is the benchmark's measured bead (0.13 x 0.3 µm onto 0.1 x 0.2 µm).
_UPSAMPLING_NOTED = 1.5

#: Smallest half-width (voxels) of the box in which the peak's centre of mass is measured.
_COM_MIN_HALF_WIDTH = 2
#: A voxel belongs to the PSF's support when its smoothed value exceeds this many noise sigmas.
_SUPPORT_SIGMAS = 4.0
#: Smoothing (voxels) that finds faint extended tails for the mask of kept voxels.
_TAIL_SMOOTHING = 2.5


@dataclass(frozen=True)
class PreparedPSF:
    """A PSF ready for the forward model, with a record of what was done to it.

    Attributes
    ----------
    data : numpy.ndarray
        float32 PSF, odd-sized on every axis, centred on ``shape // 2``, sum 1.
    voxel_size_um : tuple of float or None
        Voxel size of ``data``; ``None`` when no voxel size was given.
    background : float
        Background (in the raw stack's units) that was subtracted: its mean over
        the stack where a fitted trend was subtracted (see the notes).
    noise_sigma : float
        Noise standard deviation estimated from the stack's faces.
    shift_vox : tuple of float
        Sub-voxel shift applied to centre the peak (after the integer crop).
    saturated_voxels : int
        Voxels at a camera ceiling in the raw stack (0 when not saturated).
    notes : tuple of str
        Human-readable remarks (cropping, resampling, saturation, ...).
    """

    data: FloatArray
    voxel_size_um: VoxelSize | None
    background: float
    noise_sigma: float
    shift_vox: tuple[float, ...]
    saturated_voxels: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def _face_mask(shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the outer faces (1 voxel thick) of an array of ``shape``.

    An axis thinner than 5 voxels contributes no faces: the end planes of a stack
    of a few planes hold the bead's own light, not background.
    """
    mask = np.ones(shape, dtype=bool)
    mask[tuple(slice(1, -1) if n >= 5 else slice(None) for n in shape)] = False
    return mask


def _faces(stack: FloatArray) -> FloatArray:
    """Values on the outer faces of the stack (1 voxel thick)."""
    mask = _face_mask(stack.shape)
    if not mask.any():
        return stack.ravel()
    return stack[mask]


def background_trend(
    stack: FloatArray, background: float, noise_sigma: float
) -> tuple[FloatArray, float] | None:
    """Fit a smooth background (linear along each axis, plus a y·x twist) to the faces.

    Bead stacks often sit on an uneven background (illumination falling off
    towards a corner, camera shading). A single level then leaves a positive
    sheet on one side of the field and a negative one on the other, which the
    support step keeps as PSF: a measured 25×256×256 widefield bead (pyotf's,
    NA 0.85) whose field is 50 ADU darker in one corner kept 17 % of its sum
    beyond 100 px of its centre and a support box of the whole field; with
    this fit, 6 % (a fit with y² and x² too gave 0 %, but those terms also
    match a tightly cropped bead's own tails on its faces and moved such a
    PSF's centre by 0.15 voxel, so they are left out: flat-field or crop a
    strongly vignetted bead stack first). The fit is robust:
    face voxels more than 3 sigma off the current fit (the bead's own light
    reaching a face) are left out, three times.

    Parameters
    ----------
    stack : numpy.ndarray
        Raw bead stack, float.
    background, noise_sigma : float
        Median and MAD sigma of the faces (:func:`estimate_psf_background`).

    Returns
    -------
    (numpy.ndarray, float) or None
        The fitted background at every voxel and the noise sigma of the faces
        about it, or ``None`` when the fit spans less than two noise sigmas over
        the stack (a flat background: the median is used as before).
    """
    mask = _face_mask(stack.shape)
    if stack.ndim < 2 or min(stack.shape) < 5 or not mask.any() or noise_sigma <= 0:
        return None
    grids = np.meshgrid(
        *(np.arange(n, dtype=np.float64) / n - 0.5 for n in stack.shape), indexing="ij"
    )
    y, x = grids[-2], grids[-1]
    # linear along every axis, and the in-plane twist y·x (shading that falls off
    # towards one corner); no terms even about the centre (y², x²): a tightly cropped
    # bead's own tails on the faces look just like them
    terms = [np.ones(stack.shape), *grids, y * x]
    design = np.column_stack([t[mask] for t in terms])
    values = stack[mask]
    keep = np.abs(values - background) <= 3.0 * noise_sigma
    sigma = noise_sigma
    coef = np.zeros(design.shape[1])
    for _ in range(3):
        if keep.sum() < 2 * design.shape[1]:
            return None
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = values - design @ coef
        sigma = float(1.4826 * np.median(np.abs(residual[keep])))
        if sigma <= 0:
            sigma = float(np.std(residual[keep]))
        keep = np.abs(residual) <= 3.0 * max(sigma, 1e-12)
    trend = sum((c * t for c, t in zip(coef, terms, strict=True)), np.zeros(stack.shape))
    # a trend within twice the noise (or within 0.1 % of the bead's peak, for already
    # cleaned PSFs with noiseless faces) is left to the median
    floor = max(2.0 * sigma, 1e-3 * float(np.max(stack) - background), 1e-12)
    if float(trend.max() - trend.min()) <= floor:
        return None
    return trend, sigma


def estimate_psf_background(stack: FloatArray) -> tuple[float, float]:
    """Estimate background level and noise sigma of a bead stack from its faces.

    Parameters
    ----------
    stack : numpy.ndarray
        Raw bead stack (any real dtype).

    A stack narrower than 5 voxels along y or x has no faces apart from the
    bead: it is taken as already background-free (0, 0). A stack of fewer than
    5 planes (a single plane saved as ``(1, Y, X)``) is measured on the y and x
    edges of its planes.

    Returns
    -------
    background : float
        Median of the face voxels.
    noise_sigma : float
        Their median absolute deviation scaled to a Gaussian sigma.
    """
    if min(np.shape(stack)[-2:]) < 5:
        # too small to have faces apart from the bead: a computed or already cleaned PSF
        return 0.0, 0.0
    faces = np.asarray(_faces(np.asarray(stack, dtype=np.float64)))
    background = float(np.median(faces))
    sigma = float(1.4826 * np.median(np.abs(faces - background)))
    if sigma == 0.0:
        # low-count integer data: most face voxels share one value, so the MAD is 0
        sigma = float(np.std(faces))
    return background, sigma


def find_saturation(raw: np.ndarray) -> int:
    """Count voxels sitting at a camera's integer ceiling (0 when none).

    A single voxel at the maximum is a peak, not clipping; a flat top of two or
    more voxels at 2^b - 1 (b = 8, 10, 12, 14, 16) or at the dtype's maximum is.
    """
    if not np.issubdtype(raw.dtype, np.integer):
        return 0
    return int(np.count_nonzero(saturated_voxels(raw)))


def _half_max_width(line: FloatArray, peak: int) -> int:
    """Count the contiguous voxels around ``peak`` at or above half its value."""
    half = line[peak] / 2.0
    lo = peak
    while lo > 0 and line[lo - 1] >= half:
        lo -= 1
    hi = peak
    while hi < line.size - 1 and line[hi + 1] >= half:
        hi += 1
    return hi - lo + 1


def _undersampled_axes(
    psf: FloatArray, voxel_size_um: VoxelSize, target_voxel_size_um: VoxelSize
) -> list[int]:
    """Axes along which ``psf`` (centred) is upsampled over 1.5x with a core under 2 voxels.

    A core under 2 of its own voxels (only the peak at or above half its value; a centred
    Gaussian's neighbours reach half at a FWHM of exactly 2) leaves its shape between
    the samples unmeasured; upsampling a well-sampled PSF is only interpolation, and fine.
    """
    peak = tuple(int(c) for c in np.asarray(psf.shape) // 2)
    return [
        axis
        for axis in range(psf.ndim)
        if voxel_size_um[axis] > _UPSAMPLING_NOTED * target_voxel_size_um[axis]
        and _half_max_width(
            psf[tuple(slice(None) if a == axis else p for a, p in enumerate(peak))], peak[axis]
        )
        < 2
    ]


def centre_of_mass_near_peak(psf: FloatArray) -> FloatArray:
    """Centre of mass (voxel coordinates) in a box around the brightest voxel.

    The maximum is located on a copy smoothed by one voxel so that a single hot
    pixel does not win. The box reaches one full width at half maximum to each
    side along each axis: a narrower box truncates the peak and under-reports
    an offset (by ~60 % at half a FWHM), a wider one lets in noise and
    neighbours. The centre of mass uses the unsmoothed values.
    """
    smooth = ndimage.gaussian_filter(psf, sigma=1.0, mode="constant")
    peak = tuple(int(p) for p in np.unravel_index(int(np.argmax(smooth)), psf.shape))
    widths = [
        _half_max_width(
            smooth[tuple(slice(None) if a == i else p for a, p in enumerate(peak))], peak[i]
        )
        for i in range(psf.ndim)
    ]
    box = tuple(
        slice(max(p - max(w, _COM_MIN_HALF_WIDTH), 0), min(p + max(w, _COM_MIN_HALF_WIDTH) + 1, n))
        for p, w, n in zip(peak, widths, psf.shape, strict=True)
    )
    local = np.clip(psf[box], 0.0, None)
    total = local.sum()
    if total <= 0:
        return np.asarray(peak, dtype=np.float64)
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    return np.asarray([(g * local).sum() / total for g in grids])


def _crop_centred(psf: FloatArray, centre: np.ndarray, half: Shape) -> FloatArray:
    """Odd-sized crop of half-widths ``half`` around integer ``centre``, zero-filled outside."""
    out = np.zeros(tuple(2 * h + 1 for h in half), dtype=psf.dtype)
    src, dst = [], []
    for c, h, n in zip(centre, half, psf.shape, strict=True):
        lo, hi = int(c) - h, int(c) + h + 1
        src.append(slice(max(lo, 0), min(hi, n)))
        dst.append(slice(max(lo, 0) - lo, 2 * h + 1 - (hi - min(hi, n))))
    out[tuple(dst)] = psf[tuple(src)]
    return out


def _centre_subvoxel(psf: FloatArray, rounds: int = 6) -> tuple[FloatArray, FloatArray]:
    """Fourier-shift ``psf`` so its near-peak centre of mass sits on the centre voxel.

    The centre of mass in a truncated box moves by slightly less than the shift
    applied, so the measurement is repeated a few times; each round shifts the
    original array by the accumulated amount (one interpolation, not several).
    """
    centre = np.asarray(psf.shape) // 2
    spectrum = np.fft.fftn(psf)
    total = np.zeros(psf.ndim)
    shifted = psf
    for _ in range(rounds):
        error = centre - centre_of_mass_near_peak(shifted)
        if np.all(np.abs(error) < 1e-3):
            break
        total += error
        # signed: the background noise must stay zero-mean until the support is known
        shifted = np.real(np.fft.ifftn(ndimage.fourier_shift(spectrum, total)))
    return shifted, total


def _support(psf: FloatArray, noise_sigma: float) -> tuple[Shape, np.ndarray]:
    """Half-widths of the symmetric box holding every voxel clearly above the noise.

    Parameters
    ----------
    psf : numpy.ndarray
        Background-subtracted (signed) PSF centred on ``shape // 2``.
    noise_sigma : float
        Noise standard deviation of the unsmoothed stack.

    Returns
    -------
    half_widths : tuple of int
        Half-widths of the box around the centre voxel.
    significant : numpy.ndarray
        Boolean mask (shape of ``psf``) of the voxels within one voxel of the
        significant signal; the rest hold only noise and are set to 0, since
        clipping zero-mean noise at 0 would leave a positive pedestal of about
        0.4 sigma per voxel.
    """
    centre = np.asarray(psf.shape) // 2
    smooth = ndimage.gaussian_filter(psf, sigma=1.0, mode="constant")
    # Smoothing by sigma=1 voxel lowers white noise by ~(2 sqrt(pi))^(ndim/2).
    smoothed_sigma = noise_sigma / (2.0 * np.sqrt(np.pi)) ** (psf.ndim / 2)
    threshold = max(_SUPPORT_SIGMAS * smoothed_sigma, 1e-4 * float(smooth.max()))
    above = smooth > threshold
    # Faint, extended tails (a widefield PSF's defocus cone) only stand out of the noise
    # when averaged over more voxels: a wider smoothing finds them for the mask.
    wide = ndimage.gaussian_filter(psf, sigma=_TAIL_SMOOTHING, mode="constant")
    wide_sigma = noise_sigma / (2.0 * np.sqrt(np.pi) * _TAIL_SMOOTHING) ** (psf.ndim / 2)
    significant = ndimage.binary_dilation(
        above | (wide > _SUPPORT_SIGMAS * wide_sigma),
        structure=ndimage.generate_binary_structure(psf.ndim, psf.ndim),
    )
    labels, _ = ndimage.label(above)
    centre_label = labels[tuple(centre)]
    if centre_label == 0:
        return tuple(int(c) for c in centre), significant
    coords = np.argwhere(labels == centre_label)
    # one voxel of margin beyond the last significant voxel keeps the tail's edge
    reach = np.max(np.abs(coords - centre), axis=0) + 1
    return tuple(int(min(r, c)) for r, c in zip(reach, centre, strict=True)), significant


def _integrate_over_pixels(source: np.ndarray, ratio: float, axis: int) -> np.ndarray:
    """Integrate source-pixel samples over pixels ``ratio`` times wider, along ``axis``.

    The source samples already integrate over one source pixel, so the transfer
    function is ``sinc(ratio f) / sinc(f)`` (``f`` in cycles per source pixel), exact
    for a band-limited (well-sampled) PSF. The axis is zero-padded by a few wide
    pixels on each side first, so that the FFT does not wrap a tail around.
    """
    reach = int(np.ceil(2.0 * ratio)) + 2
    pad = [(reach, reach) if a == axis else (0, 0) for a in range(source.ndim)]
    padded = np.pad(source, pad)
    n = padded.shape[axis]
    f = np.fft.rfftfreq(n)
    transfer = np.sinc(ratio * f) / np.sinc(f)
    shape = [1] * source.ndim
    shape[axis] = f.size
    spectrum = np.fft.rfft(padded, axis=axis) * transfer.reshape(shape)
    return np.fft.irfft(spectrum, n=n, axis=axis)


def _voxel_size(value: VoxelSize, ndim: int, what: str) -> VoxelSize:
    """Check a voxel size against the PSF's axes: ``ndim`` positive micrometres."""
    checked = check_voxel_size(value, ndim, what)
    if checked is None:
        raise DeconflowError(f"{what} is required: the voxel size in micrometres.")
    return checked


def resample_psf(
    psf: FloatArray,
    from_voxel_um: VoxelSize,
    to_voxel_um: VoxelSize,
) -> FloatArray:
    """Resample a centred PSF to another voxel size, keeping its centre on the centre voxel.

    Parameters
    ----------
    psf : numpy.ndarray
        Centred PSF, peak at ``shape // 2`` (as :func:`prepare_psf` and the
        theoretical PSFs place it, for odd and even shapes).
    from_voxel_um, to_voxel_um : tuple of float
        Voxel sizes (z, y, x) or (y, x) in micrometres.

    Returns
    -------
    numpy.ndarray
        Resampled float64 PSF, odd-sized, non-negative, sum 1; when the voxel
        sizes already match, ``psf / psf.sum()`` (shape and dtype kept).

    Raises
    ------
    DeconflowError
        If a voxel size is not one positive number per axis of ``psf``, or the
        PSF vanishes when resampled.

    Notes
    -----
    The new samples are cubic-spline interpolated. When the new pixels are
    coarser along y or x, the PSF is first integrated over the wider pixel
    (transfer function ``sinc(r f) / sinc(f)`` for a ratio ``r``), as the camera
    integrates light over each pixel. The z axis is not filtered: a z stack
    samples the PSF at points (its focal planes), so the coarser stack's PSF is
    the finer one's values at those planes. A Gaussian anti-aliasing filter of
    ``(r - 1) / 2`` voxels, as ``skimage.transform.resize`` uses, widened the PSF:
    resampling a 0.1 um z step to 0.3 um lowered a confocal PSF's peak by 14 %.
    """
    from_voxel_um = _voxel_size(from_voxel_um, psf.ndim, "from_voxel_um")
    to_voxel_um = _voxel_size(to_voxel_um, psf.ndim, "to_voxel_um")
    ratio = np.asarray(to_voxel_um, dtype=np.float64) / np.asarray(from_voxel_um, dtype=np.float64)
    if np.allclose(ratio, 1.0, rtol=1e-6, atol=0):
        return psf / psf.sum()
    source = np.asarray(psf, dtype=np.float64)
    lateral = range(psf.ndim - 2, psf.ndim)  # (y, x); z (axis 0 of a 3D stack) is point-sampled
    for axis in lateral:
        if ratio[axis] > 1.0:
            source = _integrate_over_pixels(source, float(ratio[axis]), axis)
    # the centre voxel is shape // 2 (padding adds as much on both sides), not
    # (shape - 1) / 2: on an even axis that is half a voxel off the peak
    old_centre = np.asarray(source.shape) // 2
    new_half = np.floor((np.asarray(psf.shape) - 1) / 2.0 / ratio).astype(int)
    axes = [
        old_centre[i] + (np.arange(-new_half[i], new_half[i] + 1)) * ratio[i]
        for i in range(psf.ndim)
    ]
    coords = np.meshgrid(*axes, indexing="ij")
    out = ndimage.map_coordinates(source, coords, order=3, mode="constant", cval=0.0)
    out = np.clip(out, 0.0, None)
    total = out.sum()
    if total <= 0:
        raise DeconflowError(
            "The PSF vanished when resampled to the image's voxel size; check that "
            "psf_voxel_size and voxel_size are both in micrometres and ordered (z, y, x)."
        )
    return out / total


def prepare_psf(
    raw: np.ndarray,
    *,
    voxel_size_um: VoxelSize | None = None,
    target_voxel_size_um: VoxelSize | None = None,
    max_shape: Shape | None = None,
) -> PreparedPSF:
    """Prepare a measured PSF (a raw bead stack) for deconvolution.

    Parameters
    ----------
    raw : numpy.ndarray
        Bead stack, 2D or 3D, any real dtype, any size (odd or even).
    voxel_size_um : tuple of float, optional
        Voxel size of ``raw`` in micrometres, (z, y, x) or (y, x).
    target_voxel_size_um : tuple of float, optional
        Voxel size of the image to deconvolve; the PSF is resampled to it when
        it differs from ``voxel_size_um``.
    max_shape : tuple of int, optional
        Largest allowed PSF shape (usually the image's shape); a larger PSF is
        cropped around its centre and renormalised, with a note.

    Returns
    -------
    PreparedPSF
        The prepared PSF and a record of the steps.

    Raises
    ------
    DeconflowError
        If the stack is empty, not 2D/3D, not finite, or holds no signal above
        its background, or a voxel size or ``max_shape`` does not match its axes.

    Warns
    -----
    DeconflowWarning
        When the bead is saturated (its peak is clipped, so the PSF's core is
        too flat) or its peak lies far from the stack's centre.
    """
    arr = np.asarray(raw)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DeconflowError(
            f"The PSF must be a non-empty 2D (Y, X) or 3D (Z, Y, X) array; got shape {arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.floating):
        raise DeconflowError(
            f"The PSF has dtype {arr.dtype}; pass real numbers (integer or float)."
        )
    voxel_size_um = check_voxel_size(voxel_size_um, arr.ndim, "voxel_size_um")
    target_voxel_size_um = check_voxel_size(target_voxel_size_um, arr.ndim, "target_voxel_size_um")
    if max_shape is not None and (len(max_shape) != arr.ndim or any(int(m) < 1 for m in max_shape)):
        raise DeconflowError(
            f"max_shape {tuple(max_shape)} must hold one positive size per axis of the "
            f"{arr.ndim}D PSF {arr.shape}; pass the image's shape."
        )
    stack = arr.astype(np.float64)
    if not np.all(np.isfinite(stack)):
        raise DeconflowError(
            "The PSF contains NaN or Inf values; replace them (e.g. with the background "
            "level) before deconvolving."
        )
    notes: list[str] = []

    saturated = find_saturation(arr)
    if saturated:
        message = (
            f"The bead stack is saturated: {saturated} voxels sit at the camera ceiling "
            f"{int(arr.max())}, so the PSF's core is clipped and too flat. Re-acquire the bead "
            "with a shorter exposure or lower laser power."
        )
        notes.append(message)
        warnings.warn(message, DeconflowWarning, stacklevel=2)

    background, noise_sigma = estimate_psf_background(stack)
    trend = background_trend(stack, background, noise_sigma)
    if trend is None:
        level: FloatArray | float = background
    else:
        level, noise_sigma = trend
        background = float(level.mean())
        notes.append(
            f"background: a smooth trend of {float(level.max() - level.min()):.3g} across the "
            f"stack (noise sigma {noise_sigma:.3g}) was fitted to the faces and subtracted"
        )
    # Signed until the support is known: clipping the background's zero-mean noise at 0
    # here would leave a pedestal of ~0.4 sigma per voxel (10 % of a typical bead's sum).
    signal = stack - level
    if signal.max() <= max(noise_sigma, 0.0) or np.clip(signal, 0.0, None).sum() <= 0:
        raise DeconflowError(
            "The PSF holds no signal above its background (it is flat, all zero or "
            "negative); check that the right file was loaded."
        )

    # integer crop centred on the peak, as large as the stack allows, then sub-voxel shift
    com = centre_of_mass_near_peak(signal)
    peak_voxel = np.round(com).astype(int)
    offset = peak_voxel - (np.asarray(stack.shape) - 1) / 2.0
    if np.any(np.abs(offset) > 3):
        message = (
            "The bead's peak is off the stack's centre by "
            f"{tuple(round(float(o), 1) for o in offset)} voxels "
            f"{'(z, y, x)' if arr.ndim == 3 else '(y, x)'}; it was re-centred."
        )
        notes.append(message)
        warnings.warn(message, DeconflowWarning, stacklevel=2)
    # the larger side sets the half-width: zero-fill the short side rather than lose a tail
    half = tuple(int(max(p, n - 1 - p)) for p, n in zip(peak_voxel, stack.shape, strict=True))
    cropped = _crop_centred(signal, peak_voxel, half)
    centred, shift = _centre_subvoxel(cropped)

    support, significant = _support(centred, noise_sigma)
    centre = np.asarray(centred.shape) // 2
    psf = _crop_centred(np.where(significant, np.clip(centred, 0.0, None), 0.0), centre, support)

    if (
        voxel_size_um is not None
        and target_voxel_size_um is not None
        and not np.allclose(voxel_size_um, target_voxel_size_um, rtol=1e-3)
    ):
        undersampled = _undersampled_axes(psf, voxel_size_um, target_voxel_size_um)
        if undersampled:
            names = "zyx"[-psf.ndim :]
            message = (
                f"The PSF's voxels ({tuple(voxel_size_um)} µm) are "
                + ", ".join(
                    f"{voxel_size_um[a] / target_voxel_size_um[a]:.3g}x coarser along {names[a]}"
                    for a in undersampled
                )
                + f" than the image's ({tuple(target_voxel_size_um)} µm), and its core spans "
                "under 2 of its own voxels there: its shape at the image's sampling is "
                "interpolated, not measured, and the image is sharpened against a guess. "
                "Measure the bead at the image's voxel size (without binning), or use a "
                "theoretical PSF (deconflow.psf.widefield_psf or confocal_psf)."
            )
            notes.append(message)
            warnings.warn(message, DeconflowWarning, stacklevel=2)
        psf = resample_psf(psf, voxel_size_um, target_voxel_size_um)
        notes.append(
            f"resampled from voxel size {tuple(voxel_size_um)} um to "
            f"{tuple(target_voxel_size_um)} um"
        )
        if float(psf.max()) > _POINT_LIKE_SHARE * float(psf.sum()):
            # at the image's voxels the PSF is a point, so deconvolution cannot sharpen
            # anything: most often voxel sizes given in nm, or the image's and the PSF's
            # swapped, rather than an image sampled ten times coarser than its optics
            message = (
                f"At the image's voxel size {tuple(target_voxel_size_um)} µm the PSF (measured "
                f"at {tuple(voxel_size_um)} µm) puts {float(psf.max() / psf.sum()):.0%} of its "
                "light in one voxel, so deconvolution cannot sharpen the image. Check that "
                "both voxel sizes are in micrometres (0.1, not 100 nm)."
            )
            notes.append(message)
            warnings.warn(message, DeconflowWarning, stacklevel=2)
    if max_shape is not None:
        current = tuple(int(h) for h in np.asarray(psf.shape) // 2)
        limit = tuple(min(h, (m - 1) // 2) for h, m in zip(current, max_shape, strict=True))
        if limit != current:
            notes.append(
                f"PSF cropped from {psf.shape} to at most the image's shape {tuple(max_shape)}"
            )
            psf = _crop_centred(psf, np.asarray(psf.shape) // 2, limit)
    psf = psf / psf.sum()
    out_voxel = target_voxel_size_um if target_voxel_size_um is not None else voxel_size_um
    return PreparedPSF(
        data=psf.astype(np.float32),
        voxel_size_um=None if out_voxel is None else tuple(float(v) for v in out_voxel),
        background=background,
        noise_sigma=noise_sigma,
        shift_vox=tuple(float(s) for s in shift),
        saturated_voxels=saturated,
        notes=tuple(notes),
    )
