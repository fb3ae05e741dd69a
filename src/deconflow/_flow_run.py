"""Running ``method="flow"``: noise calibration, prior normalisation, samples per block."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow._execute import BlockOutput, BlockSolver, to_image
from deconflow._progress import Progress
from deconflow.physics.blur import ConvolutionOperator
from deconflow.physics.noise import CameraNoise, estimate_camera_noise
from deconflow.priors.flow import FlowPrior
from deconflow.priors.normalization import Normalization, fit_normalization
from deconflow.priors.weights import load_prior
from deconflow.solvers.bootstrap import bootstrap_std
from deconflow.solvers.flow import FlowDeconvolution, MeasurementModel
from deconflow.solvers.poisson_flow import PoissonFlowSampler, PoissonMeasurement
from deconflow.solvers.stopping import CrossValidatedStop
from deconflow.tiling import plan_tiles

__all__ = [
    "FlowContext",
    "brightest_window",
    "calibrate_noise",
    "flow_block_solver",
    "iter_cross_validated_iterations",
    "load_flow_prior",
    "make_flow_context",
    "samples_at_once",
]


@dataclass(frozen=True)
class FlowContext:
    """What every block of a flow run shares (fitted once on the whole stack)."""

    prior: FlowPrior
    first_estimate: np.ndarray
    first_iterations: int
    normalization: Normalization
    noise: CameraNoise
    settings: FlowDeconvolution


def load_flow_prior(
    settings: FlowDeconvolution, voxel_size_um: tuple[float, ...] | None, device: torch.device
) -> FlowPrior:
    """Load the prior (before any heavy work, so a bad weights file fails at once)."""
    prior = load_prior(settings.weights, device=device, precision=settings.precision)
    if prior.conditioned and settings.t_start <= 0:
        raise DeconflowError(
            f"The prior weights {settings.weights} are conditioned on the first estimate, "
            "which the samplers use only when they start from it: set t_start > 0 (the "
            f"default is {FlowDeconvolution.t_start})."
        )
    return prior.for_voxel_size(voxel_size_um) if voxel_size_um is not None else prior


def _fresh_seed() -> int:
    """Draw a seed from the OS's entropy for a run without ``seed=``.

    Not ``torch.seed()``: that re-seeds torch's global generator, which would change the
    random numbers of the caller's own code after an unseeded run.
    """
    return int(np.random.default_rng().integers(2**31))


#: Largest central window (z, y, x) the camera noise is estimated on.
_NOISE_WINDOW = (64, 512, 512)


def calibrate_noise(
    data: np.ndarray,
    psf: np.ndarray,
    settings: FlowDeconvolution,
    background: float | None = None,
) -> CameraNoise:
    """Return the camera's noise model: the settings' values, the rest estimated from ``data``.

    The PSF (sampled like ``data``) lets the estimate read the noise at the frequencies
    the optics do not pass (:func:`~deconflow.physics.noise.estimate_camera_noise`). A
    ``background`` the user gave is the offset plus haze, so it bounds an estimated
    offset: without a dark region the darkest voxels still hold blurred signal.
    """
    gain, offset, read_sigma = settings.gain, settings.camera_offset, settings.read_sigma
    if gain is not None and offset is not None and read_sigma is not None:
        return CameraNoise(gain, offset, read_sigma)
    # the noise model is global: a central window keeps the estimate's float64 FFTs
    # (several copies of the padded stack) bounded on large stacks
    window = tuple(
        slice(max((n - m) // 2, 0), max((n - m) // 2, 0) + m)
        for n, m in zip(data.shape, _NOISE_WINDOW[-data.ndim :], strict=True)
    )
    # a given gain also splits the read noise off the dark level's variance
    estimated = estimate_camera_noise(
        data[window], offset=offset, max_offset=background, gain=gain, psf=psf
    )
    return CameraNoise(
        gain=estimated.gain,  # the given gain and offset when there are
        offset=estimated.offset,
        read_sigma=read_sigma if read_sigma is not None else estimated.read_sigma,
    )


#: Largest window (z, y, x) the iteration count is cross-validated on: a window with the
#: most photons tells as much as the whole stack, at a fraction of the cost (on a
#: 64×256×256 stack, 2-core CPU: ~3 s on the window, ~25 s on the whole stack).
_CROSS_VALIDATION_WINDOW = (32, 128, 128)


def brightest_window(
    counts: np.ndarray, psf_shape: tuple[int, ...], largest: tuple[int, int, int]
) -> tuple[slice, ...]:
    """Return the tile of at most ``largest`` voxels (z, y, x) holding the most photons."""
    windows = plan_tiles(
        counts.shape,
        psf_shape,
        "rl",
        budget_bytes=2**62,
        max_tile_shape=largest[-counts.ndim :],
    ).tiles
    return max(windows, key=lambda index: float(counts[index].sum()))


def iter_cross_validated_iterations(
    counts: np.ndarray, psf: np.ndarray, background: float, device: torch.device
) -> Generator[Progress, None, int]:
    """RL iterations for the first estimate, by hold-out of photons in the brightest window.

    One count serves every tile, so that a tiled run matches an untiled one; the
    brightest window carries the most photons, which is where over-fitting starts first.
    A generator, as the pipeline's stages are: it yields a stage ``"estimate"`` event
    after each RL iteration of each fold (a fold stops early once its score has not
    improved for a while, so the count jumps to the next fold's start) and returns the
    count.
    """
    window = brightest_window(counts, psf.shape, _CROSS_VALIDATION_WINDOW)
    block = torch.from_numpy(np.ascontiguousarray(counts[window])).to(device)
    operator = ConvolutionOperator(psf, block.shape, device=device, dtype=torch.float32)
    stop = CrossValidatedStop()
    steps = stop.iter_iterations(block, operator, background)
    while True:
        try:
            fold, iteration = next(steps)
        except StopIteration as done:
            chosen: int = done.value
            return chosen
        yield Progress(
            "estimate",
            fold * stop.max_iterations + iteration + 1,
            stop.folds * stop.max_iterations,
            f"choosing the RL iteration count: split {fold + 1} of {stop.folds}, "
            f"iteration {iteration + 1}",
        )


def make_flow_context(
    first_estimate: np.ndarray,
    first_iterations: int,
    noise: CameraNoise,
    settings: FlowDeconvolution,
    prior: FlowPrior,
) -> FlowContext:
    """Fit the prior's normalisation on the first object estimate.

    The normalisation is fitted on a first object estimate (RL iterations), not
    on the blurred stack: blur lowers peaks, and the prior was trained on sharp
    volumes scaled by their own peaks.
    """
    return FlowContext(
        prior=prior,
        first_estimate=first_estimate,
        first_iterations=first_iterations,
        normalization=fit_normalization(first_estimate),
        noise=noise,
        settings=settings,
    )


def _weights(block: np.ndarray, noise: CameraNoise) -> np.ndarray:
    """``1 / Var[y]`` per voxel, the variance read off the measurement itself."""
    variance = noise.gain * np.maximum(block - noise.offset, 0.0) + noise.read_sigma**2
    floor = max(noise.read_sigma**2, 1e-3 * noise.gain, 1e-12)
    return (1.0 / np.maximum(variance, floor)).astype(np.float32)


#: Voxels per network call from which a GPU gains nothing by batching: an H200 runs one
#: 64×256×256 volume at 153 Mvoxel/s and four at 159, but one 32×128×128 volume at 67
#: and eight at 153 (``docs/benchmarks/gpu.md``).
_GPU_SATURATING_VOXELS = 4 * 2**20


def samples_at_once(
    samples: int, device: torch.device, tile_voxels: int, tile_bytes: int, budget: int
) -> int:
    """How many posterior samples of a tile to draw together (one network call per step).

    On a GPU, enough to give each network call about ``_GPU_SATURATING_VOXELS`` voxels,
    as far as the memory budget holds them: a small tile alone leaves much of the GPU
    idle. On the CPU one at a time: the network already keeps every core busy, and
    memory would grow with the batch.
    """
    if device.type != "cuda":
        return 1
    wanted = max(1, _GPU_SATURATING_VOXELS // max(tile_voxels, 1))
    fits = max(1, budget // max(tile_bytes, 1))
    return min(samples, wanted, fits)


def flow_block_solver(
    context: FlowContext,
    psf: np.ndarray,
    device: torch.device,
    background: float,
    samples_per_batch: int = 1,
) -> BlockSolver:
    """Block solver drawing ``settings.samples`` posterior samples and summarising them.

    Samples are drawn ``samples_per_batch`` at a time (see :func:`samples_at_once`); each
    sample is the same whatever the batch, since each keeps its own seeded generator.
    """
    if samples_per_batch < 1:
        raise ValueError(f"samples_per_batch must be >= 1, got {samples_per_batch}")
    settings = context.settings
    sampler = settings.build_sampler()
    norm = context.normalization

    def solve(
        block: np.ndarray, index: tuple[slice, ...], tile: int, tiles: int
    ) -> Generator[Progress, None, BlockOutput]:
        operator = ConvolutionOperator(psf, block.shape, device=device, dtype=torch.float32)
        weights = torch.from_numpy(_weights(block, context.noise)).to(device)
        y = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        trajectories: Callable[
            [Sequence[torch.Generator], torch.Tensor | None], Iterator[torch.Tensor]
        ]
        if isinstance(sampler, PoissonFlowSampler):
            poisson = PoissonMeasurement.from_camera(
                operator,
                y,
                background,
                context.noise,
                scale_adu=norm.scale,
                offset_adu=norm.offset,
            )
            trajectories = partial(sampler.iterate_batch, poisson, context.prior)
        else:
            # x = scale u + offset and H 1 = 1 inside the window, so y - b - offset = scale H u
            gaussian = MeasurementModel(operator, y - background - norm.offset, weights, norm.scale)
            trajectories = partial(sampler.iterate_batch, gaussian, context.prior)
        initial = None
        if settings.t_start > 0:
            tile_estimate = torch.from_numpy(np.ascontiguousarray(context.first_estimate[index]))
            initial = operator.extend_image(norm.apply(tile_estimate).to(device))
        samples = []
        object_sum = torch.zeros(operator.object_shape, device=device)
        total = settings.total_steps
        where = f" (tile {tile + 1}/{tiles})" if tiles > 1 else ""
        base_seed = settings.seed if settings.seed is not None else _fresh_seed()
        for first in range(0, settings.samples, samples_per_batch):
            drawn = range(first, min(first + samples_per_batch, settings.samples))
            # CPU generators: a seed draws the same noise on every device
            generators = [torch.Generator().manual_seed(base_seed + 7919 * k) for k in drawn]
            which = (
                f"sample {first + 1}/{settings.samples}"
                if len(drawn) == 1
                else f"samples {first + 1}-{drawn[-1] + 1}/{settings.samples}"
            )
            u: torch.Tensor | None = None
            for step, estimates in enumerate(trajectories(generators, initial), start=1):
                u = estimates
                yield Progress(
                    "solve",
                    first * settings.steps + len(drawn) * step,
                    total,
                    f"flow {which} step {step}{where}",
                    tile=tile,
                    tiles=tiles,
                )
            if u is None:  # samplers yield once per step, steps >= 1
                raise RuntimeError("sampler produced no estimate")
            for estimate in u:
                x = norm.invert(estimate).clamp_min_(0.0)
                object_sum += x
                samples.append(to_image(operator, x, clip=True))
        stack = np.stack(samples)
        mean = stack.mean(axis=0)
        yield Progress(
            "solve",
            total,
            total,
            f"photon-noise spread (RL on re-drawn counts){where}",
            tile=tile,
            tiles=tiles,
        )
        spread = bootstrap_std(
            context.noise.shifted_counts(y),
            operator,
            context.noise.shifted_background(background),
            iterations=context.first_iterations,
            replicates=max(settings.samples, 2),
            generator=torch.Generator().manual_seed(base_seed + 1),
        )
        noise_std = to_image(operator, spread * context.noise.gain, clip=True)
        # the samples' spread (where the prior is unsure) and the photon noise's, independent
        std = np.sqrt(stack.var(axis=0) + noise_std * noise_std)
        # data-consistency residual of the mean, in noise sigmas: about N(0, 1) where the
        # model explains the data
        predicted = operator.A(object_sum / settings.samples) + background
        residual = ((y - predicted) * weights.sqrt()).cpu().numpy().astype(np.float32)
        return BlockOutput(
            mean=mean, std=std, samples=stack if settings.keep_samples else None, residual=residual
        )

    return solve
