"""Benchmark the shipped flow-matching prior: denoising quality across t, cost, samples figure.

Prints and writes into ``docs/prior.md`` (between the ``bench:prior`` markers):

- PSNR of ``D_t(x_t)`` against ``x1`` on held-aside generated volumes (seeds never used in
  training), next to the PSNR of the rescaled noisy input ``x_t / t``;
- the same table's change when the network computes in bfloat16 (``precision="auto"`` on
  CPUs with AVX512-BF16/AMX);
- FLOP per voxel, and seconds per evaluation on a 64×256×256 volume on this CPU in float32
  and bfloat16 (with the load average, because the machine is shared);
- the wall time of a full 3D 3×3×3 convolution against the pseudo-3D pair (1×3×3 + 3×1×1),
  in float32 and bfloat16, the measurement behind the architecture choice;

and draws ``docs/images/prior_samples.png`` (Euler samples from noise next to training
examples, xy and xz at true aspect).

Run: ``python benchmarks/bench_prior.py [--weights PATH] [--threads 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from deconflow._device import cpu_has_native_bfloat16
from deconflow.priors import STRUCTURES, fit_normalization, generate_volume, interpolate, load_prior

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "prior.md"
FIGURE = ROOT / "docs" / "images" / "prior_samples.png"
VOXEL = (0.3, 0.1, 0.1)  # aspect 3, the middle of the 2–5 range users have
TIMES = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95)


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB with the truth's range as the peak."""
    peak = float(truth.max() - truth.min())
    mse = float(torch.mean((estimate - truth) ** 2))
    return 10 * np.log10(peak**2 / max(mse, 1e-12))


def held_aside(n_mixed: int) -> list[tuple[str, torch.Tensor]]:
    """One volume per structure type plus mixed ones, from seeds training never used."""
    rng = np.random.default_rng(20260)
    cases = [(k, generate_volume((16, 96, 96), VOXEL, rng, structures=[k])) for k in STRUCTURES]
    cases += [("mixed", generate_volume((16, 96, 96), VOXEL, rng)) for _ in range(n_mixed)]
    return [(name, torch.from_numpy(fit_normalization(v).apply(v))) for name, v in cases]


def denoising_table(prior, cases) -> tuple[list[str], dict[str, float], list[float]]:
    """Rows of the D_t table, D_0.6 PSNR per structure, and the mean D_t PSNR per t."""
    gen = torch.Generator().manual_seed(1)
    rows = [
        "| t | x_t / t (dB) | oracle linear shrinkage (dB) | D_t(x_t) (dB) | D_t − linear (dB) |",
        "|---|---|---|---|---|",
    ]
    per_type: dict[str, float] = {}
    means = []
    for t in TIMES:
        noisy, lin, den = [], [], []
        for name, x1 in cases:
            x_t = interpolate(x1, torch.randn(x1.shape, generator=gen), t)
            with torch.no_grad():
                d = prior.denoise(x_t, t)
            # best affine map of x_t given x1's true mean and variance (a scalar Wiener filter)
            m, var = x1.mean(), x1.var()
            shrunk = m + t * var / (t**2 * var + (1 - t) ** 2) * (x_t - t * m)
            noisy.append(psnr(x_t / t, x1))
            lin.append(psnr(shrunk, x1))
            den.append(psnr(d, x1))
            if t == 0.6:
                per_type.setdefault(name, 0.0)
                per_type[name] += den[-1] / sum(1 for n, _ in cases if n == name)
        a, c, b = float(np.mean(noisy)), float(np.mean(lin)), float(np.mean(den))
        rows.append(f"| {t:.2f} | {a:.1f} | {c:.1f} | {b:.1f} | {b - c:+.1f} |")
        means.append(b)
    return rows, per_type, means


def time_evaluation(prior, repeats: int) -> float:
    x = torch.randn(1, 1, 64, 256, 256)
    with torch.no_grad():
        prior.velocity(x, 0.5)  # warm-up: oneDNN picks its kernels on the first call
        start = time.perf_counter()
        for _ in range(repeats):
            prior.velocity(x, 0.5)
    return (time.perf_counter() - start) / repeats


def conv_comparison(dtype: torch.dtype) -> list[str]:
    """Wall time of one full 3D layer against its pseudo-3D factorisation (16 channels)."""
    x = torch.randn(4, 16, 16, 64, 64, dtype=dtype)
    layers = {
        "full 3×3×3": [torch.nn.Conv3d(16, 16, 3, padding=1)],
        "1×3×3 then 3×1×1": [
            torch.nn.Conv3d(16, 16, (1, 3, 3), padding=(0, 1, 1)),
            torch.nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0)),
        ],
    }
    if dtype == torch.bfloat16:  # the layout and dtype precision="auto" runs in
        x = x.contiguous(memory_format=torch.channels_last_3d)
        for convs in layers.values():
            for c in convs:
                c.to(dtype=dtype, memory_format=torch.channels_last_3d)
    rows = []
    for name, convs in layers.items():
        macs = sum(16 * c.weight[0].numel() for c in convs)
        with torch.no_grad():
            for c in convs:
                x = c(x)
            best = np.inf
            for _ in range(5):
                start = time.perf_counter()
                y = x
                for c in convs:
                    y = c(y)
                best = min(best, time.perf_counter() - start)
        rate = 2 * macs * x.numel() / 16 / best / 1e9
        label = str(dtype).removeprefix("torch.")
        rows.append(f"| {name} | {label} | {macs} | {1e3 * best:.1f} | {rate:.0f} |")
    return rows


