"""Shared scaffolding for multiplicative (Richardson–Lucy-type) iterations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["RunToEnd", "float_measurement", "multiplicative_iterations"]

#: Biggs–Andrews extrapolation is capped below 1 so a run of similar steps cannot diverge.
_MAX_ACCELERATION = 0.95


def float_measurement(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return ``y`` itself when float32/float64, else (integer counts) converted to ``dtype``.

    Why: in their own dtype integer counts truncate a flat start, cannot take the
    in-place float updates of RL-TV or a running mean, and give a float32 FFT.
    """
    return y if y.dtype in (torch.float32, torch.float64) else y.to(dtype)


def multiplicative_iterations(
    step: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    iterations: int,
    *,
    accelerate: bool,
    oscillating: bool = False,
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
    oscillating : bool
        The step flips part of the estimate back and forth every update (RL-TV: the TV
        term changes sign wherever the gradient crosses zero). That period-2 part makes
        successive updates anti-correlated, which switches the plain extrapolation off;
        with ``oscillating=True`` the correlation and the direction come from the means
        of consecutive updates and iterates instead, in which it cancels.

    Yields
    ------
    torch.Tensor
        The estimate after each update (the solver's own buffer: copy it to keep it).
    """
    if accelerate and oscillating:
        yield from _two_step_iterations(step, x0, iterations)
        return
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


def _two_step_iterations(
    step: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, iterations: int
) -> Iterator[torch.Tensor]:
    """Biggs–Andrews on the means of consecutive updates (see ``oscillating`` above).

    With ``g_k`` the change the step made to its prediction and ``ḡ_k = (g_k + g_{k-1}) / 2``,
    ``alpha = <ḡ_k, ḡ_{k-1}> / <ḡ_{k-1}, ḡ_{k-1}>`` and the prediction is
    ``x_k + alpha (x_k - x_{k-2}) / 2``, the step of the mean of consecutive iterates.
    """
    x = x0
    iterates: list[torch.Tensor] = [x0]  # the last three, newest last
    updates: list[torch.Tensor] = []  # the last three changes g, newest last
    for _ in range(iterations):
        prediction = x
        if len(updates) == 3:  # then ``iterates`` holds three too
            newer = (updates[2] + updates[1]).reshape(-1)
            older = (updates[1] + updates[0]).reshape(-1)
            denom = float(torch.dot(older, older).item())
            alpha = float(torch.dot(newer, older).item()) / denom if denom > 0 else 0.0
            alpha = min(max(alpha, 0.0), _MAX_ACCELERATION)
            if alpha > 0:
                prediction = (x + (0.5 * alpha) * (x - iterates[0])).clamp_min_(0.0)
        x_new = step(prediction)
        updates = [*updates[-2:], x_new - prediction]
        iterates = [*iterates[-2:], x_new]
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
