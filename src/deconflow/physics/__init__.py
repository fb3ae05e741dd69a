"""Forward model: FFT convolution operator, likelihoods and noise estimates."""

from deconflow.physics._check import adjointness_error
from deconflow.physics.blur import Boundary, ConvolutionOperator
from deconflow.physics.likelihoods import GaussianLikelihood, PoissonLikelihood

__all__ = [
    "Boundary",
    "ConvolutionOperator",
    "GaussianLikelihood",
    "PoissonLikelihood",
    "adjointness_error",
]
