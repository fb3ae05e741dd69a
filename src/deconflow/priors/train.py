"""Training the flow-matching prior: conditional flow matching, AdamW, EMA, checkpoints, card."""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy
import torch

from deconflow._device import check_precision, resolve_device, resolve_precision
from deconflow._errors import DeconflowError
from deconflow._version import __version__
from deconflow.priors._loader import BatchSource, BatchStream
from deconflow.priors.data import Batch, FolderSource, GeneratorSource
from deconflow.priors.flow import cfm_loss, estimate_loss
from deconflow.priors.network import NetworkConfig, VelocityUNet, add_condition, flops_per_voxel
from deconflow.priors.normalization import __doc__ as _NORM_DOC
from deconflow.priors.weights import load_prior, save_prior

__all__ = ["TrainConfig", "train_prior"]


@dataclass
class TrainConfig:
    """Settings of one training run (all recorded in the model card).

    Attributes
    ----------
    out : Path
        Weights file to write (``.pt``); the card goes to ``.json`` and the resumable
        checkpoint to ``.ckpt.pt`` beside it.
    steps : int
        Optimiser steps in total (a resumed run continues up to this count).
    batch : int
        Volumes per 3D step.
    patch : tuple of int
        ``(z, y, x)`` training patch.
    lr, weight_decay : float
        AdamW settings; linear warm-up over 20 steps, cosine decay to 10 % of ``lr``.
    ema_decay : float
        EMA of the weights (saved weights are the EMA), with a warm-up ``(1+n)/(10+n)``.
    seed : int
        Seeds data, times, noise and initialisation.
    data : Path or None
        Folder of sharp TIFF stacks; ``None`` uses the built-in generator.
    voxel_size_um : tuple of float or None
        ``(z, y, x)`` µm of every TIFF in ``data``: overrides their metadata, needed for
        3D stacks without it. Or ``(z,)``, the z step alone: each stack in ``data``
        takes its own pixel size (y, x) from its metadata. With ``pair_psf``: the voxel
        size (all three) of the stacks that PSF belongs to, at which the pairs are drawn.
    init : Path or None
        Weights to start from (fine-tuning); default: a new network.
    channels : tuple of int
        Network channels per level (ignored with ``init``).
    plane_every : int
        Every n-th step trains on a batch of 2D planes (0: never).
    device : str
        ``auto``, ``cpu`` or ``cuda[:N]``.
    precision : {"auto", "float32", "bfloat16"}
        Mixed precision of the forward pass (weights, optimiser and EMA stay float32).
        ``auto``: bfloat16 where the hardware runs it natively (CUDA GPUs, CPUs with
        AVX512-BF16/AMX: 2.5x faster steps on this project's CPU), float16 with loss
        scaling on older GPUs, float32 on other CPUs.
    threads : int or None
        CPU threads for torch during training (``None``: torch's default).
    workers : int
        Processes that draw batches ahead (0: the training process draws them). The data
        of a step depend only on ``seed`` and the step number, not on this count; use
        workers when the device waits for data (a GPU: ``docs/benchmarks/gpu.md``).
    max_minutes : float or None
        Wall-time budget: the learning-rate schedule follows whichever of steps or time
        runs out first, and training stops there (so a loaded CPU still gets a full
        anneal). Runs with a time limit are not bit-reproducible; omit it for that.
    t_min : float
        Flow times are drawn uniformly from ``[t_min, 1)`` (0: all of them). A fine-tune
        for the samplers can raise it to their earliest ``t_start``; the prior's samples
        from noise (``FlowPrior.sample``) then rely on what earlier training taught.
    estimate_pairs : float
        Share in ``[0, 1]`` of each 3D batch that is estimate pairs (re-noised
        Richardson–Lucy estimates against the sharp volume,
        :mod:`deconflow.solvers.estimate_pairs`); 0: plain flow matching only. Needs the
        built-in generator (``data=None``).
    pair_psf : Path or None
        One microscope's PSF (a TIFF: a measured bead stack or a computed PSF) to image
        the estimate pairs through, at ``voxel_size_um``, instead of the built-in mix of
        objectives: a fine-tune for that microscope. The file is prepared as for
        deconvolution (background, centring, sum 1) and resampled from its own voxel
        size, when it records one, to ``voxel_size_um``.
    conditioned : bool
        Train a network conditioned on the first estimate (``v(x_t, t | estimate)``,
        :class:`~deconflow.priors.network.NetworkConfig`): every item is an estimate
        pair, trained both on the flow-matching path of its truth and on its re-noised
        estimate, with the clean estimate as the second input. Needs
        ``estimate_pairs=1`` and ``plane_every=0`` (pairs are 3D). An unconditioned
        ``init`` gains the estimate's input channel with zero weights.
    checkpoint_every : int
        Steps between checkpoints.
    resume : bool
        Continue from the checkpoint beside ``out`` when it exists.
    command : str
        The exact command that started the run (for the card).
    note : str
        Free text for the card (e.g. machine load during timing).
    """

    out: Path
    steps: int = 500
    batch: int = 4
    patch: tuple[int, int, int] = (16, 64, 64)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.995
    seed: int = 0
    data: Path | None = None
    voxel_size_um: tuple[float, ...] | None = None
    init: Path | None = None
    channels: tuple[int, ...] = field(default_factory=lambda: NetworkConfig().channels)
    plane_every: int = 10
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    workers: int = 0
    max_minutes: float | None = None
    t_min: float = 0.0
    estimate_pairs: float = 0.0
    pair_psf: Path | None = None
    conditioned: bool = False
    checkpoint_every: int = 50
    resume: bool = False
    command: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.steps < 1 or self.batch < 1:
            raise DeconflowError("steps and batch must be at least 1.")
        if self.workers < 0:
            raise DeconflowError(f"workers must be 0 or more, got {self.workers}.")
        # caught here, not as a ZeroDivisionError/RuntimeError once the run has started
        if self.checkpoint_every < 1:
            raise DeconflowError(
                f"checkpoint_every (--checkpoint-every) must be at least 1 step, got "
                f"{self.checkpoint_every}."
            )
        if self.threads is not None and self.threads < 1:
            raise DeconflowError(
                f"threads (--threads) must be at least 1, got {self.threads}; omit it for "
                "torch's default."
            )
        if self.max_minutes is not None and not 0.0 < self.max_minutes < math.inf:
            raise DeconflowError(
                f"max_minutes (--max-minutes) must be a positive number of minutes, got "
                f"{self.max_minutes}; omit it to train for --steps steps."
            )
        if not 0.0 < self.lr < math.inf:
            raise DeconflowError(f"lr (--lr) must be a positive learning rate, got {self.lr}.")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise DeconflowError(f"patch must be three positive sizes (z, y, x), got {self.patch}")
        if not 0.0 <= self.t_min < 1.0:
            raise DeconflowError(f"t_min must be in [0, 1), got {self.t_min}.")
        if not 0.0 <= self.estimate_pairs <= 1.0:
            raise DeconflowError(
                f"estimate_pairs must be a share in [0, 1], got {self.estimate_pairs}."
            )
        if self.estimate_pairs and self.data is not None:
            raise DeconflowError(
                "Estimate pairs are drawn from the built-in generator, whose voxel sizes "
                "set the PSF; drop --estimate-pairs to train on a data folder."
            )
        if self.voxel_size_um is not None and len(self.voxel_size_um) not in (1, 3):
            raise DeconflowError(
                f"voxel_size_um (--voxel-size) takes 3 sizes (z, y, x) or 1 (the z step alone; "
                f"y and x from each file) in µm, got {tuple(self.voxel_size_um)}."
            )
        if self.pair_psf is not None and (not self.estimate_pairs or self.voxel_size_um is None):
            raise DeconflowError(
                "A PSF for the estimate pairs (--pair-psf) needs pairs (--estimate-pairs "
                "SHARE above 0) and the voxel size of the stacks it belongs to "
                f"(--voxel-size Z Y X); got estimate_pairs {self.estimate_pairs}, voxel size "
                f"{self.voxel_size_um}."
            )
        if self.pair_psf is not None and len(self.voxel_size_um or ()) == 1:
            raise DeconflowError(
                "The estimate pairs of --pair-psf are generated at the voxel size of the "
                "stacks that PSF belongs to, and no file is read to take their pixel size "
                "from; give all three sizes, --voxel-size Z Y X (voxel_size_um=(z, y, x)), "
                f"not the z step alone {self.voxel_size_um}."
            )
        if self.conditioned and (self.estimate_pairs != 1.0 or self.plane_every):
            raise DeconflowError(
                "A conditioned prior learns from estimate pairs only, which are 3D: pass "
                f"--estimate-pairs 1 --plane-every 0 with --conditioned (got estimate_pairs "
                f"{self.estimate_pairs}, plane_every {self.plane_every})."
            )
        check_precision(self.precision)


