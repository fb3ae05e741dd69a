"""Richardson–Lucy cost per iteration versus the FFTs it must do (issue: foundation).

Each RL iteration needs four real FFTs on the padded grid: forward model
(rfftn, irfftn) and adjoint (rfftn, irfftn). Everything else (ratio,
multiplications, the Biggs–Andrews extrapolation) should add at most about
half of that. Prints a table and writes it to docs/benchmarks/rl_speed.md.

Usage: python benchmarks/bench_rl_speed.py [--shape 64 256 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _report import publish
from deconflow.physics import ConvolutionOperator
from deconflow.psf import widefield_psf
from deconflow.solvers import RichardsonLucy


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, FFT plans
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/rl_speed.md"))
    args = parser.parse_args()
    shape = tuple(args.shape)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # a realistic widefield PSF for 0.2 µm z steps and 0.1 µm pixels, NA 1.2 water, 520 nm
    psf = widefield_psf((31, 63, 63), (0.2, 0.1, 0.1), na=1.2, wavelength_nm=520)
    op = ConvolutionOperator(psf, shape, device=device, dtype=torch.float32)
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.poisson(50.0, shape).astype(np.float32)).to(device)
    x = torch.rand(op.object_shape, device=device)
    dims = (-3, -2, -1)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def four_ffts() -> None:
        a = torch.fft.irfftn(torch.fft.rfftn(x, s=op.fft_shape, dim=dims), s=op.fft_shape, dim=dims)
        b = torch.fft.irfftn(torch.fft.rfftn(y, s=op.fft_shape, dim=dims), s=op.fft_shape, dim=dims)
        del a, b
        sync()

    def run_rl(accelerate: bool) -> float:
        solver = RichardsonLucy(iterations=args.iterations, accelerate=accelerate)

        def go() -> None:
            for _ in solver.iterate(y, op, 5.0):
                pass
            sync()

        return _median_time(go, args.repeats) / args.iterations

    fft_time = _median_time(four_ffts, args.repeats)
    plain = run_rl(False)
    fast = run_rl(True)
    rows = [
        ("4 FFTs on the padded grid", fft_time, 1.0),
        ("RL iteration (plain)", plain, plain / fft_time),
        ("RL iteration (accelerated)", fast, fast / fft_time),
    ]
    machine = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    lines = [
        "# Richardson–Lucy speed versus its FFTs",
        "",
        f"Stack {shape} float32, PSF {tuple(psf.shape)}, padded FFT grid {op.fft_shape} "
        f"(= object domain); device {device} ({machine}); torch {torch.__version__}; "
        f"median of {args.repeats} runs of {args.iterations} iterations.",
        "",
        "| what | seconds per iteration | × FFT time |",
        "|---|---:|---:|",
        *(f"| {name} | {t:.3f} | {ratio:.2f} |" for name, t, ratio in rows),
        "",
        "Produced by `python benchmarks/bench_rl_speed.py`.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
