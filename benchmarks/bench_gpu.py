"""The CUDA path, timed: the network's group norm and drawing posterior samples together.

Usage: python benchmarks/bench_gpu.py   (needs a CUDA GPU; writes docs/benchmarks/gpu_timings.md,
which docs/benchmarks/gpu.md discusses)

1. One network evaluation per shape with torch's group-norm kernel and with the
   reduction that ``priors.network._GroupNorm`` uses for inference on a GPU.
2. ``deconvolve_with_uncertainty`` with its samples drawn together (the pipeline's
   choice, ``samples_at_once``) and drawn one at a time, on a large and a small stack.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

import deconflow
import deconflow.pipeline as pipeline
from _report import publish
from deconflow import DeconflowWarning
from deconflow.priors import load_prior
from deconflow.priors import network as network_module
from deconflow.psf import widefield_psf

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(1, 64, 256, 256), (4, 64, 256, 256), (1, 32, 128, 128), (8, 32, 128, 128)]
STACKS = [(64, 256, 256), (32, 128, 128)]


def _seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: cuDNN picks its algorithms, the allocator fills its cache
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def _network_rows(device: torch.device) -> list[str]:
    prior = load_prior(device=device, precision="auto")
    reduction = network_module._GroupNorm.forward
    rows = []
    for batch, *spatial in SHAPES:
        x = torch.randn(batch, 1, *spatial, device=device)
        times = []
        for forward in (nn.GroupNorm.forward, reduction):
            network_module._GroupNorm.forward = forward  # type: ignore[method-assign]
            with torch.no_grad():
                times.append(_seconds(lambda x=x: prior.velocity(x, 0.7), 5))
        network_module._GroupNorm.forward = reduction  # type: ignore[method-assign]
        rates = [x.numel() / seconds / 1e6 for seconds in times]
        rows.append(
            f"| {batch} × {'×'.join(map(str, spatial))} | {times[0] * 1e3:.1f} | "
            f"{times[1] * 1e3:.1f} | {rates[0]:.0f} | {rates[1]:.0f} |"
        )
    return rows


def _stack(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    points = np.zeros(shape)
    points[tuple(rng.integers(0, shape, (int(np.prod(shape) // 2000), 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (2.0, 3.0, 3.0)) * 5e3
    return (100 + rng.poisson(photons + 2)).astype(np.uint16)


def _flow_rows() -> list[str]:
    psf = widefield_psf((21, 31, 31), (0.2, 0.1, 0.1), na=1.2, wavelength_nm=520)
    chosen = pipeline.samples_at_once
    rows = []

    def run(image: np.ndarray, samples: int) -> pipeline.Result:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeconflowWarning)
            settings = deconflow.DeconvolutionSettings.from_options(
                "flow", voxel_size=(0.2, 0.1, 0.1), device="cuda", samples=samples, seed=0
            )
            return pipeline.run_to_result(deconflow.iter_deconvolve(image, psf, settings))

    for shape in STACKS:
        image = _stack(shape)
        # untimed: the first run at a shape pays for cuDNN's algorithm search and the
        # allocator's growth (5.8 s against 3.5 s for the same run on the H200)
        run(image, 1)
        for samples in (1, 4):
            seconds, notes, peak_together = [], "", 0.0
            for together in (True, False):
                pipeline.samples_at_once = chosen if together else (lambda *_: 1)  # type: ignore[assignment]
                torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                result = run(image, samples)
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
                peak = torch.cuda.max_memory_allocated() / 1e9
                if together:
                    notes = next((n for n in result.notes if "at a time" in n), "one at a time")
                    peak_together = peak
            pipeline.samples_at_once = chosen
            rows.append(
                f"| {'×'.join(map(str, shape))} | {samples} | {notes} | {seconds[0]:.2f} | "
                f"{seconds[1]:.2f} | {peak_together:.1f} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/gpu_timings.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False).")
    device = torch.device("cuda")
    torch.zeros(1, device=device)  # CUDA's start-up stays out of the first timing
    lines = [
        "# The CUDA path",
        "",
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bfloat16 network.",
        "",
        "## One network evaluation",
        "",
        "| batch × volume | torch group norm (ms) | reduction (ms) | Mvoxel/s | Mvoxel/s |",
        "|---|---:|---:|---:|---:|",
        *_network_rows(device),
        "",
        "## Flow runs: samples drawn together or one at a time",
        "",
        "| stack | samples | pipeline's choice | together (s) | one at a time (s) | "
        "peak GPU memory (GB) |",
        "|---|---:|---|---:|---:|---:|",
        *_flow_rows(),
        "",
        "Produced by `python benchmarks/bench_gpu.py`.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
