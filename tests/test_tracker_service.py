"""The tracker's announce logic, driven with a fake clock (plain numbers): no sockets, no sleeps."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.core.layout import piece_size_for
from p2pdist.core.wire import Announce, AnnounceReply
from p2pdist.settings import replace
from tracker.config import TrackerConfig
from tracker.service import AnnounceError, handle_announce, memory_state
from tracker.state import MemoryState

BLOB = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
MiB = 1 << 20
SIZE = 64 * MiB  # announces without an explicit size carry this one (or the blob's first)
# Slow start off: these tests are about lease mechanics; test_origin_slow_start_* turn it on. Solo
# leases as long as the others, for the same reason; test_a_lone_downloader_* are about them. Audits
# off, so digests are published as they come; the audit tests (AUDITED) turn them on.
CONFIG = TrackerConfig(
    lease_pieces=4, solo_lease_pieces=4, leases_per_node=2, lease_ttl=10.0, peer_ttl=30.0, handout_size=16,
    origin_slow_start=False, audits=False,
)


def pd(index: int) -> bytes:
    """The (fake) sha256 of piece ``index``."""
    return hashlib.sha256(b"piece %d" % index).digest()


class Harness:
    """A tracker state plus a recorder of the events the service emits."""

    def __init__(self, config: TrackerConfig = CONFIG, **state_args: Any) -> None:
        self.config = config
        self.state = state_args.pop("state", None) or memory_state(config)
        self.rng = random.Random(7)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.sizes: dict[str, int] = {}  # the size each blob was first announced with
        self.loaded = False  # the tracker's pacer is spacing announces (handle_announce's loaded)

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == event]

    def announce(self, node: str, now: float, **fields: Any) -> AnnounceReply:
        fields.setdefault("blob", BLOB)
        fields.setdefault("size", self.sizes.get(fields["blob"], SIZE))  # agents always know it
        if fields["size"] is not None:
            self.sizes.setdefault(fields["blob"], fields["size"])
        msg = Announce(node=node, addr=f"{node}.example:7001", **fields)
        return handle_announce(self.state, msg, now, self.rng, self.config, self.emit, loaded=self.loaded)


def peers_of(reply: AnnounceReply) -> set[str]:
    return {p.node for p in reply.peers}


def ranges(reply: AnnounceReply) -> list[tuple[int, int]]:
    return [(start, end) for start, end, _ in reply.leases]


# --- size and layout ---------------------------------------------------------------------------


def test_first_size_fixes_layout_and_later_announces_learn_it() -> None:
    t = Harness()
    first = t.announce("a", 0, size=100 * MiB)
    assert (first.size, first.piece_size) == (100 * MiB, piece_size_for(100 * MiB))
    later = t.announce("b", 1, size=None)  # size None: the only swarm of this digest answers
    assert (later.size, later.piece_size) == (100 * MiB, piece_size_for(100 * MiB))


def test_unknown_size_gives_no_layout_and_no_leases() -> None:
    t = Harness()
    reply = t.announce("a", 0, want_leases=2, size=None)
    assert (reply.size, reply.piece_size, reply.leases) == (None, None, [])
    assert t.state.blob_count() == 0  # nothing is kept for a blob nobody gave a size for


def test_another_size_is_another_swarm_so_a_wrong_size_turns_nobody_away() -> None:
    t = Harness()
    t.announce("liar", 0, size=10 * MiB + 1, want_leases=1)  # first, with a wrong size
    honest = t.announce("a", 1, size=10 * MiB, want_leases=1)
    assert honest.size == 10 * MiB and honest.leases  # the real size's swarm, with its own leases
    assert "liar" not in peers_of(t.announce("b", 2, size=10 * MiB))
    with pytest.raises(AnnounceError) as err:  # no size and two swarms: which one is not guessed
        t.announce("c", 3, size=None)
    assert err.value.kind == "size-conflict"


def test_sizes_per_digest_are_bounded_and_a_crowded_swarm_is_kept() -> None:
    t = Harness()
    for n in range(3):
        t.announce(f"crowd{n}", 0, size=10 * MiB)
    for k in range(10):  # a liar cycling through sizes evicts only its own lone swarms
        t.announce("liar", 1 + k, size=MiB + k)
    assert t.state.sizes(BLOB) <= t.state.max_sizes_per_blob
    assert peers_of(t.announce("d", 20, size=10 * MiB)) >= {"crowd0", "crowd1", "crowd2"}


def test_too_large_size_is_refused_without_creating_the_blob() -> None:
    t = Harness(replace(CONFIG, max_blob_size=MiB))
    with pytest.raises(AnnounceError) as err:
        t.announce("a", 0, size=MiB + 1)
    assert err.value.kind == "size-invalid"
    assert t.state.blob_count() == 0


def test_config_overrides_the_piece_size_rule() -> None:
    t = Harness(replace(CONFIG, piece_min=64 << 10, piece_max=256 << 10, piece_target=4))
    assert t.announce("a", 0, size=MiB).piece_size == 256 << 10
    assert t.announce("a", 0, size=100, blob=OTHER).piece_size == 64 << 10


# --- peers ---------------------------------------------------------------------------------------


def test_handout_is_bounded_and_excludes_the_asker() -> None:
    t = Harness(replace(CONFIG, handout_size=3))
    for i in range(10):
        t.announce(f"n{i}", 0)
    reply = t.announce("n0", 1)
    assert len(reply.peers) == 3
    assert "n0" not in peers_of(reply)


def test_handout_prefers_the_same_rack_then_zone() -> None:
    t = Harness(replace(CONFIG, handout_size=2))
    t.announce("far", 0, zone="z2", rack="r9", complete=True)
    t.announce("zone", 0, zone="z1", rack="r2", complete=True)
    t.announce("rack", 0, zone="z1", rack="r1", complete=True)
    reply = t.announce("me", 1, zone="z1", rack="r1")
    assert [p.node for p in reply.peers] == ["rack", "zone"]


def test_peers_expire_after_peer_ttl() -> None:
    t = Harness()
    t.announce("old", 0)
    t.announce("fresh", 20)
    reply = t.announce("me", 31)  # "old" last announced 31 s ago, past the 30 s TTL
    assert peers_of(reply) == {"fresh"}
    assert [f["node"] for f in t.of("peer_expired")] == ["old"]


def test_a_peer_refreshed_often_expires_only_after_its_last_announce() -> None:
    # Expiry follows each peer's newest announce, however many older ones it made.
    t = Harness()
    for now in range(0, 60, 2):
        t.announce("busy", now)
    t.announce("quiet", 1)
    reply = t.announce("me", 60)
    assert peers_of(reply) == {"busy"}
    assert [f["node"] for f in t.of("peer_expired")] == ["quiet"]
    assert len(t.state.get(BLOB).seen) <= 64 + 4 * len(t.state.get(BLOB).peers)  # refreshes do not pile up


def test_a_full_neighbourhood_gets_no_handout_but_its_leases_and_digests() -> None:
    t = Harness()
    t.announce("seed", 0, size=8 * MiB, complete=True, digests=[(0, pd(0))])
    reply = t.announce("me", 1, size=8 * MiB, want_leases=1, wants_peers=False)
    assert reply.peers == [] and reply.leases and reply.digests == [(0, pd(0))]
    assert peers_of(t.announce("me", 2, wants_peers=True)) == {"seed"}


def test_handout_policy_is_chosen_by_name() -> None:
    t = Harness(replace(CONFIG, handout_policy="kraken", handout_size=2))
    for i in range(5):
        t.announce(f"n{i}", 0, have=i)
    reply = t.announce("me", 1)
    assert len(reply.peers) == 2 and "me" not in peers_of(reply)


def test_peers_per_blob_are_bounded() -> None:
    config = replace(CONFIG, max_peers_per_blob=3)
    t = Harness(config)
    for i in range(5):
        reply = t.announce(f"n{i}", 0)
    assert isinstance(reply, AnnounceReply)  # the extra node is still served
    assert t.state.peer_count() == 3
    assert len(t.of("peer_rejected")) == 2


def test_stopped_removes_the_peer_and_releases_its_leases() -> None:
    t = Harness()
    held = ranges(t.announce("a", 0, size=64 * MiB, want_leases=2))
    t.announce("b", 0)
    reply = t.announce("a", 1, event="stopped")
    assert reply.peers == [] and reply.leases == []
    assert "a" not in peers_of(t.announce("c", 2))
    assert ranges(t.announce("b", 2, want_leases=2)) == held  # free again at once, no TTL wait


# --- leases --------------------------------------------------------------------------------------


def test_a_lone_downloader_gets_long_leases_until_another_arrives() -> None:
    t = Harness(replace(CONFIG, lease_pieces=1, solo_lease_pieces=8, leases_per_node=5, origin_streams=0))
    # The first lease is short even alone: in a flash crowd the first node to announce is alone too.
    assert ranges(t.announce("a", 0, size=64 * MiB, want_leases=1)) == [(0, 1)]
    # Alone for a piece's time (its digest came back): nobody to spread pieces to, so long leases
    # and fewer round trips between Range requests.
    reply = t.announce("a", 1, digests=[(0, pd(0))], want_leases=2)
    assert ranges(reply) == [(1, 9), (9, 17)]
    assert ranges(t.announce("b", 1, want_leases=2)) == [(17, 18), (18, 19)]  # two downloaders: short again
    assert ranges(t.announce("a", 2, want_leases=1)) == [(1, 9), (9, 17), (19, 20)]
    # A seeder is no downloader: once "b" completes, "a" is alone again. b's leases went back to the
    # pool, so a's next lease starts there and runs up to its own lease at 19.
    t.announce("b", 3, complete=True, have=64)
    assert ranges(t.announce("a", 4, want_leases=1))[-1] == (17, 19)
    assert ranges(t.announce("a", 4, want_leases=1))[-1] == (20, 28)


def test_leases_do_not_overlap_across_nodes() -> None:
    t = Harness()
    t.announce("seed-size", 0, size=64 * MiB)  # 64 pieces of 1 MiB
    covered: list[int] = []
    for node in ("a", "b", "c"):
        reply = t.announce(node, 1, want_leases=2)
        assert len(reply.leases) == 2
        for start, end, ttl in reply.leases:
            assert end - start == 4 and ttl == pytest.approx(10.0)
            covered.extend(range(start, end))
    assert len(covered) == len(set(covered)) == 24


def test_leases_per_node_are_bounded_and_still_held_ones_are_repeated() -> None:
    t = Harness()
    first = t.announce("a", 0, size=64 * MiB, want_leases=2)
    again = t.announce("a", 4, want_leases=2)  # e.g. the first reply was lost
    assert ranges(again) == ranges(first)
    assert [ttl for _, _, ttl in again.leases] == [pytest.approx(6.0)] * 2
    assert ranges(t.announce("a", 5)) == ranges(first)  # held leases come back even unasked


def test_origin_streams_are_capped_per_blob_and_shared_by_downloaders() -> None:
    # Agents that keep a spare lease queued behind their streams say so (``spares``) and get one
    # lease more, which opens no stream.
    _origin_streams_capped_and_shared(spares=True)


def test_older_agents_get_no_spare_lease_and_each_lease_is_a_stream() -> None:
    # Older agents start every lease they hold at once (no ``spares`` in their announce).
    _origin_streams_capped_and_shared(spares=False)


def _origin_streams_capped_and_shared(spares: bool) -> None:
    spare = 1 if spares else 0
    t = Harness(replace(CONFIG, leases_per_node=5, origin_streams=4))
    t.announce("seeder", 0, size=64 * MiB, complete=True)  # complete: not a downloader
    assert len(t.announce("a", 1, want_leases=5, spares=spares).leases) == 4 + spare  # alone: the whole cap
    t2 = Harness(replace(CONFIG, leases_per_node=5, origin_streams=4))
    t2.announce("seeder", 0, size=64 * MiB, complete=True)
    for node in ("a", "b", "c", "d"):
        t2.announce(node, 1)  # four downloaders known, none asked for leases yet
    got = {node: len(t2.announce(node, 2, want_leases=5, spares=spares).leases) for node in ("a", "b", "c", "d")}
    # 4 // 4 streams each (and the spare): pieces land on four uplinks.
    assert got == dict.fromkeys("abcd", 1 + spare)
    t2.announce("e", 3)
    assert t2.announce("e", 3, want_leases=5, spares=spares).leases == []  # the cap is reached


def test_origin_slow_start_opens_one_stream_more_per_digested_piece() -> None:
    t = Harness(replace(CONFIG, leases_per_node=5, origin_streams=8, origin_slow_start=True))
    first = t.announce("a", 0, size=64 * MiB, want_leases=5)
    assert ranges(first) == [(0, 4)]  # one stream while nothing is digested
    assert t.announce("b", 0, want_leases=5).leases == []
    t.announce("a", 1, digests=[(0, pd(0))])  # one digest: one more stream (1 + 1 out)
    assert ranges(t.announce("b", 1, want_leases=5)) == [(4, 8)]
    t.announce("a", 2, digests=[(1, pd(1)), (2, pd(2))])  # three digests: up to four out
    assert len(t.announce("b", 2, want_leases=5).leases) == 3  # b's one plus two new
    assert len(t.announce("c", 2, want_leases=5).leases) == 0  # a 1 + b 3 = 4 = 1 + 3 digested
    t.announce("a", 3, digests=[(3, pd(3))])  # a's first lease closes: 4 digested, 3 out
    assert len(t.announce("c", 3, want_leases=5).leases) == 2  # up to 1 + 4 = 5 out


def test_origin_slow_start_does_not_hold_back_a_blob_a_seeder_digested() -> None:
    t = Harness(replace(CONFIG, leases_per_node=5, origin_streams=8, origin_slow_start=True))
    t.announce("seeder", 0, size=64 * MiB, complete=True,
               digests=[(i, pd(i)) for i in range(32)])  # half the blob is known from a seeder
    assert len(t.announce("a", 1, want_leases=5).leases) == 5  # no slow start left to do


def test_complete_nodes_get_no_leases() -> None:
    t = Harness()
    assert t.announce("seeder", 0, size=64 * MiB, complete=True, want_leases=2).leases == []


def test_expired_lease_is_reassigned_and_late_digests_are_rejected() -> None:
    t = Harness()
    a = t.announce("a", 0, size=64 * MiB, want_leases=1)
    assert ranges(a) == [(0, 4)]
    b = t.announce("b", 11, want_leases=1)  # a said nothing for 11 s > lease_ttl
    assert ranges(b) == [(0, 4)]
    assert t.of("lease_expired") == [{"blob": BLOB, "node": "a", "start": 0, "end": 4}]
    assert t.of("lease_granted")[-1]["reassigned"] is True
    late = t.announce("a", 12, digests=[(0, pd(0))])
    assert late.digests == [] and ranges(late) == []
    assert t.of("digests_rejected")[-1] == {"blob": BLOB, "node": "a", "count": 1, "reason": "not-lease-holder"}


def test_progress_renews_a_lease() -> None:
    t = Harness()
    t.announce("a", 0, size=64 * MiB, want_leases=1)
    t.announce("a", 8, digests=[(0, pd(0))])
    reply = t.announce("a", 15)  # 15 s after the grant, 7 s after progress
    assert ranges(reply) == [(0, 4)]
    assert t.announce("b", 16, want_leases=1).leases[0][:2] == (4, 8)


def test_origin_bytes_renew_a_lease_before_its_first_digest() -> None:
    # A piece slower than lease_ttl: without the renewal the lease went to b while a kept streaming,
    # and those pieces left the origin twice.
    t = Harness()
    t.announce("a", 0, size=64 * MiB, want_leases=1)
    t.announce("a", 6, streaming=True)
    kept = t.announce("a", 12, streaming=True)  # no digest yet, 12 s after the grant
    assert ranges(kept) == [(0, 4)] and kept.leases[0][2] == 10.0
    assert t.of("leases_renewed") == [{"blob": BLOB, "node": "a"}] * 2
    assert ranges(t.announce("b", 21, want_leases=1)) == [(4, 8)]  # 9 s after a's last bytes
    assert t.of("lease_expired") == []
    # Announces that say no bytes arrived renew nothing: the lease expires 10 s after the last bytes.
    t.announce("a", 20)
    assert ranges(t.announce("b", 23, want_leases=1)) == [(4, 8), (0, 4)]
    assert t.of("lease_expired") == [{"blob": BLOB, "node": "a", "start": 0, "end": 4}]
    assert len(t.of("leases_renewed")) == 2


def test_streaming_from_a_node_without_leases_renews_nothing() -> None:
    t = Harness()
    t.announce("a", 0, size=64 * MiB, want_leases=1)
    t.announce("b", 5, streaming=True)
    assert t.of("leases_renewed") == []
    assert ranges(t.announce("b", 11, want_leases=1)) == [(0, 4)]  # a's lease expired all the same


# --- digests -------------------------------------------------------------------------------------


def test_digests_are_accepted_only_from_the_lease_holder() -> None:
    t = Harness()
    t.announce("a", 0, size=64 * MiB, want_leases=1)  # a holds pieces 0..3
    intruder = t.announce("b", 1, digests=[(0, b"\x00" * 32), (1, pd(1))])
    assert intruder.digests == []
    assert t.of("digests_rejected")[-1]["count"] == 2
    holder = t.announce("a", 2, digests=[(0, pd(0)), (1, pd(1))])
    assert holder.digests == [(0, pd(0)), (1, pd(1))]
    # The intruder learns the holder's digests on its next announce, never its own.
    assert t.announce("b", 3, digest_pos=intruder.digest_pos).digests == [(0, pd(0)), (1, pd(1))]


def test_out_of_range_and_conflicting_digests_are_rejected_resends_ignored() -> None:
    t = Harness()
    t.announce("a", 0, size=4 * MiB, want_leases=1)
    t.announce("a", 1, digests=[(0, pd(0))])
    t.events.clear()
    t.announce("a", 2, digests=[(0, pd(0))])  # resend after a lost reply
    assert t.of("digests_rejected") == []
    t.announce("s", 3, complete=True, digests=[(0, pd(99)), (9, pd(9))])
    reasons = {f["reason"] for f in t.of("digests_rejected")}
    assert reasons == {"conflict", "out-of-range"}


def test_seeder_digests_are_accepted_for_pieces_without_one() -> None:
    t = Harness()
    t.announce("a", 0, size=8 * MiB, want_leases=1)
    t.announce("a", 1, digests=[(0, pd(0))])
    seeder = t.announce("s", 2, complete=True, digests=[(i, pd(i)) for i in range(8)])
    assert seeder.digests == []  # a seeder is sent no digests back: it has verified them all
    log = t.announce("b", 3).digests
    assert [i for i, _ in log] == list(range(8))  # each piece once, 0 from the lease holder
    assert t.of("digests_accepted")[-1] == {"blob": BLOB, "node": "s", "count": 7, "seeder": True}
    assert t.announce("b", 3, want_leases=2).leases == []  # every piece has its digest: nothing to lease
    assert t.announce("a", 3).leases == []  # a's lease closed once all its pieces had digests


def test_a_completing_node_hears_how_many_digests_the_tracker_has_and_repeats_are_counted() -> None:
    from p2pdist.core.proofs import cursor_offset

    t = Harness(replace(AUDITED, origin_slow_start=False))
    t.announce("a", 0, size=8 * MiB, want_leases=8)  # on probation: its claims wait for an audit
    leased = [i for start, end in ranges(t.announce("a", 0.1, size=8 * MiB)) for i in range(start, end)]
    t.announce("a", 1, size=8 * MiB, digests=[(i, pd(i)) for i in leased])
    # Held back, not in the log: still the tracker has them, so a seeder need not send its own.
    done = t.announce("b", 2, size=8 * MiB, complete=True)
    assert cursor_offset(done.digest_pos) == len(leased) > 0
    assert t.announce("c", 2.1, size=8 * MiB).digests == []  # none published yet
    # A log the tracker lost (a fresh tracker): the seeder hears 0, and sends them.
    fresh = Harness(AUDITED)
    assert cursor_offset(fresh.announce("s", 0, size=8 * MiB, complete=True).digest_pos) == 0
    # Digests the log has, reported again, are counted: none of them is news.
    t2 = Harness()
    t2.announce("a", 0, size=8 * MiB, want_leases=1)
    t2.announce("a", 1, size=8 * MiB, digests=[(0, pd(0))])
    t2.announce("s", 2, size=8 * MiB, complete=True, digests=[(i, pd(i)) for i in range(8)])
    assert cursor_offset(t2.announce("s", 3, size=8 * MiB, complete=True).digest_pos) == 8
    t2.announce("s", 4, size=8 * MiB, complete=True, digests=[(i, pd(i)) for i in range(8)])
    assert t2.of("digests_repeated")[-1]["count"] == 8


def test_digests_without_a_known_size_are_not_kept() -> None:
    t = Harness()
    t.announce("s", 0, complete=True, digests=[(0, pd(0))], size=None)
    assert t.state.blob_count() == 0 and not t.of("digests_accepted")


def test_digest_log_pages_by_digest_pos() -> None:
    t = Harness(replace(CONFIG, digests_per_reply=3))
    t.announce("s", 0, size=10 * MiB, complete=True, digests=[(i, pd(i)) for i in range(10)])
    pos, seen = 0, []
    for _ in range(4):
        reply = t.announce("b", 1, digest_pos=pos)
        assert not reply.reset
        seen += reply.digests
        pos = reply.digest_pos
    assert seen == [(i, pd(i)) for i in range(10)]
    last = t.announce("b", 2, digest_pos=pos)
    assert (last.digests, last.digest_pos) == ([], pos)


def test_corrupt_resets_digests_and_leases_for_everyone() -> None:
    t = Harness()
    t.announce("a", 0, size=8 * MiB, want_leases=2)
    early = t.announce("c", 0.5)  # c's cursor is at the start of the old log
    t.announce("a", 1, digests=[(i, pd(i)) for i in range(8)])
    behind = t.announce("b", 1)  # b's cursor is past the whole old log
    reply = t.announce("c", 2, event="corrupt", digest_pos=early.digest_pos)
    assert reply.reset and reply.digests == []
    assert t.of("corrupt_reset") == [{"blob": BLOB, "node": "c", "discarded": 8}]
    # The swarm starts over: pieces are leasable again from 0, digests flow again.
    assert ranges(t.announce("d", 3, want_leases=1)) == [(0, 4)]
    t.announce("d", 4, digests=[(0, pd(0)), (1, pd(1))])
    for cursor in (behind.digest_pos, early.digest_pos):
        again = t.announce("b", 5, digest_pos=cursor)
        assert again.reset and again.digests == [(0, pd(0)), (1, pd(1))]


def test_a_corrupt_report_from_a_log_wiped_since_is_stale_and_wipes_nothing() -> None:
    # A byte flipped in one origin response fails every node that took the piece; each reported it
    # and each report wiped the log again, the one the first reporter was fetching anew on included.
    t = Harness()
    started = t.announce("b", 0, size=8 * MiB, want_leases=2).digest_pos  # b and c begin on the first log
    t.announce("c", 0.1)
    t.announce("b", 1, digests=[(i, pd(i)) for i in range(8)])
    first = t.announce("c", 2, event="corrupt", digest_pos=started)  # c found it first: the log is wiped
    assert first.reset and len(t.of("corrupt_reset")) == 1
    again = t.announce("c", 3, want_leases=2)  # c fetches anew, on the new log
    assert again.digest_pos != started
    t.announce("c", 4, digests=[(0, pd(0)), (1, pd(1))])
    t.announce("b", 5, event="corrupt", digest_pos=started)  # b's report is of the log already wiped
    assert t.of("corrupt_stale") == [{"blob": BLOB, "node": "b"}] and len(t.of("corrupt_reset")) == 1
    d = t.announce("d", 6)
    assert d.digests == [(0, pd(0)), (1, pd(1))]  # the new log's digests stand
    t.announce("d", 7, event="corrupt", digest_pos=d.digest_pos)  # a report of the current log wipes it
    assert len(t.of("corrupt_reset")) == 2


def test_a_log_wiped_by_a_corrupt_report_tells_its_agents_to_start_over_a_forgotten_one_does_not() -> None:
    # After a wipe, an agent still on its first try re-reported the digests it held (as after a
    # tracker restart), the one that failed among them: the new log failed every node again.
    t = Harness()
    t.announce("b", 0, size=8 * MiB, want_leases=2)
    on_old = t.announce("b", 1, digests=[(i, pd(i)) for i in range(8)]).digest_pos
    t.announce("c", 2, event="corrupt", digest_pos=on_old)
    reply = t.announce("b", 3, digest_pos=on_old)
    assert reply.reset and reply.wiped
    assert not t.announce("s", 4, complete=True, digest_pos=on_old).wiped  # its blob matched: nothing to redo
    assert not t.announce("f", 5, digest_pos=0).wiped  # a fresh agent has nothing to forget
    fresh = Harness()  # a restarted tracker forgot the log: re-reporting is what it needs
    fresh.announce("a", 0, size=8 * MiB)
    restarted = fresh.announce("b", 1, digest_pos=on_old)
    assert restarted.reset and not restarted.wiped


def test_cursor_from_a_forgotten_log_is_reset_even_if_in_range() -> None:
    """A cursor shorter than the new log still belongs to the old one (e.g. after a tracker restart)."""
    t = Harness()
    t.announce("s", 0, size=8 * MiB, complete=True, digests=[(0, pd(0))])
    old = t.announce("b", 0).digest_pos  # offset 1 in the old log
    t.announce("x", 1, event="corrupt")
    t.announce("s", 2, complete=True, digests=[(i, pd(i)) for i in range(8)])
    reply = t.announce("b", 3, digest_pos=old)
    assert reply.reset and len(reply.digests) == 8


def test_fresh_agent_is_not_told_to_reset() -> None:
    assert not Harness().announce("a", 0, digest_pos=0).reset


# --- interval, bounds, cleanup -------------------------------------------------------------------


def test_interval_is_short_while_leased_pieces_are_pending() -> None:
    t = Harness()
    assert t.announce("a", 0, size=4 * MiB).interval == CONFIG.announce_interval
    assert t.announce("a", 0, want_leases=1).interval == CONFIG.busy_interval
    done = t.announce("a", 1, digests=[(i, pd(i)) for i in range(4)])
    assert done.interval == CONFIG.announce_interval


def test_a_loaded_tracker_asks_only_the_nodes_fetching_from_the_origin_to_announce_often() -> None:
    t = Harness()
    t.loaded = True
    busy, steady = CONFIG.busy_interval, CONFIG.announce_interval
    assert busy < steady
    assert t.announce("c", 0, want_leases=1).interval == busy  # keeps the blob busy throughout
    lease = t.announce("a", 0.1, want_leases=1)
    assert lease.interval == busy
    # b pulls the same blob and takes no origin work: digests reach it with its neighbours' pieces
    assert t.announce("b", 0.2).interval == steady
    ((start, end),) = ranges(lease)
    reported = t.announce("a", 1, digests=[(i, pd(i)) for i in range(start, end)])
    # a holds no lease now, but its claims are in the log: a restarted tracker needs them again soon
    assert not reported.leases and reported.interval == busy
    assert t.announce("b", 1.1).interval == steady
    assert t.announce("b", 1.2, want_leases=1).interval == busy  # b takes origin work in turn
    assert t.announce("a", 2, complete=True).interval == steady  # a seeder is never hurried
    t.announce("a", 3, event="stopped")
    assert t.announce("a", 3.1, want_leases=0).interval == steady  # back without its past: none of its claims
    t.loaded = False  # a quiet tracker hurries everyone while the blob's pieces are leased
    assert t.announce("b", 3.2).interval == busy


def test_on_a_loaded_tracker_unproven_nodes_without_origin_work_announce_on_the_steady_interval() -> None:
    t = Harness(replace(AUDITED, origin_slow_start=True))
    t.loaded = True
    assert t.announce("a", 0, want_leases=5).leases  # on probation, with the first lease
    assert t.announce("b", 0.01, want_leases=5).leases  # its auditor
    # c asks for leases too; none comes (one stream at first, and both audit slots are taken). It
    # passes through probation while its announce is handled: that alone must not hurry it.
    refused = t.announce("c", 0.02, want_leases=5)
    assert not refused.leases and refused.interval == AUDITED.announce_interval


def test_idle_blobs_are_dropped_after_their_ttl() -> None:
    t = Harness(replace(CONFIG, blob_ttl=60.0))
    t.announce("a", 0, blob=OTHER, size=MiB)
    t.announce("a", 59)
    assert t.state.blob_count() == 2
    t.announce("a", 65)  # the sweep runs at most every 5 s
    assert t.state.blob_count() == 1 and t.of("blob_dropped") == [{"blob": OTHER}]


def test_max_blobs_evicts_idle_then_lonely_blobs_then_refuses() -> None:
    config = replace(CONFIG, max_blobs=2)
    t = Harness(config)
    one, two, three, four = ("sha256:" + c * 64 for c in "1234")
    for node in ("a", "b"):  # two live peers each: neither blob may be dropped for a newcomer
        t.announce(node, 0, blob=one)
        t.announce(node, 0, blob=two)
    with pytest.raises(AnnounceError) as err:
        t.announce("a", 1, blob=three)
    assert err.value.kind == "capacity"
    t.announce("a", 31, blob=two)  # blob 1's peers are now past peer_ttl: idle, it goes first
    t.announce("b", 31, blob=two)
    t.announce("a", 32, blob=three)
    assert t.state.get(one) is None and t.state.blob_count() == 2
    # Blob 3 has one live peer: a node announcing a blob nobody else has makes room by it.
    t.announce("c", 33, blob=four)
    assert t.state.get(three) is None and t.state.get(two) is not None and t.state.get(four) is not None


def test_forged_huge_blobs_keep_the_piece_tables_bounded_and_real_blobs_served() -> None:
    t = Harness(replace(CONFIG, max_tracked_pieces=1 << 20))
    for k in range(64):  # 64 x 1 TiB, 65,536 pieces each: 4 M pieces claimed
        t.announce(f"forger{k}", 0, blob=f"sha256:{k:064x}", size=1 << 40, want_leases=1)
    assert t.state._pieces <= 1 << 20
    for node in ("a", "b"):
        reply = t.announce(node, 1, size=64 * MiB, want_leases=1)
        assert reply.size == 64 * MiB and reply.leases  # a real blob is still tracked and leased


def test_stopped_for_an_unknown_blob_creates_nothing() -> None:
    t = Harness()
    t.announce("a", 0, event="stopped")
    assert t.state.blob_count() == 0


def test_state_defaults_are_bounded() -> None:
    state = MemoryState()
    assert state.max_blobs > 0 and state.max_peers_per_blob > 0


# --- invariants under random schedules -----------------------------------------------------------

step = st.tuples(
    st.sampled_from(["a", "b", "c", "d"]),  # node
    st.floats(0, 6),  # time advance
    st.integers(0, 2),  # leases wanted
    st.booleans(),  # report digests for the held leases
    st.sampled_from(["progress", "progress", "progress", "stopped", "corrupt"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=60))
def test_leases_never_overlap_and_each_piece_is_logged_once(steps: list) -> None:
    t = Harness()
    t.announce("a", 0, size=40 * MiB)
    now = 0.0
    for node, dt, want, report, event in steps:
        now += dt
        held = t.state.get(BLOB).book.held_by(node)
        digests = [(i, pd(i)) for lease in held for i in range(lease.start, lease.end)] if report else []
        t.announce(node, now, want_leases=want, digests=digests, event=event)
        blob = t.state.get(BLOB)
        owners: dict[int, str] = {}
        for lease in blob.book.leases:
            for i in range(lease.start, lease.end):
                assert i not in owners, f"piece {i} leased twice"
                owners[i] = lease.node
        indices = [i for i, _ in blob.log]
        assert len(indices) == len(set(indices))
        assert all(d == pd(i) for i, d in blob.log)
        # A piece counts as in the swarm only once its digest is logged (reopen may clear the mark
        # when every holder leaves, never the other way round).
        assert all(i in set(indices) for i in range(len(blob.book.digested)) if blob.book.digested[i])
        assert all(len(blob.book.held_by(n)) <= CONFIG.leases_per_node for n in "abcd")


def test_pieces_are_leased_again_once_every_holder_has_left() -> None:
    t = Harness()
    t.announce("s", 0, size=8 * MiB, complete=True, digests=[(i, pd(i)) for i in range(8)])
    assert t.announce("b", 1, want_leases=2).leases == []  # the seeder serves them: no origin fetch
    t.announce("s", 2, event="stopped")
    t.announce("b", 3, event="stopped")
    again = t.announce("c", 4, want_leases=2)
    assert ranges(again) == [(0, 4), (4, 8)]  # nobody left to serve them: from the origin once more
    assert again.digests  # the digests are still facts
    renewed = t.announce("c", 13, digests=[(0, pd(0))])  # a known digest resent still renews the lease
    assert (0, 4) in ranges(renewed)


# --- audits: a node's word is checked against another node's origin copy --------------------------

AUDITED = replace(CONFIG, audits=True, ban_seconds=600.0)


def forged(index: int) -> bytes:
    return hashlib.sha256(b"forged %d" % index).digest()


def audit_of(t: Harness, node: str, reply: AnnounceReply) -> int:
    """The piece ``node`` was sent to audit with ``reply``: a one-piece lease of another's claim."""
    piece = [e["piece"] for e in t.of("audit_assigned") if e["node"] == node][-1]
    assert (piece, piece + 1) in ranges(reply), ranges(reply)
    return piece