def training_history(card: dict) -> str:
    """Describe the runs behind a weights file, oldest first, from its card and those nested."""
    runs = []
    while card:
        batch = (card.get("training") or {}).get("batch", "?")
        runs.append(
            f"{card.get('steps')} steps × {batch} patches on {card.get('device')}: "
            f"{card.get('wall_time_s')} s"
        )
        card = card.get("fine_tuned_from") or {}
    return ", then ".join(reversed(runs))


def figure(prior, n: int, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(7)
    examples = []
    for _ in range(n):
        v = generate_volume((16, 96, 96), VOXEL, rng)
        examples.append(fit_normalization(v).apply(v))
    gen = torch.Generator().manual_seed(3)
    samples = prior.sample((n, 1, 16, 96, 96), steps=steps, generator=gen)[:, 0].numpy()
    aspect = VOXEL[0] / VOXEL[1]
    fig, axes = plt.subplots(4, n, figsize=(2.6 * n, 6.6), height_ratios=[96, 16 * aspect] * 2)
    for col in range(n):
        for row, (vol, label) in enumerate(
            [(examples[col], "training example"), (samples[col], f"prior sample ({steps} Euler)")]
        ):
            lo, hi = np.percentile(vol, [0.5, 99.8])
            ax_xy, ax_xz = axes[2 * row, col], axes[2 * row + 1, col]
            ax_xy.imshow(vol[8], cmap="magma", vmin=lo, vmax=hi)
            ax_xz.imshow(vol[:, 48], cmap="magma", vmin=lo, vmax=hi, aspect=aspect)
            ax_xy.set_title(f"{label}, xy" if col == 0 else "xy", fontsize=8)
            ax_xz.set_title("xz (true aspect)", fontsize=8)
            for ax in (ax_xy, ax_xz):
                ax.set_axis_off()
    fig.suptitle(
        "Generated training volumes (top) and samples drawn from the shipped prior "
        f"(bottom); voxel {VOXEL} µm",
        fontsize=9,
    )
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=90)


def write_doc(block: str) -> None:
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    start, end = "<!-- bench:prior:start -->", "<!-- bench:prior:end -->"
    new = f"{start}\n{block}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: new, text, flags=re.S)
    else:
        text += "\n" + new + "\n"
    DOC.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer volumes, no doc/figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    prior = load_prior(args.weights).for_voxel_size(VOXEL)
    fast = load_prior(args.weights, precision="bfloat16").for_voxel_size(VOXEL)
    native = cpu_has_native_bfloat16()
    card = prior.card
    fpv = prior.flops_per_voxel
    print(f"FLOP per voxel: {fpv / 1e3:.1f} k ({fpv / 2e3:.1f} k multiply-adds)")

    cases = held_aside(2 if args.quick else 6)
    rows, per_type, means = denoising_table(prior, cases)
    print("\n".join(rows))
    *_, means_bf16 = denoising_table(fast, cases)
    change = max(abs(a - b) for a, b in zip(means, means_bf16, strict=True))
    bf16_line = f"bfloat16 changes the mean D_t PSNR by at most {change:.2f} dB over these t."
    print(bf16_line)
    load_before = os.getloadavg()[0]
    seconds = {
        name: time_evaluation(p, 1 if args.quick else 2)
        for name, p in [("float32", prior), ("bfloat16", fast)]
    }
    load_after = os.getloadavg()[0]
    for name, sec in seconds.items():
        print(
            f"one evaluation, 64×256×256, {args.threads} threads, {name}: {sec:.1f} s "
            f"(load average {load_before:.1f} → {load_after:.1f})"
        )
    conv_rows = [
        "| layer (16→16 ch, 4×16×64×64) | dtype | multiply-adds/voxel | ms | GFLOP/s |",
        "|---|---|---|---|---|",
        *conv_comparison(torch.float32),
        *conv_comparison(torch.bfloat16),
    ]
    print("\n".join(conv_rows))
    if args.quick:
        return
    figure(prior, n=4, steps=20)

    type_row = " · ".join(f"{k} {v:.1f}" for k, v in per_type.items())
    block = "\n".join(
        [
            f"Weights: `{args.weights or 'deconflow/priors/weights/default.pt'}` "
            f"({training_history(card)}). "
            f"Held-aside volumes: one per structure type + 6 mixed, 16×96×96, voxel {VOXEL} µm "
            "(seed 20260, never seen in training), in prior units.",
            "",
            *rows,
            "",
            f"PSNR of D_0.6 by structure (dB): {type_row}.",
            "",
            bf16_line,
            "",
            "| cost | value |",
            "|---|---|",
            f"| FLOP per voxel per evaluation | {fpv / 1e3:.1f} k (2 per multiply-add) |",
            f"| parameters | {sum(p.numel() for p in prior.network.parameters()):,} |",
            *(
                f"| one evaluation on 64×256×256, CPU, {args.threads} threads, {name} | "
                f"{sec:.1f} s |"
                for name, sec in seconds.items()
            ),
            f"| load average during the timing | {load_before:.1f}–{load_after:.1f} |",
            f'| CPU runs bfloat16 natively (`precision="auto"` uses it) | {native} |',
            "",
            *conv_rows,
        ]
    )
    write_doc(block)
    print(f"wrote {DOC} and {FIGURE}")


if __name__ == "__main__":
    main()
