"""Theoretical point spread functions from a scalar pupil (Fourier-optics) model.

The amplitude PSF at defocus ``z`` is the inverse 2D Fourier transform of the
pupil ``P(kx, ky) * exp(2πi kz z)`` with ``kz = sqrt((n/λ)² - kr²)``; the
intensity PSF is its squared modulus. The pupil is a disk ``kr <= NA/λ`` with
the aplanatic (Abbe sine condition) apodisation of a well-corrected objective.
Polarisation, aberrations, coverslip mismatch and the Stokes shift inside the
emission band are ignored: this is a quick, license-clean stand-in for a
measured PSF, not a vectorial model.

All arrays are ``(Z, Y, X)`` (or ``(Y, X)`` for the in-focus plane), lengths
are in micrometres inside this module and wavelengths are given in nanometres
at the public boundary.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import fft as sp_fft
from scipy import special

from deconflow._errors import DeconflowError, DeconflowWarning

__all__ = ["confocal_psf", "widefield_psf"]

# Largest fine lateral grid the automatic oversampling may create, per axis.
# Beyond it a coarse-pixel PSF costs minutes and gigabytes for no visible gain.
_MAX_AUTO_FINE_LENGTH = 4096
# Complex samples per FFT batch: ~64 MiB in complex128, so big stacks stream
# through memory instead of materialising every defocused field at once.
_CHUNK_ELEMENTS = 1 << 22
# Radius of the first Airy zero in units of λ/NA: one Airy unit is its double.
_AIRY_UNIT = 1.22


@dataclass(frozen=True)
class _Axis:
    """One lateral axis: output pixels, sub-pixel samples and the FFT grid."""

    n_px: int
    pixel_um: float
    oversample: int
    n_fine: int

    @property
    def pitch_um(self) -> float:
        return self.pixel_um / self.oversample

    @property
    def shift_um(self) -> float:
        # With an even number of sub-samples per pixel, none sits on the pixel
        # centre: evaluating the field half a sub-sample off the FFT lattice
        # keeps each pixel's sub-samples symmetric about its centre.
        return 0.5 * self.pitch_um if self.oversample % 2 == 0 else 0.0

    def freqs(self) -> npt.NDArray[np.float64]:
        return sp_fft.fftfreq(self.n_fine, self.pitch_um)

    def crop_index(self) -> npt.NDArray[np.intp]:
        # Sub-sample m of pixel j lies at lattice index
        # (j - n_px//2) * os + m - os//2, so pixel n_px//2 is centred on the
        # optical axis; the modulo maps negative positions to FFT order.
        fine = np.arange(self.n_px * self.oversample)
        offset = (self.n_px // 2) * self.oversample + self.oversample // 2
        return (fine - offset) % self.n_fine


@dataclass(frozen=True)
class _Pupil:
    """Nonzero pupil samples, stored sparsely so defocus phases stay cheap."""

    iy: npt.NDArray[np.intp]
    ix: npt.NDArray[np.intp]
    value: npt.NDArray[np.complex128]
    kz_per_um: npt.NDArray[np.float64]


def _make_axis(n_px: int, pixel_um: float, oversample: int, k_cut_per_um: float) -> _Axis:
    # Summing point samples approximates the pixel integral well only if the
    # samples resolve the intensity, whose band limit is 2 NA/λ: ask for a
    # sub-pixel pitch at or below its Nyquist pitch λ/(4 NA).
    needed = math.ceil(4.0 * k_cut_per_um * pixel_um - 1e-9)
    affordable = max(1, _MAX_AUTO_FINE_LENGTH // (2 * n_px))
    os_ = max(oversample, min(needed, affordable))
    if os_ < needed:
        warnings.warn(
            f"pixel size {pixel_um:g} um is much coarser than the PSF core (λ/(4 NA) = "
            f"{0.25 / k_cut_per_um:.3g} um); the pixel integral is approximated with "
            f"{os_} sub-samples per pixel. Use a smaller voxel size for a faithful PSF.",
            DeconflowWarning,
            stacklevel=3,
        )
    # Twice the requested extent keeps the periodic copies of the PSF tails
    # (the FFT grid is a torus) away from the cropped region.
    n_fine = sp_fft.next_fast_len(2 * n_px * os_)
    return _Axis(n_px=n_px, pixel_um=pixel_um, oversample=os_, n_fine=n_fine)


def _make_pupil(
    ay: _Axis, ax: _Axis, *, na: float, wavelength_um: float, refractive_index: float
) -> _Pupil:
    ky, kx = ay.freqs(), ax.freqs()
    k_cut = na / wavelength_um
    iy, ix = np.nonzero(ky[:, None] ** 2 + kx[None, :] ** 2 <= k_cut**2)
    kr2 = ky[iy] ** 2 + kx[ix] ** 2
    k_medium = refractive_index / wavelength_um
    kz = np.sqrt(k_medium**2 - kr2)
    cos_theta = kz / k_medium
    # Aplanatic lens: amplitude sqrt(cos θ) per solid angle. Integrating over
    # (kx, ky) instead of solid angle brings the Jacobian 1/cos θ
    # (dΩ = dkx dky / (k kz)), hence cos θ^(-1/2) on this grid.
    amplitude = cos_theta**-0.5
    shift = np.exp(2j * np.pi * (ky[iy] * ay.shift_um + kx[ix] * ax.shift_um))
    return _Pupil(iy=iy, ix=ix, value=amplitude * shift, kz_per_um=kz)


def _chunks(n_planes: int, ay: _Axis, ax: _Axis) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // (ay.n_fine * ax.n_fine))
    for start in range(0, n_planes, step):
        yield slice(start, min(start + step, n_planes))


def _field(z_um: npt.NDArray[np.float64], ay: _Axis, ax: _Axis, pupil: _Pupil) -> np.ndarray:
    """Complex amplitude on the full fine grid, shape ``(len(z_um), n_fine_y, n_fine_x)``."""
    spectrum = np.zeros((z_um.size, ay.n_fine, ax.n_fine), dtype=np.complex128)
    spectrum[:, pupil.iy, pupil.ix] = pupil.value * np.exp(
        2j * np.pi * z_um[:, None] * pupil.kz_per_um[None, :]
    )
    return sp_fft.ifft2(spectrum, axes=(-2, -1), overwrite_x=True, workers=-1)


def _crop(a: np.ndarray, ay: _Axis, ax: _Axis) -> np.ndarray:
    return a[:, ay.crop_index()[:, None], ax.crop_index()[None, :]]


def _intensity(field: np.ndarray) -> np.ndarray:
    return field.real**2 + field.imag**2


def _bin(a: np.ndarray, ay: _Axis, ax: _Axis) -> np.ndarray:
    # The detector records the integral over each pixel, not a point sample.
    n = a.shape[0]
    return a.reshape(n, ay.n_px, ay.oversample, ax.n_px, ax.oversample).sum(axis=(2, 4))


def _pinhole_transfer(ay: _Axis, ax: _Axis, diameter_um: float) -> np.ndarray:
    """Fourier transform of a unit-area disk on the ``rfft2`` grid of the fine lattice."""
    ky = ay.freqs()
    kx = sp_fft.rfftfreq(ax.n_fine, ax.pitch_um)
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    # The analytic transform 2 J1(u)/u is exact for a disk of any sub-pixel
    # size, unlike a rasterised disk.
    u = np.pi * diameter_um * k
    safe_u = np.where(u == 0.0, 1.0, u)
    return np.where(u == 0.0, 1.0, 2.0 * special.j1(safe_u) / safe_u)


def _defocus_planes(n_z: int, dz_um: float) -> tuple[npt.NDArray[np.float64], np.ndarray]:
    # An unaberrated pupil gives |h(-z)| = |h(z)|, so only z >= 0 is computed
    # and mirrored; this halves the work and makes odd stacks exactly symmetric.
    centre = n_z // 2
    n_unique = max(centre, n_z - 1 - centre) + 1
    z_um = np.arange(n_unique, dtype=np.float64) * dz_um
    return z_um, np.abs(np.arange(n_z) - centre)


def _finish(stack: np.ndarray, plane_of: np.ndarray, squeeze: bool) -> npt.NDArray[np.float32]:
    psf = stack[plane_of]
    np.maximum(psf, 0.0, out=psf)  # FFT round-off can leave tiny negatives after the pinhole
    psf /= psf.sum()
    psf = psf.astype(np.float32)
    return psf[0] if squeeze else psf


# --------------------------------------------------------------------------- validation


def _positive_float(value: object, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DeconflowError(f"{name} must be a real number, got {value!r}. {hint}")
    out = float(value)
    if not math.isfinite(out) or out <= 0.0:
        raise DeconflowError(f"{name} must be a finite positive number, got {value!r}. {hint}")
    return out


def _check_geometry(
    shape: Sequence[int], voxel_size_um: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float], bool]:
    """Return a 3D shape and voxel size, and whether the caller asked for 2D."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise DeconflowError(
            f"shape must be a tuple (Z, Y, X) or (Y, X) of positive integers, got {shape!r}."
        ) from None
    if len(dims) not in (2, 3):
        raise DeconflowError(
            f"shape must have 3 entries (Z, Y, X) or 2 entries (Y, X) for the in-focus "
            f"plane, got {len(dims)}: {shape!r}."
        )
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise DeconflowError(f"every entry of shape must be a positive integer, got {shape!r}.")
    try:
        sizes = tuple(voxel_size_um)
    except TypeError:
        raise DeconflowError(
            f"voxel_size_um must be a tuple with one size in micrometres per axis of shape, "
            f"got {voxel_size_um!r}."
        ) from None
    if len(sizes) != len(dims):
        order = "(z, y, x)" if len(dims) == 3 else "(y, x)"
        raise DeconflowError(
            f"voxel_size_um must have {len(dims)} entries {order} to match shape {shape!r}, "
            f"got {voxel_size_um!r}."
        )
    hint = "Give voxel sizes in micrometres, e.g. (0.2, 0.065, 0.065)."
    sizes_f = tuple(_positive_float(s, "every voxel size", hint) for s in sizes)
    is_2d = len(dims) == 2
    if is_2d:
        # The z step of a single plane is never used; any positive value works.
        return (1, int(dims[0]), int(dims[1])), (1.0, *sizes_f), True
    return (int(dims[0]), int(dims[1]), int(dims[2])), sizes_f, False  # type: ignore[return-value]