def claim_first_lease(t: Harness, node: str, digest=pd) -> tuple[int, int]:
    """``node`` takes a lease and reports ``digest(i)`` for each of its pieces; returns the lease."""
    start, end = ranges(t.announce(node, 0, want_leases=1))[0]
    t.announce(node, 1, digests=[(i, digest(i)) for i in range(start, end)])
    return start, end


def test_an_unproven_reporters_digests_are_withheld_until_another_origin_copy_agrees() -> None:
    t = Harness(AUDITED)
    start, end = ranges(t.announce("h", 0, want_leases=1))[0]
    reply = t.announce("h", 1, digests=[(i, pd(i)) for i in range(start, end)])
    assert reply.digests == []  # h's word alone
    a = t.announce("a", 2, want_leases=1)
    piece = audit_of(t, "a", a)
    assert start <= piece < end
    a = t.announce("a", 3, digests=[(piece, pd(piece))], digest_pos=a.digest_pos)
    assert sorted(a.digests) == [(i, pd(i)) for i in range(start, end)]  # agreed: all of h's published
    # Both are proven now: their next digests are published at once, no more audits.
    lease = ranges(t.announce("a", 4, want_leases=1, digest_pos=a.digest_pos))
    s2 = next(r for r in lease if r != (piece, piece + 1))[0]
    after = t.announce("a", 5, digests=[(s2, pd(s2))], digest_pos=a.digest_pos)
    assert (s2, pd(s2)) in after.digests and not t.of("node_banned")


