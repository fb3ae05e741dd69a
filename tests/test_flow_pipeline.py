"""method="flow" end to end with the shipped prior: uncertainty result, seeds, tiling."""

import numpy as np
import pytest
import torch
from scipy import ndimage

import deconflow
from deconflow import DeconvolutionSettings, Progress
from deconflow.physics import ConvolutionOperator
from tests.conftest import gaussian_psf, random_beads

OFFSET, BACKGROUND = 100.0, 104.0
FAST = {"steps": 2, "em_iterations": 3, "gain": 1.0, "camera_offset": OFFSET, "read_sigma": 1.0}


@pytest.fixture(scope="module")
def stack():
    """Puncta and a filament blurred by a Gaussian PSF, Poisson noise on a camera offset."""
    rng = np.random.default_rng(0)
    psf = gaussian_psf((7, 9, 9), (1.2, 1.5, 1.5))
    op = ConvolutionOperator(psf, (12, 40, 40), dtype=torch.float64)
    filament = np.zeros(op.object_shape)
    filament[op.object_shape[0] // 2, op.object_shape[1] // 2, :] = 0.5
    beads = random_beads(op.object_shape, 40, 0.7, rng)
    truth = (beads + ndimage.gaussian_filter(filament, 0.7)) * 3000.0
    image = rng.poisson(op.A(torch.tensor(truth)).numpy() + BACKGROUND - OFFSET) + OFFSET
    return image.astype(np.float32), psf, op.crop_to_image(torch.tensor(truth)).numpy()


def test_uncertainty_result_is_sharper_than_the_data_and_explains_it(stack):
    image, psf, truth = stack
    out = deconflow.deconvolve_with_uncertainty(
        image, psf, samples=2, background=BACKGROUND, device="cpu", keep_samples=True, **FAST
    )
    assert out.mean.shape == out.std.shape == out.residual.shape == image.shape
    assert out.samples is not None and out.samples.shape == (2, *image.shape)
    assert np.all(np.isfinite(out.mean)) and out.mean.min() >= 0
    assert out.std.min() >= 0 and out.std.max() > 0
    np.testing.assert_allclose(out.samples.mean(axis=0), out.mean, rtol=1e-5, atol=1e-3)
    # deconvolution brings the estimate closer to the object than the blurred data are
    blurred_error = np.linalg.norm(image - BACKGROUND - truth)
    assert np.linalg.norm(out.mean - truth) < 0.7 * blurred_error
    # the std is of the size of the error (the photon noise's part of it), not 100x smaller
    rms_error = float(np.sqrt(np.mean((out.mean - truth) ** 2)))
    assert 0.1 < float(np.sqrt(np.mean(out.std**2))) / rms_error < 1.5
    # the mean explains the measurement to within its noise: residual ~ N(0, 1)
    assert 0.6 < float(out.residual.std()) < 1.6
    assert abs(float(out.residual.mean())) < 0.3


def test_seed_reproduces_and_another_seed_differs(stack):
    image, psf, _ = stack

    def run(seed):
        return deconflow.deconvolve(
            image, psf, method="flow", background=BACKGROUND, device="cpu", seed=seed, **FAST
        )

    first = run(3)
    np.testing.assert_array_equal(first, run(3))
    assert not np.array_equal(first, run(4))


def test_an_unseeded_run_differs_each_time_and_leaves_torch_global_seed_alone(stack):
    image, psf, _ = stack

    def run():
        return deconflow.deconvolve(
            image, psf, method="flow", background=BACKGROUND, device="cpu", seed=None, **FAST
        )

    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    first = run()
    # torch.seed() re-seeded it, and loading the prior drew the network's initial weights
    # from it: the caller's own random numbers changed
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
    assert not np.array_equal(first, run())


def test_flow_tiled_equals_untiled_within_noise(stack):
    image, psf, _ = stack
    options = {**FAST, "samples": 1}
    whole = deconflow.deconvolve(
        image, psf, method="flow", background=BACKGROUND, device="cpu", **options
    )
    settings = DeconvolutionSettings.from_options(
        "flow", background=BACKGROUND, device="cpu", tile_shape=(12, 24, 24), **options
    )
    events = list(deconflow.iter_deconvolve(image, psf, settings))
    tiles_seen = {e.tile for e in events if isinstance(e, Progress) and e.stage == "solve"}
    assert len(tiles_seen) > 1
    tiled = events[-1].image
    difference = np.linalg.norm(tiled - whole) / np.linalg.norm(whole)
    noise = np.linalg.norm(np.sqrt(np.maximum(image - OFFSET, 1))) / np.linalg.norm(whole)
    assert difference < 0.5 * noise, (difference, noise)


@pytest.mark.parametrize("sampler", ["exact", "pnp"])
def test_the_other_samplers_run_through_the_api(stack, sampler):
    image, psf, truth = stack
    out = deconflow.deconvolve(
        image, psf, method="flow", sampler=sampler, background=BACKGROUND, device="cpu", **FAST
    )
    assert out.shape == image.shape and np.all(np.isfinite(out))
    assert np.corrcoef(out.ravel(), truth.ravel())[0, 1] > 0.5


def test_first_estimate_is_cross_validated_unless_its_iterations_are_given(stack):
    image, psf, truth = stack

    def run(**extra):
        settings = DeconvolutionSettings.from_options(
            "flow", background=BACKGROUND, device="cpu", **{**FAST, "samples": 1, **extra}
        )
        return deconflow.pipeline.run_to_result(deconflow.iter_deconvolve(image, psf, settings))

    auto = run()
    (note,) = [n for n in auto.notes if n.startswith("first estimate")]
    chosen = int(note.split()[2])
    assert 1 <= chosen <= 80
    given = run(first_iterations=1)
    assert not any(n.startswith("first estimate") for n in given.notes)
    # one RL iteration leaves the object far blurrier than the cross-validated count
    assert np.linalg.norm(auto.image - truth) < np.linalg.norm(given.image - truth)


def test_choosing_the_first_estimate_count_reports_progress_and_stops_when_closed(stack):
    # the cross-validated choice ran without an event: the widget showed no progress and
    # its Cancel waited for the whole choice
    image, psf, _ = stack
    settings = DeconvolutionSettings.from_options(
        "flow", background=BACKGROUND, device="cpu", **{**FAST, "samples": 1}
    )
    events = deconflow.iter_deconvolve(image, psf, settings)
    seen = []
    for event in events:
        if isinstance(event, Progress) and event.message.startswith(
            "choosing the RL iteration count: split 1 of 3"
        ):
            seen.append(event)
            if len(seen) == 4:
                break
    events.close()  # what cancelling does: the run ends at the event it is at
    assert [(e.stage, e.step, e.total) for e in seen] == [
        ("estimate", k, 240) for k in (1, 2, 3, 4)
    ]
    assert seen[-1].message.endswith("iteration 4")


def test_samples_drawn_together_equal_samples_drawn_one_at_a_time(stack, monkeypatch):
    # a GPU draws a tile's samples as one batch; each sample keeps its own generator, so
    # the batch changes nothing but the speed
    import deconflow.pipeline as pipeline

    image, psf, _ = stack
    options = {**FAST, "samples": 3, "seed": 11, "keep_samples": True, "device": "cpu"}

    def run():
        events = list(
            deconflow.iter_deconvolve(
                image,
                psf,
                DeconvolutionSettings.from_options(method="flow", background=BACKGROUND, **options),
            )
        )
        solve = [e for e in events if isinstance(e, Progress) and e.stage == "solve"]
        assert [e.step for e in solve] == sorted(e.step for e in solve)
        # the first estimate's RL steps say whose steps they are
        first = [e for e in events if isinstance(e, Progress) and e.stage == "estimate"]
        assert any(e.message.startswith("first estimate: rl step") for e in first)
        assert solve[-1].step == solve[-1].total == 3 * FAST["steps"]
        return events[-1]

    alone = run()
    monkeypatch.setattr(pipeline, "samples_at_once", lambda samples, *_: samples)
    together = run()
    assert any("3 at a time" in note for note in together.notes)
    assert not any("at a time" in note for note in alone.notes)
    # equal up to float rounding (a batched convolution may sum in another order)
    np.testing.assert_allclose(together.samples, alone.samples, rtol=2e-3, atol=1e-2)
    np.testing.assert_allclose(together.image, alone.image, rtol=2e-3, atol=1e-2)
    assert not np.allclose(together.samples[0], together.samples[1], rtol=1e-2)


def test_samples_at_once_fills_the_gpu_within_the_budget_and_keeps_the_cpu_at_one():
    from deconflow._flow_run import _GPU_SATURATING_VOXELS, samples_at_once

    cuda = torch.device("cuda")  # a device object needs no GPU
    small = _GPU_SATURATING_VOXELS // 8  # a tile that leaves most of a GPU idle
    assert samples_at_once(4, torch.device("cpu"), small, 10, 1000) == 1
    assert samples_at_once(4, cuda, small, 10, 1000) == 4
    assert samples_at_once(16, cuda, small, 10, 1000) == 8  # enough voxels per call
    assert samples_at_once(4, cuda, small, 300, 1000) == 3  # what the budget holds
    assert samples_at_once(4, cuda, small, 2000, 1000) == 1
    assert samples_at_once(4, cuda, _GPU_SATURATING_VOXELS, 10, 1000) == 1  # a big tile


def test_the_prior_strength_is_chosen_unless_switched_off(stack):
    image, psf, _ = stack

    def notes(**options):
        settings = DeconvolutionSettings.from_options(
            method="flow", background=BACKGROUND, device="cpu", **{**FAST, **options}
        )
        result = deconflow.pipeline.run_to_result(deconflow.iter_deconvolve(image, psf, settings))
        return [note for note in result.notes if note.startswith("prior strength")]

    (chosen,) = notes()
    assert "held-out photons" in chosen
    assert any(name in chosen.split(",")[0] for name in ("as set", "prior-led", "stronger"))
    assert notes(choose_strength=False) == []
    assert notes(sampler="exact") == []  # chosen for the Poisson sampler only


def test_a_given_background_bounds_the_estimated_camera_offset():
    # dense blurred structure: no voxel is dark, so the darkest ones read as a high offset
    rng = np.random.default_rng(4)
    psf = gaussian_psf((7, 9, 9), (1.5, 2.5, 2.5))
    points = np.zeros((12, 40, 40))
    points[tuple(rng.integers(0, points.shape, (1500, 3)).T)] = 1.0
    photons = ndimage.gaussian_filter(points, (1.5, 3.0, 3.0))
    photons *= 1000.0 / photons.max()
    image = (OFFSET + rng.poisson(photons + 2.0)).astype(np.float32)
    fast = {k: v for k, v in FAST.items() if k not in ("gain", "camera_offset", "read_sigma")}

    def offset_in_notes(**background: float) -> float:
        settings = DeconvolutionSettings.from_options(
            "flow", device="cpu", choose_strength=False, first_iterations=3, **fast, **background
        )
        result = deconflow.pipeline.run_to_result(deconflow.iter_deconvolve(image, psf, settings))
        note = next(n for n in result.notes if n.startswith("camera noise"))
        return float(note.split("offset ")[1].split(" ADU")[0])

    assert photons.min() > 30
    assert offset_in_notes(background=OFFSET + 2.0) == OFFSET + 2.0
    assert offset_in_notes() > OFFSET + 20.0  # estimated background: no bound


def test_an_image_in_small_units_deconvolves_as_in_camera_units(stack):
    # a float image scaled to a sum of 1 holds values ~1e-7: the noise calibration and the
    # prior's normalisation must scale with it (absolute floors made this run fall back to
    # the first estimate). A power of 2 scales every float exactly.
    image, psf, _ = stack
    scale = 2.0**-30
    fast = {"steps": 2, "em_iterations": 3, "seed": 0}  # camera noise estimated
    ref = deconflow.deconvolve(
        image, psf, method="flow", background=BACKGROUND, device="cpu", **fast
    )
    small = deconflow.deconvolve(
        image * scale, psf, method="flow", background=BACKGROUND * scale, device="cpu", **fast
    )
    np.testing.assert_allclose(small / scale, ref, rtol=0, atol=1e-3 * float(ref.max()))
