"""Choosing the torch device, and the network's arithmetic precision, from a user's setting."""

from __future__ import annotations

import re

import torch

from deconflow._errors import DeconflowError

__all__ = [
    "PRECISIONS",
    "check_device_name",
    "check_precision",
    "cpu_has_native_bfloat16",
    "resolve_device",
    "resolve_precision",
]

#: Accepted ``precision`` settings of the prior network.
PRECISIONS = ("auto", "float32", "bfloat16")


#: Device names settings accept: the syntax only, since settings written on one machine
#: may run on another (a laptop's YAML on a GPU server); availability is checked at run time.
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(device: str) -> None:
    """Raise :class:`DeconflowError` unless ``device`` is auto, cpu, cuda or cuda:N."""
    if not _DEVICE_NAME.fullmatch(str(device).strip().lower()):
        raise DeconflowError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N' (N: the GPU's "
            "number)."
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a usable device.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA when available, else the CPU.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    DeconflowError
        When CUDA is requested but not available, or the name is unknown.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise DeconflowError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeconflowError(
                "device='cuda' was requested but this torch has no usable CUDA GPU "
                f"(torch {torch.__version__}); use device='cpu' or 'auto', or install a "
                "CUDA build of torch."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeconflowError(
                f"device={name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) "
                "are visible."
            )
    elif resolved.type != "cpu":
        raise DeconflowError(f"Unsupported device {device!r}; use 'auto', 'cpu' or 'cuda'.")
    return resolved


def check_precision(precision: str) -> None:
    """Raise :class:`DeconflowError` unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise DeconflowError(
            f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}."
        )


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 on this CPU in hardware (AVX512-BF16 or AMX).

    Without it bfloat16 is emulated and slower than float32, so ``"auto"`` keeps float32.
    """
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # private probe: absent from some torch builds
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Return the dtype the prior network computes in on ``device`` for ``precision``.

    Parameters
    ----------
    precision : {"auto", "float32", "bfloat16"}
        ``"auto"`` picks bfloat16 where the hardware runs it natively (CUDA GPUs that
        support it, CPUs with AVX512-BF16/AMX), where it is 2-3x faster, else float32.
    device : torch.device
        Where the network runs.

    Returns
    -------
    torch.dtype
        ``torch.bfloat16`` or ``torch.float32``.

    Raises
    ------
    DeconflowError
        For an unknown setting.
    """
    check_precision(precision)
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    on_gpu = device.type == "cuda"
    native = torch.cuda.is_bf16_supported() if on_gpu else cpu_has_native_bfloat16()
    return torch.bfloat16 if native else torch.float32