def test_an_auditor_proven_by_agreeing_needs_no_audit_of_its_own() -> None:
    """It took a lease on probation, so its first piece waited for an audit; its copy of another's
    piece then agreed, which proves it: that audit would cost the origin a piece for nothing."""
    t = Harness(AUDITED)
    claim_first_lease(t, "h")
    piece = audit_of(t, "a", t.announce("a", 2, want_leases=1))
    assert [e["node"] for e in t.of("audit_opened")] == ["h", "a"]  # a leased a piece too
    t.announce("a", 3, digests=[(piece, pd(piece))])
    t.announce("b", 5, want_leases=1)
    assert [e["reporter"] for e in t.of("audit_assigned")] == ["h"]  # nobody fetches one of a's


def test_proven_takers_leave_the_next_lease_to_a_newcomer_while_the_blob_wants_more_takers() -> None:
    """Theirs are not topped up; the next go to a node on probation, whose audit then starts while
    the origin carries few streams. With its takers in, the proven ones take more again."""
    t = Harness(replace(AUDITED, leases_per_node=4, origin_streams=16, probation_nodes=2))
    for n in ("h", "a", "c", "d", "e", "f", "g", "k"):  # 8 downloaders: the blob wants 4 takers
        t.announce(n, 0)
    claim_first_lease(t, "h")
    piece = audit_of(t, "a", t.announce("a", 2, want_leases=1))
    t.announce("a", 3, digests=[(piece, pd(piece))])  # agrees: h and a are proven
    book = t.state.get(BLOB, SIZE).book

    def leases(node: str, now: float, want: int = 4) -> int:
        t.announce(node, now, want_leases=want)
        return len(book.held_by(node))

    assert leases("h", 4, want=1) == 1  # its first lease is done: it asks for another
    assert leases("h", 5) == 1  # not topped up: c and d may come
    assert leases("c", 6) >= 1  # on probation, with its first lease
    assert leases("h", 7) == 1  # one place on probation left
    assert leases("d", 8) >= 1  # probation is full now
    assert leases("h", 9) == 4  # topped up again


