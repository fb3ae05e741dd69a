"""The flow-matching prior: velocity network, time convention, data, training and weights.

The time convention (t = 0 noise, t = 1 data) is stated once, in :mod:`deconflow.priors.flow`;
the intensity normalisation once, in :mod:`deconflow.priors.normalization`.
"""

from deconflow.priors.flow import FlowPrior, cfm_loss, estimate_loss, interpolate
from deconflow.priors.generator import STRUCTURES, generate_volume, render_structure
from deconflow.priors.network import NetworkConfig, VelocityUNet, flops_per_voxel
from deconflow.priors.normalization import Normalization, fit_normalization
from deconflow.priors.weights import default_weights_path, load_prior, save_prior

__all__ = [
    "STRUCTURES",
    "FlowPrior",
    "NetworkConfig",
    "Normalization",
    "VelocityUNet",
    "cfm_loss",
    "default_weights_path",
    "estimate_loss",
    "fit_normalization",
    "flops_per_voxel",
    "generate_volume",
    "interpolate",
    "load_prior",
    "render_structure",
    "save_prior",
]
