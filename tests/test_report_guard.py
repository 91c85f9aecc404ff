"""The report guard (tests/report_guard.py) keeps a failed test's report readable on CPython 3.11.

A failing test that leaves garbage whose finalizer raises — as a NATS client left open by a failed test
does once its loop is closed — is run in a child pytest, with and without the guard.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LEAKY_TEST = '''
import gc


class Leak:
    """A reference cycle whose finalizer raises, like a coroutine closed after its event loop."""

    def __init__(self):
        self.me = self

    def __del__(self):
        {}["missing"] + 1


KEPT = []


def test_fails_leaving_garbage():
    KEPT.extend(Leak() for _ in range(200))
    gc.collect()  # the cycles reach the oldest generation: collected later, during a big allocation
    KEPT.clear()
    assert 1 + 1 == 3, "the failure the report must show"
'''
# pytest parses the failing test's whole file for its report; a big file allocates enough in that parse
# for the oldest generation to be collected inside it.
FILLER = "".join(f"def helper_{i}(a, b):\n    return [a + b * {i}, {{'k': a}}, (b, a)]\n" for i in range(4000))


def _run_pytest(tmp_path: Path, *options: str) -> str:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST + FILLER)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout + done.stderr


def test_a_failure_is_reported_even_when_its_garbage_is_collected_during_the_report(tmp_path: Path) -> None:
    out = _run_pytest(tmp_path, "-p", "report_guard")
    assert "INTERNALERROR" not in out, out
    assert "1 failed" in out and "the failure the report must show" in out, out


HAS_THE_BUG = """import ast, sys, traceback
sys.unraisablehook = lambda u: traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback)
class Leak:
    def __init__(self): self.me = self
    def __del__(self): {}["missing"] + 1
source = open(ast.__file__).read()
for _ in range(20):
    for _ in range(50):
        Leak()
    try:
        ast.parse(source)
    except SystemError:
        sys.exit(1)
"""


def test_without_the_guard_the_report_itself_fails_on_this_python(tmp_path: Path) -> None:
    """The reproduction is real: without the guard, a Python with gh-106905 ends the run in INTERNALERROR."""
    probe = tmp_path / "has_the_bug.py"  # a file: the nested parse is of the raising line's source
    probe.write_text(HAS_THE_BUG)
    if subprocess.run([sys.executable, str(probe)], timeout=60).returncode == 0:
        pytest.skip(f"CPython {sys.version.split()[0]} has the fix for gh-106905")
    out = _run_pytest(tmp_path)
    assert "SystemError: AST constructor recursion depth mismatch" in out, out
