"""Import rules: numerics never pull in napari, Qt or plotting; importing does no work."""

import subprocess
import sys

GUI = ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "superqt", "magicgui")
FORBIDDEN = (*GUI, "matplotlib")


def test_numerics_import_no_gui_or_plotting():
    code = (
        "import sys, deconflow, deconflow.physics, deconflow.psf, deconflow.solvers, "
        "deconflow.pipeline, deconflow.io, deconflow.config, deconflow.cli\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_no_module_outside_napari_imports_gui():
    # every module, not only the public ones above: batch workers, hyperstack, priors and
    # the sample data run where no display (nor napari) is installed
    code = (
        "import importlib, pkgutil, sys, deconflow\n"
        "names = [m.name for m in pkgutil.walk_packages(deconflow.__path__, 'deconflow.')]\n"
        "for name in names:\n"
        "    if not name.startswith('deconflow._napari'):\n"
        "        importlib.import_module(name)\n"
        f"bad = [m for m in {GUI!r} if m in sys.modules]\n"
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