def _check_optics(na: object, refractive_index: object) -> tuple[float, float]:
    n = _positive_float(
        refractive_index, "refractive_index", "Use e.g. 1.33 (water), 1.47 (glycerol), 1.515 (oil)."
    )
    if n < 1.0:
        raise DeconflowError(
            f"refractive_index must be >= 1 (vacuum), got {n:g}. Use the immersion medium's "
            f"index, e.g. 1.33 (water) or 1.515 (oil)."
        )
    na_f = _positive_float(na, "na", "Use the objective's numerical aperture, e.g. 1.2.")
    if na_f >= n:
        raise DeconflowError(
            f"na ({na_f:g}) must be smaller than refractive_index ({n:g}): an objective "
            f"cannot collect light beyond the immersion medium's index. Raise "
            f"refractive_index to the immersion medium's (e.g. 1.515 for oil) or lower na."
        )
    return na_f, n


def _check_wavelength(value: object, name: str) -> float:
    nm = _positive_float(value, name, "Give the wavelength in nanometres, e.g. 520.")
    if nm < 150.0:
        warnings.warn(
            f"{name}={nm:g} nm is far below visible light; was it given in micrometres? "
            f"Wavelengths are in nanometres (e.g. 520).",
            DeconflowWarning,
            stacklevel=3,
        )
    return nm


