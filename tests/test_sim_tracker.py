"""The simulated tracker answers exactly like tracker/service.py for the same announces.

Random announce sequences (leases wanted, digests reported by holders and by others, origin bytes
streamed, completions, stops, long silences that expire peers and leases) go through both; every
reply must match.
"""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

import p2pdist.swarm
from p2pdist.config import Limits
from p2pdist.core.handout import HANDOUTS
from p2pdist.core.wire import Announce as WireAnnounce
from simulations import agent as sim_agent
from simulations import profiles
from simulations.tracker import Announce, SimTracker
from tracker.config import TrackerConfig
from tracker.service import handle_announce, memory_state

BLOB = "sha256:" + "c" * 64
PIECE = 1 << 20
PIECES = 40
NODES = [f"n{i}" for i in range(6)]


def digest(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest()


step = st.tuples(
    st.integers(0, len(NODES) - 1),  # who
    st.sampled_from([0.0, 0.05, 0.5, 1.0, 3.0, 11.0, 31.0]),  # time since the previous announce
    st.sampled_from(["progress", "progress", "progress", "completed", "stopped"]),
    st.integers(0, 4),  # leases wanted
    st.lists(st.integers(0, PIECES - 1), max_size=6),  # digests reported
    st.booleans(),  # report digests of its own leases
    st.booleans(),  # its origin streams moved bytes since its last announce
)


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=60), st.sampled_from(sorted(HANDOUTS)), st.integers(0, 3))
def test_sim_tracker_replies_like_the_real_one(steps, handout, seed):
    config = TrackerConfig(lease_pieces=4, leases_per_node=2, lease_ttl=10.0, peer_ttl=30.0, handout_size=3,
                           max_peers_per_blob=4, handout_policy=handout)
    state = memory_state(config)
    real_rng, sim_rng = random.Random(seed), random.Random(seed)
    sim = SimTracker(config, HANDOUTS[handout](), sim_rng)
    track = sim.blob(0, PIECES)
    held: dict[str, list[tuple[int, int]]] = {n: [] for n in NODES}
    pos: dict[str, int] = dict.fromkeys(NODES, 0)
    now = 1.0
    for who, dt, event, want, extra, own, streaming in steps:
        now += dt
        node = NODES[who]
        complete = event == "completed"
        indices = list(extra)
        if own:
            indices += [i for s, e in held[node] for i in range(s, e)][:3]
        indices = list(dict.fromkeys(indices))
        real = handle_announce(state, WireAnnounce(
            node=node, addr=node, blob=BLOB, size=PIECES * PIECE, have=len(indices), complete=complete,
            event=event, want_leases=want, digests=[(i, digest(i)) for i in indices],
            digest_pos=pos[node], streaming=streaming), now, real_rng, config)
        mine = sim.announce(track, Announce(
            node=node, have=len(indices), complete=complete, event=event, want_leases=want,
            digests=indices, digest_pos=pos[node] & ((1 << 21) - 1), streaming=streaming), now)
        assert mine.interval == real.interval
        assert [(s, e) for s, e, _ in mine.leases] == [(s, e) for s, e, _ in real.leases]
        assert [t for _, _, t in mine.leases] == [t for _, _, t in real.leases]
        assert mine.digests == [i for i, _ in real.digests]
        assert [p.node for p in mine.peers] == [p.node for p in real.peers]
        assert mine.digest_pos == real.digest_pos & ((1 << 21) - 1)
        held[node] = [(s, e) for s, e, _ in real.leases]
        pos[node] = real.digest_pos if event != "stopped" else 0


def test_the_agent_constants_the_simulator_copies_are_the_agents():
    assert profiles.ANNOUNCE_SPACING == p2pdist.swarm.ANNOUNCE_SPACING
    assert profiles.DIRECT_RUN_PIECES == p2pdist.swarm.DIRECT_RUN_PIECES
    assert profiles.SPARE_LEASES == p2pdist.swarm.SPARE_LEASES
    assert sim_agent.MAX_LIST == p2pdist.core.wire.MAX_LIST


def test_the_p2pdist_profile_is_the_shipped_configuration():
    from simulations.scenario import Scenario

    profile = profiles.p2pdist_profile(Scenario())
    limits, tracker = Limits(), TrackerConfig()
    assert profile.tracker == tracker
    assert (profile.peer_concurrency, profile.inflight_bytes, profile.neighbours, profile.upload_slots,
            profile.origin_concurrency, profile.piece_timeout, profile.stall_timeout) == (
        limits.peer_concurrency, limits.inflight_bytes, limits.neighbours, limits.upload_slots,
        limits.origin_concurrency, limits.piece_timeout, limits.stall_timeout)
    assert type(profile.handout) is HANDOUTS[tracker.handout_policy]
