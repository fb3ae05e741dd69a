"""deconflow: 3D deconvolution of fluorescence microscopy stacks.

The public API is small: :func:`deconvolve` for scripts, :func:`iter_deconvolve`
for callers that show progress, :class:`DeconvolutionSettings` for settings
shared with the CLI and YAML files, and :func:`prepare_psf` for bead stacks.
Importing deconflow does no work and never imports napari or Qt.
"""

from deconflow._errors import DeconflowError, DeconflowWarning
from deconflow._version import __version__
from deconflow.config import DeconvolutionSettings
from deconflow.pipeline import (
    Progress,
    Result,
    UncertaintyResult,
    deconvolve,
    deconvolve_with_uncertainty,
    iter_deconvolve,
)
from deconflow.psf import PreparedPSF, confocal_psf, prepare_psf, widefield_psf

__all__ = [
    "DeconflowError",
    "DeconflowWarning",
    "DeconvolutionSettings",
    "PreparedPSF",
    "Progress",
    "Result",
    "UncertaintyResult",
    "__version__",
    "confocal_psf",
    "deconvolve",
    "deconvolve_with_uncertainty",
    "iter_deconvolve",
    "prepare_psf",
    "widefield_psf",
]
