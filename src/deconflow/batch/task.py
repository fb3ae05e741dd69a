"""One batch task: deconvolve one file, or skip it when its finished output matches.

:func:`process_file` and :func:`process_file_on_worker` are top-level functions
of plain dataclasses so that Dask can pickle them to worker processes; every
outcome, failures included, comes back as a :class:`FileOutcome` value rather
than an exception, so one bad file never stops the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from deconflow._errors import DeconflowError
from deconflow._types import VoxelSize
from deconflow.batch.files import check_output_apart, record_for, sha256_file, sha256_input
from deconflow.batch.settings import resolve_voxel_sizes
from deconflow.config import DeconvolutionSettings
from deconflow.io._atomic import atomic_destination
from deconflow.io._dispatch import is_zarr_path
from deconflow.io._voxel import complete_z_step
from deconflow.io._zarr import is_store

if TYPE_CHECKING:
    from deconflow.hyperstack import HyperstackResult
    from deconflow.io import TiffImage
    from deconflow.pipeline import Result

__all__ = ["FileJob", "FileOutcome", "process_file", "process_file_on_worker", "resume_key"]

#: Topic of the progress events workers send to the client (``Worker.log_event``).
PROGRESS_TOPIC = "deconflow-batch-progress"
#: Shortest time between two progress events of one task; the scheduler relays each one.
_PROGRESS_INTERVAL_S = 0.25
Status = Literal["done", "skipped", "failed"]
ProgressCallback = Callable[[int, int], None]
StatusCallback = Callable[[str], None]


@dataclass(frozen=True)
class FileJob:
    """Everything a worker needs to process one input file.

    Attributes
    ----------
    source, output : str
        Absolute input and output paths (workers of a cluster must see them).
    psfs : tuple of str
        PSF files: one for all channels or one per channel.
    settings : DeconvolutionSettings
        Settings from ``--config`` and flags; voxel sizes still ``None`` are
        read from each file.
    voxel_size_um, psf_voxel_size_um : tuple of float or None
        ``--voxel-size`` / ``--psf-voxel-size`` overrides: (z, y, x), (y, x), or
        ``(z,)``, the z step alone, which each file's own pixel size completes when
        the task reads it.
    overwrite : bool
        Replace an existing output that was made with other settings or
        inputs (or not by deconflow). A matching output is always kept.
    """

    source: str
    output: str
    psfs: tuple[str, ...]
    settings: DeconvolutionSettings
    voxel_size_um: VoxelSize | None = None
    psf_voxel_size_um: VoxelSize | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file; ``detail`` holds a traceback for unexpected errors."""

    source: str
    output: str
    status: Status
    seconds: float
    device: str = ""
    message: str = ""
    detail: str = ""


def weights_sha256(settings: DeconvolutionSettings) -> str | None:
    """SHA-256 of the prior weights a flow run uses (``None`` for the classical methods)."""
    if settings.method != "flow":
        return None
    from deconflow.priors.weights import default_weights_path

    path = Path(settings.flow.weights) if settings.flow.weights else default_weights_path()
    return sha256_file(path) if path.is_file() else None


def resume_key(job: FileJob, input_sha256: str, psf_sha256: list[str]) -> str:
    """Hash of everything that determines an output: requested settings, input and PSF bytes.

    The device is left out: a run started on a GPU may be finished on the CPU
    without redoing the files already written. Voxel sizes read from the files
    are covered by the file hashes. An OME-Zarr output adds its format, so its
    record (same name as an OME-TIFF's) is never taken for the TIFF's; OME-TIFF
    keys are as before.
    """
    settings = job.settings.to_dict()
    settings.pop("device", None)
    payload = {
        "settings": settings,
        "voxel_size_um": job.voxel_size_um,
        "psf_voxel_size_um": job.psf_voxel_size_um,
        "input_sha256": input_sha256,
        "psf_sha256": psf_sha256,
        "weights_sha256": weights_sha256(job.settings),
    }
    if is_zarr_path(job.output):
        payload["output_format"] = "ome-zarr"
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical_axes(axes: str, source: Path) -> str:
    unknown = sorted(set(axes) - set("TCZYX"))
    if unknown or len(set(axes)) != len(axes) or not axes.endswith("YX"):
        raise DeconflowError(
            f"{source.name} has axes {axes!r}; deconflow takes stacks with Y, X, optional Z and "
            "optional T and C axes (not RGB or other axes). Save it as a grayscale (hyper)stack."
        )
    return "".join(a for a in "TCZYX" if a in axes)


