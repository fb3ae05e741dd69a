"""Training batches by step number, drawn in this process or ahead in worker processes.

Why workers: the built-in generator makes one 16×64×64 patch in ~44 ms on one CPU core, so
a GPU step on 32 patches (38 ms on an H200) would wait ~1.4 s for its data
(``docs/benchmarks/gpu.md``). Why by step: each step's batch comes from its own random
stream, seeded by ``(seed, step)``, so the data do not depend on how many workers drew
them, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from multiprocessing.pool import AsyncResult, Pool
from types import TracebackType
from typing import Protocol

import numpy as np
import torch

from deconflow.priors.data import Batch, EstimatePairs

__all__ = ["BatchSource", "BatchStream", "is_plane_step", "step_rng"]


class BatchSource(Protocol):
    """What the stream needs of a data source.

    :class:`~deconflow.priors.data.GeneratorSource` and
    :class:`~deconflow.priors.data.FolderSource` are two, and
    :class:`~deconflow.solvers.estimate_pairs.EstimatePairSource` (batches with pairs).
    """

    def sample(self, batch: int, rng: np.random.Generator, plane: bool = False) -> Batch:
        """Draw ``batch`` items (2D planes when ``plane``)."""
        ...

    def describe(self) -> str:
        """One line for the model card."""
        ...


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Return the random stream of one training step's data."""
    return np.random.default_rng([seed, step])


def is_plane_step(step: int, plane_every: int) -> bool:
    """Whether ``step`` trains on 2D planes (every ``plane_every``-th step; 0: never)."""
    return plane_every > 0 and step % plane_every == plane_every - 1


#: A batch as numpy arrays (what crosses from a worker): x1, aspect and, when the source
#: draws estimate pairs, their truth, estimate and aspect.
_Arrays = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]


def _draw(source: BatchSource, batch: int, plane_every: int, seed: int, step: int) -> _Arrays:
    plane = is_plane_step(step, plane_every)
    # one torch thread, as in a worker: multi-threaded FFTs and sums round differently, so
    # an estimate pair's Richardson-Lucy (and numpy's Poisson draws after it) would depend
    # on the drawing process's thread count, and workers would train other weights
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        drawn = source.sample(batch * (4 if plane else 1), step_rng(seed, step), plane=plane)
    finally:
        torch.set_num_threads(threads)
    pairs = drawn.pairs
    return (
        drawn.x1.numpy(),
        drawn.aspect.numpy(),
        None
        if pairs is None
        else (pairs.truth.numpy(), pairs.estimate.numpy(), pairs.aspect.numpy()),
    )


def _to_batch(arrays: _Arrays) -> Batch:
    x1, aspect, pairs = arrays
    return Batch(
        torch.from_numpy(x1),
        torch.from_numpy(aspect),
        None if pairs is None else EstimatePairs(*(torch.from_numpy(a) for a in pairs)),
    )


# Set once in each worker process by the pool's initializer (a worker's own state; the
# parent never touches it), so that a folder source's stacks are sent once, not per batch.
_WORKER_SOURCE: list[BatchSource] = []


def _init_worker(source: BatchSource) -> None:
    torch.set_num_threads(1)
    _WORKER_SOURCE[:] = [source]


def _draw_in_worker(batch: int, plane_every: int, seed: int, step: int) -> _Arrays:
    return _draw(_WORKER_SOURCE[0], batch, plane_every, seed, step)


class BatchStream:
    """The batches of steps ``start, start + 1, ...`` in order.

    Parameters
    ----------
    source : BatchSource
        Where items come from.
    batch : int
        Items per 3D step (plane steps take 4 times as many 2D items).
    plane_every : int
        Every n-th step draws 2D planes (0: never).
    seed : int
        With the step number, seeds each step's data.
    start : int
        First step.
    workers : int
        Processes drawing batches ahead (0: draw in this process when asked).
    """

    def __init__(
        self,
        source: BatchSource,
        batch: int,
        plane_every: int,
        seed: int,
        start: int = 0,
        workers: int = 0,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._source = source
        self._args = (batch, plane_every, seed)
        self._next_step = start
        self._ahead = 2 * workers
        self._pending: deque[AsyncResult[_Arrays]] = deque()
        self._pool: Pool | None = None
        if workers:
            # spawn, not fork: the parent may hold CUDA and OpenMP state a fork cannot copy
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(workers, initializer=_init_worker, initargs=(source,))
            self._queued = start
            self._fill()

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self._ahead:
            self._pending.append(
                self._pool.apply_async(_draw_in_worker, (*self._args, self._queued))
            )
            self._queued += 1

    def next(self) -> Batch:
        """Return the next step's batch."""
        if self._pool is None:
            arrays = _draw(self._source, *self._args, self._next_step)
        else:
            arrays = self._pending.popleft().get()
            self._fill()
        self._next_step += 1
        return _to_batch(arrays)

    def close(self) -> None:
        """Stop the workers (batches drawn ahead are dropped)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            self._pending.clear()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
