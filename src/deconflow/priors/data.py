"""Training batches: from the built-in generator or from a folder of the user's sharp TIFFs.

Both sources yield batches already in prior units (:mod:`deconflow.priors.normalization`)
with the voxel aspect of each item, so the network learns the aspect it will be told.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deconflow._errors import DeconflowError
from deconflow._validate import check_voxel_size
from deconflow.priors.generator import generate_volume, log_uniform
from deconflow.priors.normalization import fit_normalization

__all__ = ["Batch", "EstimatePairs", "FolderSource", "GeneratorSource", "augment_gain"]

_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class EstimatePairs:
    """Sharp volumes and first estimates of their blurred, noisy images.

    Both are in the prior units of the estimate's normalisation (as inference normalises),
    ``(P, 1, Z, Y, X)``, with the voxel aspect of each pair ``(P,)``. They train ``D_t``
    to map a re-noised first estimate to the sharp volume
    (:func:`~deconflow.priors.flow.estimate_loss`).
    """

    truth: torch.Tensor
    estimate: torch.Tensor
    aspect: torch.Tensor


@dataclass
class Batch:
    """Data volumes ``x1`` (prior units, ``(B, 1, [Z,] Y, X)``) and aspects ``(B,)``.

    ``pairs`` holds the batch's estimate pairs, if its source draws any: they train
    beside the flow-matching items ``x1``.
    """

    x1: torch.Tensor
    aspect: torch.Tensor
    pairs: EstimatePairs | None = None


def augment_gain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gain in [0.5, 1.5] and flips: the prior must tolerate scale estimate errors."""
    x = x * rng.uniform(0.5, 1.5)
    for axis in range(x.ndim - 2, x.ndim):  # in-plane flips only: z is not symmetric optically
        if rng.uniform() < 0.5:
            x = np.flip(x, axis)
    return np.ascontiguousarray(x, dtype=np.float32)


class GeneratorSource:
    """Batches of freshly generated volumes at random pixel sizes and voxel aspects.

    Parameters
    ----------
    patch : sequence of int
        ``(z, y, x)`` patch size.
    aspect_range : tuple of float
        Voxel aspects (z step / pixel size) drawn log-uniformly from this range.
    pixel_um_range : tuple of float
        In-plane pixel sizes (µm) drawn log-uniformly from this range.
    """

    def __init__(
        self,
        patch: Sequence[int] = (16, 64, 64),
        aspect_range: tuple[float, float] = (1.0, 6.0),
        pixel_um_range: tuple[float, float] = (0.06, 0.2),
    ) -> None:
        self.patch = tuple(int(p) for p in patch)
        self.aspect_range = aspect_range
        self.pixel_um_range = pixel_um_range

    def describe(self) -> str:
        """One line for the model card."""
        return (
            f"built-in generator (deconflow.priors.generator), patches {self.patch}, "
            f"pixel {self.pixel_um_range} µm, voxel aspect {self.aspect_range} log-uniform"
        )

    def sample(self, batch: int, rng: np.random.Generator, plane: bool = False) -> Batch:
        """Draw a batch of 3D patches, or of 2D single planes when ``plane``."""
        xs, aspects = [], []
        for _ in range(batch):
            aspect = log_uniform(rng, *self.aspect_range)
            px = log_uniform(rng, *self.pixel_um_range)
            shape = (3, *self.patch[1:]) if plane else self.patch
            vol = generate_volume(shape, (aspect * px, px, px), rng)
            if plane:
                vol = vol[1]
                aspect = 1.0  # 2D is always told aspect 1
            xs.append(augment_gain(fit_normalization(vol).apply(vol), rng))
            aspects.append(aspect)
        return Batch(torch.from_numpy(np.stack(xs)[:, None]), torch.tensor(aspects))


def _given_as(voxel_size_um: Sequence[float] | None, full: bool = False) -> str:
    """Name a z step alone as given on the command line and in Python, for messages.

    ``full``: the same z step with all three sizes, the fix a message offers.
    """
    z = f"{float(voxel_size_um[0]):g}" if voxel_size_um else "Z"
    if full:
        return f"--voxel-size {z} Y X (voxel_size_um=({z}, y, x))"
    return f"--voxel-size {z} (voxel_size_um=({z},))"


def _no_voxel_size(path: Path, pixel_size_um: tuple[float, float] | None) -> str:
    """Return the message for a 3D stack given no voxel size whose metadata record none."""
    if pixel_size_um is None:
        return (
            f"{path} has no (z, y, x) voxel size in its metadata; pass voxel_size_um=(z, y, "
            "x) (command line: --voxel-size Z Y X) in µm."
        )
    y, x = pixel_size_um
    # the pixel size is known: the z step is all the user has to add
    return (
        f"{path} records its pixel size (y {y:g} µm, x {x:g} µm) but no z step; pass the z "
        "step alone in µm, --voxel-size Z (voxel_size_um=(z,)), to read y and x from each "
        f"file, or all three, --voxel-size Z {y:g} {x:g}."
    )


