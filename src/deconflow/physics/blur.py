"""FFT convolution operator ``H`` of a fixed PSF, with its adjoint.

Boundary model
--------------
With ``boundary="valid"`` (the default) the operator is *not* circulant: the
measured stack is a window of a larger object (Bertero & Boccacci, A&A 2005).
The object lives on an extended domain that reaches at least the PSF's
half-support ``c = psf_shape // 2`` beyond the image on each side, and ``H``
maps that object to the measured window only. Light from outside the field of
view can therefore enter the stack, and no wrap-around or ringing is produced
at any face of the stack, z included. The FFT grid is ``image_shape + 2 c``
rounded up to 7-smooth lengths, which is enough for the circular convolution
to equal the linear one on the measured window, and the object domain *is*
that grid: the few voxels past ``image_shape + 2 c`` send no light into the
window (``H^T 1`` is 0 there) and solvers leave them at 0. Keeping object
tensors the size of the FFT grid spares every iteration a strided copy.

Measured voxel ``n`` sits at object index ``n + c``:
:meth:`ConvolutionOperator.crop_to_image` and
:meth:`ConvolutionOperator.extend_image` convert between the two domains.

``boundary="periodic"`` gives the circulant model on the image grid itself
(object and image share a shape). It wraps at the edges and exists for the
closed-form Fourier solves that need it.
"""

from __future__ import annotations

from types import EllipsisType
from typing import Literal

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow._types import Shape
from deconflow.physics._check import adjointness_error
from deconflow.physics._fftsize import smooth_shape

__all__ = ["Boundary", "ConvolutionOperator"]

Boundary = Literal["valid", "periodic"]


