import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.core.leases import Lease, LeaseBook, missing_runs

NODES = ("a", "b", "c")


def test_lease_covers():
    lease = Lease("a", 2, 5, 10.0)
    assert [i for i in range(7) if lease.covers(i)] == [2, 3, 4]


@pytest.mark.parametrize(
    "kwargs",
    [{"piece_count": 0}, {"piece_count": 4, "lease_pieces": 0}, {"piece_count": 4, "ttl": 0},
     {"piece_count": 4, "per_node": 0}, {"piece_count": -1}],
)
def test_constructor_rejects_nonpositive(kwargs):
    with pytest.raises(ValueError):
        LeaseBook(**kwargs)


def test_grants_are_contiguous_disjoint_and_bounded():
    book = LeaseBook(20, lease_pieces=8, ttl=10, per_node=2)
    (a1,) = book.grant("a", 0.0)
    (b1,) = book.grant("b", 0.0)
    (a2,) = book.grant("a", 0.0)
    assert (a1.start, a1.end, b1.start, b1.end, a2.start, a2.end) == (0, 8, 8, 16, 16, 20)
    assert a1.expires == 10.0
    assert book.grant("c", 0.0) == []  # nothing left
    assert [book.holder(i) for i in (0, 7, 8, 15, 16, 19)] == ["a", "a", "b", "b", "a", "a"]


def test_per_node_and_want_respected():
    book = LeaseBook(100, lease_pieces=2, per_node=3)
    assert len(book.grant("a", 0.0, want=2)) == 2
    assert len(book.grant("a", 0.0, want=5)) == 1  # per_node caps at 3
    assert book.grant("a", 0.0, want=5) == []
    assert len(book.held_by("a")) == 3
    assert book.grant("b", 0.0, want=0) == []
    assert book.grant("b", 0.0, want=-1) == []


def test_grants_skip_digested_pieces():
    book = LeaseBook(10, lease_pieces=4)
    for i in (0, 1, 3):
        book.mark_digested(i)
    (lease,) = book.grant("a", 0.0)
    assert (lease.start, lease.end) == (2, 3)  # stops at the digested piece 3
    (lease,) = book.grant("b", 0.0)
    assert (lease.start, lease.end) == (4, 8)


def test_record_only_from_holder():
    book = LeaseBook(8, lease_pieces=4)
    book.grant("a", 0.0)
    assert book.may_report("a", 0) and not book.may_report("b", 0)
    assert book.record("b", 0, 1.0) is False
    assert not book.digested[0]
    assert book.record("a", 0, 1.0) is True
    assert book.digested[0]
    assert book.record("a", 0, 1.0) is False  # already digested
    assert book.record("a", 5, 1.0) is False  # unleased piece
    assert book.record("a", -1, 1.0) is False
    assert book.record("a", 8, 1.0) is False
    assert not book.may_report("a", -1) and not book.may_report("a", 99)


def test_expiry_returns_pieces_and_reassigns_to_another_node():
    book = LeaseBook(8, lease_pieces=4, ttl=10, per_node=1)
    (a,) = book.grant("a", 0.0)
    (b,) = book.grant("b", 0.0)
    assert book.record("a", 0, 1.0)
    assert book.grant("c", 2.0) == []  # all leased
    assert book.expire(9.99) == []
    gone = book.expire(11.0)  # a's lease was renewed to 11.0 by its progress, b's ran out at 10.0
    assert {id(x) for x in gone} == {id(a), id(b)}
    assert book.leases == []
    assert book.holder(1) is None and book.holder(4) is None
    (c1,) = book.grant("c", 11.0)
    assert (c1.start, c1.end) == (1, 5)  # piece 0 is digested and never leased again
    assert book.holder(1) == "c"
    assert not book.record("a", 1, 11.0)  # the old holder can no longer report
    assert book.record("c", 1, 11.0)


def test_expire_boundary_is_inclusive():
    book = LeaseBook(4, ttl=5)
    book.grant("a", 0.0)
    assert book.expire(4.999) == []
    assert len(book.expire(5.0)) == 1