def _list_tiffs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DeconflowError(f"Training data folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _TIFF_SUFFIXES)
    if not files:
        raise DeconflowError(f"No .tif/.tiff files in {folder}; put sharp 3D stacks there.")
    return files


class FolderSource:
    """Random patches from a folder of the user's own sharp (deconvolved/high-NA) TIFF stacks.

    Each file is read once (2D ``(Y, X)`` or 3D ``(Z, Y, X)``; channel, time, sample
    (RGB) and other axes longer than 1 are refused), normalised as a whole with the
    prior's rule, and patches are cut at random. 3D steps cut patches from the 3D stacks
    only; 2D images (and stacks of one plane) feed the 2D plane steps, told aspect 1, so
    that a plane is never repeated along z into a column the prior would learn as 3D
    structure. A folder of 2D images only trains the 2D path: every step is then planes.

    Parameters
    ----------
    folder : str or path-like
        Searched recursively for ``.tif``/``.tiff``.
    patch : sequence of int
        ``(z, y, x)`` patch size; smaller stacks are padded by reflection.
    voxel_size_um : sequence of float, optional
        ``(z, y, x)`` µm for files whose metadata lack it (and to override it), or
        ``(z,)``, the z step alone: each 3D stack then takes its own pixel size (y, x)
        from its metadata, as ``deconflow run --voxel-size Z`` does. 2D images need
        neither (they are told aspect 1).

    Raises
    ------
    DeconflowError
        When the folder has no TIFF, or a file is unreadable, has non-spatial axes, holds
        NaN/Inf values, or is a 3D stack without a voxel size (or, with a z step alone,
        without a pixel size); the message names the file.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        patch: Sequence[int] = (16, 64, 64),
        voxel_size_um: Sequence[float] | None = None,
    ) -> None:
        # tifffile only when a folder is used
        from deconflow.io import read_tiff
        from deconflow.io._voxel import complete_z_step

        self.folder = Path(folder)
        self.patch = tuple(int(p) for p in patch)
        # a zero or negative z step made log(aspect) NaN: every loss NaN, blamed on the lr
        voxel_size_um = check_voxel_size(
            voxel_size_um,
            1 if voxel_size_um is not None and len(voxel_size_um) == 1 else 3,
            "voxel_size_um (--voxel-size)",
        )
        self.volumes: list[np.ndarray] = []
        self.aspects: list[float] = []
        for path in _list_tiffs(self.folder):
            image = read_tiff(path)
            extra = [
                f"{a}={n}"
                for a, n in zip(image.axes, image.data.shape, strict=False)
                if n > 1 and a not in "ZYX"
            ]
            data = np.squeeze(image.data)
            if (
                extra
                or data.ndim not in (2, 3)
                or not np.issubdtype(data.dtype, np.number)
                or np.iscomplexobj(data)
            ):
                raise DeconflowError(
                    f"{path}: expected one 2D (Y, X) or 3D (Z, Y, X) stack of one channel, got "
                    f"axes {image.axes!r} and shape {image.data.shape}"
                    + (f" (non-spatial axes {', '.join(extra)})" if extra else "")
                    + "; split channels/time points into separate files, convert RGB to one "
                    "channel, or move the file out of the training folder."
                )
            data = data.astype(np.float32)[None] if data.ndim == 2 else data.astype(np.float32)
            if not np.all(np.isfinite(data)):
                raise DeconflowError(
                    f"{path} holds NaN or Inf values; replace them (e.g. by the background "
                    "level) or move the file out of the training folder."
                )
            if data.shape[0] == 1:
                aspect = 1.0  # one plane: a 2D image, used by the plane steps only
            else:
                # only the stacks need a voxel size: a 2D image is told aspect 1 whatever
                # was given, so a z step alone must not refuse one that records no pixel size
                vs = complete_z_step(
                    voxel_size_um,
                    image,
                    path,
                    given_as=_given_as(voxel_size_um),
                    full_as=_given_as(voxel_size_um, full=True),
                )
                vs = vs or image.voxel_size_um
                if vs is None or len(vs) != 3 or not all(np.isfinite(vs)):
                    raise DeconflowError(_no_voxel_size(path, image.pixel_size_um))
                aspect = float(vs[0] / vs[-1])
            self.volumes.append(fit_normalization(data).apply(data))
            self.aspects.append(aspect)
        self._stacks = [i for i, v in enumerate(self.volumes) if v.shape[0] > 1]

    def describe(self) -> str:
        """One line for the model card."""
        planes = len(self.volumes) - len(self._stacks)
        return (
            f"{len(self.volumes)} TIFF file(s) from {self.folder} ({len(self._stacks)} 3D "
            f"stack(s), {planes} 2D image(s) used for the plane steps only), patches "
            f"{self.patch}, voxel aspects "
            f"{sorted({round(self.aspects[i], 2) for i in self._stacks})}"
        )

    def sample(self, batch: int, rng: np.random.Generator, plane: bool = False) -> Batch:
        """Cut a batch of random patches (single planes when ``plane``).

        3D patches come from the 3D stacks only; when the folder holds none, a 3D step
        draws single planes instead (the network then trains its 2D path).
        """
        if not plane and not self._stacks:
            plane = True
        pool = range(len(self.volumes)) if plane else self._stacks
        xs, aspects = [], []
        pz, py, px = (1, *self.patch[1:]) if plane else self.patch
        for _ in range(batch):
            i = pool[int(rng.integers(len(pool)))]
            vol = self.volumes[i]
            need = [(0, max(0, p - n)) for p, n in zip((pz, py, px), vol.shape, strict=True)]
            if any(n for _, n in need):
                vol = np.pad(vol, need, mode="reflect" if min(vol.shape) > 1 else "edge")
            start = [
                int(rng.integers(n - p + 1)) for n, p in zip(vol.shape, (pz, py, px), strict=True)
            ]
            cut = vol[start[0] : start[0] + pz, start[1] : start[1] + py, start[2] : start[2] + px]
            xs.append(augment_gain(cut[0] if plane else cut, rng))
            aspects.append(1.0 if plane else self.aspects[i])
        return Batch(torch.from_numpy(np.stack(xs)[:, None]), torch.tensor(aspects))