class ConvolutionOperator:
    """Blur by a fixed PSF, computed with real FFTs; ``A`` and ``A_adjoint``.

    The PSF is fixed at construction and its OTF is computed once; no method
    changes the operator afterwards.

    Parameters
    ----------
    psf : numpy.ndarray or torch.Tensor
        Point-spread function, 2D ``(Y, X)`` or 3D ``(Z, Y, X)``, with its
        centre at index ``psf.shape // 2``. It is used as given (normalise it
        to sum 1 beforehand to keep intensities in the image's units).
    image_shape : tuple of int
        Spatial shape of the measurement, same number of axes as ``psf``.
    boundary : {"valid", "periodic"}
        Boundary model, see the module documentation.
    device : str or torch.device
        Where the OTF lives and the transforms run.
    dtype : torch.dtype
        Real dtype of the tensors the operator accepts (float32 or float64).

    Notes
    -----
    Inputs may carry leading batch/channel axes; the transforms act on the
    trailing ``ndim`` axes only.
    """

    def __init__(
        self,
        psf: np.ndarray | torch.Tensor,
        image_shape: Shape,
        *,
        boundary: Boundary = "valid",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        # float64 numpy in native byte order: torch refuses big-endian arrays (FITS, some TIFFs)
        psf_t = torch.as_tensor(
            np.asarray(psf, dtype=np.float64) if not isinstance(psf, torch.Tensor) else psf
        )
        image_shape = tuple(int(s) for s in image_shape)
        if psf_t.ndim not in (2, 3) or psf_t.ndim != len(image_shape):
            raise DeconflowError(
                f"PSF has {psf_t.ndim} axes but the image has {len(image_shape)}; "
                "both must be 2D (Y, X) or both 3D (Z, Y, X)."
            )
        if dtype not in (torch.float32, torch.float64):
            raise DeconflowError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
        if boundary not in ("valid", "periodic"):
            raise DeconflowError(f"boundary must be 'valid' or 'periodic', got {boundary!r}.")
        if psf_t.numel() == 0 or not bool(torch.isfinite(psf_t).all()):
            raise DeconflowError(
                f"The PSF (shape {tuple(psf_t.shape)}) is empty or holds NaN or Inf values, "
                "which would make every blurred voxel NaN; pass a non-empty, finite PSF "
                "(e.g. np.nan_to_num(psf))."
            )
        psf_shape = tuple(int(s) for s in psf_t.shape)
        half = tuple(k // 2 for k in psf_shape)
        if boundary == "valid":
            fft_shape = smooth_shape(n + 2 * c for n, c in zip(image_shape, half, strict=True))
            object_shape = fft_shape
            # Rolling the PSF by -2c puts the measured window at index 0 of the
            # circular result (see module notes), so A and A_adjoint both crop
            # from the origin.
            shift = tuple(-2 * c for c in half)
        else:
            if any(k > n for k, n in zip(psf_shape, image_shape, strict=True)):
                raise DeconflowError(
                    f"PSF shape {psf_shape} exceeds image shape {image_shape}; the periodic "
                    "model needs the PSF to fit inside the image (crop the PSF or use "
                    "boundary='valid')."
                )
            object_shape = image_shape
            fft_shape = image_shape
            shift = tuple(-c for c in half)

        self._ndim = len(image_shape)
        self._dims = tuple(range(-self._ndim, 0))
        self._image_shape: Shape = image_shape
        self._object_shape: Shape = object_shape
        self._fft_shape: Shape = fft_shape
        self._psf_shape: Shape = psf_shape
        self._psf = psf_t.detach().to(torch.float64).clone().cpu()
        self._half: Shape = half
        self._boundary: Boundary = boundary
        self._dtype = dtype
        self._device = torch.device(device)

        padded = torch.zeros(fft_shape, dtype=torch.float64)
        padded[tuple(slice(0, k) for k in psf_shape)] = psf_t.to(torch.float64)
        padded = torch.roll(padded, shifts=shift, dims=self._dims)
        complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        otf = torch.fft.rfftn(padded, dim=self._dims).to(complex_dtype)
        self._otf = otf.to(self._device)
        self._otf_conj = self._otf.conj().resolve_conj()

    # -- description -------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self._ndim

    @property
    def image_shape(self) -> Shape:
        """Spatial shape of the measurement (the operator's range)."""
        return self._image_shape

    @property
    def range_shape(self) -> Shape:
        """Alias of :attr:`image_shape`."""
        return self._image_shape

    @property
    def object_shape(self) -> Shape:
        """Spatial shape of the object (the operator's domain)."""
        return self._object_shape

    @property
    def domain_shape(self) -> Shape:
        """Alias of :attr:`object_shape`."""
        return self._object_shape

    @property
    def fft_shape(self) -> Shape:
        """Spatial shape of the FFT grid (7-smooth lengths in the valid model)."""
        return self._fft_shape

    @property
    def margin(self) -> Shape:
        """Object voxels on each side of the measured window (``psf_shape // 2``)."""
        return self._half if self._boundary == "valid" else (0,) * self._ndim

    @property
    def boundary(self) -> Boundary:
        """Boundary model, ``"valid"`` or ``"periodic"``."""
        return self._boundary

    @property
    def device(self) -> torch.device:
        """Device of the OTF and of the computations."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Real dtype of the operator's inputs and outputs."""
        return self._dtype

    @property
    def psf(self) -> torch.Tensor:
        """The PSF the operator was built from (a float64 CPU copy; do not modify)."""
        return self._psf

    @property
    def otf(self) -> torch.Tensor:
        """Half-spectrum OTF on :attr:`fft_shape` (read-only view; do not modify)."""
        return self._otf

    # -- the operator ------------------------------------------------------
    def _filter(self, u: torch.Tensor, transfer: torch.Tensor, out_shape: Shape) -> torch.Tensor:
        spectrum = torch.fft.rfftn(u, s=self._fft_shape, dim=self._dims)
        spectrum *= transfer
        full = torch.fft.irfftn(spectrum, s=self._fft_shape, dim=self._dims)
        if out_shape == self._fft_shape:
            return full
        return full[(..., *(slice(0, n) for n in out_shape))]

    def _check(self, t: torch.Tensor, shape: Shape, what: str) -> None:
        if tuple(t.shape[-self._ndim :]) != shape:
            raise DeconflowError(
                f"{what} has spatial shape {tuple(t.shape[-self._ndim :])}, expected {shape}."
            )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Blur an object into the measured window: ``y = H x``.

        Parameters
        ----------
        x : torch.Tensor
            Object, shape ``(..., *object_shape)``.

        Returns
        -------
        torch.Tensor
            Measurement, shape ``(..., *image_shape)``.
        """
        self._check(x, self._object_shape, "object")
        return self._filter(x, self._otf, self._image_shape)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``H^T`` (correlation with the PSF), mapping image to object domain.

        Parameters
        ----------
        y : torch.Tensor
            Measurement-domain tensor, shape ``(..., *image_shape)``.

        Returns
        -------
        torch.Tensor
            Object-domain tensor, shape ``(..., *object_shape)``.
        """
        self._check(y, self._image_shape, "measurement")
        return self._filter(y, self._otf_conj, self._object_shape)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normal operator ``H^T H``."""
        return self.A_adjoint(self.A(x))

    def adjoint_of_ones(self) -> torch.Tensor:
        """Return ``H^T 1``: how much of each object voxel reaches the measured window.

        It equals 1 inside the window (for a PSF that sums to 1) and falls off
        in the margins; Richardson–Lucy divides by it.
        """
        ones = torch.ones(self._image_shape, dtype=self._dtype, device=self._device)
        return self.A_adjoint(ones)

    def check_adjoint(self, n_trials: int = 3, seed: int = 0) -> float:
        """Self-check: relative mismatch of ``<A x, y>`` and ``<x, A^T y>``.

        About 1e-7 in float32 and 1e-15 in float64 for a correct operator; see
        :func:`deconflow.physics.adjointness_error`.
        """
        return adjointness_error(
            self, n_trials=n_trials, seed=seed, device=self._device, dtype=self._dtype
        )

    # -- domain helpers ----------------------------------------------------
    def crop_to_image(self, x: torch.Tensor) -> torch.Tensor:
        """Return the measured window of an object-domain tensor (a view)."""
        self._check(x, self._object_shape, "object")
        window = (slice(c, c + n) for c, n in zip(self.margin, self._image_shape, strict=True))
        index: tuple[EllipsisType | slice, ...] = (..., *window)
        return x[index]

    def extend_image(self, y: torch.Tensor) -> torch.Tensor:
        """Extend an image-domain tensor to the object domain by edge replication.

        Used as a first guess for iterative solvers: flux from just outside the
        field of view is assumed to resemble the nearest measured voxels.
        """
        self._check(y, self._image_shape, "measurement")
        if self._boundary == "periodic":
            return y.clone()
        pad: list[int] = []
        for c, n, m in reversed(
            list(zip(self.margin, self._image_shape, self._object_shape, strict=True))
        ):
            pad.extend((c, m - n - c))
        lead = y.shape[: -self._ndim]
        flat = y.reshape(1, -1, *self._image_shape)
        # replicate padding handles at most 3 spatial axes with a (N, C, ...) layout
        ext = torch.nn.functional.pad(flat, pad, mode="replicate")
        return ext.reshape(*lead, *self._object_shape)

    def __repr__(self) -> str:
        return (
            f"ConvolutionOperator(image_shape={self._image_shape}, psf_shape={self._psf_shape}, "
            f"boundary={self._boundary!r}, fft_shape={self._fft_shape}, "
            f"device={self._device}, dtype={self._dtype})"
        )
