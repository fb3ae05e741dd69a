"""The ``deconflow`` command: a thin shell over :mod:`deconflow.pipeline`.

Commands: ``demo`` (bundled sample), ``run`` (one file). Errors print one line
(a traceback only with ``--verbose``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from deconflow._errors import DeconflowError
from deconflow._version import __version__

__all__ = ["main"]

_EXIT_OK = 0
_EXIT_UNEXPECTED = 1
_EXIT_BAD_INPUT = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method", default=None, help="rl (default), rl-tv or wiener; overrides --config"
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--iterations", type=int, default=None, help="solver iterations")
    parser.add_argument("--config", type=Path, default=None, help="settings YAML file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deconflow",
        description="Deconvolve 3D fluorescence microscopy stacks with a measured PSF.",
    )
    parser.add_argument("--version", action="version", version=f"deconflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="deconvolve the bundled real confocal sample")
    demo.add_argument(
        "--out", type=Path, default=Path("deconflow-demo"), help="output folder (./deconflow-demo)"
    )
    _add_common(demo)

    run = sub.add_parser("run", help="deconvolve one TIFF stack")
    run.add_argument("image", type=Path, help="input TIFF / OME-TIFF (Z, Y, X)")
    run.add_argument("--psf", type=Path, required=True, help="bead stack or PSF TIFF")
    run.add_argument("-o", "--output", type=Path, required=True, help="output TIFF path")
    run.add_argument(
        "--voxel-size",
        type=float,
        nargs="+",
        default=None,
        metavar="UM",
        help="image voxel size z y x in µm (default: from the file)",
    )
    run.add_argument(
        "--psf-voxel-size",
        type=float,
        nargs="+",
        default=None,
        metavar="UM",
        help="PSF voxel size z y x in µm (default: from the file, else the image's)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_common(run)
    return parser


def _settings(
    args: argparse.Namespace, voxel: Sequence[float] | None, psf_voxel: Sequence[float] | None
) -> object:
    import dataclasses

    from deconflow.config import METHODS, DeconvolutionSettings

    base = (
        DeconvolutionSettings.from_yaml(args.config.read_text())
        if args.config is not None
        else DeconvolutionSettings()
    )
    changes: dict[str, object] = {}
    if args.method is not None:
        changes["method"] = args.method
    if args.device is not None:
        changes["device"] = args.device
    if voxel is not None:
        changes["voxel_size_um"] = tuple(voxel)
    if psf_voxel is not None:
        changes["psf_voxel_size_um"] = tuple(psf_voxel)
    settings = dataclasses.replace(base, **changes)
    if args.iterations is not None:
        section = METHODS[settings.method]
        solver = dataclasses.replace(getattr(settings, section), iterations=args.iterations)
        settings = dataclasses.replace(settings, **{section: solver})
    return settings


def _with_progress(events: Iterator[object], quiet: bool) -> object:
    from tqdm import tqdm

    from deconflow.pipeline import Progress, Result

    bar = None
    try:
        for event in events:
            if isinstance(event, Result):
                return event
            if isinstance(event, Progress) and not quiet:
                if event.stage == "solve":
                    if bar is None:
                        bar = tqdm(
                            total=event.total, desc="deconvolving", unit="it", file=sys.stderr
                        )
                    bar.update(event.step - bar.n)
                else:
                    print(f"{event.message}…", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    raise RuntimeError("the deconvolution ended without a result")


def _deconvolve_files(
    image_path: Path,
    psf_path: Path,
    args: argparse.Namespace,
    voxel: Sequence[float] | None,
    psf_voxel: Sequence[float] | None,
) -> tuple[object, object]:
    from deconflow.io import read_tiff
    from deconflow.pipeline import iter_deconvolve

    image = read_tiff(image_path)
    psf = read_tiff(psf_path)
    voxel = voxel if voxel is not None else image.voxel_size_um
    psf_voxel = psf_voxel if psf_voxel is not None else psf.voxel_size_um
    if voxel is None and psf_voxel is not None:
        psf_voxel = None  # without the image's voxel size a PSF voxel size cannot be used
    settings = _settings(args, voxel, psf_voxel)
    result = _with_progress(iter_deconvolve(image.data, psf.data, settings), args.quiet)
    return image, result


def _write_outputs(result: object, output: Path, extra: dict[str, object]) -> Path:
    from deconflow.io import write_tiff
    from deconflow.io._atomic import atomic_destination

    provenance = {**result.provenance(), **extra}  # type: ignore[attr-defined]
    write_tiff(
        output,
        result.image,
        voxel_size_um=result.settings.voxel_size_um,  # type: ignore[attr-defined]
        metadata=provenance,
    )
    record = output.with_suffix(".json")
    with atomic_destination(record) as tmp:
        tmp.write_text(json.dumps(provenance, indent=2, default=str))
    return record


def _cmd_demo(args: argparse.Namespace) -> int:
    from deconflow._figures import save_comparison_figure
    from deconflow._sample_data import SAMPLE_BEAD, SAMPLE_IMAGE, sample_data_dir

    folder = sample_data_dir()
    out_dir: Path = args.out.resolve()
    image, result = _deconvolve_files(folder / SAMPLE_IMAGE, folder / SAMPLE_BEAD, args, None, None)
    tiff_path = out_dir / "confocal_grid_deconvolved.tif"
    _write_outputs(
        result,
        tiff_path,
        {"input": str(folder / SAMPLE_IMAGE), "psf_file": str(folder / SAMPLE_BEAD)},
    )
    figure_path = save_comparison_figure(
        out_dir / "confocal_grid_comparison.png",
        [
            ("raw (background included)", image.data.astype("float32")),  # type: ignore[attr-defined]
            (f"deconvolved ({result.settings.method})", result.image),
        ],  # type: ignore[attr-defined]
        result.settings.voxel_size_um,  # type: ignore[attr-defined]
        title="deconflow demo: real confocal line grid, PSF measured from a bead",
    )
    print(f"deconvolved in {result.elapsed_s:.1f} s on {result.device}")  # type: ignore[attr-defined]
    print(f"result TIFF: {tiff_path}")
    print(f"figure:      {figure_path}")
    print(f"output folder: {out_dir}")
    return _EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    image_path: Path = args.image.resolve()
    output: Path = args.output.resolve()
    if output == image_path or output == args.psf.resolve():
        raise DeconflowError(
            f"The output path {output} is an input file; choose another output path "
            "(inputs are never overwritten)."
        )
    if output.exists() and not args.overwrite:
        raise DeconflowError(f"{output} exists; pass --overwrite to replace it.")
    _, result = _deconvolve_files(image_path, args.psf, args, args.voxel_size, args.psf_voxel_size)
    record = _write_outputs(
        result, output, {"input": str(image_path), "psf_file": str(args.psf.resolve())}
    )
    if not args.quiet:
        print(f"wrote {output} and {record.name} ({result.elapsed_s:.1f} s on {result.device})")  # type: ignore[attr-defined]
    return _EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deconflow`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    commands = {"demo": _cmd_demo, "run": _cmd_run}
    try:
        return commands[args.command](args)
    except DeconflowError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"deconflow: error: {exc}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("deconflow: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one clear line, not a traceback
        if args.verbose:
            traceback.print_exc()
        print(
            f"deconflow: unexpected error: {type(exc).__name__}: {exc} "
            "(run again with --verbose for details)",
            file=sys.stderr,
        )
        return _EXIT_UNEXPECTED


if __name__ == "__main__":
    raise SystemExit(main())
