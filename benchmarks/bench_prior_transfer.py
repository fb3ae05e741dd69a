"""Measure how well the prior denoises the flow benchmark's structure against its own types.

Prints, for the flow benchmark's three ground truths (``_phantoms.ground_truths``, the
same draw as ``bench_flow_quality.py``) and two generated volumes of each structure type,
all at the benchmark's shape and voxel size, the gain in dB of ``D_t(x_t)`` over the oracle
linear shrinkage (the best scalar Wiener filter given the truth's mean and variance) for
a few t, the mean of two noise draws; and the PSNR of ``D_0.7``. The table in
``docs/prior.md`` ("as a denoiser the prior already generalises") is its output.

Run: ``python benchmarks/bench_prior_transfer.py [--weights PATH] [--threads 2]`` (about a
minute on a 2-core CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from _phantoms import ground_truths
from bench_flow_quality import REPO, VOXEL
from bench_prior import psnr
from deconflow.priors import STRUCTURES, fit_normalization, generate_volume, interpolate, load_prior

SHAPE = (24, 64, 64)
TIMES = (0.5, 0.7, 0.8, 0.9, 0.95)
DRAWS = 2


def volumes() -> dict[str, np.ndarray]:
    """Return the benchmark's ground truths, then ``DRAWS`` generated volumes per type."""
    cases = {
        f"benchmark: {name}": v.astype(np.float32)
        for name, v in ground_truths(SHAPE, np.random.default_rng(0), REPO).items()
    }
    rng = np.random.default_rng(777)  # not a training seed
    for kind in STRUCTURES:
        for draw in range(DRAWS):
            volume = generate_volume(SHAPE, VOXEL, rng, structures=[kind])
            cases[f"generator: {kind} #{draw}"] = volume.astype(np.float32)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped weights")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.weights, precision="float32").for_voxel_size(VOXEL)
    noise = torch.Generator().manual_seed(3)
    print(f"D_t - oracle linear shrinkage (dB), {SHAPE} at {VOXEL} µm, mean of {DRAWS} draws")
    print("| volume | " + " | ".join(f"t = {t}" for t in TIMES) + " | D_0.7 PSNR (dB) |")
    print("|---|" + "---:|" * (len(TIMES) + 1))
    for name, volume in volumes().items():
        x1 = torch.from_numpy(fit_normalization(volume).apply(volume))
        mean, var = x1.mean(), x1.var()
        gains, at_07 = [], 0.0
        for t in TIMES:
            draws = []
            for _ in range(DRAWS):
                x_t = interpolate(x1, torch.randn(x1.shape, generator=noise), t)
                with torch.no_grad():
                    denoised = prior.denoise(x_t[None, None], t)[0, 0]
                shrunk = mean + t * var / (t**2 * var + (1 - t) ** 2) * (x_t - t * mean)
                draws.append(psnr(denoised, x1) - psnr(shrunk, x1))
                if t == 0.7:
                    at_07 = psnr(denoised, x1)
            gains.append(float(np.mean(draws)))
        print(f"| {name} | " + " | ".join(f"{g:+.1f}" for g in gains) + f" | {at_07:.1f} |")


if __name__ == "__main__":
    main()
