"""The velocity network: a small fully-convolutional 3D U-Net with time and voxel-aspect input.

Full 3×3×3 convolutions, not pseudo-3D (1×3×3 then 3×1×1): on the 2-core CPU this
package targets, oneDNN runs the full 3D convolution 1.5–2× more efficiently per FLOP than
the factorised pair, so the pair's 2.25× fewer FLOPs saved only 0–35 % of the wall time
per layer. Within the FLOP budget a pseudo-3D net could be 1.5× wider but would run ~1.5×
slower; at equal wall time it would gain ~20 % width and lose oblique 3D kernels. See
``docs/prior.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "NetworkConfig",
    "VelocityUNet",
    "add_condition",
    "flops_per_voxel",
    "group_norm_by_reduction",
]


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of :class:`VelocityUNet` (stored in every weights file).

    Attributes
    ----------
    channels : tuple of int
        Feature channels per resolution level, finest first.
    z_pool : tuple of bool
        Per downsampling step (``len(channels) - 1`` of them), whether z is halved too.
        The first step keeps z because the z step is already 2–5× the pixel size.
    embed_dim : int
        Width of the time/aspect embedding.
    groups : int
        Group-norm groups (must divide every channel count).
    conditioned : bool
        A second input channel holds the sampler's first estimate of the object (a
        Richardson–Lucy estimate of the measured stack, in prior units): the network then
        learns ``v(x_t, t | estimate)``, which can undo the blur the estimate keeps.
    """

    channels: tuple[int, ...] = (16, 24, 48, 64)
    z_pool: tuple[bool, ...] = (False, True, True)
    embed_dim: int = 64
    groups: int = 4
    conditioned: bool = False

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1 or self.groups < 1 or self.embed_dim < 1:
            raise ValueError("channels, groups and embed_dim must be positive")
        if len(self.z_pool) != len(self.channels) - 1:
            raise ValueError("z_pool needs one entry per downsampling step")
        if any(c % self.groups for c in self.channels):
            raise ValueError("groups must divide every channel count")

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able form."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, mapping: dict[str, object]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`."""
        # the mapping comes from a weights file; the constructor's checks validate the values
        channels = cast("Sequence[int]", mapping["channels"])
        z_pool = cast("Sequence[bool]", mapping["z_pool"])
        return cls(
            channels=tuple(int(c) for c in channels),
            z_pool=tuple(bool(b) for b in z_pool),
            embed_dim=int(cast("int", mapping["embed_dim"])),
            groups=int(cast("int", mapping["groups"])),
            # weights written before conditioning existed are unconditioned
            conditioned=bool(mapping.get("conditioned", False)),
        )