def test_progress_renews_expiry():
    book = LeaseBook(8, lease_pieces=4, ttl=10)
    (lease,) = book.grant("a", 0.0)
    assert book.record("a", 0, 8.0)
    assert lease.expires == 18.0
    assert book.expire(15.0) == []
    assert book.holder(1) == "a"
    # Late, out-of-order reports never shorten the lease.
    assert book.record("a", 1, 2.0)
    assert lease.expires == 18.0


def test_completed_lease_closes_and_frees_slot():
    book = LeaseBook(8, lease_pieces=2, per_node=1)
    (lease,) = book.grant("a", 0.0)
    assert book.grant("a", 0.0) == []
    assert book.record("a", 0, 1.0)
    assert lease in book.leases
    assert book.record("a", 1, 1.0)
    assert lease not in book.leases
    assert book.held_by("a") == []
    (nxt,) = book.grant("a", 1.0)
    assert (nxt.start, nxt.end) == (2, 4)


def test_release_returns_pieces():
    book = LeaseBook(8, lease_pieces=4, per_node=2)
    book.grant("a", 0.0, want=2)
    book.record("a", 0, 0.0)
    book.release("a")
    assert book.leases == [] and book.held_by("a") == []
    (lease,) = book.grant("b", 0.0)
    assert (lease.start, lease.end) == (1, 5)


def test_mark_digested_closes_fully_digested_lease():
    book = LeaseBook(4, lease_pieces=2, per_node=1)
    (lease,) = book.grant("a", 0.0)
    book.mark_digested(0)
    assert lease in book.leases
    book.mark_digested(1)
    assert lease not in book.leases  # seeder supplied everything: the slot is free again
    (nxt,) = book.grant("a", 0.0)
    assert (nxt.start, nxt.end) == (2, 4)


@pytest.mark.parametrize("index", [-1, 4])
def test_mark_digested_out_of_range(index):
    book = LeaseBook(4)
    with pytest.raises(ValueError):
        book.mark_digested(index)
    assert not any(book.digested)


def test_all_digested():
    book = LeaseBook(3, lease_pieces=3)
    book.grant("a", 0.0)
    book.record("a", 0, 0.0)
    book.mark_digested(1)
    assert not book.all_digested
    book.record("a", 2, 0.0)
    assert book.all_digested
    assert book.leases == []
    assert book.grant("b", 0.0) == []


# -- model-based property over random operation sequences ---------------------------------------

node_st = st.sampled_from(NODES)
op_st = st.one_of(
    st.tuples(st.just("grant"), node_st, st.integers(0, 3)),
    st.tuples(st.just("record"), node_st, st.integers(-1, 40)),
    st.tuples(st.just("record-held"), node_st, st.integers(0, 1000)),
    st.tuples(st.just("expire"), st.floats(0, 6)),
    st.tuples(st.just("release"), node_st),
    st.tuples(st.just("mark"), st.integers(0, 40)),
)


