"""Static checks that CI runs with the tests: ruff (lint and format) and mypy on ``src/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_ruff_lint_and_format_are_clean():
    for args in (
        ("ruff", "check", "src", "tests", "benchmarks"),
        ("ruff", "format", "--check", "src", "tests", "benchmarks"),
    ):
        done = _run(*args)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_mypy_finds_no_type_errors(tmp_path):
    # the settings (files, strictness, untyped third-party modules) are in pyproject.toml
    done = _run("mypy", "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
