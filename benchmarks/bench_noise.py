"""How well the camera's gain is read off a stack: the estimate against the known gain.

Simulates 432 stacks (24×96×96 at voxel (0.2, 0.1, 0.1) µm): sparse and dense blobs
(300 or 3000 points) blurred by a widefield or a confocal PSF (NA 1.2), peaks of 20, 200
and 1000 photons over 0, 2 or 10 photons of haze, read noise of 0, 1 or 2 ADU, gain 1 or
2.5 ADU per photon, and a camera offset of 100 ADU or 0 (then the negative values are
clipped at 0, as after an offset subtraction), rounded to integers; and 144 2D images
(256×256, the PSF's central plane, offset 100 ADU, read noise 1 or 2 ADU, the rest as
above). Each goes through :func:`deconflow.physics.noise.estimate_camera_noise` with its
PSF (the flow's path), and the table gives, per group of conditions, how often the gain
comes out within 10 % and 20 % of the truth, and how often the estimator declines (warns
and takes the larger of the regression's slope and 1).
Writes ``docs/benchmarks/noise.md``.

Usage: python benchmarks/bench_noise.py
"""

from __future__ import annotations

import argparse
import itertools
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, signal

from _report import publish
from deconflow import DeconflowWarning
from deconflow.physics.noise import estimate_camera_noise
from deconflow.psf import confocal_psf, widefield_psf

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 96, 96)
#: 2D images: one plane of this size, blurred by the PSF's central plane.
FLAT_SHAPE = (256, 256)
VOXEL = (0.2, 0.1, 0.1)


@dataclass(frozen=True)
class Case:
    """One simulated stack's conditions."""

    psf: str
    points: int
    haze: float
    peak: float
    read: float
    offset: float
    gain: float
    #: a 2D image (left out of the repr, so the 3D cases keep their seeds)
    flat: bool = field(default=False, repr=False)

    def seed(self) -> int:
        """Return a seed of the conditions alone (stable across runs and Python versions)."""
        return zlib.crc32(repr(self).encode())


@dataclass(frozen=True)
class Outcome:
    """The estimate for one case: its gain over the true one, and whether it declined."""

    case: Case
    ratio: float
    declined: bool


def simulate(case: Case, psf: np.ndarray) -> np.ndarray:
    """Return the case's stack (or 2D image) in ADU (uint16, clipped at 0)."""
    rng = np.random.default_rng(case.seed())
    shape = FLAT_SHAPE if case.flat else SHAPE
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (case.points, len(shape))).T)] = 1.0
    sharp = ndimage.gaussian_filter(points, (0.5, 1.0, 1.0)[-len(shape) :])
    sharp *= case.peak / sharp.max()
    blurred = np.clip(signal.fftconvolve(sharp, psf / psf.sum(), mode="same"), 0.0, None)
    adu = case.gain * rng.poisson(blurred + case.haze) + case.offset
    if case.read:
        adu = adu + rng.normal(0.0, case.read, shape)
    return np.clip(np.round(adu), 0, None).astype(np.uint16)