def _check_oversample(oversample: object) -> int:
    if isinstance(oversample, bool) or not isinstance(oversample, numbers.Integral):
        raise DeconflowError(f"oversample must be a positive integer, got {oversample!r}; 2 is typical.")
    if oversample < 1:
        raise DeconflowError(f"oversample must be >= 1, got {oversample}; 2 is typical.")
    return int(oversample)


# --------------------------------------------------------------------------- public API


def widefield_psf(
    shape: tuple[int, int, int] | tuple[int, int],
    voxel_size_um: tuple[float, float, float] | tuple[float, float],
    *,
    na: float,
    wavelength_nm: float,
    refractive_index: float = 1.33,
    oversample: int = 2,
) -> npt.NDArray[np.float32]:
    """Widefield (epifluorescence) intensity PSF of an ideal aplanatic objective.

    Parameters
    ----------
    shape : tuple of int
        Output shape ``(Z, Y, X)``, or ``(Y, X)`` for the in-focus plane only.
    voxel_size_um : tuple of float
        Voxel size in micrometres, ordered like ``shape``: ``(z, y, x)`` or ``(y, x)``.
    na : float
        Numerical aperture of the objective, ``0 < na < refractive_index``.
    wavelength_nm : float
        Emission wavelength in vacuum, in nanometres.
    refractive_index : float
        Refractive index of the immersion and sample medium (1.33 for water).
    oversample : int
        Minimum number of sub-samples per pixel along y and x used to integrate
        the intensity over each pixel. It is raised automatically (up to a fine
        grid of 4096 samples per axis) when the pixel is coarser than
        ``λ / (4 NA)``, so that the integral resolves the PSF core.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of exactly ``shape``, non-negative, summing to 1,
        with the in-focus maximum at index ``shape[i] // 2`` on every axis.

    Raises
    ------
    DeconflowError
        If the shape, voxel size, NA, refractive index, wavelength or
        oversampling factor is invalid.

    Notes
    -----
    The lateral field is computed on a sub-pixel grid at least twice the
    requested extent (so the periodic FFT does not fold the PSF tails back
    in), integrated over each pixel and cropped. Planes are point-sampled in z.
    For moderate to high NA the result matches the textbook widths
    ``FWHM_xy ≈ 0.51 λ/NA`` and ``FWHM_z ≈ 0.88 λ / (n - sqrt(n² - NA²))``.

    Examples
    --------
    >>> psf = widefield_psf((33, 64, 64), (0.2, 0.065, 0.065), na=1.2, wavelength_nm=520)
    >>> psf.shape, psf.dtype
    ((33, 64, 64), dtype('float32'))
    """
    dims, voxel, is_2d = _check_geometry(shape, voxel_size_um)
    na_f, n = _check_optics(na, refractive_index)
    wl_um = _check_wavelength(wavelength_nm, "wavelength_nm") * 1e-3
    os_ = _check_oversample(oversample)

    k_cut = na_f / wl_um
    ay = _make_axis(dims[1], voxel[1], os_, k_cut)
    ax = _make_axis(dims[2], voxel[2], os_, k_cut)
    pupil = _make_pupil(ay, ax, na=na_f, wavelength_um=wl_um, refractive_index=n)
    z_um, plane_of = _defocus_planes(dims[0], voxel[0])

    stack = np.empty((z_um.size, ay.n_px, ax.n_px), dtype=np.float64)
    for sl in _chunks(z_um.size, ay, ax):
        field = _field(z_um[sl], ay, ax, pupil)
        stack[sl] = _bin(_intensity(_crop(field, ay, ax)), ay, ax)
    return _finish(stack, plane_of, is_2d)


