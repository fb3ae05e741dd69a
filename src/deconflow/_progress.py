"""The progress event every long computation yields (a module of its own to avoid cycles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Progress", "Stage"]

Stage = Literal["psf", "operator", "estimate", "solve"]


@dataclass(frozen=True)
class Progress:
    """A progress event: ``step`` of ``total`` in ``stage``, for volume ``volume`` of ``volumes``.

    ``volume``/``volumes`` count the 3D (or 2D) volumes of a hyperstack (channels
    times time points, see :func:`deconflow.hyperstack.iter_deconvolve_hyperstack`);
    a single stack is volume 0 of 1. ``tile``/``tiles`` count the tiles of a
    stack too large for the memory budget. Stage ``"estimate"`` is the quick
    first estimate the flow method normalises its prior with.
    """

    stage: Stage
    step: int
    total: int
    message: str = ""
    volume: int = 0
    volumes: int = 1
    tile: int = 0
    tiles: int = 1