def _software() -> dict[str, str]:
    return {
        "deconflow": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # TorchVersion would not load with weights_only
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
    }


def _lr_factor(step: int, progress: float) -> float:
    """Warm-up over 20 steps, then cosine from 1 to 0.1 over ``progress`` in [0, 1]."""
    if step < 20:
        return (step + 1) / 20
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


#: Settings that may change when a run is resumed: how long and where it runs, not what it
#: learns (a longer ``steps`` or ``max_minutes`` extends the cosine schedule from there).
_RESUMABLE_CHANGES = frozenset(
    {"steps", "max_minutes", "device", "precision", "threads", "workers", "checkpoint_every"}
)
_NOT_SETTINGS = frozenset({"out", "resume", "command", "note"})


def _learning_settings(config: TrainConfig) -> dict[str, object]:
    """Return the settings that decide what a run learns, JSON-ready (``_RESUMABLE_CHANGES``)."""
    settings = {
        name: value
        for name, value in json.loads(json.dumps(asdict(config), default=str)).items()
        if name not in _RESUMABLE_CHANGES | _NOT_SETTINGS
    }
    for name in ("data", "init", "pair_psf"):  # the same file, however it was spelled
        if settings[name] is not None:
            settings[name] = str(Path(settings[name]).resolve())
    return settings


