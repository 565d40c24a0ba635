"""Garbage collection that does not stall announces: the tracker's state, frozen out of the scans.

The state of 10,000 nodes is a few hundred thousand objects, and each announce replaces some of
them (a peer's record), so the collector's full passes came every few seconds and each walked all
of it: p99 68 ms at 4,500 announces/s against 8.5 ms with the collector off
(benchmarks/bench_tracker.py). Here, every ``FREEZE_EVERY`` seconds, ``gc.freeze()``: what survived
the young generations' passes moves to the permanent generation, which passes skip.

No full collection comes with the freeze: one walked every object promoted in the last few seconds
and stalled the loop for that long (p99 41 ms at 3,000 announces/s, 5 ms without it). Nor does the
collector start full passes of its own (``install``): after a freeze it counts the old generation
as nearly empty, so it started one every tenth middle pass, each again over everything promoted
since the freeze (p99 at 4,500/s: 90-210 ms with them, 12-14 ms without). Frozen objects still die
by reference counting; only cycles among them wait, so every ``THAW_EVERY`` seconds everything is
thawed and collected once (one full pass every ten minutes, not one every few seconds).
"""

from __future__ import annotations

import gc

FREEZE_EVERY = 5.0
THAW_EVERY = 600.0
NO_FULL_PASSES = 1 << 30  # the old generation's threshold: middle passes before a full one


def install() -> None:
    """This process leaves full collections to the Freezer's thaw (call once, in the server)."""
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_PASSES)


class Freezer:
    def __init__(self, now: float) -> None:
        self._next_thaw = now + THAW_EVERY  # nothing to thaw at start: the first pass comes in ten minutes

    def tick(self, now: float) -> None:
        """Call every FREEZE_EVERY seconds (``now``: a monotonic clock)."""
        if now >= self._next_thaw:
            gc.unfreeze()
            gc.collect()
            self._next_thaw = now + THAW_EVERY
        gc.freeze()
