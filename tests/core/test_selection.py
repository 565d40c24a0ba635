import heapq
import random
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pdist.core.selection import (
    SELECTORS,
    RandomOrder,
    RarestFirst,
    Sequential,
    assign,
    choose_peer,
    inflight_budget,
    reader_cursor,
)


@dataclass(slots=True)
class PeerSlot:
    """A neighbour as the peer chooser reads it (core.selection.Neighbour)."""

    peer: str
    inflight: int
    limit: int
    score: float = 0.0
    room: int = 1 << 30


@st.composite
def selection_inputs(draw):
    n = draw(st.integers(1, 80))
    availability = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    candidates = draw(st.sets(st.integers(0, n - 1), max_size=n))
    count = draw(st.integers(0, n + 3))
    cursor = draw(st.none() | st.integers(0, n))
    window = draw(st.integers(0, 8))
    window_min = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**32))
    return availability, candidates, count, cursor, (window, window_min), seed


@settings(max_examples=200)
@given(selection_inputs())
@example(([0], {0}, 0, 0, (1, 0), 0))  # count 0 with the cursor on a candidate: nothing at all
def test_rarest_first_properties(inputs):
    availability, candidates, count, cursor, (window, window_min), seed = inputs
    policy = RarestFirst(window=window, window_min=window_min)
    chosen = policy.select(candidates, availability, count, random.Random(seed), cursor)

    assert len(chosen) == len(set(chosen)), "duplicates"
    assert set(chosen) <= candidates, "non-candidates"
    assert len(chosen) == min(max(count, 0), len(candidates)), "count"

    in_window = []
    if cursor is not None and window > 0:
        share = max(1, count // 4) if count > 0 else 0  # a quarter of the requests, at least one
        need = min(window_min, max((availability[i] for i in candidates), default=0))
        in_window = [i for i in range(cursor, cursor + window)
                     if i in candidates and availability[i] >= need][:share]
    # Window pieces come first, in order.
    assert chosen[: len(in_window)] == in_window
    rest = chosen[len(in_window) :]
    # Outside the window the choice is rarest-first: no unchosen candidate is strictly rarer than
    # any chosen piece, and the chosen pieces are ordered by rarity.
    unchosen = candidates - set(chosen)
    if rest and unchosen:
        assert min(availability[i] for i in unchosen) >= max(availability[i] for i in rest)
    assert [availability[i] for i in rest] == sorted(availability[i] for i in rest)


@given(selection_inputs())
def test_rarest_first_deterministic_for_seed(inputs):
    availability, candidates, count, cursor, (window, window_min), seed = inputs
    policy = RarestFirst(window=window, window_min=window_min)
    a = policy.select(candidates, availability, count, random.Random(seed), cursor)
    b = policy.select(candidates, availability, count, random.Random(seed), cursor)
    assert a == b


def test_rarest_first_example():
    availability = [5, 1, 3, 0, 2, 9, 9, 9]
    assert RarestFirst(window=0).select(set(range(8)), availability, 3, random.Random(1)) == [3, 1, 4]
    # The window at the cursor comes first but takes at most a quarter of the requests (at least
    # one); rarest-first fills the rest.
    got = RarestFirst(window=2).select(set(range(8)), availability, 4, random.Random(1), cursor=5)
    assert got == [5, 3, 1, 4]
    got = RarestFirst(window=2).select(set(range(8)), availability, 8, random.Random(1), cursor=5)
    assert got[:2] == [5, 6]


def test_window_skips_non_candidates_and_respects_count():
    availability = [8] * 10
    got = RarestFirst(window=4).select({2, 4, 5, 9}, availability, 8, random.Random(0), cursor=3)
    assert got[:2] == [4, 5]  # the window is 3..6, of which 4 and 5 are candidates
    assert RarestFirst(window=4).select({2, 4, 5, 9}, availability, 1, random.Random(0), cursor=3) == [4]
    got = RarestFirst(window=4).select({2, 9}, availability, 5, random.Random(0), cursor=3)
    assert sorted(got) == [2, 9]


def test_window_leaves_scarce_pieces_to_rarest_first():
    # Pieces 0 and 1 sit at the cursor but only 1 and 2 peers hold them: a reader must not send
    # the whole crowd to their holders. Piece 2 has the default minimum of 8 holders.
    availability = [1, 2, 8, 9, 9, 0]
    got = RarestFirst(window=4).select({0, 1, 2, 3, 5}, availability, 2, random.Random(0), cursor=0)
    assert got == [2, 5]  # the window gives 2 (0 and 1 are too scarce), rarest-first gives 5
    got = RarestFirst(window=4, window_min=0).select({0, 1, 2, 3, 5}, availability, 2, random.Random(0), cursor=0)
    assert got == [0, 5]  # without the minimum the reader's next piece comes first, however scarce


def test_window_minimum_follows_the_commonest_piece_in_a_small_cluster():
    # Two neighbours at most: no piece can have 8 holders, so the reader's next piece qualifies as
    # soon as it is as common as any; a rarer one still does not.
    got = RarestFirst(window=4).select({0, 1, 2, 3}, [1, 2, 2, 0], 1, random.Random(0), cursor=0)
    assert got == [1]  # 0 is held by one peer, 1 by two, the most any candidate has
    assert RarestFirst(window=4).select({0, 3}, [1, 2, 2, 0], 1, random.Random(0), cursor=0) == [0]


def test_reader_cursor_allows_one_window_request_in_flight():
    policy = RarestFirst(window=4)
    assert reader_cursor(policy, 10, 100, lambda i: False) == 10
    assert reader_cursor(policy, 10, 100, lambda i: i == 13) is None  # 13 is in the window 10..13
    assert reader_cursor(policy, 10, 100, lambda i: i in (9, 14)) == 10  # in flight, but outside it
    assert reader_cursor(policy, 98, 100, lambda i: i >= 100) == 98  # the window ends with the blob
    assert reader_cursor(policy, None, 100, lambda i: True) is None
    assert reader_cursor(RarestFirst(window=0), 5, 100, lambda i: True) == 5  # no window, nothing to limit
    assert reader_cursor(Sequential(), 5, 100, lambda i: True) == 5


def test_window_zero_or_no_cursor_is_pure_rarest():
    availability = [3, 2, 1, 0]
    for policy, cursor in ((RarestFirst(window=0), 0), (RarestFirst(window=4), None)):
        assert policy.select({0, 1, 2, 3}, availability, 2, random.Random(0), cursor) == [3, 2]


def test_rarest_first_ties_are_spread_by_rng():
    availability = [1] * 50
    firsts = {RarestFirst(window=0).select(set(range(50)), availability, 1, random.Random(s))[0]
              for s in range(40)}
    assert len(firsts) > 5  # not always the lowest index


@pytest.mark.parametrize("count", [0, -1])
def test_nonpositive_count_returns_nothing(count):
    for policy in (RarestFirst(), RandomOrder(), Sequential()):
        assert policy.select({0, 1, 2}, [0, 0, 0], count, random.Random(0), 0) == []


def test_empty_candidates():
    for policy in (RarestFirst(), RandomOrder(), Sequential()):
        assert policy.select(set(), [0, 0], 3, random.Random(0), 0) == []


@given(st.sets(st.integers(0, 100)), st.integers(0, 120), st.integers(0, 2**32))
def test_random_order(candidates, count, seed):
    availability = [0] * 101
    got = RandomOrder().select(candidates, availability, count, random.Random(seed))
    assert len(got) == len(set(got)) == min(count, len(candidates))
    assert set(got) <= candidates
    assert got == RandomOrder().select(candidates, availability, count, random.Random(seed))


def test_random_order_is_not_sequential():
    got = [tuple(RandomOrder().select(set(range(20)), [0] * 20, 5, random.Random(s))) for s in range(10)]
    assert len(set(got)) > 1
    assert any(g != tuple(sorted(g)) for g in got)


@given(st.sets(st.integers(0, 100)), st.integers(0, 120))
def test_sequential_lowest_first(candidates, count):
    got = Sequential().select(candidates, [9] * 101, count, random.Random(0), cursor=50)
    assert got == sorted(candidates)[:count]


def test_selector_registry():
    assert {name: cls().name for name, cls in SELECTORS.items()} == {
        "rarest-first": "rarest-first", "random": "random", "sequential": "sequential",
    }


# -- choose_peer ---------------------------------------------------------------------------------


def test_choose_peer_skips_full_peers():
    full = PeerSlot("full", inflight=4, limit=4, score=10)
    free = PeerSlot("free", inflight=3, limit=4, score=0)
    assert choose_peer([full, free], random.Random(0)) is free


def test_choose_peer_skips_badly_scored_peers():
    bad = PeerSlot("bad", inflight=0, limit=4, score=-3.0)  # at the threshold: excluded
    ok = PeerSlot("ok", inflight=3, limit=4, score=-2.9)
    assert choose_peer([bad, ok], random.Random(0)) is ok
    assert choose_peer([bad], random.Random(0)) is None
    assert choose_peer([bad], random.Random(0), min_score=-5) is bad


def test_choose_peer_none_when_no_holders_or_all_full():
    assert choose_peer([], random.Random(0)) is None
    assert choose_peer([PeerSlot("a", 2, 2), PeerSlot("b", 0, 0)], random.Random(0)) is None


def test_choose_peer_prefers_least_busy_then_score():
    high_busy = PeerSlot("high", inflight=3, limit=4, score=1.0)
    low_idle = PeerSlot("low", inflight=0, limit=4, score=0.0)
    assert choose_peer([low_idle, high_busy], random.Random(0)) is low_idle
    a = PeerSlot("a", inflight=2, limit=4, score=0.0)  # 50 % busy
    b = PeerSlot("b", inflight=2, limit=8, score=0.0)  # 25 % busy
    assert choose_peer([a, b], random.Random(0)) is b
    good = PeerSlot("good", inflight=1, limit=4, score=1.0)
    meh = PeerSlot("meh", inflight=1, limit=4, score=-1.0)
    assert choose_peer([meh, good], random.Random(0)) is good  # equal load: the better score


def test_assign_skips_pieces_whose_holders_are_busy():
    full = PeerSlot("full", inflight=4, limit=4)
    idle = PeerSlot("idle", inflight=0, limit=2)
    holders = {0: [full], 1: [full], 2: [idle], 3: [idle], 4: [idle]}
    rare_first = [1, 1, 2, 2, 3]  # pieces 0 and 1 are the rarest but only the full peer has them
    got = assign(RarestFirst(window=0), set(holders), rare_first, 3, holders.__getitem__, random.Random(0))
    # Piece-first would have stopped at 0 and 1; assign fills idle's two slots with the next pieces.
    assert sorted(i for i, _ in got) == [2, 3] and {s.peer for _, s in got} == {"idle"}
    assert idle.inflight == 2  # counted, so the third request found no slot


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.sampled_from([-4.0, -3.0, -1.0, 0.0, 0.5, 2.0])),
        max_size=12,
    ),
    st.integers(0, 2**32),
)
def test_choose_peer_property(specs, seed):
    slots = [PeerSlot(f"p{i}", inflight, limit, score) for i, (inflight, limit, score) in enumerate(specs)]
    got = choose_peer(slots, random.Random(seed))
    usable = [p for p in slots if p.inflight < p.limit and p.score > -3.0]
    if not usable:
        assert got is None
        return
    assert got in usable
    least = min(p.inflight / p.limit for p in usable)
    assert got.inflight / got.limit == least
    assert got.score == max(p.score for p in usable if p.inflight / p.limit == least)