def test_a_lease_holder_forging_digests_is_refuted_banned_and_its_pieces_leased_again() -> None:
    t = Harness(AUDITED)
    start, end = claim_first_lease(t, "liar", forged)
    piece = audit_of(t, "a", t.announce("a", 2, want_leases=1))
    t.announce("a", 3, digests=[(piece, pd(piece))])  # a's origin copy disagrees: a third node decides
    assert not t.of("node_banned")
    assert piece == audit_of(t, "b", t.announce("b", 4, want_leases=1))
    t.announce("b", 5, digests=[(piece, pd(piece))])
    assert [e["node"] for e in t.of("node_banned")] == ["liar"]
    with pytest.raises(AnnounceError) as err:
        t.announce("liar", 6)
    assert err.value.kind == "banned"
    # The liar's forged digests were never handed out; the audited piece's true digest is, and the
    # liar's other pieces are leased again.
    fresh = t.announce("c", 7, want_leases=2)
    assert (piece, pd(piece)) in fresh.digests and not any(d == forged(i) for i, d in fresh.digests)
    others = set(range(start, end)) - {piece}
    regranted = {i for s, e in ranges(fresh) + ranges(t.announce("a", 8, want_leases=2)) for i in range(s, e)}
    assert others & regranted
    assert "liar" not in peers_of(t.announce("d", 9))


