"""Announce pacing: a loaded tracker asks agents for more room between their announces.

A busy agent announces on every event (a digest to report or learn, a lease wanted) at most every
50 ms (``ANNOUNCE_SPACING``), so 10,000 agents could send far more than one tracker core answers
(benchmarks/bench_tracker.py: about 4,000/s at p99 < 20 ms on this 2-core VM). The pacer counts
announces per second; above ``budget`` it raises the spacing it puts in replies in proportion to
the excess, and halves it back once the rate is below half the budget. Agents take the larger of
theirs and the tracker's (p2pdist.core.download). Sheds load at its source instead of queueing
it until requests time out.
"""

from __future__ import annotations

MAX_SPACING = 5.0  # never ask an agent to wait longer than this between announces
MIN_SPACING = 0.05  # below this the agents' own spacing already rules: back to 0


class Pacer:
    def __init__(self, budget: int) -> None:
        self.budget = budget  # announces per second the tracker aims to stay under; 0: no pacing
        self.spacing = 0.0
        self._second = 0
        self._count = 0
        self.rate = 0  # announces in the last whole second

    def announced(self, now: float) -> float:
        """Count one announce at ``now`` (monotonic seconds); the spacing to ask for."""
        if not self.budget:
            return 0.0
        second = int(now)
        if second != self._second:
            # A new second: last second's count (or 0 after a quiet gap) decides the spacing.
            self.rate = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
            self._adjust()
        self._count += 1
        return self.spacing

    def _adjust(self) -> None:
        if self.rate > self.budget:
            self.spacing = min(MAX_SPACING, max(MIN_SPACING, self.spacing) * self.rate / self.budget)
        elif self.rate < self.budget / 2 and self.spacing:
            self.spacing = self.spacing / 2 if self.spacing / 2 >= MIN_SPACING else 0.0
