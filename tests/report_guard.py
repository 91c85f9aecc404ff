"""A pytest plugin: collect garbage before a failed test's report is formatted.

Why: on CPython up to 3.11.7 (this machine's pyenv Python, and the one CI runs), a garbage collection that
runs *inside* ``ast.parse`` and finalizes an object whose finalizer raises (a coroutine of a NATS client
left open by a failed test, when its event loop is already closed) calls pytest's unraisable hook, which
formats that traceback with ``traceback.format_exception`` — itself an ``ast.parse`` (3.11's caret
anchors). The nested parse overwrites the AST constructor's recursion counter, which lives in interpreter
state, and the outer parse raises ``SystemError: AST constructor recursion depth mismatch`` (CPython
gh-106905, fixed in 3.12.1). The outer parse is pytest reading the failing test's source for its report,
so the run ends in INTERNALERROR and the failure it was reporting is never shown.

Garbage left by a failed test is collected here, before pytest parses anything for the report: the
finalizers run outside any parse. ``tests/test_report_guard.py`` reproduces the INTERNALERROR without this
plugin and checks the plain failure report with it.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    if call.excinfo is not None:
        gc.collect()
    return (yield)
