"""Tiny networks and volumes shared by the prior tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from deconflow.priors import NetworkConfig, VelocityUNet


def make_tiny(seed: int = 0, randomise_zero_init: bool = True) -> VelocityUNet:
    """A 3-level toy network; zero-initialised layers get random weights so outputs are not 0."""
    torch.manual_seed(seed)
    net = VelocityUNet(
        NetworkConfig(channels=(4, 8, 8), z_pool=(False, True), embed_dim=16, groups=2)
    )
    if randomise_zero_init:
        with torch.no_grad():
            for p in net.parameters():
                if torch.count_nonzero(p) == 0:
                    p.normal_(0.0, 0.1)
    return net


@pytest.fixture
def tiny_net() -> VelocityUNet:
    return make_tiny()


@pytest.fixture
def tiny_factory() -> Callable[..., VelocityUNet]:
    return make_tiny
