"""Running a block solver over a tile plan: blending, progress, out-of-memory retry."""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import EllipsisType

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow._progress import Progress
from deconflow.physics.blur import ConvolutionOperator
from deconflow.solvers import RichardsonLucy, RichardsonLucyTV, Wiener
from deconflow.tiling import TilePlan, blend_weight, plan_tiles

__all__ = [
    "BlockOutput",
    "BlockSolver",
    "classical_block_solver",
    "is_out_of_memory",
    "run_plan",
]

ClassicalSolver = RichardsonLucy | RichardsonLucyTV | Wiener


@dataclass(frozen=True)
class BlockOutput:
    """What one block (tile or whole stack) produced, all in image units and block shape."""

    mean: np.ndarray
    std: np.ndarray | None = None
    samples: np.ndarray | None = None  # (K, *block_shape)
    residual: np.ndarray | None = None


#: Deconvolves one block: ``(block, index, tile, tiles)`` -> progress, then a BlockOutput;
#: ``index`` is the block's slices in the whole stack.
BlockSolver = Callable[
    [np.ndarray, tuple[slice, ...], int, int], Generator[Progress, None, BlockOutput]
]


def classical_block_solver(
    psf: np.ndarray,
    solver: ClassicalSolver,
    device: torch.device,
    background: float,
    method: str,
) -> BlockSolver:
    """Block solver for the RL / RL-TV / Wiener methods."""

    def solve(
        block: np.ndarray, index: tuple[slice, ...], tile: int, tiles: int
    ) -> Generator[Progress, None, BlockOutput]:
        operator = ConvolutionOperator(psf, block.shape, device=device, dtype=torch.float32)
        y = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        total = solver.total_steps
        where = f" (tile {tile + 1}/{tiles})" if tiles > 1 else ""
        estimate: torch.Tensor | None = None
        for step, iterate in enumerate(solver.iterate(y, operator, background), start=1):
            estimate = iterate
            yield Progress(
                "solve", step, total, f"{method} step {step}/{total}{where}", tile=tile, tiles=tiles
            )
        if estimate is None:  # every solver yields at least once; guards a broken one
            raise RuntimeError("solver produced no estimate")
        return BlockOutput(mean=to_image(operator, estimate, clip=_clips(solver)))

    return solve


def _clips(solver: ClassicalSolver) -> bool:
    return not isinstance(solver, Wiener) or solver.clip_negative


def to_image(operator: ConvolutionOperator, estimate: torch.Tensor, *, clip: bool) -> np.ndarray:
    """Measured window of an object-domain estimate as finite float32 numpy (clipped at 0)."""
    out = operator.crop_to_image(estimate).detach().to("cpu", torch.float32).numpy().copy()
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if clip:
        # the model is non-negative; FFT round-off can leave values like -1e-20
        np.maximum(out, 0.0, out=out)
    return out


def _blend(plan: TilePlan, shape: tuple[int, ...], outputs: list[BlockOutput]) -> BlockOutput:
    weights = np.zeros(shape, dtype=np.float32)
    sums: dict[str, np.ndarray] = {}
    for tile, output in zip(plan.tiles, outputs, strict=True):
        w = blend_weight(tile, shape, plan.overlap)
        weights[tile] += w
        for name in ("mean", "std", "samples", "residual"):
            value = getattr(output, name)
            if value is None:
                continue
            if name not in sums:
                lead = value.shape[: value.ndim - len(shape)]
                sums[name] = np.zeros((*lead, *shape), dtype=np.float32)
            where: tuple[EllipsisType | slice, ...] = (..., *tile)
            sums[name][where] += w * value
    return BlockOutput(**{name: total / weights for name, total in sums.items()})


def _run_once(
    data: np.ndarray, plan: TilePlan, solve: BlockSolver
) -> Generator[Progress, None, BlockOutput]:
    if plan.count == 1:
        yield Progress("operator", 0, 1, "building the forward model")
        return (yield from solve(data, plan.tiles[0], 0, 1))
    outputs = []
    for number, tile in enumerate(plan.tiles):
        yield Progress(
            "operator", 0, 1, f"tile {number + 1}/{plan.count}", tile=number, tiles=plan.count
        )
        outputs.append((yield from solve(data[tile], tile, number, plan.count)))
    return _blend(plan, data.shape, outputs)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure, on the GPU or in host memory.

    torch's CPU allocator raises a plain ``RuntimeError`` ("DefaultCPUAllocator: can't
    allocate memory"), numpy a ``MemoryError``; CUDA has its own type, but the CUDA
    libraries' own allocations fail with a plain ``RuntimeError`` too ("CUDA error:
    CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`" on a nearly full GPU).
    """
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    signs = ("DefaultCPUAllocator", "can't allocate memory", "ALLOC_FAILED", "out of memory")
    return isinstance(error, RuntimeError) and any(sign in text for sign in signs)


def run_plan(
    data: np.ndarray,
    plan: TilePlan,
    solve: BlockSolver,
    device: torch.device,
    notes: list[str],
    *,
    psf_shape: tuple[int, ...],
    method: str,
) -> Generator[Progress, None, BlockOutput]:
    """Run ``solve`` over ``plan``; on out-of-memory retry once with tiles half the size.

    Out of memory means the GPU's or, on the CPU, the host's (:func:`is_out_of_memory`).
    Notes about what was decided are appended to ``notes``.
    """
    try:
        return (yield from _run_once(data, plan, solve))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
    # only after the except clause: until it ends, the error's traceback keeps the failed
    # attempt's frames alive, and with them its tensors, which the cache could not release
    gc.collect()  # a failed generator's frames can also sit in reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()
    smaller = plan_tiles(
        data.shape,
        psf_shape,
        method,
        budget_bytes=2**62,
        max_tile_shape=tuple(max(t // 2, 8) for t in plan.tile_shape),
    )
    if smaller.count == plan.count:
        raise DeconflowError(oom_message(device, plan))
    notes.append(
        f"ran out of {device} memory with {plan.count} tile(s); retried with "
        f"{smaller.count} smaller tiles"
    )
    try:
        return (yield from _run_once(data, smaller, solve))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        raise DeconflowError(oom_message(device, smaller)) from None


def oom_message(device: torch.device, plan: TilePlan) -> str:
    """Explain that even the smallest tiles did not fit, and what to do."""
    # a tile cannot shrink below 4 overlaps (plan_tiles): suggest half the failed tiles,
    # with one entry per axis of this stack, or say that smaller ones are not possible
    smaller = tuple(
        max(t // 2, 4 * o) if t > 4 * o else t
        for t, o in zip(plan.tile_shape, plan.overlap, strict=True)
    )
    shrink = (
        f"Set a smaller tile_shape (e.g. {smaller}) or memory_budget_gb, or close other "
        if smaller != tuple(plan.tile_shape)
        else f"The tiles are as small as the PSF allows (4 times the overlap {plan.overlap}); "
        "close other "
    )
    return (
        f"Out of {device} memory even with {plan.count} tiles of up to {plan.tile_shape} voxels. "
        + shrink
        + (
            "programs using the device, or run with device='cpu'."
            if device.type == "cuda"
            else "programs, or run fewer batch workers at once."
        )
    )
