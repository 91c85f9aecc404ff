"""The package stays typed (mypy --strict) and lint-clean (ruff), as the project's standards ask."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    local = pathlib.Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (it comes with the test extra)")
    return found


def test_mypy_strict():
    result = subprocess.run(
        [_tool("mypy"), "--strict", "--ignore-missing-imports", "lurestream"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff():
    result = subprocess.run(
        [_tool("ruff"), "check", "lurestream", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
