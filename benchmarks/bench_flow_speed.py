"""Wall time and peak memory of a default flow run on a 64×256×256 stack (issue 7's speed bar).

Usage: python benchmarks/bench_flow_speed.py [--shape 64 256 256]
Appends its table to docs/benchmarks/flow_speed.md (overwrites it).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import deconflow
from _report import publish
from deconflow import DeconflowWarning
from deconflow.psf import widefield_psf

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/flow_speed.md")
    args = parser.parse_args()
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (2000, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 3.0, 3.0)) * 5e3
    image = (100 + rng.poisson(photons + 2)).astype(np.uint16)
    psf = widefield_psf((21, 31, 31), (0.2, 0.1, 0.1), na=1.2, wavelength_nm=520)
    rows = []
    for method in ("rl", "flow"):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeconflowWarning)
            result = deconflow.pipeline.run_to_result(
                deconflow.iter_deconvolve(
                    image,
                    psf,
                    deconflow.DeconvolutionSettings(
                        method=method, device="auto", voxel_size_um=(0.2, 0.1, 0.1)
                    ),
                )
            )
        rows.append((method, time.perf_counter() - start, result.device, result.notes))
    settings = deconflow.DeconvolutionSettings().flow
    lines = [
        "# Default run time on a 64×256×256 stack",
        "",
        f"uint16 stack {shape}, widefield PSF (21, 31, 31); defaults (RL: "
        f"{deconflow.DeconvolutionSettings().rl.iterations} accelerated iterations; flow: "
        f"{settings.samples} sample(s) × {settings.steps} steps from t = {settings.t_start}, "
        f"sampler {settings.sampler!r}, {settings.em_iterations} EM iterations per data step, "
        "plus a first RL estimate with its iteration count chosen by cross-validation and "
        f"{'the' if settings.choose_strength else 'no'} choice of the prior's strength on "
        "held-out photons; the notes say what was chosen). "
        f"{platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
        "",
        "| method | wall time (s) | device | notes |",
        "|---|---:|---|---|",
        *(f"| {m} | {t:.1f} | {d} | {'; '.join(n)} |" for m, t, d, n in rows),
        "",
        "Produced by `python benchmarks/bench_flow_speed.py`.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
