"""Shared scaffolding for multiplicative (Richardson–Lucy-type) iterations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["RunToEnd", "multiplicative_iterations"]

#: Biggs–Andrews extrapolation is capped below 1 so a run of similar steps cannot diverge.
_MAX_ACCELERATION = 0.95


def multiplicative_iterations(
    step: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    iterations: int,
    *,
    accelerate: bool,
) -> Iterator[torch.Tensor]:
    """Run ``x <- step(x)`` and yield every iterate.

    Parameters
    ----------
    step : callable
        One update of a non-negative estimate.
    x0 : torch.Tensor
        First estimate (non-negative).
    iterations : int
        Number of updates.
    accelerate : bool
        Use the vector extrapolation of Biggs & Andrews (Appl. Opt. 36, 1997):
        predict ``x + alpha (x - x_prev)`` from the correlation of the last two
        update vectors, then apply the step to the prediction.

    Yields
    ------
    torch.Tensor
        The estimate after each update (the solver's own buffer: copy it to keep it).
    """
    x = x0
    x_prev: torch.Tensor | None = None
    g_prev: torch.Tensor | None = None
    g_prev2: torch.Tensor | None = None
    for _ in range(iterations):
        prediction = x
        if accelerate and x_prev is not None and g_prev is not None and g_prev2 is not None:
            # flat dot products and one lerp: the extrapolation costs ~4 passes over memory
            flat2 = g_prev2.reshape(-1)
            denom = float(torch.dot(flat2, flat2).item())
            alpha = float(torch.dot(g_prev.reshape(-1), flat2).item()) / denom if denom > 0 else 0.0
            alpha = min(max(alpha, 0.0), _MAX_ACCELERATION)
            if alpha > 0:
                # x + alpha (x - x_prev) == lerp(x_prev, x, 1 + alpha)
                prediction = torch.lerp(x_prev, x, 1.0 + alpha).clamp_min_(0.0)
        x_new = step(prediction)
        if accelerate:
            # reuse the oldest update buffer for the newest update
            if g_prev2 is not None:
                g_new = torch.sub(x_new, prediction, out=g_prev2)
            else:
                g_new = x_new - prediction
            g_prev2, g_prev = g_prev, g_new
            x_prev = x
        x = x_new
        yield x


class RunToEnd:
    """Mixin for solvers with ``iterate(y, operator, background)``: calling runs it to the end."""

    def iterate(
        self, y: torch.Tensor, operator: Any, background: float = 0.0
    ) -> Iterator[torch.Tensor]:
        """Yield successive estimates (implemented by each solver)."""
        raise NotImplementedError

    def __call__(self, y: torch.Tensor, operator: Any, background: float = 0.0) -> torch.Tensor:
        """Run all iterations and return the final object-domain estimate."""
        last: torch.Tensor | None = None
        for last in self.iterate(y, operator, background):  # noqa: B007 - keep the last
            pass
        if last is None:  # every solver yields at least once
            raise RuntimeError(f"{type(self).__name__} produced no estimate")
        return last
