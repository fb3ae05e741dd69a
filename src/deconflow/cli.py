"""The ``deconflow`` command: a thin shell over :mod:`deconflow.batch` and the pipeline.

Commands: ``demo`` (bundled sample), ``run`` (one file), ``batch`` (many files,
see :mod:`deconflow.batch.command`). Errors print one line (a traceback only
with ``--verbose``) and exit non-zero.

A module adds a subcommand with a function ``register(subparsers)`` that calls
``subparsers.add_parser(...)`` and sets ``handler`` (a function taking the
parsed arguments and returning the exit status) with ``set_defaults``; listing
the module in :data:`COMMAND_MODULES` makes it part of the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deconflow._errors import DeconflowError
from deconflow._version import __version__

__all__ = [
    "COMMAND_MODULES",
    "add_common_arguments",
    "add_voxel_arguments",
    "check_voxel_argument",
    "main",
    "register",
]

#: Modules whose ``register(subparsers)`` adds subcommands, in ``--help`` order.
COMMAND_MODULES: tuple[str, ...] = (
    "deconflow.cli",
    "deconflow.batch.command",
    "deconflow.priors._cli",
)

_EXIT_OK = 0
_EXIT_UNEXPECTED = 1
_EXIT_BAD_INPUT = 2


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the settings flags (overriding ``--config``) and verbosity flags of every command."""
    parser.add_argument(
        "--method",
        default=None,
        help="flow, rl, rl-tv or wiener (default: the settings' method); overrides --config",
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--iterations", type=int, default=None, help="solver iterations (rl, rl-tv, wiener)"
    )
    parser.add_argument(
        "--background", default=None, help="background in the image's units, or 'auto'"
    )
    parser.add_argument("--config", type=Path, default=None, help="settings YAML file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every file; tracebacks on errors"
    )