def test_choose_peer_skips_peers_with_no_room_and_prefers_the_emptiest():
    full = PeerSlot("full", inflight=0, limit=4, score=1.0, room=0)
    one = PeerSlot("one", inflight=0, limit=4, score=1.0, room=1)
    three = PeerSlot("three", inflight=2, limit=4, score=0.0, room=3)
    assert choose_peer([full, one, three], random.Random(0)) is three
    assert choose_peer([full], random.Random(0)) is None


def test_assign_spends_advertised_room():
    # One free slot at the only holder: a second piece it holds must not be sent there too.
    holder = PeerSlot("h", inflight=0, limit=4, room=1)
    out = assign(RarestFirst(window=0), {0, 1}, [1, 1], 2, lambda i: [holder], random.Random(0))
    assert len(out) == 1 and holder.room == 0


def test_assign_ranks_only_pieces_a_usable_peer_holds():
    # The 50 rarest pieces sit at a full peer; a free peer holds commoner ones. Ranking everything
    # and skipping would look at the rarest first and place nothing; assign places both requests.
    full = PeerSlot("full", inflight=0, limit=4, room=0)
    free = PeerSlot("free", inflight=0, limit=4, room=4)
    availability = [1] * 50 + [5] * 50

    def holders(i):
        return [full] if i < 50 else [full, free]

    out = assign(RarestFirst(window=0), set(range(100)), availability, 2, holders, random.Random(0))
    assert len(out) == 2 and all(i >= 50 and slot is free for i, slot in out)
    # A caller's own reachable set gives the same answer.
    again = assign(RarestFirst(window=0), set(range(100)), availability, 2, holders, random.Random(0),
                   reachable=range(50, 100))
    assert [i for i, _ in again] == [i for i, _ in out]