def _require_z_step(path: str | Path, image: TiffImage, flag: str, key: str) -> None:
    """Refuse a 3D stack whose file records its pixel size but no z step.

    Run without a voxel size, it would take the PSF at the stack's own grid and drop
    the pixel size the file does record; the z step is one number the user knows.

    Raises
    ------
    DeconflowError
        Naming the file and the ``flag`` (or settings ``key``) to give: the z step
        alone, or all three sizes with the file's pixel size filled in.
    """
    if image.voxel_size_um is not None or image.pixel_size_um is None:
        return
    if sum(1 for a in image.axes if a in "ZYX") < 3:
        return
    y, x = image.pixel_size_um
    raise DeconflowError(
        f"{Path(path).name} records its pixel size (y {y:g} µm, x {x:g} µm) but no z step "
        f"(OME PhysicalSizeZ missing or unreadable); pass the z step alone in µm, e.g. "
        f"{flag} 0.3 (y and x are then read from the file), or all three with {flag} Z {y:g} "
        f"{x:g}; in a settings file, {key}: [Z] or [Z, {y:g}, {x:g}]."
    )


def _complete_z_step(
    flag_value: VoxelSize | None,
    settings_value: VoxelSize | None,
    image: TiffImage,
    path: str | Path,
    flag: str,
    key: str,
) -> VoxelSize | None:
    """Return the voxel size given (flag, else settings), a z step alone completed to (z, y, x).

    Done per file where the file is read (on a Dask worker in a batch), since the
    files of one batch may have different pixel sizes. A settings value the flag
    overrides is never completed, so it cannot fail a file. The completion itself is
    :func:`deconflow.io._voxel.complete_z_step`; this chooses the value and how the
    messages name it.

    Raises
    ------
    DeconflowError
        If the file is 2D (it has no z step) or records no pixel size to complete
        the z step with; the message names the ``flag`` or settings ``key`` given.
    """
    given = flag_value or settings_value
    if given is None or len(given) != 1:
        return given
    z = float(given[0])
    given_as, full_as = (
        (f"{flag} {z:g}", f"{flag} {z:g} Y X")
        if flag_value
        else (f"{key}: [{z:g}] (settings file)", f"{key}: [{z:g}, Y, X]")
    )
    name = Path(path).name  # the batch names files alone, as in its log
    return complete_z_step(given, image, name, given_as=given_as, full_as=full_as)


def _to_axes(data: np.ndarray, axes: str, target: str) -> np.ndarray:
    """Return ``data`` (axes ``axes``) with axes ``target``: reordered, missing ones of length 1."""
    missing = "".join(a for a in target if a not in axes)
    data = data.reshape(data.shape + (1,) * len(missing))
    return np.transpose(data, [(axes + missing).index(a) for a in target])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_record(output: Path, provenance: dict[str, Any]) -> None:
    with atomic_destination(record_for(output)) as tmp:
        tmp.write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))


