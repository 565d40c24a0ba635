"""Announce pacing: a loaded tracker asks agents for more room between their announces.

A busy agent announces on every event (a digest to report or learn, a lease wanted) at most every
50 ms (``ANNOUNCE_SPACING``), so 10,000 agents could send far more than one tracker core answers
(benchmarks/bench_tracker.py: about 5,000/s at p99 < 20 ms in memory on this 2-core VM, ~4,000/s
on Redis). The pacer counts
announces per second; above ``budget`` it raises the spacing it puts in replies in proportion to
the excess, and halves it back once the rate is below half the budget. Agents take the larger of
theirs and the tracker's (p2pdist.core.download). Sheds load at its source instead of queueing
it until requests time out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pdist.core.wire import AnnounceReply

    from .config import TrackerConfig

MAX_SPACING = 5.0  # never ask an agent to wait longer than this between announces
# The budget when the configuration gives none: about two thirds of what one core answers. In
# memory (the fast path, 0.15 ms per announce) the simulator's 1,000-node flash crowd was done
# soonest at 4,500/s (10.9 s, against 15.1 s at 3,000/s, 11.9 s at 4,000/s and 11.8 s at 5,000/s);
# a replica on Redis spends 0.24 ms per announce.
BUDGET_IN_MEMORY = 4500
BUDGET_ON_REDIS = 3000
MIN_SPACING = 0.05  # below this the agents' own spacing already rules: back to 0


def budget_of(config: TrackerConfig, on_redis: bool) -> int:
    """The configured budget, or the default for where the state is."""
    if config.announce_budget is not None:
        return config.announce_budget
    return BUDGET_ON_REDIS if on_redis else BUDGET_IN_MEMORY


class Pacer:
    def __init__(self, budget: int) -> None:
        self.budget = budget  # announces per second the tracker aims to stay under; 0: no pacing
        self.spacing = 0.0
        self._second = 0
        self._count = 0
        self.rate = 0  # announces in the last whole second

    @property
    def loaded(self) -> bool:
        """Spacing announces now: the announce logic then hurries only origin fetchers
        (tracker.service._interval)."""
        return self.spacing > 0

    def announced(self, now: float, reply: AnnounceReply | None = None) -> float:
        """Count one announce at ``now`` (monotonic seconds); the spacing to put in its ``reply``.

        An announcer whose reply holds origin leases is never spaced: its announces report the
        digests everyone else waits for and take its next leases, and there are few of them (a
        blob's origin streams). Spaced like the rest, each one-piece lease waited for the spacing
        between its report and the next lease, so the whole swarm's origin intake ran at the
        pacer's pace (simulated 10,000 nodes x 1 GiB on one tracker core: 114 s, 12.7 x the
        chunked bound, 51 announces per node).
        """
        if not self.budget:
            return 0.0
        second = int(now)
        if second != self._second:
            # A new second: last second's count (or 0 after a quiet gap) decides the spacing.
            self.rate = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
            self._adjust()
        self._count += 1
        return 0.0 if reply is not None and reply.leases else self.spacing

    def _adjust(self) -> None:
        if self.rate > self.budget:
            self.spacing = min(MAX_SPACING, max(MIN_SPACING, self.spacing) * self.rate / self.budget)
        elif self.rate < self.budget / 2 and self.spacing:
            self.spacing = self.spacing / 2 if self.spacing / 2 >= MIN_SPACING else 0.0
