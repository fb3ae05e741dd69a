"""Choosing the torch device from a user's setting."""

from __future__ import annotations

import torch

from deconflow._errors import DeconflowError

__all__ = ["resolve_device"]


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