@pytest.mark.parametrize(("min_bytes", "slots", "piece", "expected"), [
    (8 << 20, 2, 4 << 20, 8 << 20),  # the bytes and the slots agree
    (8 << 20, 2, 2 << 20, 8 << 20),  # small pieces: the bytes give four, more than the slots
    (8 << 20, 2, 8 << 20, 16 << 20),  # large pieces: one per upload slot, more than the bytes
    (8 << 20, 3, 16 << 20, 48 << 20),
    (0, 0, 4 << 20, 4 << 20),  # no bytes, no upload slots configured: still one piece at a time
])
def test_inflight_budget_is_the_bytes_but_never_fewer_pieces_than_upload_slots(min_bytes, slots, piece, expected):
    assert inflight_budget(min_bytes, slots, piece) == expected


def _least_by_key(holders, rng, min_score=-3.0):
    """choose_peer's rule as written before its one-loop form: the least key among usable holders."""
    usable = [p for p in holders if p.inflight < p.limit and p.room > 0 and p.score > min_score]
    if not usable:
        return None
    return min(usable, key=lambda p: (-p.room, p.inflight / p.limit, -p.score, rng.random()))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(-1, 2), st.sampled_from([-4.0, 0.0, 0.5, 1.0])),
                max_size=7), st.integers(0, 2**32))
