"""Peer-handout policy: which peers the tracker gives an announcing node."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .wire import PeerInfo

__all__ = ["HANDOUTS", "SAMPLE", "HandoutPolicy", "LocalityFirst", "PeerInfo", "RandomByCompleteness", "locality"]


class HandoutPolicy(Protocol):
    name: str

    def handout(
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random
    ) -> list[PeerInfo]: ...


SAMPLE = 8  # candidates ranked per peer handed out, in large swarms


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
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random
    ) -> list[PeerInfo]:
        have, draw = asker.have, rng.random

        def key(p: PeerInfo) -> tuple[int, int, int, float]:
            useful = p.complete or p.have > have
            return (0 if useful else 1, locality(asker, p), p.load, draw())

        others: list[PeerInfo] = []
        if limit > 0 and len(candidates) > limit * SAMPLE + 1:
            # Rank a random sample, not everyone: in a swarm of thousands a sample still finds useful,
            # near, idle peers, and the cost per announce stays that of the sample (one more drawn in
            # case the asker is among them), not a pass over every peer of the blob.
            drawn = rng.sample(candidates, limit * SAMPLE + 1)
            others = [p for p in drawn if p.node != asker.node][: limit * SAMPLE]
        if len(others) < limit:  # a small field (or the asker drawn more than once): rank them all
            others = [p for p in candidates if p.node != asker.node]
        return sorted(others, key=key)[:max(0, limit)]


@dataclass(frozen=True)
class RandomByCompleteness:
    """Kraken-like: a random sample, then ordered by completeness."""

    name: str = "kraken"

    def handout(
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random
    ) -> list[PeerInfo]:
        # One more than needed, in case the asker is drawn: no pass over every peer of the blob.
        drawn = rng.sample(candidates, max(0, min(limit + 1, len(candidates))))
        sample = [p for p in drawn if p.node != asker.node][: max(0, limit)]
        if len(sample) < limit and len(drawn) < len(candidates):  # the asker drawn more than once
            others = [p for p in candidates if p.node != asker.node]
            sample = rng.sample(others, min(limit, len(others)))
        return sorted(sample, key=lambda p: (not p.complete, -p.have))


HANDOUTS: dict[str, type] = {"locality": LocalityFirst, "kraken": RandomByCompleteness}
