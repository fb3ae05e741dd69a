"""What the flow samplers share: the prior protocol, the time grid, the error model, checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from deconflow._errors import DeconflowError

__all__ = [
    "Denoiser",
    "check_at_least_one",
    "check_positive",
    "check_schedule",
    "normal_noise",
    "posterior_variance",
    "sampler_times",
]


class Denoiser(Protocol):
    """What the samplers need of a prior: ``D_t(x_t) ≈ E[x1 | x_t]`` in prior units."""

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Estimate the data ``x1`` from ``x_t``, in ``x_t``'s shape.

        ``x_t`` is one volume ``([Z,] Y, X)`` or a batch of single-channel volumes
        ``(B, 1, [Z,] Y, X)``. ``condition`` is the sampler's first estimate of the
        object over ``x_t``'s region (one volume for the whole batch), or ``None`` when
        the sampler starts without one; a prior that does not use it ignores it.
        """
        ...


def posterior_variance(t: float, data_variance: float) -> float:
    """``Var[x1 | x_t]`` per voxel for data of variance ``data_variance`` (Gaussian model)."""
    noise = (1.0 - t) ** 2
    return data_variance * noise / (t**2 * data_variance + noise)


def normal_noise(
    shape: Sequence[int], like: torch.Tensor, generator: torch.Generator
) -> Callable[[], torch.Tensor]:
    """Return a source of standard normal draws of ``shape`` on ``like``'s device and dtype.

    A CPU ``generator`` draws on the CPU and the draws are moved to ``like``'s device, so
    one seed gives the same noise on every device (the pipeline seeds CPU generators); a
    generator on ``like``'s device draws there.
    """
    on_cpu = generator.device.type == "cpu"

    def draw() -> torch.Tensor:
        if on_cpu:
            cpu = torch.randn(tuple(shape), generator=generator, dtype=like.dtype)
            return cpu.to(like.device)
        return torch.randn(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)

    return draw


def check_schedule(steps: int, t_start: float) -> None:
    """Raise :class:`DeconflowError` unless ``steps >= 1`` and ``0 <= t_start < 1``."""
    if steps < 1:
        raise DeconflowError(f"steps must be >= 1, got {steps}.")
    if not 0.0 <= t_start < 1.0:
        raise DeconflowError(f"t_start must be in [0, 1), got {t_start}.")


def sampler_times(steps: int, t_start: float) -> list[float]:
    """Return ``steps`` evenly spaced times from ``t_start`` towards 1 (1 itself excluded)."""
    return [t_start + (1.0 - t_start) * k / steps for k in range(steps)]


def check_positive(**values: float) -> None:
    """Raise :class:`DeconflowError` naming the first value that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise DeconflowError(f"{name} must be > 0, got {value}.")


def check_at_least_one(**values: int) -> None:
    """Raise :class:`DeconflowError` naming the first count below 1."""
    for name, value in values.items():
        if value < 1:
            raise DeconflowError(f"{name} must be >= 1, got {value}.")
