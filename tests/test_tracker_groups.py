"""The tracker's per-zone and per-rack peer lists (tracker.state.BlobRecord.groups) follow every
put, relabel, removal and expiry, so handouts draw near peers from them (p2pdist.core.handout)."""

from __future__ import annotations

import gc
import random
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.core.wire import PeerInfo
from tracker.gc_tuning import FREEZE_EVERY, NO_FULL_PASSES, THAW_EVERY, Freezer, install
from tracker.state import BlobRecord, near_keys


def _record() -> BlobRecord:
    return BlobRecord("sha256:" + "a" * 64, epoch=0, last_seen=0.0, max_peers=10_000)


def _expected(record: BlobRecord) -> dict[str, set[str]]:
    want: dict[str, set[str]] = {}
    for info in record.live_peers():
        for key in near_keys(info.zone, info.rack):
            want.setdefault(key, set()).add(info.node)
    return want


def _actual(record: BlobRecord) -> dict[str, set[str]]:
    got = {}
    for key, group in record.groups.items():
        assert [group.slots[p.node] for p in group.infos] == list(range(len(group.infos)))  # slots agree
        got[key] = {p.node for p in group.infos}
    return got


ops = st.lists(st.tuples(st.sampled_from(["put", "remove"]), st.integers(0, 30), st.sampled_from(["", "z1", "z2"]),
                         st.sampled_from(["", "r1", "r2"])), max_size=200)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_groups_match_the_live_peers_whatever_the_order_of_changes(changes):
    record = _record()
    for op, n, zone, rack in changes:
        if op == "put":
            record.put_peer(PeerInfo(f"n{n}", "a:1", zone=zone, rack=rack), 0.0)
        else:
            record.remove_peer(f"n{n}")
    assert _actual(record) == _expected(record)


def test_near_peers_are_the_rack_and_the_zone_and_expiry_empties_them():
    record = _record()
    record.put_peer(PeerInfo("a", "a:1", zone="z1", rack="r1"), 0.0)
    record.put_peer(PeerInfo("b", "b:1", zone="z1", rack="r2"), 0.0)
    record.put_peer(PeerInfo("c", "c:1", zone="z2", rack="r1"), 0.0)  # same rack name, other zone
    record.put_peer(PeerInfo("d", "d:1"), 0.0)  # no labels: in no group
    rack, zone = record.near_peers("z1", "r1")
    assert [p.node for p in rack] == ["a"] and {p.node for p in zone} == {"a", "b"}
    assert record.near_peers("z3", "r1") == ([], [])
    record.put_peer(PeerInfo("a", "a:1", zone="z2", rack="r1"), 1.0)  # relabelled
    assert {p.node for p in record.near_peers("z2", "r1")[0]} == {"a", "c"}
    assert sorted(record.expire_peers(100.0, ttl=30.0)) == ["a", "b", "c", "d"]
    assert record.groups == {} and record.live_peers() == []


def test_freezer_moves_survivors_out_of_the_collector_s_passes_and_thaws_them_in_time():
    class Node:
        pass

    freezer = Freezer(now=0.0)
    kept = [[random.random()] for _ in range(1000)]  # long-lived state
    gc.unfreeze()  # whatever ran before (the simulator freezes too): the count starts from nothing
    assert gc.get_freeze_count() == 0
    cycle = Node()
    cycle.me = cycle  # garbage only the cycle collector can free
    alive = weakref.ref(cycle)
    try:
        freezer.tick(now=FREEZE_EVERY)
        assert gc.get_freeze_count() >= len(kept)
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: out of every pass, the full one included
        freezer.tick(now=2 * FREEZE_EVERY)  # not yet time to thaw: frozen stays frozen
        assert gc.get_freeze_count() >= len(kept) and alive() is not None
        freezer.tick(now=THAW_EVERY)  # the thaw: one full pass frees what died frozen
        assert alive() is None
        assert gc.get_freeze_count() >= len(kept)  # and what lives is frozen again
    finally:
        gc.unfreeze()


def test_the_tracker_process_leaves_full_collections_to_the_thaw():
    before = gc.get_threshold()
    try:
        install()
        young, middle, full = gc.get_threshold()
        assert (young, middle) == before[:2] and full == NO_FULL_PASSES
    finally:
        gc.set_threshold(*before)
