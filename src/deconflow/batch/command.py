"""``deconflow batch``: argument parsing and the command itself (see ``docs/batch.md``)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from deconflow._errors import DeconflowError

__all__ = ["EXIT_FILES_FAILED", "register"]

#: Exit status when some files failed (the others were still processed).
EXIT_FILES_FAILED = 3
#: ``--output-format`` choices; OME-TIFF stays the default so earlier outputs still resume.
_OUTPUT_FORMATS = ("ome-tiff", "ome-zarr")


def register(subparsers: Any) -> None:
    """Add the ``batch`` subcommand to the ``deconflow`` parser's subparsers."""
    from deconflow.cli import add_common_arguments, add_voxel_arguments

    batch = subparsers.add_parser(
        "batch",
        help="deconvolve many files (resumable; in parallel with Dask)",
        description=(
            "Deconvolve TIFF / ImageJ hyperstack / OME-TIFF files and OME-Zarr stores (Z, CZ, "
            "TZ, TCZ axes) into OME-TIFF (or OME-Zarr) float32 with a provenance record. "
            "Finished outputs with the same "
            "settings and inputs are skipped, so re-running resumes an interrupted batch. "
            f"Exit status: 0 all files succeeded, {EXIT_FILES_FAILED} some failed, "
            "2 bad arguments, 130 interrupted."
        ),
    )
    batch.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="TIFF files, OME-Zarr stores (.zarr folders), folders of them or quoted globs",
    )
    batch.add_argument(
        "--psf",
        type=Path,
        action="append",
        default=None,
        help="bead stack or PSF TIFF; repeat once per channel for a PSF per channel",
    )
    batch.add_argument("-o", "--out", type=Path, default=None, help="output folder")
    batch.add_argument(
        "--output-format",
        choices=_OUTPUT_FORMATS,
        default="ome-tiff",
        help="ome-tiff (default: NAME_deconvolved.ome.tif) or ome-zarr (NAME_deconvolved.ome.zarr, "
        "NGFF 0.4, single scale)",
    )
    add_voxel_arguments(batch)
    batch.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run N files at a time on a Dask LocalCluster (one GPU per worker if several)",
    )
    batch.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="submit to an existing Dask scheduler, e.g. tcp://node01:8786",
    )
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs made with other settings (matching ones are kept)",
    )
    batch.add_argument(
        "--write-config",
        action="store_true",
        help="print the settings as commented YAML (defaults, --config and flags) and exit",
    )
    add_common_arguments(batch)
    batch.set_defaults(handler=run_batch_command)


def _check_args(args: argparse.Namespace) -> None:
    missing = [
        flag
        for flag, value in (("INPUT", args.inputs), ("--psf", args.psf), ("--out", args.out))
        if not value
    ]
    if missing:
        raise DeconflowError(
            f"batch needs {', '.join(missing)}: deconflow batch INPUT... --psf PSF.tif "
            "--out FOLDER (see deconflow batch --help)."
        )
    if args.workers < 0:
        raise DeconflowError(f"--workers must be >= 0, got {args.workers}.")
    if args.workers > 1 and args.scheduler:
        raise DeconflowError(
            "Give --workers (a local cluster) or --scheduler (an existing one), not both."
        )
    for psf in args.psf:
        if psf.is_dir():
            raise DeconflowError(
                f"--psf {psf} is a folder; give the PSF's TIFF file (one --psf per channel)."
            )
        if not psf.is_file():
            raise DeconflowError(f"No such PSF file: {psf}. Check the path.")


def run_batch_command(args: argparse.Namespace) -> int:
    """Run ``deconflow batch`` with parsed arguments; returns the exit status."""
    from deconflow._version import __version__
    from deconflow.batch.files import (
        OUTPUT_SUFFIX,
        ZARR_OUTPUT_SUFFIX,
        expand_inputs,
        remove_partials,
    )
    from deconflow.batch.runner import (
        close_log,
        format_summary,
        lock_output_folder,
        open_log,
        run_jobs,
    )
    from deconflow.batch.settings import commented_yaml, settings_from_args
    from deconflow.batch.task import FileJob
    from deconflow.cli import check_voxel_argument

    settings = settings_from_args(args)
    voxel = check_voxel_argument(args.voxel_size, "--voxel-size")
    psf_voxel = check_voxel_argument(args.psf_voxel_size, "--psf-voxel-size")
    if args.write_config:
        # the voxel-size flags are settings too: a file written without them would
        # silently read each file's metadata instead
        written = dataclasses.replace(
            settings,
            voxel_size_um=voxel or settings.voxel_size_um,
            psf_voxel_size_um=psf_voxel or settings.psf_voxel_size_um,
        )
        sys.stdout.write(commented_yaml(written))
        return 0
    _check_args(args)
    out_dir: Path = args.out.expanduser().resolve()
    psfs = tuple(str(p.expanduser().resolve()) for p in args.psf)
    pairs = expand_inputs(
        args.inputs,
        out_dir,
        exclude=[Path(p) for p in psfs],
        output_suffix=ZARR_OUTPUT_SUFFIX if args.output_format == "ome-zarr" else OUTPUT_SUFFIX,
    )
    jobs = [
        FileJob(
            str(source),
            str(output),
            psfs,
            settings,
            voxel_size_um=voxel,
            psf_voxel_size_um=psf_voxel,
            overwrite=args.overwrite,
        )
        for source, output in pairs
    ]
    with lock_output_folder(out_dir):
        logger = open_log(out_dir, args.verbose, args.quiet)
        try:
            logger.info("deconflow %s: %s", __version__, shlex.join(sys.argv))
            logger.info("%d files -> %s; PSF %s", len(jobs), out_dir, ", ".join(psfs))
            logger.debug("settings:\n%s", settings.to_yaml())
            for leftover in remove_partials([Path(job.output) for job in jobs]):
                logger.info("removed %s left by an interrupted run", leftover)
            outcomes = run_jobs(
                jobs,
                logger=logger,
                workers=args.workers,
                scheduler=args.scheduler,
                quiet=args.quiet,
                verbose=args.verbose,
            )
            summary = format_summary(outcomes)
            logger.debug("summary:\n%s", summary)
        finally:
            close_log(logger)
    failed = [o for o in outcomes if o.status == "failed"]
    if not args.quiet:
        print(summary)
        print(f"log: {out_dir / 'deconflow-batch.log'}")
    else:
        for outcome in failed:
            print(f"deconflow: failed: {outcome.source}: {outcome.message}", file=sys.stderr)
    return EXIT_FILES_FAILED if failed else 0