def _check_resume(config: TrainConfig, saved: object, ckpt: Path) -> None:
    """Refuse to resume a checkpoint with settings that change what the network learns."""
    if saved is None:  # a checkpoint from before the settings were recorded
        return
    # a setting added after the checkpoint was written had its default then
    learned = set(_learning_settings(config))
    defaults = {
        f.name: f.default
        for f in fields(TrainConfig)
        if f.name in learned and f.default is not MISSING
    }
    before = {**defaults, **json.loads(str(saved))}
    now = _learning_settings(config)
    changed = [
        f"{name} {before.get(name)!r} -> {now.get(name)!r}"
        for name in sorted(set(before) | set(now))
        if before.get(name) != now.get(name)
    ]
    if changed:
        raise DeconflowError(
            f"The checkpoint {ckpt} was trained with other settings ({'; '.join(changed)}). "
            "Resume with the settings it was started with (only the steps, time limit, "
            "device, precision, threads, workers and checkpoint interval may change), or "
            "start a new run: drop --resume (the checkpoint is replaced), or fine-tune the "
            f"weights its finished run wrote with --init {config.out}."
        )


def _ckpt_path(out: Path) -> Path:
    return out.with_name(out.stem + ".ckpt.pt")


#: What every checkpoint ``train_prior`` writes holds (older ones lack the later extras).
_CHECKPOINT_KEYS = frozenset({"net", "ema", "opt", "torch_rng", "step", "curve", "elapsed_s"})


def _load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Read a resumable checkpoint, or say that it is damaged and what to do."""
    advice = (
        "it is truncated, corrupt or not a checkpoint of 'deconflow train'. Start the run "
        "again without --resume, which replaces it."
    )
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for short or foreign files
        raise DeconflowError(f"Cannot resume from {ckpt} ({type(exc).__name__}): {advice}") from exc
    missing = _CHECKPOINT_KEYS - state.keys() if isinstance(state, dict) else _CHECKPOINT_KEYS
    if missing:
        raise DeconflowError(
            f"Cannot resume from {ckpt} (no {', '.join(sorted(missing))}): {advice}"
        )
    return state


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the forward pass, ``None`` for plain float32."""
    dtype = resolve_precision(precision, device)
    if dtype == torch.float32:
        # "auto" on a CUDA GPU without bfloat16 still gains from float16 + loss scaling
        return torch.float16 if precision == "auto" and device.type == "cuda" else None
    return dtype


