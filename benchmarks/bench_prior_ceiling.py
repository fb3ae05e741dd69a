"""Where the flow's gap to the quality bar lies: the prior's network as a supervised regressor.

The flow benchmark's structure (``_phantoms``) is unlike the prior's training generator by
design. This diagnostic asks how much a network of the prior's size could gain over
oracle-stopped Richardson–Lucy if it were used as directly as possible: the shipped
network, fine-tuned as a regressor from a fixed-iteration RL estimate (shifted-Poisson
counts, true camera values, divided by the peak photons) to the truth over the truth's
maximum, for one PSF and the benchmark's three photon levels, with the loss
``mean((x + (1 - t) v(x, t) - truth)^2)`` at ``t = 0.5``. Two training sets:

- ``bench``: volumes drawn from the benchmark's own ground-truth generator (new draws):
  a ceiling for this network size when the structure is known;
- ``generator``: ``deconflow.priors.generate_volume`` volumes, the prior's training
  structure: what direct regression transfers to unseen structure.

Both are tested on 4 new benchmark volumes per photon level against the RL oracle on the
raw ADU (as the flow benchmark's *RL (oracle)* column). The numbers in ``docs/prior.md``
("Where the gap lies") are its output with ``--steps 600 --volumes 200`` (12–18 minutes
per run on a 2-core CPU, a third of it drawing the training set).

Run: ``python benchmarks/bench_prior_ceiling.py --structure membranes --psf "widefield
NA1.2" --train-on generator``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from _phantoms import beaded_rings, voronoi_membranes
from bench_flow_quality import GAIN, OFFSET, READ_SIGMA, VOXEL, oracle_rl, psfs, scores, simulate
from deconflow.physics import ConvolutionOperator
from deconflow.physics.noise import CameraNoise
from deconflow.priors import generate_volume, load_prior
from deconflow.solvers import RichardsonLucy

SHAPE = (24, 64, 64)
PEAKS = (20, 100, 1000)
STRUCTURES = {"membranes": voronoi_membranes, "rings": beaded_rings}
#: Flow time the regressor is run at (its denoiser form ``x + (1 - t) v``).
T_REGRESS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", choices=sorted(STRUCTURES), default="membranes")
    parser.add_argument("--psf", default="widefield NA1.2", help="a bench_flow_quality PSF name")
    parser.add_argument("--train-on", choices=("bench", "generator"), default="generator")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--volumes", type=int, default=200, help="training volumes")
    args = parser.parse_args()
    torch.set_num_threads(2)

    psf = psfs(SHAPE)[args.psf]
    psf = psf / psf.sum()
    camera = CameraNoise(GAIN, OFFSET, READ_SIGMA)
    background = OFFSET + 2.0 * GAIN
    level = camera.shifted_background(background)
    op = ConvolutionOperator(psf, SHAPE)
    # about the cross-validated stops of the flow benchmark's RL photons column
    iterations = {20: 15, 100: 20, 1000: 50} if "bead" in args.psf else {20: 12, 100: 18, 1000: 35}
    bench_truth = STRUCTURES[args.structure]

    def rl_input(image: np.ndarray, peak: int) -> np.ndarray:
        counts = camera.shifted_counts(torch.from_numpy(image))
        x = RichardsonLucy(iterations[peak])(counts, op, level)
        return (op.crop_to_image(x).numpy() / peak).astype(np.float32)

    def draw(
        n: int, seed: int, source: str
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        rng = np.random.default_rng(seed)
        items = []
        for _ in range(n):
            if source == "bench":
                truth = bench_truth(SHAPE, rng)
            else:
                truth = generate_volume(SHAPE, VOXEL, rng)
            for peak in PEAKS:
                image = simulate(truth, psf, peak, rng)
                items.append((rl_input(image, peak), truth, image, peak))
        return items

    t0 = time.perf_counter()
    train = draw(args.volumes, 1234, args.train_on)
    x_train = np.stack([item[0] for item in train])
    y_train = np.stack([item[1] / item[1].max() for item in train])
    print(f"{len(train)} training items in {time.perf_counter() - t0:.0f} s", flush=True)

    network = copy.deepcopy(load_prior().network).float().train().requires_grad_(True)
    aspect = VOXEL[0] / VOXEL[1]

    def regress(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = network(x, torch.full((x.shape[0],), T_REGRESS), aspect)
        return x + (1 - T_REGRESS) * v.float()

    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-4, weight_decay=1e-4)
    rng = np.random.default_rng(5)
    t0 = time.perf_counter()
    losses = []
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(x_train), 4)
        x = torch.from_numpy(x_train[idx])[:, None]
        y = torch.from_numpy(y_train[idx])[:, None]
        for axis in (2, 3, 4):
            if rng.random() < 0.5:
                x, y = x.flip(axis), y.flip(axis)
        if rng.random() < 0.5:
            x, y = x.transpose(3, 4), y.transpose(3, 4)
        loss = torch.mean((regress(x) - y) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(losses[-50:]):.5f}", flush=True)
    seconds = time.perf_counter() - t0
    network.eval()

    rows = {peak: [] for peak in PEAKS}
    for x, truth, image, peak in draw(4, 999, "bench"):
        with torch.no_grad():
            out = regress(torch.from_numpy(x)[None, None])[0, 0].numpy()
        rl = oracle_rl(image, psf, truth, background)[0]
        rows[peak].append((rl, scores(out, truth)[0]))
    print(
        f"\n{args.structure} under {args.psf}, regressor trained on {args.train_on} "
        f"({args.volumes} volumes x 3 photon levels, {args.steps} steps, {seconds:.0f} s)\n"
    )
    print("| peak photons | RL (oracle) | regressor | gain (dB) | per volume |")
    print("|---:|---:|---:|---:|---|")
    for peak in PEAKS:
        a = np.array(rows[peak])
        gains = ", ".join(f"{g:+.2f}" for g in a[:, 1] - a[:, 0])
        print(
            f"| {peak} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.2f} | "
            f"{np.mean(a[:, 1] - a[:, 0]):+.2f} | {gains} |"
        )


if __name__ == "__main__":
    main()