def test_an_auditor_that_lies_is_banned_and_the_honest_reporter_proven() -> None:
    t = Harness(AUDITED)
    start, end = claim_first_lease(t, "h")
    piece = audit_of(t, "rogue", t.announce("rogue", 2, want_leases=1))
    t.announce("rogue", 3, digests=[(piece, forged(piece))])
    assert piece == audit_of(t, "b", t.announce("b", 4, want_leases=1))
    b = t.announce("b", 5, digests=[(piece, pd(piece))])
    assert [e["node"] for e in t.of("node_banned")] == ["rogue"]
    assert sorted(b.digests) == [(i, pd(i)) for i in range(start, end)]


def test_a_seeder_forging_digests_holds_pieces_back_only_until_its_audit_fails() -> None:
    t = Harness(AUDITED)
    t.announce("fake-seed", 0, complete=True, digests=[(i, forged(i)) for i in range(64)])
    a = t.announce("a", 1, want_leases=1)
    assert a.digests == [] and len(ranges(a)) == 1  # nothing leasable: all claimed; just the audit
    piece = ranges(a)[0][0]
    t.announce("a", 2, digests=[(piece, pd(piece))])
    b = t.announce("b", 3, want_leases=1)
    t.announce("b", 4, digests=[(ranges(b)[0][0], pd(piece))])
    assert [e["node"] for e in t.of("node_banned")] == ["fake-seed"]
    c = t.announce("c", 5, want_leases=2)
    assert [d for _, d in c.digests] == [pd(piece)]
    assert any(e - s >= 1 and s != piece for s, e in ranges(c))  # the rest is leased again