def _free(book, i):
    return not book.digested[i] and book.holder(i) is None


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 6),
    st.integers(1, 3),
    st.lists(op_st, max_size=60),
)
def test_lease_invariants_hold_under_random_operations(piece_count, lease_pieces, per_node, ops):
    ttl = 5.0
    book = LeaseBook(piece_count, lease_pieces=lease_pieces, ttl=ttl, per_node=per_node)
    digested: set[int] = set()
    now = 0.0
    for op in ops:
        kind = op[0]
        if kind == "grant":
            _, node, want = op
            before_digested = set(digested)
            before_holder = [book.holder(i) for i in range(piece_count)]
            held = len(book.held_by(node))
            granted = book.grant(node, now, want)
            assert len(granted) <= max(0, min(want, per_node - held))
            for lease in granted:
                assert lease.node == node and lease.expires == now + ttl
                assert 0 <= lease.start < lease.end <= piece_count
                assert lease.end - lease.start <= lease_pieces
                for i in range(lease.start, lease.end):
                    assert i not in before_digested, "digested piece leased anew"
                    assert before_holder[i] is None, "piece leased twice"
            if len(granted) < min(want, per_node - held):
                # Stopping short is only allowed when nothing is left to lease.
                assert not any(_free(book, i) for i in range(piece_count))
        elif kind in ("record", "record-held"):
            _, node, index = op
            if kind == "record-held":
                mine = [i for lease in book.held_by(node) for i in range(lease.start, lease.end)]
                if not mine:
                    continue
                index = mine[index % len(mine)]
            holder = book.holder(index) if 0 <= index < piece_count else None
            lease = next((x for x in book.leases if x.covers(index)), None)
            accepted = book.record(node, index, now)
            assert accepted == (holder == node and index not in digested)
            if accepted:
                digested.add(index)
                assert lease is not None
                if all(i in digested for i in range(lease.start, lease.end)):
                    assert lease not in book.leases, "completed lease stays open"
                else:
                    assert lease.expires >= now + ttl, "progress did not renew"
        elif kind == "expire":
            now += op[1]
            due = [x for x in book.leases if x.expires <= now]
            gone = book.expire(now)
            assert sorted(map(id, gone)) == sorted(map(id, due))
            assert all(x.expires > now for x in book.leases)
            for lease in gone:
                for i in range(lease.start, lease.end):
                    assert book.holder(i) is None
        elif kind == "release":
            book.release(op[1])
            assert book.held_by(op[1]) == []
        elif kind == "mark" and op[1] < piece_count:
            book.mark_digested(op[1])
            digested.add(op[1])

        # Invariants after every step.
        assert {i for i in range(piece_count) if book.digested[i]} == digested
        owners = [[] for _ in range(piece_count)]
        for lease in book.leases:
            assert lease.end - lease.start <= lease_pieces
            assert not all(i in digested for i in range(lease.start, lease.end)), "fully digested lease open"
            for i in range(lease.start, lease.end):
                owners[i].append(lease.node)
        for i in range(piece_count):
            assert len(owners[i]) <= 1, f"piece {i} leased to {owners[i]}"
            assert book.holder(i) == (owners[i][0] if owners[i] else None)
        for node in NODES:
            assert len(book.held_by(node)) <= per_node
    assert book.all_digested == (len(digested) == piece_count)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(1, 8), st.integers(1, 3))
def test_cooperating_nodes_digest_every_piece_exactly_once(piece_count, lease_pieces, per_node):
    book = LeaseBook(piece_count, lease_pieces=lease_pieces, per_node=per_node)
    fetched = []
    for _ in range(piece_count + 1):
        for node in NODES:
            for lease in book.grant(node, 0.0, want=per_node):
                for i in range(lease.start, lease.end):
                    assert book.record(node, i, 0.0)
                    fetched.append(i)
    assert sorted(fetched) == list(range(piece_count))
    assert book.all_digested and book.leases == []


def test_reopen_makes_digested_pieces_grantable_again_but_keeps_live_leases() -> None:
    book = LeaseBook(piece_count=8, lease_pieces=4, ttl=10.0, per_node=2)
    first = book.grant("a", now=0.0)[0]
    for i in range(first.start, first.end):
        assert book.record("a", i, now=1.0)
    held = book.grant("b", now=1.0)[0]
    assert book.grant("c", now=1.0) == []  # every piece is digested or leased
    book.reopen()
    again = book.grant("c", now=2.0)
    assert [(lease.start, lease.end) for lease in again] == [(first.start, first.end)]
    assert book.holder(held.start) == "b"  # the lease in progress survived


def test_missing_runs_skips_had_and_inflight_pieces() -> None:
    had = {0, 3, 4, 7}
    assert missing_runs(0, 9, had.__contains__) == [(1, 3), (5, 7), (8, 9)]
    assert missing_runs(3, 5, had.__contains__) == []
    assert missing_runs(2, 3, lambda i: False) == [(2, 3)]


