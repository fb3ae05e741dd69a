"""Tests of the scalar pupil PSF model against textbook widths and invariants.

Reference widths (Wilhelm et al., Zeiss "Confocal Laser Scanning Microscopy:
Optical Image Formation and Electronic Signal Processing"):

* widefield: FWHM_xy = 0.51 λ/NA, FWHM_z = 0.88 λ / (n - sqrt(n² - NA²));
* confocal, pinhole < 0.25 AU: FWHM_xy = 0.37 λ̄/NA, FWHM_z = 0.64 λ̄ / (n - sqrt(n² - NA²)),
  with λ̄ = sqrt(2) λ_ex λ_em / sqrt(λ_ex² + λ_em²) (equal to λ when λ_ex = λ_em; it is the
  width of a product of two Gaussians of widths ∝ λ_ex and ∝ λ_em).
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from scipy import special

from deconflow._errors import DeconflowError
from deconflow.psf.theoretical import confocal_psf, widefield_psf

EX_NM = 488.0
EM_NM = 520.0
WATER = 1.33


def fwhm(profile: np.ndarray, spacing_um: float) -> float:
    """Full width at half maximum through the central sample, linearly interpolated."""
    p = np.asarray(profile, dtype=np.float64)
    c = p.size // 2
    assert np.argmax(p) == c, "profile must peak at its centre"
    half = p[c] / 2.0
    right = c
    while p[right + 1] > half:
        right += 1
    right_x = right + (p[right] - half) / (p[right] - p[right + 1])
    left = c
    while p[left - 1] > half:
        left -= 1
    left_x = left - (p[left] - half) / (p[left] - p[left - 1])
    return float((right_x - left_x) * spacing_um)


def axial_denominator(na: float, n: float) -> float:
    return n - np.sqrt(n**2 - na**2)


def mean_wavelength_um(ex_nm: float, em_nm: float) -> float:
    return float(np.sqrt(2.0) * ex_nm * em_nm / np.hypot(ex_nm, em_nm)) * 1e-3


# 20 nm pixels resolve the in-focus core for lateral widths; axial widths only
# need the on-axis profile, so the stacks use coarser 50 nm lateral pixels and
# z steps that resolve the axial peak (2.5-4 % of the expected FWHM).
LATERAL_SHAPE, LATERAL_PX = (65, 65), 0.02
AXIAL_SHAPE, AXIAL_PX = (81, 65, 65), 0.05


def axial_dz(na: float) -> float:
    return 0.05 if na < 1.0 else 0.02


@cache
def wf_2d(na: float, wavelength_nm: float = EM_NM, n: float = WATER) -> np.ndarray:
    return widefield_psf(
        LATERAL_SHAPE,
        (LATERAL_PX, LATERAL_PX),
        na=na,
        wavelength_nm=wavelength_nm,
        refractive_index=n,
    )


@cache
def wf_3d(na: float, n: float = WATER) -> np.ndarray:
    return widefield_psf(
        AXIAL_SHAPE,
        (axial_dz(na), AXIAL_PX, AXIAL_PX),
        na=na,
        wavelength_nm=EM_NM,
        refractive_index=n,
    )


@cache
def cf_2d(na: float, pinhole_au: float = 0.0) -> np.ndarray:
    return confocal_psf(
        LATERAL_SHAPE,
        (LATERAL_PX, LATERAL_PX),
        na=na,
        excitation_wavelength_nm=EX_NM,
        emission_wavelength_nm=EM_NM,
        refractive_index=WATER,
        pinhole_au=pinhole_au,
    )


@cache
def cf_3d(na: float, pinhole_au: float = 0.0) -> np.ndarray:
    return confocal_psf(
        AXIAL_SHAPE,
        (axial_dz(na), AXIAL_PX, AXIAL_PX),
        na=na,
        excitation_wavelength_nm=EX_NM,
        emission_wavelength_nm=EM_NM,
        refractive_index=WATER,
        pinhole_au=pinhole_au,
    )


def lateral_fwhm(psf2d: np.ndarray, px: float = LATERAL_PX) -> float:
    return fwhm(psf2d[psf2d.shape[0] // 2], px)


def axial_fwhm(psf3d: np.ndarray, dz: float) -> float:
    _, y, x = psf3d.shape
    return fwhm(psf3d[:, y // 2, x // 2], dz)


# --------------------------------------------------------------------------- known widths


@pytest.mark.parametrize("na", [0.8, 1.2])
def test_widefield_lateral_fwhm_matches_textbook(na: float) -> None:
    expected = 0.51 * EM_NM * 1e-3 / na
    assert lateral_fwhm(wf_2d(na)) == pytest.approx(expected, rel=0.10)


@pytest.mark.parametrize("na", [0.8, 1.2])
def test_widefield_axial_fwhm_matches_textbook(na: float) -> None:
    expected = 0.88 * EM_NM * 1e-3 / axial_denominator(na, WATER)
    assert axial_fwhm(wf_3d(na), axial_dz(na)) == pytest.approx(expected, rel=0.10)


def test_widefield_in_focus_plane_is_airy_pattern_at_low_na() -> None:
    # At NA 0.3 the apodisation is within 1% of flat, so the focus is the Airy
    # pattern [2 J1(v)/v]², v = 2π NA r / λ, first zero at 0.61 λ/NA = 1.02 um.
    na, wl_um, px = 0.3, 0.5, 0.05
    psf = widefield_psf((81, 81), (px, px), na=na, wavelength_nm=500, refractive_index=1.0)
    row = psf[40] / psf[40, 40]
    v = 2 * np.pi * na * (np.arange(81) - 40) * px / wl_um
    safe = np.where(v == 0, 1.0, v)
    airy = np.where(v == 0, 1.0, (2 * special.j1(safe) / safe) ** 2)
    np.testing.assert_allclose(row, airy, atol=0.01)
    first_zero_px = int(np.argmin(row[40:66]))  # the first bright ring peaks 33 px out
    assert first_zero_px * px == pytest.approx(0.61 * wl_um / na, abs=px)


@pytest.mark.parametrize("na", [0.8, 1.2])
def test_confocal_point_pinhole_lateral_fwhm_matches_textbook(na: float) -> None:
    expected = 0.37 * mean_wavelength_um(EX_NM, EM_NM) / na
    assert lateral_fwhm(cf_2d(na)) == pytest.approx(expected, rel=0.12)


@pytest.mark.parametrize("na", [0.8, 1.2])
def test_confocal_point_pinhole_axial_fwhm_matches_textbook(na: float) -> None:
    expected = 0.64 * mean_wavelength_um(EX_NM, EM_NM) / axial_denominator(na, WATER)
    assert axial_fwhm(cf_3d(na), axial_dz(na)) == pytest.approx(expected, rel=0.12)


@pytest.mark.parametrize("na", [0.8, 1.2])
def test_confocal_is_narrower_than_widefield(na: float) -> None:
    assert lateral_fwhm(cf_2d(na)) < 0.8 * lateral_fwhm(wf_2d(na))
    dz = axial_dz(na)
    assert axial_fwhm(cf_3d(na), dz) < 0.8 * axial_fwhm(wf_3d(na), dz)


def test_point_pinhole_is_product_of_excitation_and_emission_psfs() -> None:
    ex = wf_2d(1.2, EX_NM).astype(np.float64)
    em = wf_2d(1.2, EM_NM).astype(np.float64)
    product = ex * em / np.sum(ex * em)
    conf = cf_2d(1.2, 0.0)
    # Not bit-equal: the confocal product is taken before pixel integration.
    np.testing.assert_allclose(conf, product, atol=0.01 * product.max())


def test_larger_pinhole_widens_psf_towards_excitation_widefield() -> None:
    widths = [lateral_fwhm(cf_2d(1.2, au)) for au in (0.0, 0.25, 0.5, 1.0)]
    assert all(a < b for a, b in itertools.pairwise(widths)), widths
    # Once the pinhole passes the emission spot's first dark ring the detection
    # side is flat over the excitation spot, which alone sets the width.
    excitation_only = lateral_fwhm(wf_2d(1.2, EX_NM))
    for au in (2.0, 20.0):
        assert lateral_fwhm(cf_2d(1.2, au)) == pytest.approx(excitation_only, rel=0.03)
    assert widths[-1] == pytest.approx(excitation_only, rel=0.03)


def test_larger_pinhole_weakens_optical_sectioning() -> None:
    dz = axial_dz(1.2)
    assert axial_fwhm(cf_3d(1.2, 0.0), dz) < axial_fwhm(cf_3d(1.2, 1.0), dz)


# --------------------------------------------------------------------------- invariants


def _wf(shape, voxel, **kw):
    return widefield_psf(shape, voxel, na=1.1, wavelength_nm=EM_NM, **kw)


def _cf(shape, voxel, **kw):
    return confocal_psf(
        shape,
        voxel,
        na=1.1,
        excitation_wavelength_nm=EX_NM,
        emission_wavelength_nm=EM_NM,
        pinhole_au=1.0,
        **kw,
    )


@pytest.mark.parametrize("make", [_wf, _cf], ids=["widefield", "confocal"])
@pytest.mark.parametrize(
    ("shape", "voxel"),
    [
        ((17, 31, 31), (0.15, 0.05, 0.05)),
        ((16, 30, 24), (0.15, 0.05, 0.07)),
        ((1, 8, 9), (0.3, 0.1, 0.1)),
        ((33, 33), (0.04, 0.04)),
        ((20, 21), (0.04, 0.05)),
    ],
)
def test_output_contract(make, shape, voxel) -> None:
    psf = make(shape, voxel)
    assert psf.shape == shape
    assert psf.dtype == np.float32
    assert np.all(psf >= 0)
    assert float(psf.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    centre = tuple(s // 2 for s in shape)
    assert np.unravel_index(np.argmax(psf), psf.shape) == centre


@pytest.mark.parametrize("make", [_wf, _cf], ids=["widefield", "confocal"])
@pytest.mark.parametrize("oversample", [2, 3])
def test_odd_shape_is_symmetric(make, oversample: int) -> None:
    psf = make((21, 25, 25), (0.1, 0.04, 0.04), oversample=oversample)
    tol = 1e-6 * psf.max()
    np.testing.assert_allclose(psf, psf.transpose(0, 2, 1), atol=tol)
    np.testing.assert_allclose(psf, psf[::-1], atol=tol)
    np.testing.assert_allclose(psf, psf[:, ::-1, :], atol=tol)
    np.testing.assert_allclose(psf, psf[:, :, ::-1], atol=tol)


def test_even_and_odd_oversampling_agree() -> None:
    # Catches a sub-pixel centring error that only one parity would make.
    a = _wf((9, 25, 25), (0.1, 0.04, 0.04), oversample=2)
    b = _wf((9, 25, 25), (0.1, 0.04, 0.04), oversample=3)
    np.testing.assert_allclose(a, b, atol=0.01 * a.max())


@pytest.mark.parametrize("make", [_wf, _cf], ids=["widefield", "confocal"])
def test_small_field_of_view_is_a_crop_of_a_large_one(make) -> None:
    # A periodic FFT lattice sized only to the small crop would fold the wide
    # defocused planes (blur radius 2.1 um at z = 1 um here) back into it.
    small = make((21, 15, 15), (0.1, 0.05, 0.05))
    large = make((21, 95, 95), (0.1, 0.05, 0.05))
    crop = large[:, 40:55, 40:55].astype(np.float64)
    crop /= crop.sum()
    np.testing.assert_allclose(small, crop, atol=2e-3 * crop.max())
    # Plane by plane too, where the faint defocused planes are not drowned by focus.
    for z in (0, 5, 10):
        ref = crop[z] / crop[z].sum()
        np.testing.assert_allclose(small[z] / small[z].sum(), ref, atol=0.02 * ref.max())


def test_2d_shape_is_the_in_focus_plane() -> None:
    psf3 = _wf((7, 33, 33), (0.2, 0.04, 0.04))
    psf2 = _wf((33, 33), (0.04, 0.04))
    np.testing.assert_allclose(psf2, psf3[3] / psf3[3].sum(), rtol=1e-4, atol=1e-7)


def test_anisotropic_pixels_keep_the_psf_round() -> None:
    dy, dx = 0.02, 0.03
    psf = _wf((61, 41), (dy, dx))
    width_y = fwhm(psf[:, 20], dy)
    width_x = fwhm(psf[30, :], dx)
    assert width_y == pytest.approx(width_x, rel=0.03)


def test_coarse_voxels_still_give_a_valid_psf() -> None:
    psf = _wf((5, 15, 15), (2.0, 0.5, 0.5))
    assert psf.shape == (5, 15, 15)
    assert float(psf.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    # The Airy core (~0.24 um FWHM) fits inside one 0.5 um pixel.
    assert psf[2, 7, 7] > 0.5 * psf[2].sum()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"na": 0.0}, "na"),
        ({"na": -0.5}, "na"),
        ({"na": 1.33}, "smaller than refractive_index"),
        ({"na": 1.4}, "smaller than refractive_index"),
        ({"refractive_index": 0.9}, "refractive_index"),
        ({"wavelength_nm": 0.0}, "wavelength_nm"),
        ({"wavelength_nm": -520.0}, "wavelength_nm"),
        ({"wavelength_nm": float("nan")}, "wavelength_nm"),
        ({"voxel_size_um": (0.1, 0.0, 0.05)}, "voxel size"),
        ({"voxel_size_um": (0.1, 0.05)}, "voxel_size_um must have 3"),
        ({"shape": (0, 9, 9)}, "positive integer"),
        ({"shape": (9,)}, "shape must have 3 entries"),
        ({"shape": (3, 3, 3, 3)}, "shape must have 3 entries"),
        ({"shape": (3.0, 9, 9)}, "positive integer"),
        ({"oversample": 0}, "oversample"),
    ],
)
def test_widefield_rejects_bad_parameters(kwargs: dict, fragment: str) -> None:
    args = {
        "shape": (5, 9, 9),
        "voxel_size_um": (0.1, 0.05, 0.05),
        "na": 1.0,
        "wavelength_nm": 520.0,
        "refractive_index": 1.33,
    }
    args.update(kwargs)
    shape, voxel = args.pop("shape"), args.pop("voxel_size_um")
    with pytest.raises(DeconflowError, match=fragment):
        widefield_psf(shape, voxel, **args)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pinhole_au": -1.0}, "pinhole_au must be >= 0"),
        ({"excitation_wavelength_nm": 0.0}, "excitation_wavelength_nm"),
        ({"emission_wavelength_nm": -1.0}, "emission_wavelength_nm"),
        ({"na": 1.6, "refractive_index": 1.515}, "smaller than refractive_index"),
    ],
)
def test_confocal_rejects_bad_parameters(kwargs: dict, fragment: str) -> None:
    args = {
        "na": 1.0,
        "excitation_wavelength_nm": 488.0,
        "emission_wavelength_nm": 520.0,
        "refractive_index": 1.33,
        "pinhole_au": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(DeconflowError, match=fragment):
        confocal_psf((5, 9, 9), (0.1, 0.05, 0.05), **args)


def test_deconflow_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="na"):
        widefield_psf((9, 9), (0.05, 0.05), na=2.0, wavelength_nm=520)
