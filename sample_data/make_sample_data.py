"""Rebuild the bundled sample data from the shared real-data folder (run once, by hand).

Usage: python sample_data/make_sample_data.py ../shared/data/real/bioimagenotebooks_confocal_beads
"""

import sys
from pathlib import Path

import tifffile

source = Path(sys.argv[1])
here = Path(__file__).parent

sample = tifffile.imread(source / "DeconvolutionSampleVerticalGrid1AU-crop.tif")
tifffile.imwrite(
    here / "confocal_grid.tif",
    sample,
    imagej=True,
    resolution=(1 / 0.02196, 1 / 0.02196),
    metadata={"spacing": 0.125, "unit": "um", "axes": "ZYX"},
)

# The brightest of the four beads, with a window that excludes the other three.
beads = tifffile.imread(source / "Bead_Image1_crop.tif")
# z 8..40 puts the bead (peak at z = 24) in the middle plane of 33
bead = beads[8:41, 82 - 24 : 82 + 25, 75 - 24 : 75 + 25]
tifffile.imwrite(
    here / "confocal_bead.tif",
    bead,
    imagej=True,
    resolution=(1 / 0.0225, 1 / 0.0225),
    metadata={"spacing": 0.125, "unit": "um", "axes": "ZYX"},
)
