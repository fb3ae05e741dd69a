"""Reading and writing image files with voxel sizes."""

from deconflow.io.ome import read_ome_description, write_ome_tiff
from deconflow.io.tiff import TiffImage, read_tiff, write_tiff

__all__ = ["TiffImage", "read_ome_description", "read_tiff", "write_ome_tiff", "write_tiff"]
