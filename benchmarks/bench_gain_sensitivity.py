"""What a wrong camera gain costs the flow: PSNR with the gain given off by a known factor.

The flow converts the stack to photons with the gain, so a gain that is too high makes the
data look noisier than they are (fewer photons), and one too low makes them look cleaner.
This runs the flow benchmark's three ground truths (``bench_flow_quality.py``: Voronoi
membranes, beaded rings, the real-derived grid) under its widefield and confocal PSFs at
20, 100 and 1000 photons (offset 100 ADU, gain 1, read noise 1.5 ADU), with one sample and
the camera's offset and read noise given, and the gain given at 0.5, 0.7, 1, 1.4 and 2
times the truth; then with nothing given (the estimate the flow makes by default). It
reports each run's PSNR change against the true gain. Writes
``docs/benchmarks/gain_sensitivity.md``.

Usage: python benchmarks/bench_gain_sensitivity.py
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

import deconflow
from deconflow import DeconflowWarning

sys.path.insert(0, str(Path(__file__).parent))
from _phantoms import ground_truths
from _report import publish
from bench_flow_quality import GAIN, OFFSET, READ_SIGMA, VOXEL, psfs, scores, simulate

REPO = Path(__file__).resolve().parents[1]
FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0)
PEAKS = (20, 100, 1000)


def flow_psnr(image: np.ndarray, psf: np.ndarray, gt: np.ndarray, gain: float | None) -> float:
    """PSNR of the one-sample flow with ``gain`` (and the true offset and read noise) given.

    With ``gain`` None nothing is given: the flow estimates the camera from the image.
    """
    camera = (
        {} if gain is None else {"gain": gain, "camera_offset": OFFSET, "read_sigma": READ_SIGMA}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconflowWarning)
        result = deconflow.deconvolve(
            image,
            psf,
            method="flow",
            voxel_size=VOXEL,
            background=OFFSET + 2.0 * GAIN,
            prepare_psf=False,
            device="cpu",
            seed=0,
            **camera,
        )
    return scores(result, gt)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 64, 64))
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/gain_sensitivity.md")
    args = parser.parse_args()
    shape = tuple(args.shape)
    truths = ground_truths(shape, np.random.default_rng(0), REPO)
    kernels = {k: v for k, v in psfs(shape).items() if "measured" not in k}
    rows = []
    for g, (gt_name, gt) in enumerate(truths.items()):
        for k, (psf_name, psf) in enumerate(kernels.items()):
            psf = psf / psf.sum()
            for peak in PEAKS:
                # the flow benchmark's own noise draw for this case (its seed convention)
                image = simulate(gt, psf, peak, np.random.default_rng([0, g, k, peak]))
                psnr = {f: flow_psnr(image, psf, gt, f * GAIN) for f in FACTORS}
                estimated = flow_psnr(image, psf, gt, None)
                rows.append((gt_name, psf_name, peak, psnr, estimated))
                print(
                    f"{gt_name:18s} {psf_name:16s} {peak:5d} "
                    + " ".join(f"{f:g}x {p - psnr[1.0]:+.2f}" for f, p in psnr.items())
                    + f"  est {estimated - psnr[1.0]:+.2f}",
                    flush=True,
                )
    changes = {f: np.array([r[3][f] - r[3][1.0] for r in rows]) for f in FACTORS}
    est = np.array([r[4] - r[3][1.0] for r in rows])
    header = " | ".join(f"gain × {f:g}" for f in FACTORS)
    lines = [
        "# What a wrong camera gain costs the flow",
        "",
        f"The flow benchmark's ground truths {shape} at voxel {VOXEL} µm under its "
        f"widefield and confocal PSFs (NA 1.2), the same noise draws (offset {OFFSET:g} "
        f"ADU, gain {GAIN:g}, read noise {READ_SIGMA:g} ADU, 2 photons of haze), one sample "
        "(seed 0), the camera's offset and read noise given, the gain given at a factor of "
        "the truth; *estimated*: nothing given, the flow's default. PSNR after a "
        "least-squares scale + offset fit, in dB; the first column is the PSNR with the "
        "true gain, the others its change.",
        "",
        f"| ground truth | PSF | peak photons | true gain (dB) | {header} | estimated |",
        "|---|---|---:|---:|" + "---:|" * (len(FACTORS) + 1),
        *(
            f"| {n} | {p} | {peak} | {psnr[1.0]:.2f} | "
            + " | ".join(f"{psnr[f] - psnr[1.0]:+.2f}" for f in FACTORS)
            + f" | {e - psnr[1.0]:+.2f} |"
            for n, p, peak, psnr, e in rows
        ),
        "",
        "| change against the true gain (dB) | "
        + " | ".join(f"gain × {f:g}" for f in FACTORS)
        + " | estimated |",
        "|---|" + "---:|" * (len(FACTORS) + 1),
        "| average | "
        + " | ".join(f"{changes[f].mean():+.2f}" for f in FACTORS)
        + f" | {est.mean():+.2f} |",
        "| worst | "
        + " | ".join(f"{changes[f].min():+.2f}" for f in FACTORS)
        + f" | {est.min():+.2f} |",
        "",
        "Produced by `python benchmarks/bench_gain_sensitivity.py`.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