def estimate(case: Case, psf: np.ndarray) -> Outcome:
    """Estimate the case's camera noise and compare its gain with the truth."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeconflowWarning)
        noise = estimate_camera_noise(simulate(case, psf), psf=psf)
    declined = any("camera gain cannot be told" in str(w.message) for w in caught)
    return Outcome(case, noise.gain / case.gain, declined)


def group_row(name: str, outcomes: list[Outcome], keep: Callable[[Case], bool]) -> str:
    """One table row: the share within 10 % / 20 % among the estimates, and the declines."""
    chosen = [o for o in outcomes if keep(o.case)]
    estimated = np.array([o.ratio for o in chosen if not o.declined])
    taken = np.array([o.ratio for o in chosen if o.declined])
    declined = f"{taken.size}" + (
        f" ({taken.min():.2f}–{taken.max():.2f}, {np.sum(taken < 0.6)} below 0.6)"
        if taken.size
        else ""
    )
    if estimated.size == 0:
        return f"| {name} | {len(chosen)} | {declined} | | | |"
    within10 = np.mean(np.abs(estimated - 1.0) <= 0.1)
    within20 = np.mean(np.abs(estimated - 1.0) <= 0.2)
    return (
        f"| {name} | {len(chosen)} | {declined} | {100 * within10:.0f} % | "
        f"{100 * within20:.0f} % | {estimated.min():.2f}–{estimated.max():.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/noise.md")
    args = parser.parse_args()
    psfs = {
        "widefield": widefield_psf((15, 31, 31), VOXEL, na=1.2, wavelength_nm=520),
        "confocal": confocal_psf(
            (15, 31, 31),
            VOXEL,
            na=1.2,
            excitation_wavelength_nm=488,
            emission_wavelength_nm=520,
        ),
    }
    cases = [
        Case(*values)
        for values in itertools.product(
            psfs, (300, 3000), (0.0, 2.0, 10.0), (20.0, 200.0, 1000.0), (0.0, 1.0, 2.0),
            (100.0, 0.0), (1.0, 2.5),
        )
    ]  # fmt: skip
    flat_cases = [
        Case(*values, flat=True)
        for values in itertools.product(
            psfs, (300, 3000), (0.0, 2.0, 10.0), (20.0, 200.0, 1000.0), (1.0, 2.0), (100.0,),
            (1.0, 2.5),
        )
    ]  # fmt: skip
    outcomes = [estimate(case, psfs[case.psf]) for case in cases] + [
        estimate(case, psfs[case.psf][psfs[case.psf].shape[0] // 2]) for case in flat_cases
    ]

    def camera(c: Case) -> bool:
        return c.offset > 0 and c.read > 0 and not c.flat

    def clipped(c: Case) -> bool:
        return c.offset == 0 and not c.flat

    def flat(c: Case, psf: str) -> bool:
        return c.flat and c.psf == psf

    groups: list[tuple[str, Callable[[Case], bool]]] = [
        ("all 3D stacks", lambda c: not c.flat),
        ("offset 100, read noise 1–2 ADU, peak ≥ 200", lambda c: camera(c) and c.peak >= 200),
        ("offset 100, read noise 1–2 ADU, peak 20", lambda c: camera(c) and c.peak < 200),
        ("offset 100 ADU, no read noise", lambda c: c.offset > 0 and c.read == 0),
        ("offset 0, clipped at 0, read noise 1–2 ADU", lambda c: clipped(c) and c.read > 0),
        ("offset 0, no read noise (photon counts × gain)", lambda c: c.offset == 0 and c.read == 0),
        ("2D image, widefield, offset 100, read noise 1–2 ADU", lambda c: flat(c, "widefield")),
        ("2D image, confocal, offset 100, read noise 1–2 ADU", lambda c: flat(c, "confocal")),
    ]  # fmt: skip
    worst = sorted((o for o in outcomes if not o.declined), key=lambda o: abs(o.ratio - 1.0))
    lines = [
        "# Camera gain read off the stack",
        "",
        f"{len(cases)} simulated stacks {SHAPE} at voxel {VOXEL} µm and {len(flat_cases)} "
        f"2D images {FLAT_SHAPE} (blurred by the PSF's central plane; conditions in "
        "`benchmarks/bench_noise.py`), each through `estimate_camera_noise(stack, psf=psf)`. "
        "A 2D confocal PSF passes every frequency a 0.1 µm pixel holds, so there the "
        "estimator falls back to the in-plane residual. "
        "*Declined*: the estimator warned that the gain cannot be told and took the larger "
        "of the regression's slope and 1 ADU per photon (1 without a regression); in "
        "brackets the range of what it took over the truth, and how many of those were "
        "below 0.6 of it (too low a gain costs the flow far more than too high: "
        "`gain_sensitivity.md`). The shares are of the stacks it estimated.",
        "",
        "| conditions | stacks | declined (taken / truth) | gain within 10 % | within 20 % | "
        "range (estimate / truth) |",
        "|---|---:|---:|---:|---:|---|",
        *(group_row(name, outcomes, keep) for name, keep in groups),
        "",
        "Furthest estimates:",
        "",
        *(
            f"- {o.ratio:.2f}× : {'2D ' if o.case.flat else ''}{o.case.psf}, "
            f"{o.case.points} points, peak {o.case.peak:g} "
            f"over {o.case.haze:g} of haze, read noise {o.case.read:g} ADU, offset "
            f"{o.case.offset:g} ADU, gain {o.case.gain:g}"
            for o in worst[-8:][::-1]
        ),
        "",
        "Produced by `python benchmarks/bench_noise.py`.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