def test_choose_peer_picks_and_draws_as_the_least_key_does(slots, seed):
    """The loop must pick the same peer and take the same random draws (one per usable holder, in
    order) as the key it stands for: the simulator's runs and the agents' choices depend on both."""
    holders = [PeerSlot(f"p{k}", inflight, 2, score, room) for k, (inflight, room, score) in enumerate(slots)]
    a, b = random.Random(seed), random.Random(seed)
    assert choose_peer(holders, a) is _least_by_key(holders, b)
    assert a.random() == b.random()


@settings(max_examples=400, deadline=None)
@given(st.sets(st.integers(0, 39), max_size=30), st.lists(st.integers(0, 5), min_size=40, max_size=40),
       st.one_of(st.none(), st.integers(0, 38)), st.integers(0, 2**32))
def test_one_rarest_piece_is_picked_and_drawn_for_as_nsmallest_does(candidates, availability, cursor, seed):
    """One piece wanted: the loop stands for heapq.nsmallest(1, ...) over the same keys."""
    policy = RarestFirst(window=4, window_min=3)
    a, b = random.Random(seed), random.Random(seed)
    got = policy.select(candidates, availability, 1, a, cursor)
    chosen = policy.select(candidates, availability, 0, b, cursor)  # nothing: no draws either
    assert chosen == []
    if cursor is not None and any(i in candidates for i in range(cursor, cursor + 4)):
        return  # the window's own rule chose (or not); the rarest-first part is what is checked here
    pool = list(candidates)
    want = heapq.nsmallest(1, pool, key=lambda i: availability[i] + b.random())
    assert got == want
    assert a.random() == b.random()