def add_voxel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--voxel-size`` and ``--psf-voxel-size`` (default: from the files' metadata)."""
    parser.add_argument(
        "--voxel-size",
        type=float,
        nargs="+",
        default=None,
        metavar="UM",
        help="image voxel size in µm: Z Y X, or Z alone (the z step) to read Y X from each "
        "file (default: all from the file)",
    )
    parser.add_argument(
        "--psf-voxel-size",
        type=float,
        nargs="+",
        default=None,
        metavar="UM",
        help="PSF voxel size in µm: Z Y X, or Z alone to read Y X from the PSF file "
        "(default: from the file, else the image's)",
    )


def check_voxel_argument(values: Sequence[float] | None, flag: str) -> tuple[float, ...] | None:
    """Validate a voxel-size flag: 3 (z y x), 2 (y x) or 1 (z alone) positive numbers.

    One number is the z step alone: each file's pixel size completes it where the file
    is read (in :mod:`deconflow.batch.task`, on the worker), as the files of a batch may
    differ in pixel size.
    """
    if values is None:
        return None
    if len(values) not in (1, 2, 3) or any(not v > 0 for v in values):
        raise DeconflowError(
            f"{flag} takes 3 (z y x), 2 (y x) or 1 (the z step alone; y x from the file) "
            f"positive sizes in µm, got {list(values)}."
        )
    return tuple(float(v) for v in values)


def _run_one(job: Any, quiet: bool) -> Any:
    """Process one file with a progress bar; a failure becomes an error with its message."""
    from tqdm import tqdm

    from deconflow.batch.task import process_file

    bar: tqdm[Any] | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # no bar at all when the file fails before solving
            bar = tqdm(total=total, desc="deconvolving", unit="it", file=sys.stderr, disable=quiet)
        if bar.total != total:  # an out-of-memory retry re-plans the tiles: more steps
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    def status(message: str) -> None:
        if quiet:
            return
        if bar is None:  # the stages before the solver: one line each
            print(f"{message} ...", file=sys.stderr, flush=True)
        else:
            bar.set_postfix_str(message)

    try:
        outcome = process_file(job, progress, status)
    finally:
        if bar is not None:
            bar.close()
    if outcome.status == "failed":
        if outcome.detail:  # not a user error: keep the traceback for --verbose
            raise RuntimeError(f"{outcome.message}\n{outcome.detail}")
        raise DeconflowError(outcome.message)
    return outcome


def _job(
    args: argparse.Namespace, image: Path, psfs: Sequence[Path], output: Path, overwrite: bool
) -> Any:
    from deconflow.batch.settings import settings_from_args
    from deconflow.batch.task import FileJob

    settings = settings_from_args(args)
    return FileJob(
        str(image.resolve()),
        str(output.resolve()),
        tuple(str(psf.resolve()) for psf in psfs),
        settings,
        voxel_size_um=check_voxel_argument(getattr(args, "voxel_size", None), "--voxel-size"),
        psf_voxel_size_um=check_voxel_argument(
            getattr(args, "psf_voxel_size", None), "--psf-voxel-size"
        ),
        overwrite=overwrite,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from deconflow._figures import save_comparison_figure
    from deconflow._sample_data import SAMPLE_BEAD, SAMPLE_IMAGE, sample_data_dir
    from deconflow.io import read_tiff

    folder = sample_data_dir()
    out_dir: Path = args.out.resolve()
    tiff_path = out_dir / "confocal_grid_deconvolved.tif"
    # the demo owns its output folder: replace whatever an older demo left there
    job = _job(args, folder / SAMPLE_IMAGE, [folder / SAMPLE_BEAD], tiff_path, overwrite=True)
    outcome = _run_one(job, args.quiet)
    raw, result = read_tiff(folder / SAMPLE_IMAGE), read_tiff(tiff_path)
    figure_path = save_comparison_figure(
        out_dir / "confocal_grid_comparison.png",
        [
            ("raw (background included)", raw.data.astype("float32")),
            (f"deconvolved ({job.settings.method})", result.data),
        ],
        result.voxel_size_um,
        title="deconflow demo: real confocal line grid, PSF measured from a bead",
    )
    print(f"deconvolved in {outcome.seconds:.1f} s on {outcome.device} ({outcome.status})")
    print(f"result TIFF: {tiff_path}")
    print(f"figure:      {figure_path}")
    print(f"output folder: {out_dir}")
    return _EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from deconflow.batch.files import check_output_apart, output_for
    from deconflow.io import is_zarr_path
    from deconflow.io._zarr import is_store

    image_path: Path = args.image.resolve()
    output: Path = args.output.resolve()
    # first: an existing output inside an input store must not be answered with
    # "pass --overwrite" for a path the run will refuse anyway
    check_output_apart(output, image_path, args.psf)
    # an OME-Zarr output is a folder, which --overwrite replaces whole; any other folder
    # is not replaced: the write would fail after the run
    if output.is_dir() and not is_store(output):
        raise DeconflowError(
            f"-o/--output takes a file path, but {output} is a folder; give a file name, "
            f"e.g. {output_for(image_path, output)} (deconflow batch takes an output folder)."
        )
    # only OME-TIFF and OME-Zarr are written: "result.png" held a float32 TIFF, and
    # "result.json" was the TIFF's name and its provenance record's at once
    if not (output.name.lower().endswith((".tif", ".tiff")) or is_zarr_path(output)):
        raise DeconflowError(
            f"-o/--output {output.name} names neither an OME-TIFF (.ome.tif, .tif) nor an "
            f"OME-Zarr store (.zarr), the formats deconflow writes; e.g. "
            f"{output_for(image_path, output.parent)}."
        )
    if output.exists() and not args.overwrite:
        raise DeconflowError(f"{output} exists; pass --overwrite to replace it.")
    # as deconflow batch says: a folder (an OME-Zarr store too) is not "no such file"
    for psf in args.psf:
        if psf.is_dir():
            raise DeconflowError(f"--psf {psf} is a folder; give the PSF's TIFF file.")
    outcome = _run_one(_job(args, image_path, args.psf, output, args.overwrite), args.quiet)
    if not args.quiet:
        print(f"{outcome.status}: {output} ({outcome.seconds:.1f} s on {outcome.device or '-'})")
    return _EXIT_OK


def register(subparsers: Any) -> None:
    """Add this module's subcommands, ``demo`` and ``run``."""
    demo = subparsers.add_parser("demo", help="deconvolve the bundled real confocal sample")
    demo.add_argument(
        "--out", type=Path, default=Path("deconflow-demo"), help="output folder (./deconflow-demo)"
    )
    add_common_arguments(demo)
    demo.set_defaults(handler=_cmd_demo)

    run = subparsers.add_parser("run", help="deconvolve one TIFF or OME-Zarr stack or hyperstack")
    run.add_argument(
        "image", type=Path, help="input TIFF / OME-TIFF / OME-Zarr (Z, CZ, TZ or TCZ axes)"
    )
    # repeated, as for batch: a second --psf replaced the first, and a two-channel stack
    # was deconvolved with the last channel's PSF for both
    run.add_argument(
        "--psf",
        type=Path,
        action="append",
        required=True,
        help="bead stack or PSF TIFF; repeat in channel order for one PSF per channel",
    )
    run.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output path (float32): OME-Zarr if it ends in .zarr, else OME-TIFF",
    )
    add_voxel_arguments(run)
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_common_arguments(run)
    run.set_defaults(handler=_cmd_run)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``deconflow`` parser with the subcommands of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog="deconflow",
        description="Deconvolve 3D fluorescence microscopy stacks with a measured PSF.",
    )
    parser.add_argument("--version", action="version", version=f"deconflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deconflow`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    try:
        status: int = args.handler(args)
        return status
    except DeconflowError as exc:
        if verbose:
            traceback.print_exc()
        print(f"deconflow: error: {exc}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("deconflow: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one clear line, not a traceback
        if verbose:
            traceback.print_exc()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"deconflow: unexpected error: {type(exc).__name__}: {first_line} "
            "(run again with --verbose for details)",
            file=sys.stderr,
        )
        return _EXIT_UNEXPECTED


if __name__ == "__main__":
    raise SystemExit(main())
