"""Linearity checks that hold on a loaded, shared 2-core machine.

A bound in seconds fails when the machine is busy: CPU time itself stretches under contention (shared
caches, a sibling hyperthread), and a process's CPU time counts its other threads too. So the tests that
promise "linear in the input" compare the work on an input with the work on one a quarter of its size,
measured in the same run, interleaved, as this thread's CPU time: linear work costs about 4× as much,
quadratic work 16×. ``LINEAR_AT_MOST`` sits between the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SCALE = 4  # the large input is SCALE times the small one
LINEAR_AT_MOST = 8.0  # cost(large) / cost(small): linear work measures about SCALE, quadratic SCALE**2
FLOOR_SECONDS = 0.0005  # below this a cost is timer granularity and fixed overhead, not a shape


def thread_cpu(work: Callable[[], object]) -> float:
    """This thread's CPU time for one call: another thread's work, or a delay, is not counted."""
    started = time.thread_time()
    work()
    return time.thread_time() - started


def best_costs(small: Callable[[], object], large: Callable[[], object], runs: int = 5) -> tuple[float, float]:
    """The best of ``runs`` for each, the two interleaved so both see the same machine."""
    best_small = best_large = float("inf")
    for _ in range(runs):
        best_small = min(best_small, thread_cpu(small))
        best_large = min(best_large, thread_cpu(large))
    return best_small, best_large


def assert_linear(at_size: Callable[[int], Callable[[], object]], size: int, what: str = "") -> None:
    """``at_size(n)`` prepares the work on an input of ``n``; the work at ``size`` must cost at most
    ``LINEAR_AT_MOST`` times the work at ``size // SCALE`` (plus the timer's floor)."""
    small, large = best_costs(at_size(size // SCALE), at_size(size))
    assert large < LINEAR_AT_MOST * small + FLOOR_SECONDS, (
        f"{what}: {large * 1e3:.2f} ms at {size} vs {small * 1e3:.2f} ms at {size // SCALE} "
        f"({large / max(small, 1e-9):.1f}×; linear is about {SCALE}×)"
    )
