"""Peer-handout policy: which peers the tracker gives an announcing node."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .wire import PeerInfo

__all__ = ["HANDOUTS", "NEAR_SAMPLE", "SAMPLE", "HandoutPolicy", "LocalityFirst", "Near", "PeerInfo",
           "RandomByCompleteness", "locality"]


Near = tuple[Sequence[PeerInfo], Sequence[PeerInfo]]  # the asker's rack's peers, and its zone's


class HandoutPolicy(Protocol):
    name: str

    def handout(
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random,
        near: Near | None = None,
    ) -> list[PeerInfo]: ...


SAMPLE = 8  # candidates ranked per peer handed out, in large swarms
# With the asker's rack and zone at hand: candidates drawn per peer handed out from each of its
# rack, its zone and the whole swarm. Fewer than SAMPLE in all, yet more of them near.
NEAR_SAMPLE = 2


def locality(asker: PeerInfo, peer: PeerInfo) -> int:
    """0 = same rack, 1 = same zone, 2 = elsewhere (empty labels never match)."""
    if asker.zone and peer.zone == asker.zone:
        return 0 if asker.rack and peer.rack == asker.rack else 1
    return 2


@dataclass(frozen=True)
class LocalityFirst:
    """Peers that have what the asker lacks, nearest first, least loaded first, bounded.

    "Has what the asker lacks" is judged from piece counts (complete, or more pieces than the
    asker) so the tracker's cost per announce does not grow with the number of pieces.
    """

    name: str = "locality"

    def handout(
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random,
        near: Near | None = None,
    ) -> list[PeerInfo]:
        if limit <= 0:
            return []
        have, draw, me = asker.have, rng.random, asker.node
        zone, rack = asker.zone, asker.rack

        def key(p: PeerInfo) -> float:
            # Useful first, then nearest, then least loaded, ties at random: one float, not a
            # tuple (the sort is most of a handout's cost). Loads are below 2**20 (the wire's bound).
            distance = (0 if rack and p.rack == rack else 1) if zone and p.zone == zone else 2
            return ((0 if p.complete or p.have > have else 3) + distance) * _RANK + p.load + draw()

        others: list[PeerInfo] = []
        wanted = limit * SAMPLE
        if near is not None and len(candidates) > wanted + 1:
            # Stratified: some from the asker's rack, some from its zone, some from anywhere. A
            # uniform sample of a large swarm holds few peers of one rack (129 of 480 peers in 12
            # racks: about 10), the ones a locality-first handout wants most.
            each = limit * NEAR_SAMPLE
            drawn = {}
            for group in (*near, candidates):
                for p in (group if len(group) <= each else rng.choices(group, k=each)):
                    drawn[p.node] = p
            others = [p for p in drawn.values() if p.node != me]
        elif len(candidates) > wanted + 1:
            # Rank a random sample, not everyone: in a swarm of thousands a sample still finds useful,
            # near, idle peers, and the cost per announce stays that of the sample, not a pass over
            # every peer of the blob. Drawn with replacement (one C-level random() per draw, where
            # rng.sample spends a Python call and a set insert on each): the few repeats go.
            drawn = {p.node: p for p in rng.choices(candidates, k=wanted + 1)}
            others = [p for p in drawn.values() if p.node != me][:wanted]
        if len(others) < limit:  # a small field (or an unlucky draw): rank them all
            others = [p for p in candidates if p.node != me]
        return sorted(others, key=key)[:limit]


_RANK = 1 << 21  # above any load: the key's rank (usefulness, nearness) decides first


@dataclass(frozen=True)
class RandomByCompleteness:
    """Kraken-like: a random sample, then ordered by completeness."""

    name: str = "kraken"

    def handout(
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random,
        near: Near | None = None,
    ) -> list[PeerInfo]:
        # One more than needed, in case the asker is drawn: no pass over every peer of the blob.
        drawn = rng.sample(candidates, max(0, min(limit + 1, len(candidates))))
        sample = [p for p in drawn if p.node != asker.node][: max(0, limit)]
        if len(sample) < limit and len(drawn) < len(candidates):  # the asker drawn more than once
            others = [p for p in candidates if p.node != asker.node]
            sample = rng.sample(others, min(limit, len(others)))
        return sorted(sample, key=lambda p: (not p.complete, -p.have))


HANDOUTS: dict[str, type] = {"locality": LocalityFirst, "kraken": RandomByCompleteness}