def test_cap_bounds_origin_streams_for_the_whole_blob():
    book = LeaseBook(100, lease_pieces=2, per_node=5, max_leases=3)
    first = book.grant("a", 0.0, want=5, downloaders=1)
    # Alone, a node may take the whole cap (up to per_node): 3 streams, and a spare queued.
    assert len(first) == 4 and book.streams() == 3
    assert book.grant("b", 0.0, want=5, downloaders=2) == []  # the cap is reached
    book.record("a", first[0].start, 1.0)
    book.record("a", first[0].start + 1, 1.0)  # lease closed: one stream's worth is free again
    again = book.grant("b", 1.0, want=5, downloaders=2)
    assert [(x.node, x.end - x.start) for x in again] == [("b", 2), ("b", 2)]  # a stream and its spare
    assert book.streams() == 3


def test_cap_is_shared_among_downloaders_but_everyone_gets_one_and_a_spare():
    book = LeaseBook(100, lease_pieces=2, per_node=5, max_leases=8)
    assert book.share(1) == 5 and book.share(2) == 4 and book.share(4) == 2 and book.share(100) == 1
    assert len(book.grant("a", 0.0, want=5, downloaders=4)) == 3
    assert len(book.grant("b", 0.0, want=5, downloaders=100)) == 2
    assert len(book.grant("b", 0.0, want=5, downloaders=100)) == 0  # one stream and one spare


def test_a_spare_opens_no_stream_so_the_cap_still_gives_every_taker_one():
    # In a crowd the cap's streams go one per taker; each taker also holds a spare, queued behind
    # its stream (core.download), so the stream goes on while the reply to its report comes back.
    book = LeaseBook(100, lease_pieces=1, per_node=5, max_leases=4)
    for node in "abcd":
        assert len(book.grant(node, 0.0, want=5, downloaders=10)) == 2
    assert len(book.leases) == 8 and book.streams() == 4
    assert book.grant("e", 0.0, want=5, downloaders=10) == []  # four streams: the cap
    (lease, _spare) = book.held_by("a")
    book.record("a", lease.start, 1.0)  # its stream ended; the spare goes on in its place
    assert book.streams() == 4
    assert book.grant("e", 1.0, want=5, downloaders=10) == []  # still four streams
    assert len(book.grant("a", 1.0, want=5, downloaders=10)) == 1  # a new spare for a


def test_an_older_agent_gets_no_spare_and_each_of_its_leases_is_a_stream():
    # An agent that does not say it keeps a spare queued starts every lease it holds at once.
    book = LeaseBook(100, lease_pieces=1, per_node=5, max_leases=4)
    assert len(book.grant("old", 0.0, want=5, downloaders=2, spares=False)) == 2  # 4 // 2, no spare
    assert book.streams() == 2
    assert len(book.grant("new", 0.0, want=5, downloaders=2)) == 3  # two streams and a spare
    assert book.streams() == 4
    assert book.grant("old", 0.0, want=5, downloaders=2, spares=False) == []
    # Upgraded, its next announce says so: its second lease becomes its spare, which frees a stream.
    assert len(book.grant("old", 1.0, want=5, downloaders=2)) == 1
    assert book.streams() == 4


def test_no_cap_keeps_per_node():
    book = LeaseBook(100, lease_pieces=2, per_node=3)
    assert book.share(1000) == 3
    assert len(book.grant("a", 0.0, want=9, downloaders=1000)) == 3


def test_progress_on_one_lease_renews_all_of_the_holders_leases():
    # A lease queued behind the holder's busy streams must not expire while the holder progresses.
    book = LeaseBook(16, lease_pieces=4, ttl=10.0, per_node=3)
    first, queued, _ = book.grant("a", 0.0, want=3)
    other = book.grant("b", 0.0, want=1)
    book.record("a", first.start, 8.0)
    assert queued.expires == 18.0 and first.expires == 18.0
    assert other[0].expires == 10.0  # another node's lease is not renewed by a's progress
    assert book.expire(12.0) == other


