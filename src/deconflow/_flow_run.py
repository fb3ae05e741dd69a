"""Running ``method="flow"``: noise calibration, prior normalisation, samples per block."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from deconflow._execute import BlockOutput, BlockSolver, to_image
from deconflow._progress import Progress
from deconflow.physics.blur import ConvolutionOperator
from deconflow.physics.noise import CameraNoise, estimate_camera_noise
from deconflow.priors.flow import FlowPrior
from deconflow.priors.normalization import Normalization, fit_normalization
from deconflow.priors.weights import load_prior
from deconflow.solvers.flow import FlowDeconvolution, MeasurementModel
from deconflow.solvers.poisson_flow import PoissonFlowSampler, PoissonMeasurement

__all__ = ["FlowContext", "flow_block_solver", "load_flow_prior", "make_flow_context"]


@dataclass(frozen=True)
class FlowContext:
    """What every block of a flow run shares (fitted once on the whole stack)."""

    prior: FlowPrior
    first_estimate: np.ndarray
    normalization: Normalization
    noise: CameraNoise
    settings: FlowDeconvolution


def load_flow_prior(
    settings: FlowDeconvolution, voxel_size_um: tuple[float, ...] | None, device: torch.device
) -> FlowPrior:
    """Load the prior (before any heavy work, so a bad weights file fails at once)."""
    prior = load_prior(settings.weights, device=device)
    return prior.for_voxel_size(voxel_size_um) if voxel_size_um is not None else prior


def make_flow_context(
    data: np.ndarray,
    first_estimate: np.ndarray,
    settings: FlowDeconvolution,
    prior: FlowPrior,
) -> FlowContext:
    """Calibrate the camera noise and fit the prior's normalisation.

    The normalisation is fitted on a first object estimate (a few RL
    iterations), not on the blurred stack: blur lowers peaks, and the prior
    was trained on sharp volumes scaled by their own peaks.
    """
    estimated = None
    if settings.gain is None or settings.camera_offset is None or settings.read_sigma is None:
        estimated = estimate_camera_noise(data, offset=settings.camera_offset)
    noise = CameraNoise(
        gain=settings.gain if settings.gain is not None else estimated.gain,  # type: ignore[union-attr]
        offset=(settings.camera_offset if settings.camera_offset is not None else estimated.offset),  # type: ignore[union-attr]
        read_sigma=(
            settings.read_sigma if settings.read_sigma is not None else estimated.read_sigma
        ),  # type: ignore[union-attr]
    )
    return FlowContext(
        prior=prior,
        first_estimate=first_estimate,
        normalization=fit_normalization(first_estimate),
        noise=noise,
        settings=settings,
    )


def _weights(block: np.ndarray, noise: CameraNoise) -> np.ndarray:
    """``1 / Var[y]`` per voxel, the variance read off the measurement itself."""
    variance = noise.gain * np.maximum(block - noise.offset, 0.0) + noise.read_sigma**2
    floor = max(noise.read_sigma**2, 1e-3 * noise.gain, 1e-12)
    return (1.0 / np.maximum(variance, floor)).astype(np.float32)


def flow_block_solver(
    context: FlowContext, psf: np.ndarray, device: torch.device, background: float
) -> BlockSolver:
    """Block solver drawing ``settings.samples`` posterior samples and summarising them."""
    settings = context.settings
    sampler = settings.build_sampler()
    norm = context.normalization

    def solve(
        block: np.ndarray, index: tuple[slice, ...], tile: int, tiles: int
    ) -> Generator[Progress, None, BlockOutput]:
        operator = ConvolutionOperator(psf, block.shape, device=device, dtype=torch.float32)
        weights = torch.from_numpy(_weights(block, context.noise)).to(device)
        y = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        trajectory: Callable[[torch.Generator, torch.Tensor | None], Iterator[torch.Tensor]]
        if isinstance(sampler, PoissonFlowSampler):
            poisson = PoissonMeasurement.from_camera(
                operator,
                y,
                background,
                gain=context.noise.gain,
                camera_offset=context.noise.offset,
                read_sigma=context.noise.read_sigma,
                scale_adu=norm.scale,
                offset_adu=norm.offset,
            )
            trajectory = partial(sampler.iterate, poisson, context.prior)
        else:
            # x = scale u + offset and H 1 = 1 inside the window, so y - b - offset = scale H u
            gaussian = MeasurementModel(operator, y - background - norm.offset, weights, norm.scale)
            trajectory = partial(sampler.iterate, gaussian, context.prior)
        initial = None
        if settings.t_start > 0:
            first = torch.from_numpy(np.ascontiguousarray(context.first_estimate[index]))
            initial = operator.extend_image(norm.apply(first).to(device))
        samples = []
        object_sum = torch.zeros(operator.object_shape, device=device)
        total = settings.total_steps
        where = f" (tile {tile + 1}/{tiles})" if tiles > 1 else ""
        base_seed = settings.seed if settings.seed is not None else int(torch.seed() % 2**31)
        for k in range(settings.samples):
            generator = torch.Generator(device=device).manual_seed(base_seed + 7919 * k)
            u: torch.Tensor | None = None
            for step, estimate in enumerate(trajectory(generator, initial), start=1):
                u = estimate
                done = k * settings.steps + step
                yield Progress(
                    "solve",
                    done,
                    total,
                    f"flow sample {k + 1}/{settings.samples} step {step}{where}",
                    tile=tile,
                    tiles=tiles,
                )
            if u is None:  # samplers yield once per step, steps >= 1
                raise RuntimeError("sampler produced no estimate")
            x = norm.invert(u).clamp_min_(0.0)
            object_sum += x
            samples.append(to_image(operator, x, clip=True))
        stack = np.stack(samples)
        mean = stack.mean(axis=0)
        std = stack.std(axis=0) if len(samples) > 1 else np.zeros_like(mean)
        # data-consistency residual of the mean, in noise sigmas: about N(0, 1) where the
        # model explains the data
        predicted = operator.A(object_sum / settings.samples) + background
        residual = ((y - predicted) * weights.sqrt()).cpu().numpy().astype(np.float32)
        return BlockOutput(
            mean=mean, std=std, samples=stack if settings.keep_samples else None, residual=residual
        )

    return solve
