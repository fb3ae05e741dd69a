"""Saving and loading prior weights, and the default weights shipped inside the package.

A weights file is a ``torch.save`` dict read back with ``weights_only=True`` (no code runs
on load)::

    {"format": "deconflow-flow-prior", "format_version": 1,
     "network": NetworkConfig.to_dict(), "state_dict": {...}, "card": {...}}

The model card is also written as JSON beside the weights (``name.json``) for people.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from deconflow._device import resolve_device, resolve_precision
from deconflow._errors import DeconflowError
from deconflow.priors.flow import FlowPrior
from deconflow.priors.network import NetworkConfig, VelocityUNet

__all__ = ["DEFAULT_WEIGHTS", "default_weights_path", "load_prior", "save_prior"]

_FORMAT = "deconflow-flow-prior"
_FORMAT_VERSION = 1
#: File name of the shipped weights inside ``deconflow/priors/weights/``.
DEFAULT_WEIGHTS = "default.pt"


def default_weights_path() -> Path:
    """Path of the weights shipped with the package (no download, works offline)."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_WEIGHTS


def save_prior(
    network: VelocityUNet, path: str | os.PathLike[str], card: dict[str, object] | None = None
) -> Path:
    """Write weights (float32, CPU) and the model card JSON beside them, atomically.

    Parameters
    ----------
    network : VelocityUNet
        Network to save (pass the EMA copy).
    path : str or path-like
        Destination ``.pt`` file; ``path.with_suffix('.json')`` receives the card.
    card : dict, optional
        Model card (provenance); stored in both files.

    Returns
    -------
    Path
        The weights path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().clone() for k, v in network.state_dict().items()}
    blob = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "network": network.config.to_dict(),
        "state_dict": state,
        "card": card or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated file under the real name
    tmp_card = path.with_name(path.stem + ".json.tmp")
    tmp_card.write_text(json.dumps(card or {}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_card, path.with_suffix(".json"))
    return path


def load_prior(
    path: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    precision: str = "float32",
) -> FlowPrior:
    """Load a :class:`FlowPrior` from a weights file (default: the shipped weights).

    Parameters
    ----------
    path : str or path-like, optional
        Weights written by :func:`save_prior` or ``deconflow train``.
    device : torch.device or str
        Where to put the network: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or
        ``"auto"`` (CUDA when available).
    precision : {"float32", "auto", "bfloat16"}
        Arithmetic of the network (:func:`~deconflow._device.resolve_precision`):
        ``"auto"`` uses bfloat16 where the GPU or CPU runs it natively (on this project's
        2-core AMX CPU one 64x256x256 evaluation takes 3.6 s instead of 10.7 s).

    Returns
    -------
    FlowPrior
        Frozen prior with voxel aspect 1; call ``for_voxel_size`` for the data's aspect.

    Raises
    ------
    DeconflowError
        If the device is unknown or absent (CUDA asked for without a GPU), or the file is
        missing, truncated/corrupt, not a deconflow prior, or its weights do
        not fit the architecture it declares or hold NaN/Inf values.
    """
    device = resolve_device(device)
    path = default_weights_path() if path is None else Path(path)
    if not path.is_file():
        raise DeconflowError(
            f"Prior weights file not found: {path}. Pass the .pt file written by "
            "'deconflow train', or omit the path to use the shipped default weights."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for short or foreign files
        raise DeconflowError(
            f"Could not read prior weights {path} ({type(exc).__name__}): the file is "
            "truncated, corrupt or not a torch file. Re-copy it or retrain with 'deconflow train'."
        ) from exc
    if isinstance(blob, dict) and {"ema", "opt", "step"} <= blob.keys():
        weights = path.name.removesuffix(".ckpt.pt") + ".pt"
        raise DeconflowError(
            f"{path} is a resumable training checkpoint of 'deconflow train' (step "
            f"{blob['step']}), not a weights file. Pass the weights written beside it "
            f"({weights}), or finish the run with 'deconflow train --resume' to write them."
        )
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise DeconflowError(
            f"{path} is not a deconflow flow-prior weights file (no '{_FORMAT}' header); "
            "it may be a checkpoint of another model."
        )
    version = blob.get("format_version", -1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DeconflowError(
            f"{path} has an invalid format version {version!r} (an edited or corrupt file); "
            "re-copy it or retrain with 'deconflow train'."
        )
    if version > _FORMAT_VERSION:
        raise DeconflowError(
            f"{path} was written by a newer deconflow (format {version}); "
            "upgrade deconflow to load it."
        )
    try:
        # building the network draws its initial weights from torch's global generator;
        # they are overwritten at once, and loading must not move the caller's random stream
        with torch.random.fork_rng(devices=[]):
            network = VelocityUNet(NetworkConfig.from_dict(blob["network"]))
        network.load_state_dict(blob["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DeconflowError(
            f"The weights in {path} do not match the network architecture they declare "
            f"(wrong architecture or edited file): {first}"
        ) from exc
    bad = [
        name
        for name, value in blob["state_dict"].items()
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all()
    ]
    if bad:
        raise DeconflowError(
            f"The weights in {path} hold NaN or Inf values ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): the file is corrupt or its training "
            "diverged. Re-copy it or retrain with 'deconflow train'."
        )
    card = blob.get("card") or {}
    if not isinstance(card, dict):
        raise DeconflowError(
            f"{path} has a model card of type {type(card).__name__}, not a mapping (an edited "
            "or corrupt file); re-copy it or retrain with 'deconflow train'."
        )
    dtype = resolve_precision(precision, device)
    if dtype == torch.bfloat16 and device.type == "cpu":
        # oneDNN's fast layout; torch's stubs omit Module.to's memory_format keyword
        network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return FlowPrior(network.to(device), voxel_aspect=1.0, card=dict(card), compute_dtype=dtype)