def test_byte_progress_renews_the_holders_leases_without_a_digest():
    # A piece slower than the TTL: the holder's announces say bytes arrived, and the lease stays its own.
    book = LeaseBook(16, lease_pieces=4, ttl=10.0, per_node=2)
    mine = book.grant("a", 0.0, want=2)
    (theirs,) = book.grant("b", 0.0, want=1)
    assert book.progress("a", 9.0) == 2
    assert [lease.expires for lease in mine] == [19.0, 19.0]
    assert book.expire(15.0) == [theirs]  # b showed nothing
    assert book.holder(0) == "a" and not book.digested[0]  # progress is not a digest
    assert book.progress("a", 3.0) == 2 and mine[0].expires == 19.0  # a late report never shortens it
    assert book.progress("c", 9.0) == 0  # a node without leases renews nothing
    assert book.expire(19.0) == mine  # and without more progress they expire as before


def test_slow_start_grants_one_lease_more_than_pieces_digested():
    book = LeaseBook(32, lease_pieces=2, per_node=5, max_leases=8, slow_start=True)
    first = book.grant("a", 0.0, want=5)
    assert [(x.start, x.end) for x in first] == [(0, 2)]
    assert book.grant("b", 0.0, want=5) == []
    assert book.record("a", 0, 0.1)
    assert len(book.grant("b", 0.1, want=5)) == 1  # 1 digested: 2 out
    book.mark_digested(20)  # a seeder's digest counts too
    book.mark_digested(20)  # counted once
    assert len(book.grant("c", 0.2, want=5)) == 1  # 2 digested: 3 out
    assert book.grant("c", 0.2, want=5) == []


def test_slow_start_begins_again_when_the_swarm_reopens():
    book = LeaseBook(8, lease_pieces=2, per_node=5, max_leases=8, slow_start=True)
    assert len(book.grant("a", 0.0, want=5)) == 1
    book.record("a", 0, 0.1)
    book.record("a", 1, 0.1)  # closes the lease: 2 digested, none out
    assert len(book.grant("a", 0.2, want=5)) == 3
    book.release("a")
    book.reopen()  # every holder left: the bytes must leave the origin again, one stream first
    assert len(book.grant("b", 1.0, want=5)) == 1


def test_a_lone_nodes_runs_shrink_toward_the_end():
    """Guided: a lone node's run is at most 1/share of the pieces left (and at least lease_pieces),
    so its streams finish together and the last pieces do not wait behind one long run."""
    book = LeaseBook(128, lease_pieces=1, per_node=5, solo_lease_pieces=8)
    runs: list[tuple[int, int]] = []
    while True:
        for lease in book.grant("a", 0.0, want=5, downloaders=1):
            left = 128 - sum(book.digested) - sum(le.end - le.start for le in book.leases) + (lease.end - lease.start)
            runs.append((lease.end - lease.start, left))
        if not book.leases:
            break
        oldest = book.leases[0]  # the streams complete their runs in turn
        for i in range(oldest.start, oldest.end):
            book.record("a", i, 0.0)
    assert sum(n for n, _ in runs) == 128  # every piece leased once
    assert runs[0][0] == 1  # the first lease is short: alone only once a digest came back
    assert max(n for n, _ in runs) == 8
    assert all(n <= max(1, -(-left // 5)) for n, left in runs[1:]), runs
    assert [n for n, _ in runs[-4:]] == [1, 1, 1, 1], runs  # the last round: a piece per stream
    # Against fixed eight-piece runs: a few more leases, not a lease per piece.
    assert len(runs) <= 128 // 8 + 12, len(runs)


def test_a_snapshot_keeps_which_holders_keep_a_spare_and_an_older_one_reads_as_spare_keeping():
    # Tracker replicas share the book through snapshots (tracker/redis_state.py): an older agent's
    # leases must still count a stream each there.
    book = LeaseBook(100, lease_pieces=1, per_node=5, max_leases=4)
    book.grant("old", 0.0, want=5, downloaders=2, spares=False)
    book.grant("new", 0.0, want=5, downloaders=2)
    copy = book.emptied()
    copy.restore(*book.snapshot())
    assert copy.streams() == book.streams() == 4
    digested, leases, cursor = book.snapshot()
    older = book.emptied()
    older.restore(digested, [lease[:4] for lease in leases], cursor)  # written before the field
    assert older.streams() == 1 + 2  # "old" read as spare-keeping: its two leases, one stream