def confocal_psf(
    shape: tuple[int, int, int] | tuple[int, int],
    voxel_size_um: tuple[float, float, float] | tuple[float, float],
    *,
    na: float,
    excitation_wavelength_nm: float,
    emission_wavelength_nm: float,
    refractive_index: float = 1.33,
    pinhole_au: float = 1.0,
    oversample: int = 2,
) -> npt.NDArray[np.float32]:
    """Point-scanning confocal intensity PSF of an ideal aplanatic objective.

    The PSF is the excitation intensity PSF times the detection PSF, the
    emission intensity PSF convolved in each plane with the pinhole projected
    into sample space (a disk of diameter ``pinhole_au * 1.22 λ_em / NA``).

    Parameters
    ----------
    shape : tuple of int
        Output shape ``(Z, Y, X)``, or ``(Y, X)`` for the in-focus plane only.
    voxel_size_um : tuple of float
        Voxel size in micrometres, ordered like ``shape``: ``(z, y, x)`` or ``(y, x)``.
    na : float
        Numerical aperture of the objective, ``0 < na < refractive_index``.
    excitation_wavelength_nm : float
        Excitation (laser) wavelength in vacuum, in nanometres.
    emission_wavelength_nm : float
        Emission wavelength in vacuum, in nanometres.
    refractive_index : float
        Refractive index of the immersion and sample medium (1.33 for water).
    pinhole_au : float
        Pinhole diameter in Airy units (1 AU = ``1.22 λ_em / NA`` in sample
        space); 0 means an ideal point pinhole.
    oversample : int
        Minimum number of sub-samples per pixel along y and x used to
        integrate over each pixel; raised automatically for coarse pixels as
        in :func:`widefield_psf`.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of exactly ``shape``, non-negative, summing to 1,
        with the in-focus maximum at index ``shape[i] // 2`` on every axis.

    Raises
    ------
    DeconflowError
        If the shape, voxel size, NA, refractive index, wavelengths, pinhole
        or oversampling factor is invalid.

    Notes
    -----
    With a point pinhole the result matches the textbook widths
    ``FWHM_xy ≈ 0.37 λ̄/NA`` and ``FWHM_z ≈ 0.64 λ̄ / (n - sqrt(n² - NA²))``
    with ``λ̄ = sqrt(2) λ_ex λ_em / sqrt(λ_ex² + λ_em²)``. A very large
    pinhole leaves only the excitation PSF (no optical sectioning beyond it).

    Examples
    --------
    >>> psf = confocal_psf(
    ...     (33, 64, 64), (0.1, 0.04, 0.04), na=1.2,
    ...     excitation_wavelength_nm=488, emission_wavelength_nm=520, pinhole_au=1.0,
    ... )
    >>> psf.shape
    (33, 64, 64)
    """
    dims, voxel, is_2d = _check_geometry(shape, voxel_size_um)
    na_f, n = _check_optics(na, refractive_index)
    ex_um = _check_wavelength(excitation_wavelength_nm, "excitation_wavelength_nm") * 1e-3
    em_um = _check_wavelength(emission_wavelength_nm, "emission_wavelength_nm") * 1e-3
    if isinstance(pinhole_au, bool) or not isinstance(pinhole_au, numbers.Real):
        raise DeconflowError(f"pinhole_au must be a real number, got {pinhole_au!r}; 1.0 is typical.")
    pinhole = float(pinhole_au)
    if not math.isfinite(pinhole) or pinhole < 0.0:
        raise DeconflowError(
            f"pinhole_au must be >= 0 (0 = point pinhole, 1 = one Airy unit), got {pinhole_au!r}."
        )
    os_ = _check_oversample(oversample)

    # The shorter wavelength has the wider band, so it sets the sampling.
    k_cut = na_f / min(ex_um, em_um)
    ay = _make_axis(dims[1], voxel[1], os_, k_cut)
    ax = _make_axis(dims[2], voxel[2], os_, k_cut)
    pupil_ex = _make_pupil(ay, ax, na=na_f, wavelength_um=ex_um, refractive_index=n)
    pupil_em = _make_pupil(ay, ax, na=na_f, wavelength_um=em_um, refractive_index=n)
    z_um, plane_of = _defocus_planes(dims[0], voxel[0])

    transfer = None
    if pinhole > 0.0:
        transfer = _pinhole_transfer(ay, ax, pinhole * _AIRY_UNIT * em_um / na_f)

    stack = np.empty((z_um.size, ay.n_px, ax.n_px), dtype=np.float64)
    for sl in _chunks(z_um.size, ay, ax):
        excitation = _intensity(_crop(_field(z_um[sl], ay, ax, pupil_ex), ay, ax))
        emission = _intensity(_field(z_um[sl], ay, ax, pupil_em))
        if transfer is not None:
            # Convolve on the whole fine torus before cropping, so light from
            # outside the output window still reaches the pinhole.
            spectrum = sp_fft.rfft2(emission, axes=(-2, -1), workers=-1)
            spectrum *= transfer
            emission = sp_fft.irfft2(
                spectrum, s=(ay.n_fine, ax.n_fine), axes=(-2, -1), workers=-1
            )
        stack[sl] = _bin(excitation * _crop(emission, ay, ax), ay, ax)
    return _finish(stack, plane_of, is_2d)
