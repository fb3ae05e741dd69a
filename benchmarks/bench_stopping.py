"""How close the cross-validated RL stop lands to the truly best iteration, per held-out score.

Runs Richardson–Lucy on shifted-Poisson photon counts (true camera values) for the 27
cases of ``bench_flow_quality.py`` (three ground truths × three PSFs × 20, 100 and 1000
peak photons, the same simulation and seeds), and for 18 cases whose data were blurred by
one PSF and are deconvolved with a slightly wrong one (a widefield NA 1.2 PSF taken for
NA 1.1 or 1.3, the measured bead PSF taken for its theoretical widefield model). For each
score of :class:`deconflow.solvers.stopping.CrossValidatedStop`, reports the PSNR lost
against the iteration that is best by the ground truth (which no user has). Writes
``docs/benchmarks/stopping.md``.

Usage: python benchmarks/bench_stopping.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from deconflow import DeconflowWarning
from deconflow.physics import ConvolutionOperator
from deconflow.physics.noise import CameraNoise
from deconflow.psf import widefield_psf
from deconflow.solvers import RichardsonLucy
from deconflow.solvers.stopping import HOLDOUT_SCORES, CrossValidatedStop

sys.path.insert(0, str(Path(__file__).parent))
from _phantoms import ground_truths
from _report import publish
from bench_flow_quality import GAIN, OFFSET, READ_SIGMA, REPO, VOXEL, psfs, scores, simulate

#: A case: its name, the ground truth, the PSF deconvolved with, the image (ADU).
Case = tuple[str, np.ndarray, np.ndarray, np.ndarray]
#: Iterations the oracle and the stop may use.
_MAX_ITERATIONS = 80


def matched_cases(shape: tuple[int, ...]) -> Iterator[Case]:
    """Yield ``bench_flow_quality``'s cases, in its order and with its noise draws."""
    rng = np.random.default_rng(0)
    truths = ground_truths(shape, rng, REPO)
    for gt_name, gt in truths.items():
        for psf_name, psf in psfs(shape).items():
            psf = psf / psf.sum()
            for peak in (20, 100, 1000):
                yield f"{gt_name}, {psf_name}, {peak}", gt, psf, simulate(gt, psf, peak, rng)


def mismatched_cases(shape: tuple[int, ...]) -> Iterator[Case]:
    """Yield cases whose data were blurred by one PSF and are deconvolved with another."""
    rng = np.random.default_rng(1)
    truths = ground_truths(shape, rng, REPO)
    kernels = psfs(shape)
    kernel = kernels["widefield NA1.2"].shape

    def widefield(na: float, n: float = 1.33) -> np.ndarray:
        return widefield_psf(kernel, VOXEL, na=na, wavelength_nm=520, refractive_index=n)

    pairs = {
        "widefield NA1.2 taken for NA1.1": (kernels["widefield NA1.2"], widefield(1.1)),
        "widefield NA1.2 taken for NA1.3": (kernels["widefield NA1.2"], widefield(1.3)),
    }
    if "measured bead NA0.85" in kernels:
        pairs["measured bead taken for theory"] = (
            kernels["measured bead NA0.85"],
            widefield(0.85, 1.0),
        )
    for gt_name, gt in truths.items():
        for pair_name, (true_psf, used_psf) in pairs.items():
            for peak in (100, 1000):
                image = simulate(gt, true_psf / true_psf.sum(), peak, rng)
                yield f"{gt_name}, {pair_name}, {peak}", gt, used_psf / used_psf.sum(), image


def measure(case: Case, seeds: list[int]) -> dict:
    """Oracle iteration and, per score and seed, the chosen one and the PSNR it loses."""
    name, gt, psf, image = case
    camera = CameraNoise(GAIN, OFFSET, READ_SIGMA)
    counts = camera.shifted_counts(torch.from_numpy(image))
    level = camera.shifted_background(OFFSET + 2.0 * GAIN)
    operator = ConvolutionOperator(psf, image.shape)
    psnr = np.array(
        [
            scores(operator.crop_to_image(x).numpy(), gt)[0]
            for x in RichardsonLucy(_MAX_ITERATIONS).iterate(counts, operator, level)
        ]
    )
    row: dict = {"case": name, "best": int(psnr.argmax()) + 1}
    for score in HOLDOUT_SCORES:
        for seed in seeds:
            stop = CrossValidatedStop(max_iterations=_MAX_ITERATIONS, seed=seed, score=score)
            chosen = stop.iterations(counts, operator, level)
            row[score, seed] = (chosen, float(psnr.max() - psnr[chosen - 1]))
    return row


def table(title: str, rows: list[dict], seeds: list[int]) -> list[str]:
    head = " | ".join(f"{score}: iterations (dB lost)" for score in HOLDOUT_SCORES)
    lines = [f"## {title}", "", f"| case | best iteration | {head} |", "|---|---:|---|---|"]
    for row in rows:
        cells = [
            ", ".join(f"{row[score, s][0]} ({row[score, s][1]:.2f})" for s in seeds)
            for score in HOLDOUT_SCORES
        ]
        lines.append(f"| {row['case']} | {row['best']} | {' | '.join(cells)} |")
    lines.append("")
    for score in HOLDOUT_SCORES:
        lost = np.array([[row[score, s][1] for s in seeds] for row in rows])
        lines.append(
            f"- **{score}**: {lost.mean():.2f} dB lost on average (per seed "
            f"{', '.join(f'{v:.2f}' for v in lost.mean(axis=0))}), worst {lost.max():.2f} dB."
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 64, 64))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/stopping.md")
    args = parser.parse_args()
    shape = tuple(args.shape)
    torch.set_num_threads(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconflowWarning)
        matched = [measure(case, args.seeds) for case in matched_cases(shape)]
        mismatched = [measure(case, args.seeds) for case in mismatched_cases(shape)]
    defaults = CrossValidatedStop()
    lines = [
        "# Cross-validated stopping of Richardson–Lucy: which held-out score",
        "",
        f"Volumes {shape} at voxel {VOXEL} µm; camera offset {OFFSET:g} ADU, gain {GAIN:g}, "
        f"read noise {READ_SIGMA} ADU, 2 photons of haze. RL on shifted-Poisson photon counts "
        f"with the true camera values, at most {_MAX_ITERATIONS} accelerated iterations. "
        f"*Best iteration*: the one with the highest PSNR against the ground truth (after a "
        f"least-squares scale + offset fit). Each score's stop holds out "
        f"{defaults.holdout:.0%} of the photons in {defaults.folds} folds; one entry per "
        f"fold seed ({', '.join(map(str, args.seeds))}): the iteration chosen and the PSNR "
        f"it loses to the best one. *deblurred*: the held-out residual after a regularised "
        f"inverse of the blur (eps = {defaults.regularization:g}), the default; *poisson*: "
        f"the held-out Poisson negative log-likelihood. CPU, torch {torch.__version__}.",
        "",
        *table("The flow benchmark's 27 cases (PSF known)", matched, args.seeds),
        *table("18 cases deconvolved with a slightly wrong PSF", mismatched, args.seeds),
        "Produced by `python benchmarks/bench_stopping.py`.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