def test_corrupt_resets_the_log_once_per_node() -> None:
    t = Harness(AUDITED)
    t.announce("a", 0, want_leases=1)
    t.announce("x", 1, event="corrupt")
    t.announce("x", 2, event="corrupt")
    assert len(t.of("corrupt_reset")) == 1 and len(t.of("corrupt_ignored")) == 1


def test_after_a_restart_leases_wait_until_the_agents_have_re_reported_their_pieces() -> None:
    t = Harness(AUDITED)
    stale = 12345 << 21  # a cursor into the log of the tracker before the restart
    first = t.announce("a", 0.0, want_leases=2, digest_pos=stale)
    assert first.reset and first.leases == []  # no leases while the agents re-report
    # b fetched pieces 0..7 under leases the restarted tracker never saw: its claims close them.
    t.announce("b", 0.5, digests=[(i, pd(i)) for i in range(8)], digest_pos=stale)
    later = t.announce("a", 0.1 + 2 * AUDITED.busy_interval, want_leases=2, digest_pos=first.digest_pos)
    audited = {e["piece"] for e in t.of("audit_assigned")}  # b is unproven: one piece of it is checked
    granted = {i for s, e in ranges(later) for i in range(s, e)} - audited
    assert len(audited) == 1 and granted and not granted & set(range(8))  # nothing else twice


