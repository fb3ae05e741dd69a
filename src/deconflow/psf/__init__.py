"""PSF preparation (measured bead stacks) and theoretical PSFs."""

from deconflow.psf.measured import PreparedPSF, prepare_psf, resample_psf
from deconflow.psf.theoretical import confocal_psf, widefield_psf

__all__ = ["PreparedPSF", "confocal_psf", "prepare_psf", "resample_psf", "widefield_psf"]