def _record_key(output: Path) -> object:
    """Return the ``resume_key`` of the JSON record beside ``output``; ``None`` if unreadable."""
    try:
        record = json.loads(record_for(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("resume_key") if isinstance(record, dict) else None


def _deconvolve(
    job: FileJob,
    key: str,
    input_sha256: str,
    psf_sha256: list[str],
    progress: ProgressCallback | None,
    status: StatusCallback | None = None,
) -> str:
    from deconflow import __version__
    from deconflow.hyperstack import iter_deconvolve_hyperstack
    from deconflow.io import read_image, read_tiff, write_image
    from deconflow.pipeline import Progress, iter_deconvolve

    started = _now()
    source, output = Path(job.source), Path(job.output)
    image = read_image(source)
    if job.voxel_size_um is None and job.settings.voxel_size_um is None:
        _require_z_step(source, image, "--voxel-size", "voxel_size_um")
    psfs = [read_tiff(p) for p in job.psfs]
    psf_voxels = {p.voxel_size_um for p in psfs}
    # a PSF voxel size given (flag or settings file) stands for every PSF file; a z step
    # alone is completed per file below, where files of different pixel sizes are refused
    given_psf_voxel = job.psf_voxel_size_um or job.settings.psf_voxel_size_um
    if len(psf_voxels) > 1 and given_psf_voxel is None:
        raise DeconflowError(
            f"The PSF files have different voxel sizes {sorted(map(str, psf_voxels))}; give "
            "the PSFs' voxel size with --psf-voxel-size Z Y X (or the z step alone, Z, when "
            "they differ in z only), or psf_voxel_size_um in the settings file, or resample "
            "the PSFs to one voxel size."
        )
    spatial = sum(1 for a in image.axes if a in "ZYX")
    for psf_path, psf in zip(job.psfs, psfs, strict=True):
        if psf.data.ndim != spatial:
            raise DeconflowError(
                f"The PSF {Path(psf_path).name} is {psf.data.ndim}D {psf.data.shape} but "
                f"{source.name} has {spatial} spatial axes (axes {image.axes!r}); give a PSF "
                "with the image's spatial axes (a 3D bead stack for Z stacks, 2D for YX images)."
            )
    # a z step alone takes the pixel size of this file (of each PSF file, which must agree)
    voxel = _complete_z_step(
        job.voxel_size_um,
        job.settings.voxel_size_um,
        image,
        source,
        "--voxel-size",
        "voxel_size_um",
    )
    psf_voxel = {
        _complete_z_step(
            job.psf_voxel_size_um,
            job.settings.psf_voxel_size_um,
            psf,
            psf_path,
            "--psf-voxel-size",
            "psf_voxel_size_um",
        )
        for psf_path, psf in zip(job.psfs, psfs, strict=True)
    }
    if len(psf_voxel) > 1:
        raise DeconflowError(
            f"The PSF files have different pixel sizes {sorted(map(str, psf_voxel))}, so one "
            "z step cannot stand for all of them; give all three sizes with --psf-voxel-size "
            "Z Y X (settings file: psf_voxel_size_um: [Z, Y, X]), or resample the PSFs to one "
            "voxel size."
        )
    settings = resolve_voxel_sizes(
        job.settings,
        flag=voxel,
        psf_flag=psf_voxel.pop(),
        from_image=image.voxel_size_um,
        from_psf=psfs[0].voxel_size_um,
    )
    # a PSF's voxel size is used only to resample it to the image's
    if settings.voxel_size_um is not None and settings.psf_voxel_size_um is None:
        for psf_path, psf in zip(job.psfs, psfs, strict=True):
            _require_z_step(psf_path, psf, "--psf-voxel-size", "psf_voxel_size_um")
    canonical = _canonical_axes(image.axes, source)
    order = [image.axes.index(a) for a in canonical]
    data = np.transpose(image.data, order)
    events: Iterator[Progress | Result | HyperstackResult]
    if canonical in ("ZYX", "YX"):
        if len(psfs) > 1:
            raise DeconflowError(
                f"{len(psfs)} PSFs were given but {source.name} has no channel axis (axes "
                f"{image.axes!r}); give one --psf."
            )
        events = iter_deconvolve(data, psfs[0].data, settings)
    else:
        events = iter_deconvolve_hyperstack(data, [p.data for p in psfs], settings, axes=canonical)
    result = None
    for event in events:
        if not isinstance(event, Progress):
            result = event
        elif progress is not None and event.stage == "solve":
            # one count over all volumes and tiles: each chunk has ``total`` solver steps
            chunk = event.volume * event.tiles + event.tile
            progress(chunk * event.total + event.step, event.volumes * event.tiles * event.total)
        elif status is not None and event.stage != "solve" and event.step == 0 and event.message:
            # the start of a stage before the solver (PSF, noise, first estimate, prior
            # strength): on a large flow run these take tens of seconds without a step count
            status(event.message)
    if result is None:  # the engine always ends with a result
        raise RuntimeError("the deconvolution ended without a result")
    # back to the input's axes, length-1 T and C included, so the output reads like the
    # input; NGFF fixes the order (T, C, Z, Y, X), so an OME-Zarr output keeps that one
    declared = image.declared_axes
    out_axes = _canonical_axes(declared, source) if is_zarr_path(output) else declared
    restored = np.ascontiguousarray(_to_axes(result.image, canonical, out_axes))
    provenance: dict[str, Any] = {
        **result.provenance(),
        "deconflow_version": __version__,
        "method": settings.method,
        "settings": settings.to_dict(),
        "weights_sha256": weights_sha256(settings),
        "input": {
            "path": str(source),
            "sha256": input_sha256,
            "axes": image.axes,
            "shape": list(image.data.shape),
            "dtype": str(image.data.dtype),
            "voxel_size_um": image.voxel_size_um,
        },
        "psf_files": [{"path": p, "sha256": h} for p, h in zip(job.psfs, psf_sha256, strict=True)],
        "output": {"path": str(output), "axes": out_axes, "dtype": "float32"},
        "host": platform.node(),
        "started_utc": started,
        "finished_utc": _now(),
        "resume_key": key,
    }
    write_image(
        output,
        restored.astype(np.float32, copy=False),
        axes=out_axes,
        voxel_size_um=settings.voxel_size_um,
        description=provenance,
    )
    # the image first: a kill between the two renames leaves a complete output whose
    # embedded record lets the next run restore the JSON instead of redoing the work
    _write_record(output, provenance)
    return result.device


def process_file(
    job: FileJob,
    progress: ProgressCallback | None = None,
    status: StatusCallback | None = None,
) -> FileOutcome:
    """Deconvolve ``job.source`` into ``job.output``, or skip it when already done.

    Parameters
    ----------
    job : FileJob
        The file and settings.
    progress : callable, optional
        Called with ``(done, total)`` solver steps over all volumes.
    status : callable, optional
        Called with the message of each stage that starts before or between the
        solver's steps ("preparing the PSF", "choosing how far to trust the prior", ...).

    Returns
    -------
    FileOutcome
        ``done``, ``skipped`` (a finished output with the same resume key
        exists) or ``failed`` with a one-line message.
    """
    from deconflow.io import read_description

    start = time.perf_counter()
    source, output = Path(job.source), Path(job.output)
    try:
        check_output_apart(output, source, [Path(p) for p in job.psfs])
        if source.is_dir() and not is_store(source):  # before hashing a whole folder
            raise DeconflowError(
                f"{source} is a folder but not an OME-Zarr store; give a TIFF file or a .zarr "
                "store (deconflow batch takes folders of them)."
            )
        for path in (source, *map(Path, job.psfs)):
            if not (path.is_file() or (path == source and path.is_dir())):
                raise DeconflowError(f"No such file: {path}. Check the path.")
        input_sha256 = sha256_input(source)
        psf_sha256 = [sha256_file(Path(p)) for p in job.psfs]
        key = resume_key(job, input_sha256, psf_sha256)
        existing = read_description(output)
        if existing is not None and existing.get("resume_key") == key:
            # a kill between the image's and the record's rename of an --overwrite run
            # leaves no record or the replaced output's: the image's embedded one is right
            if _record_key(output) != key:
                _write_record(output, existing)
            return FileOutcome(
                job.source,
                job.output,
                "skipped",
                time.perf_counter() - start,
                str(existing.get("device", "")),
                "finished output with the same settings and inputs exists",
            )
        if output.exists() and not job.overwrite:
            made_by = "with other settings or inputs" if existing else "by another program"
            raise DeconflowError(
                f"{output} exists and was made {made_by}; pass --overwrite to replace it, or "
                "choose another output folder."
            )
        device = _deconvolve(job, key, input_sha256, psf_sha256, progress, status)
        return FileOutcome(job.source, job.output, "done", time.perf_counter() - start, device)
    except DeconflowError as exc:
        message, detail = str(exc), ""
    except Exception as exc:  # any damage in one file must not stop the batch
        message, detail = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    return FileOutcome(
        job.source, job.output, "failed", time.perf_counter() - start, "", message, detail
    )


def _worker_gpu(settings: DeconvolutionSettings, worker_name: object) -> DeconvolutionSettings:
    """Spread workers over the GPUs when several are visible and the device is ``auto``."""
    import torch

    count = torch.cuda.device_count() if settings.device == "auto" else 0
    if count < 2:
        return settings
    # LocalCluster names its workers 0..N-1; other names end in a number or are hashed
    match = re.search(r"(\d+)$", str(worker_name))
    index = (
        int(match.group(1))
        if match
        else int(hashlib.sha256(str(worker_name).encode()).hexdigest(), 16)
    )
    return dataclasses.replace(settings, device=f"cuda:{index % count}")


def process_file_on_worker(job: FileJob, stop: str | None = None) -> FileOutcome:
    """:func:`process_file` inside a Dask worker: GPU choice and progress events to the client.

    ``stop`` names a Dask ``Event`` that the submitting client sets when its batch is
    interrupted: a worker cannot be made to drop a running task, so the task looks at
    the event as often as it reports progress and gives up (``failed``, nothing written)
    once it is set, instead of running to the end for a client that has gone.
    """
    from distributed import Event, get_worker

    worker = get_worker()
    job = dataclasses.replace(job, settings=_worker_gpu(job.settings, worker.name))
    stop_event = Event(stop) if stop else None
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= _PROGRESS_INTERVAL_S:
            last = now
            if stop_event is not None and stop_event.is_set():
                raise DeconflowError(
                    "stopped: the batch that submitted this file was interrupted; its output "
                    "was not written (run the batch again to resume)."
                )
            worker.log_event(PROGRESS_TOPIC, {"source": job.source, "done": done, "total": total})

    return process_file(job, report)