def test_one_audit_per_node_on_its_smallest_claim_and_moved_where_someone_fetches() -> None:
    t = Harness(AUDITED)
    small = "sha256:" + "c" * 64
    start, end = claim_first_lease(t, "a")  # 64 MiB blob: 1 MiB pieces
    assert ranges(t.announce("a", 2, blob=small, size=510, want_leases=1)) == [(0, 1)]
    t.announce("a", 3, blob=small, size=510, digests=[(0, pd(100))])
    opened = t.of("audit_opened")
    assert [o["blob"] for o in opened][-1] == small  # moved to the 510-byte piece: the cheapest check
    assert sum(1 for a in t.state.get(BLOB).audits.values() if a.reporter == "a") == 0
    # Nobody fetches the small blob; b wants origin work in the big one: the audit comes to b there.
    b = t.announce("b", 4, want_leases=1)
    piece = audit_of(t, "b", b)
    assert t.of("audit_assigned")[-1]["blob"] == BLOB
    b = t.announce("b", 5, digests=[(piece, pd(piece))], digest_pos=b.digest_pos)
    assert sorted(b.digests) == [(i, pd(i)) for i in range(start, end)]  # a proven: its claims published
    small_reply = t.announce("c", 6, blob=small, size=510)
    assert small_reply.digests == [(0, pd(100))]  # in the other blob too, once it is announced


def test_the_standing_map_is_bounded_and_keeps_its_bans() -> None:
    state = MemoryState(max_nodes=8)
    state.standing("liar").banned_until = 100.0
    for k in range(50):
        state.standing(f"n{k}")
    assert len(state._standing) <= 8 and state.standing("liar").banned(1.0)


def fetch_alone(t: Harness, node: str, start: float, pieces: int) -> float:
    """``node`` pulls the whole blob with nobody else in the swarm, as an agent does: it asks for
    leases, fetches what it is leased or sent to audit from the origin, and reports each piece's
    digest once, as the agent's machine does; then it completes and stops. Returns the time it
    stopped. Fails if the tracker stops handing it pieces it lacks (no peer could serve them)."""
    have: set[int] = set()
    queue: list[int] = []  # leased or audited pieces not fetched yet, the latest grant first
    now, idle = start, 0
    reply = t.announce(node, now, size=pieces * MiB, want_leases=2)
    while len(have) < pieces:
        granted = [i for s, e in reversed(ranges(reply)) for i in range(s, e) if i not in have and i not in queue]
        queue = granted + queue
        idle = 0 if queue else idle + 1
        assert idle < 30, f"{node}: the tracker leases nothing it lacks; it has {len(have)} of {pieces} pieces"
        # One piece lands per announce: each is reported as it lands, as the agent does.
        report = [queue.pop(0)] if queue else []
        have.update(report)
        now += 1
        reply = t.announce(node, now, want_leases=2, digests=[(i, pd(i)) for i in report],
                           digest_pos=reply.digest_pos)
    t.announce(node, now + 1, complete=True, digest_pos=reply.digest_pos)
    t.announce(node, now + 2, event="stopped")
    return now + 2


