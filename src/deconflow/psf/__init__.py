"""PSF preparation (measured bead stacks) and theoretical PSFs."""

from deconflow.psf.measured import PreparedPSF, prepare_psf, resample_psf

__all__ = ["PreparedPSF", "prepare_psf", "resample_psf"]
