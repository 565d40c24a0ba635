"""Garbage collection that does not stall announces: the tracker's state, frozen out of the scans.

The state of 10,000 nodes is a few hundred thousand objects, and each announce replaces some of
them (a peer's record), so the collector's full passes came every few seconds and each walked all
of it: p99 68 ms at 4,500 announces/s against 8.5 ms with the collector off
(benchmarks/bench_tracker.py). Here, every ``FREEZE_EVERY`` seconds, a collection of what is not
frozen yet, then ``gc.freeze()``: survivors move to the permanent generation, which passes skip.
Frozen objects still die by reference counting; only cycles among them would wait, so every
``THAW_EVERY`` seconds everything is thawed and collected once (one full pass, not one every few
seconds).
"""

from __future__ import annotations

import gc

FREEZE_EVERY = 5.0
THAW_EVERY = 600.0


class Freezer:
    def __init__(self) -> None:
        self._next_thaw = 0.0

    def tick(self, now: float) -> None:
        """Call every FREEZE_EVERY seconds (``now``: a monotonic clock)."""
        if now >= self._next_thaw:
            gc.unfreeze()
            self._next_thaw = now + THAW_EVERY
        gc.collect()
        gc.freeze()
