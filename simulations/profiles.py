"""Who the simulated agents are: p2pdist as shipped, and the baselines, as policy bundles.

The p2pdist profile takes every number from the shipped defaults (``p2pdist.config.Limits``,
``tracker.config.TrackerConfig``) and every policy from ``p2pdist.core``, so the simulation follows
the code when either changes. Scenarios may override them, and the run says what it used.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pdist.config import Limits
from p2pdist.core.download import ANNOUNCE_SPACING, DIRECT_RUN_PIECES
from p2pdist.core.handout import HANDOUTS, HandoutPolicy, PeerInfo, RandomByCompleteness, locality
from p2pdist.settings import ConfigError, Source, load_settings, replace
from tracker.config import TrackerConfig

from .scenario import Scenario
from .selection import SELECTORS, PieceSelector, RandomOrder, Sequential
from .units import ScenarioError

# How a node gets pieces nobody in the cluster has yet.
LEASES = "leases"  # p2pdist: only under a tracker lease, in Range runs (the agent's _schedule_origin)
DIRECT = "direct"  # no tracker: every piece from the origin (the agent's _lease_everything)
ORIGIN_PEER = "origin-peer"  # Kraken: the origin is a seeding peer that every handout includes
BACK_TO_SOURCE = "back-to-source"  # Dragonfly: a node with no parent fetches the whole blob itself


# Uploads a Kraken- or Dragonfly-like peer serves at once: theirs are tens (Dragonfly's default
# concurrent upload limit is 50), not p2pdist's few slots with ROOM advertisements.
BASELINE_UPLOAD_SLOTS = 64


@dataclass(frozen=True)
class Profile:
    name: str
    selector: PieceSelector
    handout: HandoutPolicy
    origin: str = LEASES
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    peer_concurrency: int = 4
    inflight_bytes: int = 96 << 20
    neighbours: int = 16  # peers a node dials (inbound connections are not limited, as in Neighbourhood)
    upload_slots: int = 64
    origin_concurrency: int = 4
    piece_timeout: float = 30.0
    stall_timeout: float = 20.0
    announce_spacing: float = ANNOUNCE_SPACING
    direct_run_pieces: int = DIRECT_RUN_PIECES
    digests_known: bool = False  # True: piece digests come with the metainfo (Kraken, Dragonfly)
    digest_proofs: bool = True  # p2pdist: digests travel with HAVEs, with the tracker's proof (core.proofs)
    parents_only: bool = False  # True: fetch only from the last handout (Dragonfly's scheduled parents)
    streaming: bool = True
    back_to_source: int = 1  # Dragonfly: nodes that may go back to the source per blob
    upstream_digests: bool = True  # p2pdist agents report origin piece digests to the tracker
    stall_fallback: bool = True  # no progress for stall_timeout: fetch the rest from the origin directly
    # What a peer does with a request when all upload slots are busy: answer 503 (the shipped agent;
    # the asker backs off from it) or queue it until a slot frees (what-if, for policy studies).
    upload_queue: bool = False
    # Peers advertise their free upload slots (the agent's ROOM message): askers skip full peers,
    # prefer the emptiest, and look again when a full one frees a slot. Off for the baselines.
    load_aware: bool = True
    # A piece is passed on from its first verified block (the agent's limits.cut_through); the
    # baselines pass on only whole pieces, as Kraken and Dragonfly do.
    cut_through: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "selector": self.selector.name, "handout": self.handout.name, "origin": self.origin,
            "peer_concurrency": self.peer_concurrency, "inflight_bytes": self.inflight_bytes,
            "neighbours": self.neighbours, "upload_slots": self.upload_slots,
            "origin_concurrency": self.origin_concurrency, "handout_size": self.tracker.handout_size,
            "announce_interval": self.tracker.announce_interval, "busy_interval": self.tracker.busy_interval,
            "lease_pieces": self.tracker.lease_pieces, "leases_per_node": self.tracker.leases_per_node,
            "lease_ttl": self.tracker.lease_ttl, "max_peers_per_blob": self.tracker.max_peers_per_blob,
        }


def _selector(name: str) -> PieceSelector:
    if name not in SELECTORS:
        raise ScenarioError(f"p2pdist.selector: unknown {name!r}; choose from {', '.join(SELECTORS)}")
    return SELECTORS[name]()


def p2pdist_profile(scenario: Scenario) -> Profile:
    overrides = dict(scenario.limits)
    unknown = sorted(set(overrides) - set(Limits.model_fields))
    if unknown:
        raise ScenarioError(f"p2pdist.limits: unknown setting(s) {', '.join(unknown)}")
    try:
        limits = load_settings(Limits, [Source("the scenario's [p2pdist.limits]", overrides)])
        tracker = load_settings(TrackerConfig, [Source("the scenario's [p2pdist.tracker]", dict(scenario.tracker))])
        if scenario.image.piece_size:
            # A pinned piece size is the tracker's rule: it decides every layout (core.layout.decide_layout).
            tracker = replace(tracker, piece_min=scenario.image.piece_size, piece_max=scenario.image.piece_size)
    except ConfigError as e:
        raise ScenarioError(f"p2pdist.limits / p2pdist.tracker: {e}") from None
    handout_name = scenario.handout or tracker.handout_policy
    if handout_name not in HANDOUTS:
        raise ScenarioError(f"p2pdist.handout: unknown {handout_name!r}; choose from {', '.join(HANDOUTS)}")
    return Profile(
        name="p2pdist", selector=_selector(scenario.selector), handout=HANDOUTS[handout_name](),
        origin=LEASES, tracker=tracker, peer_concurrency=limits.peer_concurrency,
        inflight_bytes=limits.inflight_bytes, neighbours=limits.neighbours, upload_slots=limits.upload_slots,
        origin_concurrency=limits.origin_concurrency, piece_timeout=limits.piece_timeout,
        stall_timeout=limits.stall_timeout, streaming=scenario.streaming, digest_proofs=scenario.digest_proofs,
        cut_through=limits.cut_through,
    )


def origin_only_profile(scenario: Scenario) -> Profile:
    """The p2pdist agent with no tracker: what every node does when P2P is switched off."""
    return dataclasses.replace(p2pdist_profile(scenario), name="origin-only", origin=DIRECT)


def kraken_profile(scenario: Scenario) -> Profile:
    """Kraken-like: random peers ordered by completeness, random pieces, origin as a seeder.

    Numbers follow Kraken's defaults: 10 connections per torrent, 3 requests pipelined per peer,
    announce every 3 s; the torrent's metainfo carries every piece digest from the start.
    """
    base = p2pdist_profile(scenario)
    tracker = replace(base.tracker, announce_interval=3.0, busy_interval=3.0, handout_size=10)
    return dataclasses.replace(
        base, name="kraken", selector=RandomOrder(), handout=RandomByCompleteness(), origin=ORIGIN_PEER,
        tracker=tracker, peer_concurrency=3, neighbours=10, inflight_bytes=(10 * 3) * _piece_hint(scenario, tracker),
        digests_known=True, digest_proofs=False, streaming=False, stall_fallback=False, load_aware=False,
        upload_slots=BASELINE_UPLOAD_SLOTS, cut_through=False,
    )


def dragonfly_profile(scenario: Scenario) -> Profile:
    """Dragonfly-like: a scheduler gives each node a few scored parents; the first goes back to source.

    Four candidate parents (Dragonfly's default candidate_parent_limit), pieces in order, parents
    re-scheduled at every announce (1 s); piece digests travel with the piece metadata.
    """
    base = p2pdist_profile(scenario)
    tracker = replace(base.tracker, announce_interval=1.0, busy_interval=1.0, handout_size=4)
    return dataclasses.replace(
        base, name="dragonfly", selector=Sequential(), handout=ScoredParents(), origin=BACK_TO_SOURCE,
        tracker=tracker, peer_concurrency=4, neighbours=4, inflight_bytes=16 * _piece_hint(scenario, tracker),
        digests_known=True, digest_proofs=False, parents_only=True, streaming=False, stall_fallback=False,
        load_aware=False,
        upload_slots=BASELINE_UPLOAD_SLOTS, cut_through=False,
    )


def _piece_hint(scenario: Scenario, tracker: TrackerConfig) -> int:
    """The piece size of the largest layer, as make_blobs will decide it: budgets are in pieces."""
    from p2pdist.core.layout import decide_layout

    return decide_layout(max(scenario.image.layers), rule=tracker.piece_rule).piece_size


@dataclass(frozen=True)
class ScoredParents:
    """Dragonfly-like parent choice: only peers ahead of the asker, best score first.

    The score weighs completeness, free upload (load as reported) and locality, in the spirit of
    Dragonfly's scheduler evaluator; ties are broken at random.
    """

    upload_slots: int = 64
    name: str = "scored-parents"

    def handout(
        self, asker: PeerInfo, candidates: Sequence[PeerInfo], limit: int, rng: random.Random,
        near: object = None,
    ) -> list[PeerInfo]:
        ahead = [p for p in candidates if p.node != asker.node and (p.complete or p.have > asker.have)]
        if not ahead:
            return []
        most = max(p.have for p in ahead) or 1

        def score(p: PeerInfo) -> tuple[float, float]:
            complete = 1.0 if p.complete else p.have / most
            free = max(0.0, 1.0 - p.load / self.upload_slots)
            near = (2 - locality(asker, p)) / 2
            return (-(0.4 * complete + 0.4 * free + 0.2 * near), rng.random())

        return sorted(ahead, key=score)[: max(0, limit)]
