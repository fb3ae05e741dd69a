"""The ``deconflow train`` subcommand (registered into the main CLI by :func:`register`).

Also runnable alone: ``python -m deconflow.priors._cli train --out my.pt ...``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from deconflow._errors import DeconflowError

__all__ = ["main", "register"]


def _cmd_train(args: argparse.Namespace) -> int:
    from deconflow.priors.train import TrainConfig, train_prior

    config = TrainConfig(
        out=args.out,
        steps=args.steps,
        batch=args.batch,
        patch=tuple(args.patch),
        lr=args.lr,
        seed=args.seed,
        data=args.data,
        voxel_size_um=tuple(args.voxel_size) if args.voxel_size else None,
        init=args.init,
        plane_every=args.plane_every,
        device=args.device or "auto",
        precision=args.precision,
        threads=args.threads,
        workers=args.workers,
        max_minutes=args.max_minutes,
        t_min=args.t_min,
        estimate_pairs=args.estimate_pairs,
        pair_psf=args.pair_psf,
        conditioned=args.conditioned,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        # the main CLI does not set command_line: record how it was called
        command=args.command_line or shlex.join(["deconflow", *sys.argv[1:]]),
        note=args.note,
    )
    path = train_prior(config, progress=not args.quiet)
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    print(
        f"{path}: {card['steps']} steps, final loss {card['final_loss']}, "
        f"{card['flops_per_voxel'] / 1e3:.1f} kFLOP/voxel per evaluation, "
        f"{card['wall_time_s'] / 60:.1f} min"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand; its handler is ``args.handler(args) -> int``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The main parser's subparsers.
    """
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune the flow-matching prior",
        description="Conditional flow matching on generated structure or on a folder of your "
        "own sharp TIFF stacks; writes weights (.pt), a model card (.json) and a resumable "
        "checkpoint (.ckpt.pt).",
    )
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of sharp TIFF stacks (default: built-in generator)",
    )
    p.add_argument(
        "--voxel-size",
        type=float,
        nargs="+",
        default=None,
        metavar="UM",
        help="voxel size in µm of every TIFF in --data: Z Y X (overrides their metadata; "
        "needed for 3D stacks without it), or Z alone (the z step) to read Y X from each "
        "file; with --pair-psf, Z Y X of the stacks that PSF belongs to",
    )
    p.add_argument("--init", type=Path, default=None, help="weights to fine-tune from")
    p.add_argument("--steps", type=int, default=500, help="optimiser steps (500)")
    p.add_argument("--batch", type=int, default=4, help="volumes per step (4)")
    p.add_argument(
        "--patch",
        type=int,
        nargs=3,
        default=[16, 64, 64],
        metavar=("Z", "Y", "X"),
        help="training patch (16 64 64)",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (2e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--plane-every", type=int, default=10, help="every n-th step uses 2D planes (10; 0 = never)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes drawing training batches ahead (0 = none; use several on a GPU)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget; the schedule anneals by steps or time, whichever ends first",
    )
    p.add_argument(
        "--t-min",
        type=float,
        default=0.0,
        help="draw flow times from [T_MIN, 1) (0 = all; a sampler fine-tune: its t_start)",
    )
    p.add_argument(
        "--estimate-pairs",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of each 3D batch that trains the denoiser on re-noised Richardson-Lucy "
        "estimates of blurred generated volumes, the samplers' own inputs (0 = none)",
    )
    p.add_argument(
        "--pair-psf",
        type=Path,
        default=None,
        metavar="PSF.tif",
        help="image the estimate pairs through this PSF (your microscope's bead stack) at "
        "--voxel-size, instead of a mix of objectives: a fine-tune for one microscope",
    )
    p.add_argument(
        "--conditioned",
        action="store_true",
        help="train a prior conditioned on the first (Richardson-Lucy) estimate; needs "
        "--estimate-pairs 1 --plane-every 0",
    )
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the .ckpt.pt beside --out, with the settings it was started with "
        "(only --steps, --max-minutes, --device, --precision, --threads, --workers and "
        "--checkpoint-every may change)",
    )
    p.add_argument("--note", default="", help="free text stored in the model card")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="forward-pass precision: auto (default) uses bfloat16 where the GPU or CPU "
        "runs it natively (2-3x faster), else float32",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    p.set_defaults(handler=_cmd_train, command_line="")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``train`` without the main CLI (used to produce the shipped weights)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m deconflow.priors._cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "deconflow.priors._cli", *argv])
    try:
        return int(args.handler(args))
    except DeconflowError as exc:
        print(f"deconflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