def _fourier(values: torch.Tensor, n: int) -> torch.Tensor:
    """Sin/cos features of a (B,) tensor at n log-spaced frequencies."""
    freqs = torch.exp(torch.linspace(0.0, math.log(200.0), n, device=values.device))
    angles = values[:, None].float() * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def group_norm_by_reduction(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Group normalisation with float32 statistics from a plain reduction (float32 output).

    The same arithmetic as ``F.group_norm`` under autocast (which also computes and
    returns float32), folded into one multiply-add per element.
    """
    b, c = x.shape[:2]
    xf = x.float()
    var, mean = torch.var_mean(xf.reshape(b, groups, -1), dim=-1, unbiased=False)
    rstd = torch.rsqrt(var + eps).repeat_interleave(c // groups, dim=1)  # (b, c)
    gain = weight.float() * rstd
    shift = bias.float() - mean.repeat_interleave(c // groups, dim=1) * gain
    trailing = (1,) * (x.ndim - 2)
    return torch.addcmul(shift.view(b, c, *trailing), xf, gain.view(b, c, *trailing))


def _zero(conv: nn.Conv3d) -> None:
    """Zero a convolution's weights and bias, so that its block starts as the identity."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with inference paths tuned per device, and a fused ``silu`` variant.

    GPU: torch's CUDA group-norm kernel reduces each (volume, group) row in one thread
    block, so a single volume with this network's 4 groups keeps 4 of a GPU's ~100
    multiprocessors busy; ``torch.var_mean`` splits long rows over the whole GPU
    (measured on an H200 in ``docs/benchmarks/gpu.md``).

    CPU: :meth:`silu` folds the FiLM modulation into the norm's weight and bias and
    normalises in the input's dtype with autocast off. Under bfloat16 autocast torch
    casts a group norm's input to float32, and the norm, modulation, activation and cast
    back then cost ~0.65 s per 16-channel 64×256×256 volume on this project's 2-core CPU,
    against 0.11 s for a bfloat16 norm (float32 statistics inside) and an in-place
    ``silu``; they were half the network's time (torch.profiler, 2026-11-28).

    Training (gradients on) keeps the native kernel: on a GPU its backward needs less
    memory, and on the CPU the folded norm made a training step slower (2.1-3.2 s against
    1.2-1.5 s for a batch of 8 × 16×64×64). Same parameters and state dict as
    ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or _training(x):
            return super().forward(x)
        return group_norm_by_reduction(x, self.num_groups, self.weight, self.bias, self.eps)

    def silu(
        self,
        x: torch.Tensor,
        scale: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``silu(norm(x) * (1 + scale) + shift)``; ``scale`` and ``shift`` are ``(B, C)``.

        Without ``scale`` and ``shift``, ``silu(norm(x))``.
        """
        if x.device.type != "cpu" or _training(x):
            h = self(x)
            if scale is not None and shift is not None:
                trailing = (1,) * (x.ndim - 2)
                h = h * (1 + scale.view(*scale.shape, *trailing)) + shift.view(
                    *shift.shape, *trailing
                )
            return F.silu(h)
        weight, bias = self.weight.float(), self.bias.float()
        items = []
        # a folded weight is per volume: one norm call per batch item (CPU batches are 1)
        for i in range(x.shape[0]):
            w, b = weight, bias
            if scale is not None and shift is not None:
                gain = 1 + scale[i].float()
                w, b = weight * gain, bias * gain + shift[i].float()
            with torch.autocast(x.device.type, enabled=False):
                h = F.group_norm(x[i : i + 1], self.num_groups, w, b, self.eps)
            items.append(F.silu(h, inplace=True))
        return items[0] if len(items) == 1 else torch.cat(items)


def _training(x: torch.Tensor) -> bool:
    """Whether ``x`` takes part in a backward pass (then only native kernels are used)."""
    return torch.is_grad_enabled() and x.requires_grad


def _average_pool(h: torch.Tensor, kz: int) -> torch.Tensor:
    """Mean over (kz, 2, 2) blocks of a ``(B, C, Z, Y, X)`` tensor with divisible sizes.

    CPU inference runs it as a depthwise strided convolution: torch 2.13 has no CPU
    bfloat16 ``avg_pool3d``, so autocast casts to float32 and the channels-last tensor
    is copied to and from the contiguous layout; that took 0.8 s for the finest level of
    a 64×256×256 volume (2-core CPU), the convolution (oneDNN, float32 accumulation)
    0.03 s. Weights ``1/4`` and ``1/8`` are exact in bfloat16.
    """
    if h.device.type != "cpu" or _training(h):
        return F.avg_pool3d(h, (kz, 2, 2))
    channels = h.shape[1]
    weight = torch.full((channels, 1, kz, 2, 2), 1.0 / (4 * kz), dtype=h.dtype, device=h.device)
    return F.conv3d(h, weight, stride=(kz, 2, 2), groups=channels)


class _ResBlock(nn.Module):
    """GN-SiLU-conv twice, with FiLM from the embedding in between, plus a skip."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * c_out)
        self.norm2 = _GroupNorm(groups, c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        # start as (almost) identity: stabilises the first hundred steps of a short CPU run
        _zero(self.conv2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1.silu(x))
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = self.norm2.silu(h, scale, shift)
        return self.skip(x) + self.conv2(h)


class VelocityUNet(nn.Module):
    """Velocity field ``v(x_t, t, aspect[, estimate])`` on single-channel 2D or 3D volumes.

    Parameters
    ----------
    config : NetworkConfig, optional
        Architecture; the default is the shipped model's.

    Notes
    -----
    Input ``(B, 1, Z, Y, X)`` or ``(B, 1, Y, X)``; any spatial size. The input is padded
    (edge-replicated) to a multiple of the network's stride and the output cropped back,
    so the output has the input's shape. A 2D input is run as one z plane with no z
    pooling. ``aspect`` is the z step over the pixel size (1 for 2D); the network was
    trained on aspects 1–6 and sees ``log(aspect)``. A ``conditioned`` network also takes
    ``condition``, the first estimate, in ``x``'s shape.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        ch, e = self.config.channels, self.config.embed_dim
        g = self.config.groups
        self.embed = nn.Sequential(nn.Linear(32 + 8, e), nn.SiLU(), nn.Linear(e, e))
        self.inp = nn.Conv3d(2 if self.config.conditioned else 1, ch[0], 3, padding=1)
        self.down = nn.ModuleList(
            [_ResBlock(ch[i - 1] if i else ch[0], ch[i], e, g) for i in range(len(ch))]
        )
        self.up = nn.ModuleList(
            [_ResBlock(ch[i + 1] + ch[i], ch[i], e, g) for i in range(len(ch) - 1)]
        )
        self.out_norm = _GroupNorm(g, ch[0])
        self.out = nn.Conv3d(ch[0], 1, 3, padding=1)
        _zero(self.out)

    def stride(self, is_2d: bool = False) -> tuple[int, int, int]:
        """Spatial multiple (z, y, x) the padded input must have."""
        z = 1 if is_2d else 2 ** sum(self.config.z_pool)
        xy = 2 ** len(self.config.z_pool)
        return z, xy, xy

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        aspect: torch.Tensor | float = 1.0,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity at ``x`` (shape ``(B, 1, [Z,] Y, X)``) and times ``t`` (shape ``(B,)``).

        ``condition`` (``x``'s shape) is required by a conditioned network and refused by
        an unconditioned one.
        """
        if x.ndim not in (4, 5) or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, [Z,] Y, X), got {tuple(x.shape)}")
        if self.config.conditioned != (condition is not None):
            raise ValueError(
                "this network is conditioned on a first estimate: pass condition="
                if self.config.conditioned
                else "this network takes no condition"
            )
        is_2d = x.ndim == 4
        if condition is not None:
            if condition.shape != x.shape:
                raise ValueError(
                    f"condition {tuple(condition.shape)} differs from x {tuple(x.shape)}"
                )
            x = torch.cat([x, condition.to(x.dtype)], dim=1)
        if is_2d:
            x = x[:, :, None]
        if x.shape[2] < 4 * self.stride(is_2d)[0] and torch.is_autocast_enabled(x.device.type):
            # oneDNN's bfloat16 Conv3d miscomputes some one- and two-plane shapes (torch
            # 2.13 CPU: NaN/inf outputs with one input channel, NaN weight gradients with
            # 40 at two planes). Volumes under four planes at the deepest level (the 2D
            # path, thin stacks) reach them; they are cheap, so they run in float32.
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.float(), t, aspect, is_2d)
        return self._forward(x, t, aspect, is_2d)

    def _forward(
        self, x: torch.Tensor, t: torch.Tensor | float, aspect: torch.Tensor | float, is_2d: bool
    ) -> torch.Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        a = torch.as_tensor(aspect, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        emb = self.embed(torch.cat([_fourier(t, 16), _fourier(torch.log(a), 4)], dim=1))

        shape = x.shape[2:]
        pads = [(-n) % s for n, s in zip(shape, self.stride(is_2d), strict=True)]
        if any(pads):
            # F.pad lists the last axis first; replicate works for any size, reflect needs > pad
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")

        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                kz = 2 if self.config.z_pool[i - 1] and not is_2d else 1
                h = _average_pool(h, kz)
            h = block(h, emb)
            skips.append(h)
        for i in reversed(range(len(self.up))):
            h = F.interpolate(h, size=skips[i].shape[2:], mode="nearest")
            h = self.up[i](torch.cat([h, skips[i]], dim=1), emb)
        v = self.out(self.out_norm.silu(h))
        v = v[:, :, : shape[0], : shape[1], : shape[2]]
        return v[:, :, 0] if is_2d else v


def add_condition(network: VelocityUNet) -> VelocityUNet:
    """Return a conditioned copy of an unconditioned network that computes the same velocity.

    The copy's input convolution gains a channel for the first estimate with zero weights,
    so a fine-tune starts from the unconditioned prior and learns how far to use the
    estimate.

    Raises
    ------
    ValueError
        If ``network`` is conditioned already.
    """
    if network.config.conditioned:
        raise ValueError("the network is conditioned already")
    config = replace(network.config, conditioned=True)
    conditioned = VelocityUNet(config).to(next(network.parameters()).device)
    state = dict(network.state_dict())
    weight = state["inp.weight"]
    state["inp.weight"] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    conditioned.load_state_dict(state)
    return conditioned


def flops_per_voxel(network: VelocityUNet, shape: tuple[int, int, int] = (16, 64, 64)) -> float:
    """Floating-point operations per input voxel for one evaluation (2 per multiply-add).

    Counts the convolutions (which dominate) and the group norms and activations
    (~10 operations per element); the embedding MLP is per volume and ignored.

    Parameters
    ----------
    network : VelocityUNet
        The network.
    shape : tuple of int
        A 3D shape divisible by the stride (so that padding does not inflate the count).

    Returns
    -------
    float
        FLOP per voxel.
    """
    total = [0.0]

    def conv_hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(mod, nn.Conv3d)
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
        total[0] += 2.0 * out.numel() * k * mod.in_channels / mod.groups

    def norm_hook(_mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        total[0] += 10.0 * out.numel()

    handles = []
    for mod in network.modules():
        if isinstance(mod, nn.Conv3d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.GroupNorm):
            handles.append(mod.register_forward_hook(norm_hook))
    try:
        # the training path: it calls every norm module (CPU inference fuses them into
        # _GroupNorm.silu, which forward hooks do not see)
        with torch.enable_grad():
            p = next(network.parameters())
            x = torch.zeros(1, 1, *shape, device=p.device, requires_grad=True)
            network(
                x, torch.zeros(1, device=p.device), 1.0, x if network.config.conditioned else None
            )
    finally:
        for h in handles:
            h.remove()
    return total[0] / math.prod(shape)