def _make_network(config: TrainConfig) -> tuple[VelocityUNet, dict[str, object] | None]:
    """Build the network to train; return it with the card of the weights it starts from."""
    if config.init is not None:
        start = load_prior(config.init)
        network = copy.deepcopy(start.network)
        if config.conditioned and not network.config.conditioned:
            network = add_condition(network)
        elif network.config.conditioned and not config.conditioned:
            raise DeconflowError(
                f"The weights {config.init} are conditioned on a first estimate; fine-tune "
                "them with --conditioned --estimate-pairs 1 --plane-every 0."
            )
        return network.train().requires_grad_(True), dict(start.card)
    channels = tuple(config.channels)
    network = VelocityUNet(
        NetworkConfig(
            channels=channels,
            z_pool=(False,) + (True,) * (len(channels) - 2),
            conditioned=config.conditioned,
        )
    )
    return network, None


def _read_pair_psf(path: Path, voxel_size_um: tuple[float, ...] | None) -> np.ndarray:
    """Read and prepare the PSF the estimate pairs are imaged through."""
    from deconflow.io import read_tiff
    from deconflow.psf import prepare_psf

    image = read_tiff(path)
    if image.data.ndim != 3:
        raise DeconflowError(
            f"The PSF for estimate pairs {path} has axes {image.axes}; give a 3D (ZYX) stack."
        )
    own = image.voxel_size_um if image.voxel_size_um is not None else voxel_size_um
    prepared = prepare_psf(image.data, voxel_size_um=own, target_voxel_size_um=voxel_size_um)
    return prepared.data


def _make_source(config: TrainConfig) -> BatchSource:
    if config.data is not None:
        return FolderSource(config.data, config.patch, config.voxel_size_um)
    if config.estimate_pairs:
        # pairs need Richardson–Lucy, which sits above the priors: imported only here
        from deconflow.solvers.estimate_pairs import EstimatePairSource

        if config.pair_psf is None:
            return EstimatePairSource(config.patch, config.estimate_pairs)
        return EstimatePairSource(
            config.patch,
            config.estimate_pairs,
            psf=_read_pair_psf(config.pair_psf, config.voxel_size_um),
            # TrainConfig refuses a pair PSF without all three sizes
            voxel_size_um=cast(tuple[float, float, float], config.voxel_size_um),
        )
    return GeneratorSource(config.patch)


def _batch_loss(
    net: VelocityUNet,
    batch: Batch,
    device: torch.device,
    gen: torch.Generator,
    t_min: float,
    conditioned: bool = False,
) -> torch.Tensor:
    """Mean over the batch's items of the flow-matching and estimate-pair losses.

    A ``conditioned`` network trains each pair twice, conditioned on its estimate: on
    the flow-matching path of the truth (the samplers' later steps start from
    data-consistent estimates nearer the truth) and on the re-noised estimate (their
    first step); the mean of the two counts for the pair.
    """
    n_flow = batch.x1.shape[0]
    n_pairs = 0 if batch.pairs is None else batch.pairs.truth.shape[0]
    total = torch.zeros((), device=device)
    if n_flow:
        x1, aspect = batch.x1.to(device), batch.aspect.to(device)
        total = total + n_flow * cfm_loss(net, x1, aspect, gen, t_min)
    if batch.pairs is not None and n_pairs:
        truth, estimate = batch.pairs.truth.to(device), batch.pairs.estimate.to(device)
        aspect = batch.pairs.aspect.to(device)
        if conditioned:
            path = cfm_loss(net, truth, aspect, gen, t_min, condition=estimate)
            first = estimate_loss(net, truth, estimate, aspect, gen, conditioned=True)
            total = total + n_pairs * 0.5 * (path + first)
        else:
            total = total + n_pairs * estimate_loss(net, truth, estimate, aspect, gen)
    return total / max(1, n_flow + n_pairs)


