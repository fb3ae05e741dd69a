import dataclasses

import numpy as np
import pytest

from deconflow import DeconflowError, DeconvolutionSettings
from deconflow.solvers import RichardsonLucyTV


def test_yaml_round_trip_preserves_every_field():
    settings = DeconvolutionSettings(
        method="rl-tv",
        voxel_size_um=(0.3, 0.1, 0.1),
        psf_voxel_size_um=(0.1, 0.05, 0.05),
        device="cpu",
        background=12.5,
        rl_tv=RichardsonLucyTV(iterations=7, tv_weight=0.01, accelerate=False),
    )
    text = settings.to_yaml()
    assert text.startswith("# deconflow")
    assert DeconvolutionSettings.from_yaml(text) == settings


def test_partial_yaml_fills_defaults():
    settings = DeconvolutionSettings.from_yaml("method: wiener\nwiener:\n  regularization: 0.01\n")
    assert settings.method == "wiener"
    assert settings.wiener.regularization == 0.01
    assert settings.rl == DeconvolutionSettings().rl


def test_yaml_background_auto_means_estimate_it():
    # --background auto and deconvolve(background="auto") estimate it; in a --config file
    # the same word was refused ("background must be a number, got 'auto'")
    assert DeconvolutionSettings.from_yaml("background: auto\n").background is None
    assert DeconvolutionSettings.from_yaml("background: 12.5\n").background == 12.5
    with pytest.raises(DeconflowError, match="background must be a number"):
        DeconvolutionSettings.from_yaml("background: automatic\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("methd: rl", "Did you mean 'method'"),
        ("method: lucy", "Unknown method"),
        ("rl:\n  iterations: many", "integer"),
        ("rl:\n  iterations: 2.5", "integer"),
        ("rl:\n  accelerate: 1", "true or false"),
        ("rl: 5", "mapping"),
        ("voxel_size_um: [0.1, 0.1, 0]", "positive"),
        ("schema_version: 99", "schema version"),
        ("device: gpu", "Unknown device 'gpu'"),
        ("device: 'cuda:first'", "cuda:N"),
        ("[1, 2", "not valid YAML"),
        ("- 1\n- 2", "mapping"),
        # the section was not named: "iterations must be >= 0, got -3."
        ("wiener:\n  iterations: -3", "^wiener: iterations must be >= 0"),
        ("rl_tv:\n  tv_weight: -1.0", "^rl_tv: "),
    ],
)
def test_invalid_yaml_is_rejected_with_a_reason(text, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        DeconvolutionSettings.from_yaml(text)


@pytest.mark.parametrize("device", ["auto", "cpu", "CUDA", "cuda:3"])
def test_device_names_are_checked_by_syntax_not_by_this_machine(device):
    # a GPU server's settings are written and checked on laptops without CUDA
    assert DeconvolutionSettings(device=device).device == device


def test_settings_are_immutable():
    settings = DeconvolutionSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.method = "wiener"  # type: ignore[misc]


def test_from_options_routes_options_to_the_method_section():
    settings = DeconvolutionSettings.from_options("wiener", regularization=0.1, background="auto")
    assert settings.solver.regularization == 0.1
    assert settings.background is None


def test_hand_written_exponent_floats_are_numbers():
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; people write it that way
    settings = DeconvolutionSettings.from_yaml(
        "background: 1e2\nrl_tv:\n  tv_weight: 1e-3\nmemory_budget_gb: 2.5E+0\n"
    )
    assert settings.background == 100.0
    assert settings.rl_tv.tv_weight == 0.001
    assert settings.memory_budget_gb == 2.5


def test_numpy_scalars_are_accepted_as_numbers():
    # values computed with numpy (a shape entry, an array's mean) are numbers too
    settings = DeconvolutionSettings.from_options(
        "rl",
        iterations=np.int64(5),
        background=np.float32(100.0),
        tile_shape=(np.int64(16), np.int64(32)),
    )
    assert settings.rl.iterations == 5 and type(settings.rl.iterations) is int
    assert settings.background == 100.0 and type(settings.background) is float
    assert settings.tile_shape == (16, 32)
    assert DeconvolutionSettings.from_yaml(settings.to_yaml()) == settings
    with pytest.raises(DeconflowError, match="integer"):
        DeconvolutionSettings.from_options("rl", iterations=np.float64(5.0))
    with pytest.raises(DeconflowError, match="true or false"):
        DeconvolutionSettings.from_options("rl", accelerate=np.int64(1))
    flag = np.bool_(False)
    assert DeconvolutionSettings.from_options("rl", accelerate=flag).rl.accelerate is False


def test_weights_accept_a_path_object(tmp_path):
    from pathlib import Path

    weights = tmp_path / "mine.pt"
    settings = DeconvolutionSettings.from_options("flow", weights=weights)
    assert settings.solver.weights == str(weights)
    assert DeconvolutionSettings.from_yaml(settings.to_yaml()).solver.weights == str(weights)
    from deconflow.solvers.flow import FlowDeconvolution

    direct = FlowDeconvolution(weights=Path("w.pt"))
    assert direct.weights == "w.pt"


def test_settings_built_with_numpy_values_write_yaml_and_json():
    import json

    from deconflow.solvers import RichardsonLucy

    settings = DeconvolutionSettings(
        voxel_size_um=tuple(np.array([0.3, 0.1, 0.1])),
        background=np.float32(3.5),
        tile_shape=tuple(np.array([16, 32, 32])),
        rl=RichardsonLucy(iterations=np.int64(4)),
    )
    plain = settings.to_dict()
    assert json.loads(json.dumps(plain))["rl"]["iterations"] == 4
    assert type(plain["background"]) is float and type(plain["tile_shape"][0]) is int
    back = DeconvolutionSettings.from_yaml(settings.to_yaml())
    assert back == settings
    assert back.voxel_size_um == (0.3, 0.1, 0.1) and back.background == 3.5


@pytest.mark.parametrize("text", ["1e5", "2E-3", "+1.5e10", "1_0e1"])
def test_text_that_looks_like_an_exponent_number_stays_text(text):
    from deconflow.solvers.flow import FlowDeconvolution

    settings = DeconvolutionSettings(method="flow", flow=FlowDeconvolution(weights=text))
    assert DeconvolutionSettings.from_yaml(settings.to_yaml()).flow.weights == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("background: .inf", "background must be a finite number"),
        ("memory_budget_gb: .inf", "memory_budget_gb must be a finite number"),
        ("voxel_size_um: [.inf, 0.1, 0.1]", "finite, positive micrometres"),
    ],
)
def test_infinite_values_are_refused_on_construction(text, fragment):
    # before: accepted, to fail later (OverflowError from int(inf * 1e9) for the budget) or
    # to deconvolve against an infinite background
    with pytest.raises(DeconflowError, match=fragment):
        DeconvolutionSettings.from_yaml(text)


def test_voxel_sizes_and_tile_shape_given_as_lists_or_arrays_are_stored_as_tuples():
    # a list was kept as a list: the settings were unhashable and unequal to the same
    # settings given a tuple or read back from YAML; an array made == raise
    reference = DeconvolutionSettings(
        voxel_size_um=(0.3, 0.1, 0.1), psf_voxel_size_um=(0.2, 0.1, 0.1), tile_shape=(16, 32, 32)
    )
    for sequence in (list, np.array):
        settings = DeconvolutionSettings(
            voxel_size_um=sequence([0.3, 0.1, 0.1]),
            psf_voxel_size_um=sequence([0.2, 0.1, 0.1]),
            tile_shape=sequence([16, 32, 32]),
        )
        assert settings == reference and hash(settings) == hash(reference)
        assert DeconvolutionSettings.from_yaml(settings.to_yaml()) == settings
    with pytest.raises(DeconflowError, match="sequence of numbers"):
        DeconvolutionSettings(voxel_size_um="0.3 0.1 0.1")
