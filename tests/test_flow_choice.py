"""Choosing how far the flow trusts its prior, from held-out photons."""

import numpy as np
import pytest
import torch

from deconflow._flow_choice import iter_choose_strength, strength_candidates
from deconflow.physics import ConvolutionOperator
from deconflow.priors.normalization import Normalization
from deconflow.solvers.flow import FlowDeconvolution
from deconflow.solvers.poisson_flow import prior_window
from tests.conftest import gaussian_psf, random_beads

SHAPE, BACKGROUND, SCALE = (10, 40, 40), 2.0, 100.0


class WindowPrior:
    """Answers a fixed object (prior units) cut to the window the sampler shows it."""

    def __init__(self, answer: torch.Tensor, window: tuple[slice, ...]) -> None:
        self.answer = answer[window]

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.answer.to(x_t).expand_as(x_t).clone()


@pytest.fixture(scope="module")
def beads():
    rng = np.random.default_rng(0)
    psf = gaussian_psf((7, 11, 11), (1.5, 2.0, 2.0))
    op = ConvolutionOperator(psf, SHAPE, dtype=torch.float32)
    truth = torch.tensor(random_beads(op.object_shape, 30, 0.8, rng) * 3000.0, dtype=torch.float32)
    counts = rng.poisson((op.A(truth) + BACKGROUND).numpy()).astype(np.float32)
    return psf, op, truth, counts


def _choose_with_progress(counts, psf, prior, settings):
    """The choice on the fixture's stack (background, 10 RL iterations, scale, gain 1, CPU),
    run to its end: its progress events and the choice."""
    events = iter_choose_strength(
        counts,
        psf,
        BACKGROUND,
        10,
        Normalization(0.0, SCALE),
        1.0,
        prior,
        settings,
        torch.device("cpu"),
    )
    progress = []
    while True:
        try:
            progress.append(next(events))
        except StopIteration as stop:
            return progress, stop.value


def _choose(counts, psf, prior, settings):
    return _choose_with_progress(counts, psf, prior, settings)[1]


def test_candidates_are_the_settings_then_a_prior_led_and_a_stronger_prior():
    settings = FlowDeconvolution(prior_weight=0.5, em_iterations=20)
    candidates = strength_candidates(settings)
    assert list(candidates) == ["as set", "prior-led", "stronger prior"]
    assert candidates["as set"] == settings
    assert candidates["prior-led"].em_start == "prior"
    assert candidates["prior-led"].em_iterations == 20  # at least 15, never fewer than set
    assert candidates["stronger prior"].prior_weight == pytest.approx(0.5 * 10 / 3)
    assert candidates["stronger prior"].em_start == "previous"


@pytest.mark.parametrize(
    ("knows", "chosen"), [(True, {"prior-led", "stronger prior"}), (False, {"as set"})]
)
def test_a_prior_that_knows_the_object_is_trusted_and_a_blind_one_is_not(beads, knows, chosen):
    psf, op, truth, counts = beads
    # the prior's units: x = SCALE * u photons above the background (gain 1)
    answer = truth / SCALE if knows else torch.zeros_like(truth)
    prior = WindowPrior(answer, prior_window(op))
    settings = FlowDeconvolution(steps=3, em_iterations=5, seed=0)
    choice = _choose(counts, psf, prior, settings)
    assert set(choice.scores) == {"as set", "prior-led", "stronger prior"}
    assert choice.name in chosen, choice.scores
    assert choice.settings == strength_candidates(settings)[choice.name]
    assert choice.scores[choice.name] == min(choice.scores.values())


def test_candidates_start_from_the_windows_estimate_edge_extended_like_the_full_run(
    beads, monkeypatch
):
    # The full run starts its samples from the first estimate inside the stack, edge-extended
    # over the margin; the candidates must start the same way, so whatever RL puts in the
    # margin (here 0 or a huge value) cannot change their scores.
    import deconflow._flow_choice as choice_module

    psf, op, truth, counts = beads
    inside = torch.zeros(op.object_shape, dtype=torch.bool)
    inside[tuple(slice(m, m + n) for m, n in zip(op.margin, SHAPE, strict=True))] = True
    real_rl = choice_module.RichardsonLucy

    def scores_with_margin(value: float) -> dict[str, float]:
        class MarginRL(real_rl):
            def __call__(self, *args, **kwargs):
                estimate = super().__call__(*args, **kwargs)
                return torch.where(inside, estimate, torch.full_like(estimate, value))

        monkeypatch.setattr(choice_module, "RichardsonLucy", MarginRL)
        prior = WindowPrior(truth / SCALE, prior_window(op))
        settings = FlowDeconvolution(steps=3, em_iterations=5, seed=0)
        return _choose(counts, psf, prior, settings).scores

    zero, huge = scores_with_margin(0.0), scores_with_margin(1e5)
    assert zero.keys() == huge.keys()
    for name in zero:
        assert huge[name] == pytest.approx(zero[name], rel=1e-6), name


def test_the_choice_reports_each_candidates_steps_in_order(beads):
    psf, op, truth, counts = beads
    prior = WindowPrior(truth / SCALE, prior_window(op))
    settings = FlowDeconvolution(steps=3, em_iterations=5, seed=0)
    progress, choice = _choose_with_progress(counts, psf, prior, settings)
    # the bar moves forward through 3 candidates x 3 steps, never back
    assert [(p.stage, p.step, p.total) for p in progress] == [
        ("estimate", k, 9) for k in range(1, 10)
    ]
    assert "candidate 2/3 (prior-led) step 1" in progress[3].message
    assert choice.name in strength_candidates(settings)
