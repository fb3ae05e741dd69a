"""Sharp, microscopy-like 3D test and training volumes rendered at physical voxel sizes.

Every structure is drawn in micrometres and sampled on the (possibly anisotropic) voxel
grid, so a 0.4 µm vesicle is a ring in xy and a few planes in z when the z step is 0.4 µm.
Each renderer returns a volume whose typical structure brightness is ~1; :func:`generate_volume`
mixes several with random brightness, adds background haze, and scales to camera-like
units. Randomisation is broad on purpose: users' samples will not look like any one type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["STRUCTURES", "generate_volume", "log_uniform", "render_structure"]

STRUCTURES: tuple[str, ...] = ("filaments", "network", "puncta", "vesicles", "membranes", "nuclei")

Shape3 = tuple[int, int, int]
Vox3 = tuple[float, float, float]


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Draw one number log-uniformly from ``[lo, hi)`` (sizes, brightnesses, photon counts)."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _splat(points_um: np.ndarray, weights: np.ndarray, shape: Shape3, vox: Vox3) -> np.ndarray:
    """Trilinear deposit of weighted points (µm) onto the grid; points outside are dropped."""
    out = np.zeros(shape, np.float32)
    p = points_um / np.asarray(vox)
    base = np.floor(p).astype(np.int64)
    frac = p - base
    for corner in np.ndindex(2, 2, 2):
        idx = base + np.asarray(corner)
        w = weights * np.prod(np.where(corner, frac, 1 - frac), axis=1)
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        np.add.at(out, tuple(idx[ok].T), w[ok])
    return out


def _blur(vol: np.ndarray, sigma_um: float, vox: Vox3) -> np.ndarray:
    # never below 0.4 voxel: thinner than that would alias on the grid
    sigma = [max(sigma_um / v, 0.4) for v in vox]
    return ndimage.gaussian_filter(vol, sigma, mode="constant")


def _unit_peak(vol: np.ndarray, points_um: np.ndarray, vox: Vox3) -> np.ndarray:
    """Scale so that the median value at the drawn centres is 1 (crossings stay brighter)."""
    idx = np.round(points_um / np.asarray(vox)).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(vol.shape)), axis=1)
    vals = vol[tuple(idx[ok].T)] if ok.any() else vol.ravel()
    ref = float(np.median(vals[vals > 0])) if np.any(vals > 0) else 1.0
    return vol / ref


def _extent(shape: Shape3, vox: Vox3) -> np.ndarray:
    return np.asarray(shape) * np.asarray(vox)


def _count(mean: float, shape: Shape3, vox: Vox3, rng: np.random.Generator) -> int:
    """Poisson count scaled to the field: ``mean`` per 8×8 µm² × 3 µm of depth."""
    ext = _extent(shape, vox)
    area = ext[1] * ext[2] / 64.0
    depth = float(np.clip(ext[0] / 3.0, 0.3, 3.0))
    return int(rng.poisson(mean * area * depth))


def _smooth_field(shape: Shape3, vox: Vox3, corr_um: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``corr_um``."""
    noise = rng.standard_normal(shape).astype(np.float32)
    f = ndimage.gaussian_filter(noise, [corr_um / v for v in vox], mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _wave_field(shape: Shape3, vox: Vox3, corr_um: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth unit-variance random field from 48 random plane waves.

    Unlike filtered noise with periodic edges, it is not forced to repeat across the box,
    so correlation lengths longer than the (short) z extent still give tilted surfaces.
    """
    z, y, x = _grid_um(shape, vox)
    k = rng.normal(0.0, 1.0 / corr_um, (48, 3))
    phase = rng.uniform(0, 2 * np.pi, 48)
    field = np.zeros(shape, np.float32)
    for (kz, ky, kx), p in zip(k, phase, strict=True):
        field += np.cos(kz * z + ky * y + kx * x + p).astype(np.float32)
    return field * np.float32(np.sqrt(2 / 48))


def _curves(
    n: int,
    length_um: tuple[float, float],
    persistence_um: tuple[float, float],
    shape: Shape3,
    vox: Vox3,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Draw persistent random walks (µm); small persistence = curly, large = straight."""
    ext = _extent(shape, vox)
    ds = 0.4 * min(vox)
    curves = []
    for _ in range(n):
        steps = max(int(log_uniform(rng, *length_um) / ds), 2)
        kappa = 1.0 / log_uniform(rng, *persistence_um)
        d = rng.standard_normal(3)
        flat = rng.uniform(0.0, 0.6)  # many cellular filaments run roughly in-plane
        d[0] *= flat
        d /= np.linalg.norm(d)
        kicks = rng.standard_normal((steps, 3)) * np.sqrt(2 * kappa * ds)
        kicks[:, 0] *= flat
        pts = np.empty((steps, 3))
        pos = np.zeros(3)
        for i in range(steps):
            d = d + kicks[i]
            d /= np.linalg.norm(d)
            pos = pos + ds * d
            pts[i] = pos
        # centre the walk on a point inside the box so that it crosses the field of view
        curves.append(pts - pts[steps // 2] + rng.uniform(0, 1, 3) * ext)
    return curves


def _render_curves(
    curves: list[np.ndarray], radius_um: float, shape: Shape3, vox: Vox3, rng: np.random.Generator
) -> np.ndarray:
    pts = np.concatenate(curves)
    w = np.concatenate([np.full(len(c), rng.lognormal(0, 0.35)) for c in curves])
    vol = _blur(_splat(pts, w, shape, vox), radius_um, vox)
    return _unit_peak(vol, pts, vox)


def _filaments(shape: Shape3, vox: Vox3, rng: np.random.Generator, density: float) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for _ in range(rng.integers(1, 3)):  # families of different thickness
        n = max(1, _count(5 * density, shape, vox, rng))
        curves = _curves(n, (3.0, 40.0), (0.5, 30.0), shape, vox, rng)
        out += _render_curves(curves, log_uniform(rng, 0.03, 0.2), shape, vox, rng)
    return out


def _network(shape: Shape3, vox: Vox3, rng: np.random.Generator, density: float) -> np.ndarray:
    # a dense mesh of short, curly, thin segments (ER / actin cortex-like)
    n = max(3, _count(60 * density, shape, vox, rng))
    curves = _curves(n, (0.5, 4.0), (0.3, 3.0), shape, vox, rng)
    return _render_curves(curves, log_uniform(rng, 0.03, 0.1), shape, vox, rng)


def _puncta(shape: Shape3, vox: Vox3, rng: np.random.Generator, density: float) -> np.ndarray:
    ext = _extent(shape, vox)
    n = max(1, _count(40 * density, shape, vox, rng))
    pts = rng.uniform(0, 1, (n, 3)) * ext
    w = rng.lognormal(0, 0.6, n)
    vol = _blur(_splat(pts, w, shape, vox), log_uniform(rng, 0.03, 0.2), vox)
    return _unit_peak(vol, pts, vox) if n else vol


def _grid_um(shape: Shape3, vox: Vox3) -> list[np.ndarray]:
    return [
        (np.arange(n) * v).reshape([-1 if i == a else 1 for i in range(3)])
        for a, (n, v) in enumerate(zip(shape, vox, strict=True))
    ]


def _sheet(dist: np.ndarray, wall: float, normal: Sequence[np.ndarray], vox: Vox3) -> np.ndarray:
    """Gaussian profile of a thin wall at signed distance ``dist`` (µm), voxel-averaged.

    A wall thinner than the z step, point-sampled, breaks into dots where it is tilted;
    widening it by the voxel's extent along the wall normal (box variance v²/12) and
    lowering its peak to keep the integrated intensity is what a camera voxel records.
    """
    var = wall**2 + sum((n**2) * (v**2) / 12.0 for n, v in zip(normal, vox, strict=True))
    return (wall / np.sqrt(var)) * np.exp(-0.5 * dist**2 / var)


def _vesicles(shape: Shape3, vox: Vox3, rng: np.random.Generator, density: float) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    ext = _extent(shape, vox)
    z, y, x = _grid_um(shape, vox)
    for _ in range(max(1, _count(4 * density, shape, vox, rng))):
        r = log_uniform(rng, 0.25, 2.0)
        wall = max(log_uniform(rng, 0.03, 0.1), 0.25 * min(vox[1:]))
        c = rng.uniform(0, 1, 3) * ext
        axes = r * rng.uniform(0.8, 1.2, 3)  # slightly squashed
        d = (
            np.sqrt(
                ((z - c[0]) / axes[0]) ** 2
                + ((y - c[1]) / axes[1]) ** 2
                + ((x - c[2]) / axes[2]) ** 2
            )
            * r
        )
        # the wall's unit normal (the ellipsoid's gradient); voxel-averaged along it as
        # membranes are, or a vesicle's caps, where the wall is tilted, would be
        # point-sampled on a coarse z grid and come out patchy or missing
        grad = [(p - cp) / a**2 for p, cp, a in zip((z, y, x), c, axes, strict=True)]
        norm = np.sqrt(sum(g**2 for g in grad)) + 1e-9
        shell = _sheet(d - r, wall, [g / norm for g in grad], vox)
        lumen = rng.uniform(0, 0.15) * (d < r)  # faint content, always well below the wall
        out += rng.lognormal(0, 0.3) * (shell + lumen).astype(np.float32)
    return out


def _membranes(shape: Shape3, vox: Vox3, rng: np.random.Generator, density: float) -> np.ndarray:
    # level sets of a smooth field: curved sheets; adding a linear ramp makes them plane-like
    phi = _wave_field(shape, vox, log_uniform(rng, 0.8, 5.0), rng)
    z, y, x = _grid_um(shape, vox)
    normal = rng.standard_normal(3)
    ramp = (normal[0] * z + normal[1] * y + normal[2] * x) / np.linalg.norm(normal)
    phi = phi + rng.uniform(0, 2) * (ramp - ramp.mean()) / max(_extent(shape, vox).max(), 1e-6)
    # np.gradient needs two samples along an axis; a single plane (or row) has no slope there
    grads = [
        np.gradient(phi, v, axis=a) if n > 1 else np.zeros_like(phi)
        for a, (n, v) in enumerate(zip(shape, vox, strict=True))
    ]
    grad = np.sqrt(sum(g**2 for g in grads))
    unit_normal = [g / (grad + 1e-6) for g in grads]
    dist = phi / (grad + 1e-6)  # ≈ signed distance (µm) to the level set phi = 0
    wall = max(log_uniform(rng, 0.03, 0.12), 0.25 * min(vox[1:]))
    levels = rng.uniform(-1.0, 1.0, max(1, int(rng.poisson(1.5 * density))))
    offsets = [level / (grad.mean() + 1e-6) for level in levels]
    if not any(np.min(dist - o) < 0 < np.max(dist - o) for o in offsets):
        # a field that varies little over a small box can miss every drawn level, which left
        # the volume empty (1-5 % of training patches): put one sheet through a random voxel
        offsets.append(float(dist.flat[rng.integers(dist.size)]))
    out = np.zeros(shape, np.float32)
    for offset in offsets:
        out += _sheet(dist - offset, wall, unit_normal, vox)
    return out


def _nuclei(shape: Shape3, vox: Vox3, rng: np.random.Generator, density: float) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    ext = _extent(shape, vox)
    z, y, x = _grid_um(shape, vox)
    texture = _smooth_field(shape, vox, log_uniform(rng, 0.1, 0.5), rng)
    chromatin = np.exp(rng.uniform(0.5, 1.5) * texture)
    chromatin /= chromatin.mean()
    for _ in range(max(1, int(rng.poisson(0.7 * density)))):
        radii = log_uniform(rng, 2.0, 6.0) * rng.uniform(0.6, 1.0, 3)
        c = rng.uniform(0.1, 0.9, 3) * ext
        rho = np.sqrt(
            ((z - c[0]) / radii[0]) ** 2
            + ((y - c[1]) / radii[1]) ** 2
            + ((x - c[2]) / radii[2]) ** 2
        )
        sd = (rho - 1) * radii.min()  # ~ signed distance in µm
        inside = 1 / (1 + np.exp(np.clip(sd / 0.05, -50, 50)))
        body = inside * (0.3 + 0.7 * chromatin)
        for _ in range(rng.integers(0, 3)):  # dark nucleoli
            nc = c + rng.uniform(-0.5, 0.5, 3) * radii
            nr = radii.min() * rng.uniform(0.1, 0.3)
            dn = np.sqrt((z - nc[0]) ** 2 + (y - nc[1]) ** 2 + (x - nc[2]) ** 2)
            body *= 1 - 0.8 / (1 + np.exp(np.clip((dn - nr) / 0.05, -50, 50)))
        envelope = rng.uniform(0, 1) * np.exp(-0.5 * (sd / 0.06) ** 2)
        out += rng.lognormal(0, 0.3) * (body + envelope).astype(np.float32)
    return out


_RENDERERS: dict[str, Callable[[Shape3, Vox3, np.random.Generator, float], np.ndarray]] = {
    "filaments": _filaments,
    "network": _network,
    "puncta": _puncta,
    "vesicles": _vesicles,
    "membranes": _membranes,
    "nuclei": _nuclei,
}


def _as3(shape: Sequence[int], voxel_size_um: Sequence[float]) -> tuple[Shape3, Vox3]:
    if len(shape) != 3 or len(voxel_size_um) != 3:
        raise ValueError("shape and voxel_size_um must both be (z, y, x)")
    return (int(shape[0]), int(shape[1]), int(shape[2])), (
        float(voxel_size_um[0]),
        float(voxel_size_um[1]),
        float(voxel_size_um[2]),
    )


def render_structure(
    kind: str,
    shape: Sequence[int],
    voxel_size_um: Sequence[float],
    rng: np.random.Generator,
    density: float = 1.0,
) -> np.ndarray:
    """Render one structure type, brightness ~1, no background.

    Parameters
    ----------
    kind : str
        One of :data:`STRUCTURES`.
    shape : sequence of int
        ``(z, y, x)`` voxels.
    voxel_size_um : sequence of float
        ``(z, y, x)`` voxel size in µm.
    rng : numpy.random.Generator
        Source of randomness.
    density : float
        Multiplies the expected number of objects (sparse < 1 < dense).

    Returns
    -------
    numpy.ndarray
        float32 volume of ``shape``.
    """
    if kind not in _RENDERERS:
        raise ValueError(f"unknown structure {kind!r}; choose from {STRUCTURES}")
    s, v = _as3(shape, voxel_size_um)
    return _RENDERERS[kind](s, v, rng, density).astype(np.float32)


def generate_volume(
    shape: Sequence[int],
    voxel_size_um: Sequence[float],
    rng: np.random.Generator,
    structures: Sequence[str] | None = None,
) -> np.ndarray:
    """Generate a random sharp volume: 1–3 structure types, varied density, brightness, background.

    Parameters
    ----------
    shape : sequence of int
        ``(z, y, x)`` voxels.
    voxel_size_um : sequence of float
        ``(z, y, x)`` voxel size in µm.
    rng : numpy.random.Generator
        Source of randomness.
    structures : sequence of str, optional
        Types to mix (all of them); default: 1–3 drawn from :data:`STRUCTURES`.

    Returns
    -------
    numpy.ndarray
        float32, non-negative, in camera-like units (peak ~10–10000, background 0–30 %).
    """
    if structures is None:
        k = int(rng.choice([1, 1, 2, 2, 3]))
        structures = list(rng.choice(STRUCTURES, size=k, replace=False))
    s, v = _as3(shape, voxel_size_um)
    density = log_uniform(rng, 0.15, 4.0)  # sparse to crowded fields
    vol = np.zeros(s, np.float32)
    for kind in structures:
        vol += log_uniform(rng, 0.05, 1.0) * render_structure(kind, s, v, rng, density)
    vol /= max(float(vol.max()), 1e-6)
    if rng.uniform() < 0.5:  # diffuse cytoplasm-like haze
        vol += log_uniform(rng, 0.005, 0.2) * (1 + 0.5 * np.tanh(_wave_field(s, v, 3.0, rng)))
    peak = log_uniform(rng, 10.0, 10000.0)
    return (peak * (vol + rng.uniform(0, 0.3) * (rng.uniform() < 0.5))).astype(np.float32)
