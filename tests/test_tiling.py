import numpy as np
import pytest
import torch
from scipy import ndimage

import deconflow
from deconflow import DeconflowError, DeconvolutionSettings, Progress
from deconflow.physics import ConvolutionOperator
from deconflow.pipeline import run_to_result
from deconflow.tiling import blend_weight, estimate_bytes, memory_budget_bytes, plan_tiles
from tests.conftest import gaussian_psf


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(0)
    psf = gaussian_psf((9, 11, 11), (1.5, 1.5, 1.5))
    op = ConvolutionOperator(psf, (20, 96, 96), dtype=torch.float64)
    points = np.zeros(op.object_shape)
    points[tuple(rng.integers(0, 40, (3, 300)) % np.array(op.object_shape)[:, None])] = 1.0
    truth = ndimage.gaussian_filter(points, 1.0) * 20000.0
    image = rng.poisson(op.A(torch.tensor(truth)).numpy() + 50.0).astype(np.float32)
    return image, psf


@pytest.mark.parametrize("shape", [(20, 150, 150), (40, 101, 77), (130, 131)])
def test_tiles_cover_the_stack_and_weights_partition_unity(shape):
    psf_shape = (9, 11, 11)[-len(shape) :]
    plan = plan_tiles(
        shape, psf_shape, "rl", budget_bytes=10**12, max_tile_shape=(48,) * len(shape)
    )
    assert plan.count > 1
    total = np.zeros(shape, np.float32)
    covered = np.zeros(shape, int)
    for tile in plan.tiles:
        w = blend_weight(tile, shape, plan.overlap)
        assert w.min() > 0
        total[tile] += w
        covered[tile] += 1
    assert covered.min() >= 1
    # where exactly two tiles meet with the planned overlap, the ramps add to 1
    assert np.isclose(total, 1.0).mean() > 0.5


def test_single_tile_when_it_fits():
    plan = plan_tiles((20, 96, 96), (9, 11, 11), "rl", budget_bytes=10**12)
    assert plan.count == 1
    assert plan.tiles[0] == (slice(0, 20), slice(0, 96), slice(0, 96))


def test_budget_drives_the_tile_count():
    whole = estimate_bytes((64, 256, 256), (31, 63, 63), "rl")
    plan = plan_tiles((64, 256, 256), (31, 63, 63), "rl", budget_bytes=whole // 3)
    assert plan.count > 1
    assert all(
        estimate_bytes(tuple(s.stop - s.start for s in t), (31, 63, 63), "rl") <= whole // 3
        for t in plan.tiles
    )


def test_lateral_axes_keep_shrinking_when_a_long_psf_pins_z():
    """A z axis at its smallest useful length must not stop y and x from shrinking."""
    psf = (41, 9, 9)  # overlap (20, 8, 8): z cannot go below 80 planes
    budget = 10_000_000  # (80, 32, 32) tiles fit: 120 x 40 x 40 grid, 12 copies of float32
    assert estimate_bytes((80, 32, 32), psf, "rl") <= budget
    plan = plan_tiles((120, 200, 200), psf, "rl", budget_bytes=budget)
    assert all(
        estimate_bytes(tuple(s.stop - s.start for s in t), psf, "rl") <= budget for t in plan.tiles
    )


@pytest.mark.parametrize("method", ["rl", "wiener"])
def test_tiled_equals_untiled_within_noise(stack, method):
    image, psf = stack
    whole = deconflow.deconvolve(image, psf, method=method, device="cpu")
    settings = DeconvolutionSettings(method=method, device="cpu", tile_shape=(20, 48, 48))
    events = list(deconflow.iter_deconvolve(image, psf, settings))
    tiled = events[-1]
    assert any("tiles" in note for note in tiled.notes)
    tiles_seen = {e.tile for e in events if isinstance(e, Progress) and e.stage == "solve"}
    assert len(tiles_seen) > 1
    difference = np.linalg.norm(tiled.image - whole) / np.linalg.norm(whole)
    noise = np.linalg.norm(np.sqrt(image)) / np.linalg.norm(whole)  # Poisson noise level
    assert difference < 0.25 * noise, (difference, noise)


def test_small_memory_budget_tiles_automatically(stack):
    image, psf = stack
    budget_gb = estimate_bytes(image.shape, (9, 11, 11), "rl") / 2.5 / 1e9
    result = run_to_result(
        deconflow.iter_deconvolve(
            image, psf, DeconvolutionSettings(device="cpu", memory_budget_gb=budget_gb)
        )
    )
    assert any("over the" in note and "budget" in note for note in result.notes)
    assert result.image.shape == image.shape


def _raise_in_solver(monkeypatch, error: BaseException, *, calls: int | None = None) -> None:
    """Make the classical block solver raise ``error`` on its first ``calls`` calls (all: None)."""
    import deconflow.pipeline as pipeline

    real = pipeline.classical_block_solver
    made = {"n": 0}

    def failing_factory(*args, **kwargs):
        solve = real(*args, **kwargs)

        def failing(block, index, tile, tiles):
            made["n"] += 1
            if calls is None or made["n"] <= calls:
                raise error
            return (yield from solve(block, index, tile, tiles))

        return failing

    monkeypatch.setattr(pipeline, "classical_block_solver", failing_factory)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("simulated"),
        # on the CPU torch's allocator raises a plain RuntimeError and numpy a MemoryError
        RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"),
        MemoryError("Unable to allocate 128. TiB"),
        # a CUDA library's own allocation on a nearly full GPU (seen on an H200)
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
)
def test_out_of_memory_retries_with_smaller_tiles_then_fails_clearly(stack, monkeypatch, error):
    image, psf = stack
    _raise_in_solver(monkeypatch, error, calls=1)
    settings = DeconvolutionSettings(device="cpu", rl=deconflow.solvers.RichardsonLucy(2))
    result = run_to_result(deconflow.iter_deconvolve(image, psf, settings))
    assert any("ran out of cpu memory" in note and "retried" in note for note in result.notes)
    assert result.image.shape == image.shape

    _raise_in_solver(monkeypatch, error)
    with pytest.raises(DeconflowError, match=r"Out of cpu memory.*fewer batch workers"):
        run_to_result(deconflow.iter_deconvolve(image, psf, DeconvolutionSettings(device="cpu")))


