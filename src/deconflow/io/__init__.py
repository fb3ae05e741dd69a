"""Reading and writing image files with voxel sizes."""

from deconflow.io.tiff import TiffImage, read_tiff, write_tiff

__all__ = ["TiffImage", "read_tiff", "write_tiff"]
