"""A prior conditioned on the first estimate: network, prior, samplers, training, pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deconflow
from deconflow import DeconflowError
from deconflow.physics import ConvolutionOperator
from deconflow.priors import NetworkConfig, load_prior, save_prior
from deconflow.priors.data import Batch, EstimatePairs
from deconflow.priors.flow import FlowPrior, cfm_loss, estimate_loss
from deconflow.priors.network import add_condition, flops_per_voxel
from deconflow.priors.train import TrainConfig, _batch_loss, train_prior
from deconflow.solvers.flow import ExactDataFlowSampler, MeasurementModel, PnPFlowSampler
from deconflow.solvers.poisson_flow import PoissonFlowSampler, PoissonMeasurement, prior_window
from tests.conftest import gaussian_psf, random_beads
from tests.priors.conftest import make_tiny
from tests.priors.test_train import _tiny_config


def _conditioned_tiny(seed: int = 0) -> torch.nn.Module:
    """A tiny conditioned network whose estimate channel has random (non-zero) weights."""
    net = add_condition(make_tiny(seed))
    with torch.no_grad():
        net.inp.weight[:, 1:].normal_(0.0, 0.3)
    return net


def test_add_condition_starts_from_the_same_velocity_whatever_the_estimate(tiny_net):
    conditioned = add_condition(tiny_net)
    assert conditioned.config.conditioned and not tiny_net.config.conditioned
    x, t = torch.randn(2, 1, 6, 16, 16), torch.tensor([0.3, 0.8])
    expected = tiny_net(x, t, 2.0)
    for estimate in (torch.zeros_like(x), 5.0 * torch.randn_like(x)):
        torch.testing.assert_close(conditioned(x, t, 2.0, estimate), expected)
    # the estimate's channel costs one input channel of the first convolution, no more
    extra = flops_per_voxel(conditioned) - flops_per_voxel(tiny_net)
    assert extra == pytest.approx(2 * 27 * conditioned.config.channels[0])
    with pytest.raises(ValueError, match="already"):
        add_condition(conditioned)


def test_a_conditioned_network_uses_the_estimate_and_checks_it():
    net = _conditioned_tiny()
    x, t = torch.randn(1, 1, 6, 16, 16), torch.tensor([0.5])
    assert not torch.allclose(net(x, t, 2.0, torch.zeros_like(x)), net(x, t, 2.0, x))
    with pytest.raises(ValueError, match="pass condition"):
        net(x, t, 2.0)
    with pytest.raises(ValueError, match="differs"):
        net(x, t, 2.0, x[..., :8])
    with pytest.raises(ValueError, match="takes no condition"):
        make_tiny()(x, t, 2.0, x)


def test_network_config_round_trips_and_old_cards_are_unconditioned():
    config = NetworkConfig(conditioned=True)
    assert NetworkConfig.from_dict(config.to_dict()) == config
    old = {k: v for k, v in NetworkConfig().to_dict().items() if k != "conditioned"}
    assert NetworkConfig.from_dict(old).conditioned is False


def test_conditioned_weights_save_and_load(tmp_path):
    net = _conditioned_tiny()
    path = save_prior(net, tmp_path / "c.pt", {"note": "test"})
    prior = load_prior(path)
    assert prior.conditioned
    x, estimate = torch.randn(6, 16, 16), torch.randn(6, 16, 16)
    torch.testing.assert_close(
        prior.velocity(x, 0.4, estimate),
        net(x[None, None], torch.tensor([0.4]), 1.0, estimate[None, None])[0, 0],
    )


def test_conditioned_prior_broadcasts_one_estimate_and_refuses_what_it_cannot_use():
    prior = FlowPrior(_conditioned_tiny(), voxel_aspect=2.0)
    x, estimate = torch.randn(3, 1, 6, 16, 16), torch.randn(6, 16, 16)
    each = prior.denoise(x, 0.6, estimate.expand(3, 1, 6, 16, 16))
    torch.testing.assert_close(prior.denoise(x, 0.6, estimate), each)
    with pytest.raises(DeconflowError, match="t_start > 0"):
        prior.denoise(x, 0.6)
    with pytest.raises(DeconflowError, match="3D stacks only"):
        prior.denoise(torch.randn(16, 16), 0.6, torch.randn(16, 16))
    # an unconditioned prior ignores an estimate it is handed
    plain = FlowPrior(make_tiny(), voxel_aspect=2.0)
    torch.testing.assert_close(plain.denoise(x, 0.6, estimate), plain.denoise(x, 0.6))


class _Recorder:
    """A denoiser that returns its input and keeps the estimates it is handed."""

    def __init__(self) -> None:
        self.conditions: list[torch.Tensor | None] = []

    def denoise(
        self, x_t: torch.Tensor, t: float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.conditions.append(condition)
        return x_t


def test_every_sampler_hands_the_prior_its_first_estimate():
    psf = gaussian_psf((3, 5, 5), (0.8, 1.0, 1.0))
    op = ConvolutionOperator(psf, (6, 12, 12), dtype=torch.float32)
    initial = torch.rand(op.object_shape) + 0.5
    counts = torch.full(op.image_shape, 20.0)
    gen = torch.Generator().manual_seed(0)

    poisson = PoissonMeasurement(op, counts, torch.tensor(2.0), 10.0, 0.0)
    recorder = _Recorder()
    list(PoissonFlowSampler(steps=2, t_start=0.5).iterate(poisson, recorder, gen, initial))
    region = prior_window(op)
    assert len(recorder.conditions) == 2
    for condition in recorder.conditions:
        assert condition is not None
        torch.testing.assert_close(condition, initial[region])

    gaussian = MeasurementModel(op, counts, torch.tensor(1.0), 1.0)
    for sampler in (ExactDataFlowSampler(steps=2, t_start=0.5), PnPFlowSampler(2, t_start=0.5)):
        recorder = _Recorder()
        list(sampler.iterate(gaussian, recorder, gen, initial))
        assert len(recorder.conditions) == 2
        assert all(c is initial for c in recorder.conditions)
    recorder = _Recorder()
    list(ExactDataFlowSampler(steps=1).iterate(gaussian, recorder, gen))
    assert recorder.conditions == [None]  # from noise: no estimate to hand on


def _config(tmp_path, **kw) -> TrainConfig:
    """The tiny run of the training tests, conditioned: pairs only, no planes."""
    conditioned = {"plane_every": 0, "estimate_pairs": 1.0, "conditioned": True}
    return _tiny_config(tmp_path, **{"patch": (6, 16, 16), "steps": 2, **conditioned, **kw})


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"estimate_pairs": 0.5}, "--estimate-pairs 1"), ({"plane_every": 10}, "--plane-every 0")],
)
def test_a_conditioned_run_needs_pairs_only_and_no_planes(tmp_path, settings, match):
    with pytest.raises(DeconflowError, match=match):
        _config(tmp_path, **settings)


def test_a_conditioned_fine_tune_of_unconditioned_weights_gains_the_estimate(tmp_path):
    start = save_prior(make_tiny(randomise_zero_init=False), tmp_path / "start.pt", {})
    path = train_prior(_config(tmp_path, init=start), progress=False)
    prior = load_prior(path)
    assert prior.conditioned
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["network"]["conditioned"] is True and card["training"]["conditioned"] is True
    # and conditioned weights are not fine-tuned as unconditioned ones
    with pytest.raises(DeconflowError, match="--conditioned"):
        train_prior(_config(tmp_path, init=path, conditioned=False, estimate_pairs=0.0))


def test_conditioned_batch_loss_trains_the_path_and_the_first_estimate():
    net = _conditioned_tiny()
    truth, estimate = torch.rand(2, 1, 6, 16, 16), torch.rand(2, 1, 6, 16, 16)
    aspect = torch.full((2,), 2.0)
    batch = Batch(truth[:0], torch.zeros(0), EstimatePairs(truth, estimate, aspect))
    loss = _batch_loss(net, batch, torch.device("cpu"), torch.Generator().manual_seed(1), 0.0, True)
    gen = torch.Generator().manual_seed(1)  # the path draws first, then the first estimate
    path = cfm_loss(net, truth, aspect, gen, condition=estimate)
    first = estimate_loss(net, truth, estimate, aspect, gen, conditioned=True)
    torch.testing.assert_close(loss, 0.5 * (path + first))


def test_a_checkpoint_from_before_conditioning_resumes(tmp_path):
    config = _config(tmp_path, conditioned=False, estimate_pairs=0.0, steps=2, checkpoint_every=1)
    train_prior(config, progress=False)
    ckpt = tmp_path / "w.ckpt.pt"
    state = torch.load(ckpt, weights_only=True)
    settings = json.loads(state["settings"])
    del settings["conditioned"]  # as written before the setting existed
    state["settings"] = json.dumps(settings)
    torch.save(state, ckpt)
    resumed = _config(tmp_path, conditioned=False, estimate_pairs=0.0, steps=3, resume=True)
    assert (
        json.loads(train_prior(resumed, progress=False).with_suffix(".json").read_text())["steps"]
        == 3
    )


@pytest.fixture(scope="module")
def beads():
    rng = np.random.default_rng(2)
    psf = gaussian_psf((5, 7, 7), (1.0, 1.2, 1.2))
    op = ConvolutionOperator(psf, (8, 24, 24), dtype=torch.float64)
    truth = random_beads(op.object_shape, 12, 0.7, rng) * 2000.0
    image = rng.poisson(op.A(torch.tensor(truth)).numpy() + 4.0) + 100.0
    return image.astype(np.float32), psf


def test_zero_estimate_weights_deconvolve_as_the_prior_they_extend(tmp_path, beads):
    image, psf = beads
    plain = save_prior(make_tiny(), tmp_path / "plain.pt", {})
    conditioned = save_prior(add_condition(make_tiny()), tmp_path / "cond.pt", {})
    options = {
        "method": "flow",
        "background": 104.0,
        "device": "cpu",
        "steps": 2,
        "em_iterations": 2,
        "first_iterations": 3,
        "choose_strength": False,
        "gain": 1.0,
        "camera_offset": 100.0,
        "read_sigma": 1.0,
        "seed": 5,
    }
    a = deconflow.deconvolve(image, psf, weights=str(plain), **options)
    b = deconflow.deconvolve(image, psf, weights=str(conditioned), **options)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    # while a conditioned prior whose estimate channel is live gives another answer
    live = save_prior(_conditioned_tiny(), tmp_path / "live.pt", {})
    c = deconflow.deconvolve(image, psf, weights=str(live), **options)
    assert not np.allclose(a, c, rtol=1e-3)
    with pytest.raises(DeconflowError, match="t_start > 0"):
        deconflow.deconvolve(image, psf, weights=str(conditioned), **{**options, "t_start": 0.0})


def test_a_microscope_fine_tune_draws_its_pairs_through_the_given_psf(tmp_path):
    import tifffile

    z, y, x = np.meshgrid(*(np.arange(n) - n // 2 for n in (5, 15, 15)), indexing="ij")
    bead = 1000.0 * np.exp(-(z**2) / 2.0 - (y**2 + x**2) / 4.0) + 10.0
    path = tmp_path / "bead.tif"
    tifffile.imwrite(path, bead.astype(np.float32))
    trained = train_prior(
        _config(tmp_path, pair_psf=path, voxel_size_um=(0.3, 0.1, 0.1)), progress=False
    )
    card = json.loads(trained.with_suffix(".json").read_text())
    assert "given (5, 15, 15) PSF" in card["data"] and "(0.3, 0.1, 0.1)" in card["data"]
    with pytest.raises(DeconflowError, match="--voxel-size"):
        _config(tmp_path, pair_psf=path)
    with pytest.raises(DeconflowError, match="--estimate-pairs"):
        _config(
            tmp_path,
            pair_psf=path,
            voxel_size_um=(0.3, 0.1, 0.1),
            estimate_pairs=0.0,
            conditioned=False,
        )
