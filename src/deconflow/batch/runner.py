"""Run batch tasks serially, on a Dask LocalCluster, or on an existing Dask cluster.

Progress: an overall bar (files) and one bar per running file (solver steps);
with Dask, workers send their progress as ``log_event`` messages that the
client turns into the same bars. Every outcome is logged to the batch's log
file and summarised in a table.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from deconflow._errors import DeconflowError
from deconflow.batch.task import (
    PROGRESS_TOPIC,
    FileJob,
    FileOutcome,
    process_file,
    process_file_on_worker,
)

__all__ = ["LOG_NAME", "format_summary", "lock_output_folder", "open_log", "run_jobs"]

LOG_NAME = "deconflow-batch.log"
_POLL_S = 0.1


class _TqdmHandler(logging.Handler):
    """Console log lines that do not tear the progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


@contextmanager
def lock_output_folder(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for one batch: a second batch writing there at the same time is refused.

    Each run removes the temporary files an interrupted run left (``remove_partials``),
    so two runs into one folder would delete each other's half-written outputs. The
    lock is an advisory ``flock`` on the batch's log file, which the system drops when
    the process ends, ``kill -9`` included: a killed run never blocks its own resume.
    Where there is no ``flock`` (Windows, file systems without locks) one batch per
    folder is up to the user.

    Raises
    ------
    DeconflowError
        If another process holds the folder.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    # closing the file (the end of the run, or the process's death) releases the lock
    with open(out_dir / LOG_NAME, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:  # held; a file system without locks raises others
            raise DeconflowError(
                f"Another deconflow batch is writing to {out_dir} (it holds {LOG_NAME} "
                "there). Wait for it to finish, or give this run another --out folder."
            ) from exc
        except OSError:  # no locks on this file system: run unlocked, as before
            pass
        yield


def open_log(out_dir: Path, verbose: bool, quiet: bool) -> logging.Logger:
    """Open a logger writing everything to ``out_dir/deconflow-batch.log`` and some to stderr.

    The handlers belong to this run; :func:`close_log` removes them, so
    nothing is configured at import time or left behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("deconflow.batch.run")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    to_file = logging.FileHandler(out_dir / LOG_NAME, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    to_file.setLevel(logging.DEBUG)
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    # quiet: the command itself prints one line per failed file at the end
    console.setLevel(logging.DEBUG if verbose else logging.CRITICAL if quiet else logging.WARNING)
    logger.addHandler(to_file)
    logger.addHandler(console)
    return logger


def close_log(logger: logging.Logger) -> None:
    """Flush and remove the handlers :func:`open_log` added."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def _log_outcome(logger: logging.Logger, outcome: FileOutcome, verbose: bool) -> None:
    if outcome.status == "failed":
        logger.error("failed  %s: %s", outcome.source, outcome.message)
        if outcome.detail:
            # tracebacks always go to the log file, to the console only with --verbose
            level = logging.ERROR if verbose else logging.DEBUG
            for handler in logger.handlers:
                if isinstance(handler, logging.FileHandler) or verbose:
                    handler.handle(
                        logger.makeRecord(logger.name, level, "", 0, outcome.detail, (), None)
                    )
    else:
        logger.info(
            "%-7s %s -> %s (%.1f s, %s)",
            outcome.status,
            outcome.source,
            outcome.output,
            outcome.seconds,
            outcome.device or "-",
        )


class _Bars:
    """The overall bar and one bar per file in progress."""

    def __init__(self, total: int, quiet: bool, stream: TextIO) -> None:
        self.quiet = quiet
        self.stream = stream
        self.overall = tqdm(
            total=total, desc="files", unit="file", disable=quiet, file=stream, position=0
        )
        self.files: dict[str, tqdm[Any]] = {}

    def update_file(self, source: str, done: int, total: int) -> None:
        if self.quiet:
            return
        bar = self.files.get(source)
        if bar is None:
            bar = tqdm(
                total=total, desc=Path(source).name, unit="step", leave=False, file=self.stream
            )
            self.files[source] = bar
        bar.update(done - bar.n)

    def finish_file(self, outcome: FileOutcome) -> None:
        bar = self.files.pop(outcome.source, None)
        if bar is not None:
            bar.close()
        self.overall.update(1)

    def close(self) -> None:
        for bar in self.files.values():
            bar.close()
        self.overall.close()


def _run_serial(jobs: Sequence[FileJob], bars: _Bars, done: list[FileOutcome], log: Any) -> None:
    for job in jobs:
        outcome = process_file(job, partial(bars.update_file, job.source))
        bars.finish_file(outcome)
        done.append(outcome)
        log(outcome)


def _failed(job: FileJob, exc: BaseException) -> FileOutcome:
    # a task can die with its worker (killed, out of memory): report, do not raise
    return FileOutcome(job.source, job.output, "failed", 0.0, "", f"{type(exc).__name__}: {exc}")


def _run_dask(
    jobs: Sequence[FileJob],
    client: Any,
    bars: _Bars,
    done: list[FileOutcome],
    log: Any,
) -> None:
    latest: dict[str, tuple[int, int]] = {}
    lock = threading.Lock()

    def on_progress(event: tuple[float, dict[str, Any]]) -> None:
        # runs in the client's event-loop thread: only store, the main thread draws
        message = event[1]
        with lock:
            latest[message["source"]] = (int(message["done"]), int(message["total"]))

    from distributed import Event

    client.subscribe_topic(PROGRESS_TOPIC, on_progress)
    # cancelling a future does not stop a task a worker is running: the tasks watch this
    stop = Event(_stop_event_name(), client=client)
    futures = {
        client.submit(
            process_file_on_worker, job, stop.name, pure=False, priority=len(jobs) - i
        ): job
        for i, job in enumerate(jobs)
    }
    pending = dict(futures)
    try:
        while pending:
            time.sleep(_POLL_S)
            with lock:
                snapshot = dict(latest)
                latest.clear()
            running = {job.source for job in pending.values()}
            for source, (step, total) in snapshot.items():
                if source in running:  # a late event must not reopen a finished file's bar
                    bars.update_file(source, step, total)
            for future in [f for f in pending if f.done()]:
                job = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:
                    outcome = _failed(job, exc)
                bars.finish_file(outcome)
                done.append(outcome)
                log(outcome)
    finally:
        if pending:  # interrupted (Ctrl-C) or failed: the running files stop too
            stop.set()
        client.unsubscribe_topic(PROGRESS_TOPIC)
        for future in futures:
            future.cancel()


def _stop_event_name() -> str:
    """Return a name for one batch's stop event, unique on a shared scheduler."""
    return f"deconflow-stop-{uuid.uuid4().hex}"


def run_jobs(
    jobs: Sequence[FileJob],
    *,
    logger: logging.Logger,
    workers: int = 0,
    scheduler: str | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> list[FileOutcome]:
    """Run every job and return their outcomes in input order.

    Parameters
    ----------
    jobs : sequence of FileJob
        One per input file.
    logger : logging.Logger
        From :func:`open_log`.
    workers : int
        0 or 1: in this process. N > 1: a Dask ``LocalCluster`` of N worker
        processes with one thread each.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); its
        workers must see the input and output paths and have deconflow.
    quiet, verbose : bool
        No progress bars / log every file to the console.
    """
    done: list[FileOutcome] = []
    bars = _Bars(len(jobs), quiet, sys.stderr)

    def log(outcome: FileOutcome) -> None:
        _log_outcome(logger, outcome, verbose)

    try:
        if scheduler is None and workers <= 1:
            _run_serial(jobs, bars, done, log)
        else:
            from distributed import Client, LocalCluster

            if scheduler is not None:
                logger.info("submitting %d files to the Dask scheduler %s", len(jobs), scheduler)
                with Client(scheduler, timeout="30s") as client:
                    _run_dask(jobs, client, bars, done, log)
            else:
                logger.info("starting a Dask LocalCluster with %d workers", workers)
                with (
                    LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.ERROR,
                    ) as cluster,
                    Client(cluster) as client,
                ):
                    _run_dask(jobs, client, bars, done, log)
    except KeyboardInterrupt:
        logger.warning(
            "interrupted after %d of %d files; run the same command again to resume",
            len(done),
            len(jobs),
        )
        raise
    finally:
        bars.close()
    order = {job.source: i for i, job in enumerate(jobs)}
    return sorted(done, key=lambda o: order[o.source])


def format_summary(outcomes: Sequence[FileOutcome]) -> str:
    """Format a plain-text table: status, time, device, input and output or error, then totals."""
    rows = [("status", "time (s)", "device", "input", "output / error")]
    for o in outcomes:
        note = Path(o.output).name if o.status != "failed" else o.message
        rows.append((o.status, f"{o.seconds:.1f}", o.device or "-", Path(o.source).name, note))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(rows[0][4]))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines.append(
        f"{len(outcomes)} files: {counts['done']} done, {counts['skipped']} skipped, "
        f"{counts['failed']} failed"
    )
    return "\n".join(lines)
