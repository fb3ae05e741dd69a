"""Reading and writing image files with voxel sizes: TIFF / OME-TIFF and OME-Zarr."""

from deconflow.io._dispatch import is_zarr_path, read_description, read_image, write_image
from deconflow.io._zarr import read_ome_zarr, read_ome_zarr_description, write_ome_zarr
from deconflow.io.ome import read_ome_description, write_ome_tiff
from deconflow.io.tiff import TiffImage, read_tiff, write_tiff

__all__ = [
    "TiffImage",
    "is_zarr_path",
    "read_description",
    "read_image",
    "read_ome_description",
    "read_ome_zarr",
    "read_ome_zarr_description",
    "read_tiff",
    "write_image",
    "write_ome_tiff",
    "write_ome_zarr",
    "write_tiff",
]
