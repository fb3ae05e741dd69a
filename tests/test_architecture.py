"""Import rules: numerics never pull in napari, Qt or plotting; importing does no work."""

import subprocess
import sys

GUI = ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "superqt", "magicgui")
FORBIDDEN = (*GUI, "matplotlib")


def _assert_imports_leave_out(imports: str, modules: tuple[str, ...]) -> None:
    """Run ``imports`` in a fresh interpreter; none of ``modules`` may end up loaded."""
    check = f"bad = [m for m in {modules!r} if m in sys.modules]\nassert not bad, bad\n"
    code = f"import sys\n{imports}\n{check}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_numerics_import_no_gui_or_plotting():
    _assert_imports_leave_out(
        "import deconflow, deconflow.physics, deconflow.psf, deconflow.solvers, "
        "deconflow.pipeline, deconflow.io, deconflow.config, deconflow.cli",
        FORBIDDEN,
    )


def test_no_module_outside_napari_imports_gui():
    # every module, not only the public ones above: batch workers, hyperstack, priors and
    # the sample data run where no display (nor napari) is installed
    _assert_imports_leave_out(
        "import importlib, pkgutil, deconflow\n"
        "names = [m.name for m in pkgutil.walk_packages(deconflow.__path__, 'deconflow.')]\n"
        "for name in names:\n"
        "    if not name.startswith('deconflow._napari'):\n"
        "        importlib.import_module(name)",
        GUI,
    )


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