def test_out_of_memory_advice_fits_the_stack_and_the_tiles_that_failed(monkeypatch):
    """The suggested tile_shape has the image's axes and is smaller than the failed tiles."""
    image = np.random.default_rng(0).poisson(20.0, (200, 200)).astype(np.float32)
    psf = gaussian_psf((9, 9), (1.5, 1.5))
    _raise_in_solver(monkeypatch, MemoryError("Unable to allocate"))
    with pytest.raises(DeconflowError, match=r"tiles of up to \(100, 100\).*e\.g\. \(50, 50\)"):
        run_to_result(deconflow.iter_deconvolve(image, psf, DeconvolutionSettings(device="cpu")))
    # tiles at their smallest (4 overlaps): a smaller tile_shape cannot help, so none is advised
    smallest = DeconvolutionSettings(device="cpu", tile_shape=(32, 32))
    with pytest.raises(DeconflowError, match="as small as the PSF allows") as caught:
        run_to_result(deconflow.iter_deconvolve(image, psf, smallest))
    assert "smaller tile_shape" not in str(caught.value)


def test_cuda_budget_counts_memory_torch_holds_cached(monkeypatch):
    """An earlier run's cached buffers are free for this run: the same stack plans the same tiles.

    Before, the driver's free memory alone set the budget, so right after an untiled run
    an identical one was cut into hundreds of tiles (seen on an H200).
    """
    gb = 10**9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gb)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    assert memory_budget_bytes(torch.device("cuda")) == int(0.8 * 4 * gb)


def test_other_runtime_errors_are_not_taken_for_out_of_memory(stack, monkeypatch):
    image, psf = stack
    _raise_in_solver(monkeypatch, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_to_result(deconflow.iter_deconvolve(image, psf, DeconvolutionSettings(device="cpu")))


@pytest.mark.slow
def test_flow_memory_estimate_covers_its_measured_peak():
    """The planner must not under-plan the flow: its network's activations dominate."""
    import threading
    import time

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    shape, psf = (32, 96, 96), gaussian_psf((15, 21, 21), (2.0, 2.0, 2.0))
    image = (100 + np.random.default_rng(0).poisson(5.0, shape)).astype(np.float32)
    # warm up the allocator and the network once, then measure a second run
    deconflow.deconvolve(image, psf, method="flow", background=100.0, device="cpu")
    base, peak, done = rss(), [rss()], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    deconflow.deconvolve(image, psf, method="flow", background=100.0, device="cpu")
    done.set()
    watcher.join()
    assert peak[0] - base <= estimate_bytes(shape, psf.shape, "flow")


def test_the_failed_attempts_memory_is_released_before_the_cache_is_emptied(monkeypatch):
    """On CUDA the cache is emptied for the retry: the failed attempt's tensors must be gone.

    Before, ``empty_cache`` ran inside the ``except`` clause, while the error's traceback
    still held the failed solver's frames and tensors, so it could not return their memory.
    """
    import weakref

    from deconflow._execute import BlockOutput, run_plan

    held: list[weakref.ref[torch.Tensor]] = []
    alive_at_empty: list[bool] = []
    monkeypatch.setattr(
        torch.cuda, "empty_cache", lambda: alive_at_empty.append(held[0]() is not None)
    )

    def solve(block, index, tile, tiles):
        if not held:
            work = torch.zeros(1000)  # the failed attempt's buffers
            held.append(weakref.ref(work))
            raise torch.cuda.OutOfMemoryError("simulated")
        yield Progress("solve", 1, 1, "")
        return BlockOutput(mean=block.astype(np.float32))

    data = np.ones((64, 64), np.float32)
    plan = plan_tiles(data.shape, (9, 9), "rl", budget_bytes=10**12)
    notes: list[str] = []
    run = run_plan(data, plan, solve, torch.device("cuda"), notes, psf_shape=(9, 9), method="rl")
    while True:
        try:
            next(run)
        except StopIteration as stop:
            output = stop.value
            break
    assert np.array_equal(output.mean, data)
    assert alive_at_empty == [False]
    assert any("retried" in note for note in notes)
