"""FFT lengths that pocketfft (CPU) and cuFFT (GPU) transform quickly."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["next_smooth_length", "smooth_shape"]

_SMALL_PRIMES = (2, 3, 5, 7)


def _is_smooth(n: int) -> bool:
    for p in _SMALL_PRIMES:
        while n % p == 0:
            n //= p
    return n == 1


def next_smooth_length(n: int) -> int:
    """Return the smallest integer >= ``n`` whose prime factors are all in {2, 3, 5, 7}.

    Parameters
    ----------
    n : int
        Minimum length, >= 1.

    Returns
    -------
    int
        The 7-smooth length.
    """
    if n < 1:
        raise ValueError(f"FFT length must be >= 1, got {n}")
    m = n
    while not _is_smooth(m):
        m += 1
    return m


def smooth_shape(shape: Iterable[int]) -> tuple[int, ...]:
    """Round every axis of ``shape`` up to a 7-smooth length."""
    return tuple(next_smooth_length(int(s)) for s in shape)