def test_each_node_that_pulls_after_the_last_holder_left_gets_every_piece_from_the_origin() -> None:
    # Nodes pulling one after another, each gone before the next (a rollout of one replica, nodes
    # recycled): each is unproven and alone. The first one's claims wait for an audit that the next
    # one's copy settles while the book leases that same piece to it again. Its report there was
    # taken only as an audit opinion and never closed its lease: slow start then held every other
    # piece back, and the third node waited forever (seen with 1 GiB in benchmarks/bench_fetch).
    t = Harness(replace(AUDITED, origin_slow_start=True, lease_pieces=1, solo_lease_pieces=8,
                        leases_per_node=5))
    now = 0.0
    for node in ("n0", "n1", "n2", "n3"):
        now = fetch_alone(t, node, now + 1, 32)
    assert not t.of("node_banned") and not t.of("digests_rejected")
    # Every claim was settled by another node's copy: each node is proven, nothing is held back.
    assert all(t.state.standing(n).proven for n in ("n0", "n1", "n2", "n3"))
    blob = t.state.get(BLOB)
    assert not blob.withheld and not blob.audits and len(blob.log) == 32


def test_a_lease_holders_copy_that_settles_anothers_audit_also_closes_its_lease() -> None:
    t = Harness(AUDITED)
    start, end = claim_first_lease(t, "a")  # withheld: a is unproven, its audit waits for a copy
    t.announce("a", 2, complete=True)
    t.announce("a", 3, event="stopped")  # nobody holds the blob now: its pieces are leased again
    b = t.announce("b", 4, want_leases=1)
    assert (start, end) in ranges(b)  # a's audited piece among them
    b = t.announce("b", 5, digests=[(i, pd(i)) for i in range(start, end)], digest_pos=b.digest_pos)
    assert [e["node"] for e in t.of("audit_passed")] == ["a"]  # b's copy was the opinion that settled it
    assert sorted(b.digests) == [(i, pd(i)) for i in range(start, end)]
    # ... and b's report of that piece closed its lease: b reports a piece once, so a lease left
    # listed would never close.
    assert (start, end) not in ranges(t.announce("b", 6, digest_pos=b.digest_pos))


def test_pieces_named_orphans_are_leased_again_once_their_fetcher_is_gone_and_once_per_ttl() -> None:
    t = Harness()  # audits off: a lease holder's digests are published at once
    t.announce("gone", 0, want_leases=2)  # (0, 4) and (4, 8)
    t.announce("gone", 1, have=4, digests=[(i, pd(i)) for i in range(4)])  # then killed: no "stopped"
    b = t.announce("b", 1.5)
    assert len(b.digests) == 4  # 0..3 count as fetched, 4..7 are leased to a peer the tracker thinks alive
    # b found no neighbour holding 0..3, nor 4..7. But "gone" announced a second ago: in a swarm
    # larger than b's neighbourhood such pieces are often still spreading. Nothing is leased again.
    b = t.announce("b", 2.0, orphans=[0, 1, 5], digest_pos=b.digest_pos)
    assert not t.of("pieces_orphaned") and not t.of("leases_abandoned")
    # Its reply at 1 made its next announce due by 2 (a busy interval); missed by more than two
    # busy intervals, it is gone. 0 and 1 are leased again, and its idle lease on 5 goes back,
    # with its others.
    b = t.announce("b", 7.5, want_leases=2, orphans=[0, 1, 5], digest_pos=b.digest_pos)
    assert ranges(b) == [(0, 2), (4, 8)]
    assert t.of("pieces_orphaned")[0]["count"] == 2 and [e["node"] for e in t.of("leases_abandoned")] == ["gone"]
    # Named again within the TTL (b fetched them, and left too): not leased again yet.
    t.announce("b", 8.0, have=2, digests=[(0, pd(0)), (1, pd(1))])
    t.announce("b", 8.1, event="stopped")
    again = t.announce("c", 8.5, want_leases=2, orphans=[0, 1])
    assert not {0, 1} & {i for s, e in ranges(again) for i in range(s, e)}
    assert len(t.of("pieces_orphaned")) == 1


def test_a_fetcher_that_comes_back_with_nothing_holds_none_of_its_pieces() -> None:
    t = Harness()
    t.announce("a", 0, want_leases=1)  # (0, 4)
    t.announce("a", 1, have=4, digests=[(i, pd(i)) for i in range(4)])
    b = t.announce("b", 1.5, orphans=[2])
    assert not t.of("pieces_orphaned")  # "a" holds it, as far as the tracker can tell
    t.announce("a", 2.0)  # restarted on an empty data dir: the same node, no pieces
    b = t.announce("b", 2.5, want_leases=1, orphans=[2])
    assert t.of("pieces_orphaned")[0]["count"] == 1 and ranges(b) == [(2, 3)]


def test_a_fetcher_that_stopped_holds_none_of_its_pieces() -> None:
    t = Harness()
    t.announce("a", 0, want_leases=1)  # (0, 4)
    t.announce("a", 1, have=4, digests=[(i, pd(i)) for i in range(4)])
    t.announce("b", 1.2, have=1)  # someone stays: the blob is not reopened as a whole
    t.announce("a", 1.5, event="stopped")  # its next announce was due by 2: no waiting for that
    b = t.announce("b", 1.6, have=1, want_leases=1, orphans=[2])
    assert t.of("pieces_orphaned")[0]["count"] == 1 and ranges(b) == [(2, 3)]


def test_an_auditors_resent_copy_is_its_opinion_still_and_the_late_claim_settles_the_audit_at_once() -> None:
    # An image's config blob, one piece: "a" takes the lease (its audit opens then, claim to come),
    # "b" is sent to audit it and sends its copy's digest twice: in a progress announce, and in its
    # "completed" one (the first reply had not come back yet). The resend was taken as b's own claim
    # on the piece, held back for an audit; a's claim then found the piece held back and was
    # dropped, and the audit waited for a third copy, 10 s later (seen in the demo, 2 of 22 runs).
    t = Harness(AUDITED)
    config = "sha256:" + "c" * 64
    assert ranges(t.announce("a", 0, blob=config, size=488, want_leases=1)) == [(0, 1)]
    assert [e["node"] for e in t.of("audit_opened")] == ["a"]
    piece = audit_of(t, "b", t.announce("b", 0.1, blob=config, size=488, want_leases=1))
    t.announce("b", 0.2, blob=config, size=488, have=1, digests=[(piece, pd(0))])
    t.announce("b", 0.3, blob=config, size=488, have=1, complete=True, digests=[(piece, pd(0))])
    assert not t.of("digests_withheld") and len(t.of("audit_opened")) == 1  # b's copy: an opinion, once
    t.announce("a", 0.4, blob=config, size=488, have=1, digests=[(0, pd(0))])
    assert [(e["node"], e["auditors"]) for e in t.of("audit_passed")] == [("a", ["b"])]
    assert t.announce("c", 0.5, blob=config, size=488).digests == [(0, pd(0))]
