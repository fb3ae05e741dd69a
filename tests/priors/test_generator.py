"""The structure generator: each type has the structure its name promises."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from deconflow.priors import STRUCTURES, generate_volume, render_structure

ISO = (0.1, 0.1, 0.1)


def _mask(vol: np.ndarray, frac: float = 0.3) -> np.ndarray:
    return vol > frac * vol.max()


def _render(kind: str, shape=(40, 48, 48), vox=ISO, density=1.0, seed=0) -> np.ndarray:
    vol = render_structure(kind, shape, vox, np.random.default_rng(seed), density)
    assert vol.shape == shape and vol.dtype == np.float32
    assert np.isfinite(vol).all() and vol.min() >= 0 and vol.max() > 0
    return vol


def test_filaments_are_long_and_thin():
    labels = measure.label(_mask(_render("filaments", density=0.3, seed=1)))
    biggest = max(measure.regionprops(labels), key=lambda r: r.area)
    half_thickness = ndimage.distance_transform_edt(biggest.image).max()
    assert biggest.axis_major_length > 20  # voxels: > 2 µm long
    assert half_thickness <= 3  # but at most ~0.6 µm thick


def test_network_has_many_thin_pieces():
    vol = _render("network", density=2.0, seed=2)
    labels = measure.label(_mask(vol))
    assert labels.max() >= 8
    assert _mask(vol).mean() < 0.1  # thin: mostly empty space


def test_puncta_are_small_and_compact():
    vol = _render("puncta", density=2.0, seed=3)
    regions = measure.regionprops(measure.label(_mask(vol, 0.2)))
    assert len(regions) >= 10
    # a punctum is at most ~0.5 µm across: (5 voxels)^3
    assert np.median([r.area for r in regions]) < 125


def test_vesicles_are_hollow():
    vol = _render("vesicles", shape=(48, 48, 48), density=1.0, seed=4)
    regions = measure.regionprops(measure.label(_mask(vol, 0.2)), intensity_image=vol)
    big = [r for r in regions if r.area > 100]
    assert big
    for r in big:  # the centre of a shell is its dark lumen, not its bright wall
        centre = tuple(round(c) for c in r.centroid)
        assert vol[centre] < 0.3 * r.intensity_mean, (centre, vol[centre], r.intensity_mean)


@pytest.mark.parametrize("seed", range(4))
def test_vesicle_caps_survive_a_coarse_z_step(seed):
    """A 0.6 µm z step must record a vesicle's tilted caps as the light that falls in each
    plane's slab, as a camera does, not point-sample a 0.03-0.1 µm wall and lose them."""
    fine = render_structure("vesicles", (48, 64, 64), ISO, np.random.default_rng(seed), 0.05)
    coarse = render_structure(
        "vesicles", (8, 64, 64), (0.6, 0.1, 0.1), np.random.default_rng(seed), 0.05
    )
    per_plane = coarse.sum(axis=(1, 2)) * 0.6
    fine_planes = fine.sum(axis=(1, 2)) * 0.1
    # the same vesicles (same field, same draws): plane j of the coarse grid at 0.6 j µm
    # collects the fine planes within 0.3 µm of it
    slabs = np.array([fine_planes[max(0, 6 * j - 3) : 6 * j + 3].sum() for j in range(8)])
    for j in range(1, 7):  # inner planes: the faces cut their slabs in half
        if slabs[j] > 0.1 * slabs.max():
            assert 0.5 < per_plane[j] / slabs[j] < 2.0, (j, per_plane, slabs)


def test_membranes_are_sheets_spanning_the_field():
    vol = _render("membranes", density=1.0, seed=5)
    mask = _mask(vol, 0.5)
    biggest = max(measure.regionprops(measure.label(mask)), key=lambda r: r.area)
    z0, y0, x0, z1, y1, x1 = biggest.bbox
    spans = sorted([(z1 - z0) / 40, (y1 - y0) / 48, (x1 - x0) / 48])
    assert spans[1] > 0.8  # extends across the field in at least two directions
    assert mask.mean() < 0.3


def test_nuclei_are_large_textured_bodies():
    vol = _render("nuclei", shape=(32, 64, 64), vox=(0.3, 0.15, 0.15), seed=6)
    mask = vol > 0.1 * np.percentile(vol, 99)  # chromocenters are much brighter than the rest
    biggest = max(measure.regionprops(measure.label(mask)), key=lambda r: r.area)
    assert biggest.area > 0.03 * vol.size
    inside = vol[measure.label(mask) == biggest.label]
    assert inside.std() / inside.mean() > 0.15  # chromatin texture, not a flat blob


def test_anisotropic_voxels_shrink_structure_along_z():
    iso = _render("vesicles", shape=(48, 48, 48), vox=ISO, seed=7)
    aniso = _render("vesicles", shape=(48, 48, 48), vox=(0.4, 0.1, 0.1), seed=7)
    # the same physical objects span ~4x fewer planes when the z step is 4x larger
    z_iso = np.count_nonzero(_mask(iso).any(axis=(1, 2)))
    z_aniso = np.count_nonzero(_mask(aniso).any(axis=(1, 2)))
    assert z_aniso < z_iso


def test_generate_volume_mixes_and_varies():
    rng = np.random.default_rng(8)
    vols = [generate_volume((8, 32, 32), (0.3, 0.1, 0.1), rng) for _ in range(6)]
    peaks = [v.max() for v in vols]
    assert all(np.isfinite(v).all() and v.min() >= 0 and v.dtype == np.float32 for v in vols)
    assert max(peaks) / min(peaks) > 3  # brightness is randomised
    one = generate_volume((8, 32, 32), (0.3, 0.1, 0.1), rng, structures=["puncta"])
    assert one.shape == (8, 32, 32)


def test_unknown_structure_is_refused():
    with pytest.raises(ValueError, match="unknown structure"):
        render_structure("mitochondria", (4, 8, 8), ISO, np.random.default_rng(0))
    assert set(STRUCTURES) == {"filaments", "network", "puncta", "vesicles", "membranes", "nuclei"}


@pytest.mark.parametrize("kind", STRUCTURES)
@pytest.mark.parametrize("shape", [(1, 24, 24), (4, 1, 24), (4, 24, 1)])
def test_every_structure_renders_a_single_plane_or_row(kind, shape):
    vol = render_structure(kind, shape, (0.3, 0.1, 0.1), np.random.default_rng(3))
    assert vol.shape == shape and vol.dtype == np.float32
    assert np.isfinite(vol).all() and vol.min() >= 0


def test_membranes_are_unchanged_on_ordinary_shapes():
    # the one-plane fix must not change what training draws (values from before the fix)
    vol = render_structure("membranes", (6, 20, 20), (0.3, 0.1, 0.1), np.random.default_rng(5))
    assert float(vol.astype(np.float64).sum()) == pytest.approx(77.40111743981515, rel=1e-6)
    assert float(vol.max()) == pytest.approx(0.714485228061676, rel=1e-6)


@pytest.mark.parametrize(
    ("seed", "shape", "vox", "density"),
    [
        (882392443, (16, 64, 64), (0.285, 0.1213, 0.1213), 0.348),  # a training patch
        (597753722, (16, 64, 64), (0.2363, 0.1602, 0.1602), 0.192),  # a training patch
        (2, (16, 32, 32), (0.1, 0.02, 0.02), 1.0),
    ],
)
def test_membranes_never_come_out_empty(seed, shape, vox, density):
    # a smooth field that missed every drawn level over a small box left the volume black
    vol = render_structure("membranes", shape, vox, np.random.default_rng(seed), density)
    assert vol.max() > 0.1
