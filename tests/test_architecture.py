"""Import rules: numerics never pull in napari, Qt or plotting; importing does no work."""

import subprocess
import sys

FORBIDDEN = ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "magicgui", "matplotlib")


def test_numerics_import_no_gui_or_plotting():
    code = (
        "import sys, deconflow, deconflow.physics, deconflow.psf, deconflow.solvers, "
        "deconflow.pipeline, deconflow.io, deconflow.config, deconflow.cli\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_public_api_is_small_and_typed():
    import deconflow

    assert set(deconflow.__all__) >= {
        "deconvolve",
        "iter_deconvolve",
        "DeconvolutionSettings",
        "DeconflowError",
        "prepare_psf",
    }
    assert deconflow.deconvolve.__annotations__["return"] in ("np.ndarray", "numpy.ndarray")
