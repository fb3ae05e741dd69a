import dataclasses

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
        ("[1, 2", "not valid YAML"),
        ("- 1\n- 2", "mapping"),
    ],
)
def test_invalid_yaml_is_rejected_with_a_reason(text, fragment):
    with pytest.raises(DeconflowError, match=fragment):
        DeconvolutionSettings.from_yaml(text)


def test_settings_are_immutable():
    settings = DeconvolutionSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.method = "wiener"  # type: ignore[misc]


def test_from_options_routes_options_to_the_method_section():
    settings = DeconvolutionSettings.from_options("wiener", regularization=0.1, background="auto")
    assert settings.solver.regularization == 0.1
    assert settings.background is None