def train_prior(config: TrainConfig, progress: bool = True) -> Path:
    """Train (or fine-tune, or resume) the prior and write weights + model card.

    Parameters
    ----------
    config : TrainConfig
        Run settings.
    progress : bool
        Show a tqdm bar with the running loss.

    Returns
    -------
    Path
        The weights file (EMA weights; load with :func:`~deconflow.priors.load_prior`).
    """
    from tqdm.auto import tqdm  # only the training path needs it

    start_wall = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    source = _make_source(config)
    # the seed sets a new network's initial weights (drawn on the CPU); the caller's own
    # torch random stream is left where it was
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        net, init_card = _make_network(config)
    net = net.to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    amp_dtype = _autocast_dtype(config.precision, device)
    amp = amp_dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, curve, elapsed_before = 0, [], 0.0
    window: list[float]
    ckpt = _ckpt_path(config.out)
    if config.resume and ckpt.is_file():
        # CPU first: generator states must stay CPU tensors even for a CUDA generator
        state = _load_checkpoint(ckpt)
        _check_resume(config, state.get("settings"), ckpt)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["torch_rng"])
        step, curve = int(state["step"]), json.loads(state["curve"])
        elapsed_before = float(state["elapsed_s"])
        # the losses since the last curve point: without them the resumed run's next point
        # (and the card's final loss) would average fewer steps than the uninterrupted run's
        window = [float(v) for v in json.loads(str(state.get("window", "[]")))]
        # float16 loss scaling (CUDA without bfloat16); a run without it saved an empty
        # state, which an enabled scaler refuses: it then starts at its initial scale
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    else:
        window = []
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train prior")
    net.train()
    budget_s = None if config.max_minutes is None else 60.0 * config.max_minutes
    batches = BatchStream(
        source, config.batch, config.plane_every, config.seed, step, config.workers
    )

    def progress_now() -> float:
        done = step / config.steps
        if budget_s is None:
            return done
        return max(done, (elapsed_before + time.perf_counter() - start_wall) / budget_s)

    with batches:
        while progress_now() < 1.0:
            batch = batches.next()
            for group in opt.param_groups:
                group["lr"] = config.lr * _lr_factor(step, progress_now())
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = _batch_loss(net, batch, device, gen, config.t_min, config.conditioned)
            if not torch.isfinite(loss):
                raise DeconflowError(
                    f"The training loss is not finite at step {step + 1} (precision "
                    f"{config.precision!r}); resume from the last checkpoint with "
                    "precision='float32' (--resume --precision float32), or start a new run "
                    "with a lower lr (a resumed run keeps the lr it was started with)."
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
            step += 1
            window.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(window[-20:]):.4f}")
            last = progress_now() >= 1.0
            if step % 10 == 0 or last:
                curve.append([step, round(float(np.mean(window)), 5)])
                window = []
            if step % config.checkpoint_every == 0 or last:
                tmp = ckpt.with_name(ckpt.name + ".tmp")
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "net": net.state_dict(),
                        "ema": ema.state_dict(),
                        "opt": opt.state_dict(),
                        "torch_rng": gen.get_state(),
                        "step": step,
                        "curve": json.dumps(curve),
                        "window": json.dumps(window),
                        "scaler": scaler.state_dict(),
                        "elapsed_s": elapsed_before + time.perf_counter() - start_wall,
                        "settings": json.dumps(_learning_settings(config)),
                    },
                    tmp,
                )
                os.replace(tmp, ckpt)
    bar.close()

    wall = elapsed_before + time.perf_counter() - start_wall
    tail = [loss for _, loss in curve[-5:]]
    card = {
        "model": "deconflow flow-matching prior (VelocityUNet)",
        "time_convention": "t=0 noise, t=1 data; x_t = t*x1 + (1-t)*eps; v target = x1 - eps; "
        "D_t(x) = x + (1-t)*v(x,t)",
        "normalization": " ".join(_NORM_DOC.split("Why not")[0].split()) if _NORM_DOC else "",
        "network": ema.config.to_dict(),
        "parameters": sum(p.numel() for p in ema.parameters()),
        "flops_per_voxel": round(flops_per_voxel(ema.cpu())),
        "data": source.describe(),
        "voxel_aspect": "conditioned on log(z step / pixel); trained on "
        + ("aspects 1-6 log-uniform" if config.data is None else "the files' aspects")
        + (
            f"; every {config.plane_every}th step 2D planes (aspect 1)"
            if config.plane_every
            else ""
        ),
        "training": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k not in ("command", "note", "out")
        },
        "steps": step,
        "final_loss": round(float(np.mean(tail)), 5) if tail else None,
        "loss_curve": curve,
        "device": str(device)
        + ("" if device.type == "cuda" else f", {torch.get_num_threads()} threads"),
        "autocast": str(amp_dtype).removeprefix("torch.") if amp else "off (float32)",
        "wall_time_s": round(wall, 1),
        "command": config.command or "train_prior(TrainConfig(...))",
        "note": config.note,
        "software": _software(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    if init_card is not None:
        # a fine-tune's weights owe their start to another run: keep that run's card (and,
        # nested in it, the cards before), so that the whole history travels with the weights
        card["fine_tuned_from"] = init_card
    return save_prior(ema.to("cpu"), config.out, card)
