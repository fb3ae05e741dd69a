"""Importing the prior package does no work and pulls in no GUI or plotting."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light_and_side_effect_free():
    code = (
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "import deconflow.priors, deconflow.priors._cli, deconflow.priors.train\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
