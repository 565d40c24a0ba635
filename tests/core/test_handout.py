import random

from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.handout import HANDOUTS, SAMPLE, LocalityFirst, PeerInfo, RandomByCompleteness, locality

ASKER = PeerInfo("me", "10.0.0.1:7000", zone="z1", rack="r1", have=5)


def _peer(node, **kw):
    return PeerInfo(node, f"{node}:7000", **kw)


def test_locality_levels():
    assert locality(ASKER, _peer("a", zone="z1", rack="r1")) == 0
    assert locality(ASKER, _peer("a", zone="z1", rack="r2")) == 1
    assert locality(ASKER, _peer("a", zone="z1")) == 1
    assert locality(ASKER, _peer("a", zone="z2", rack="r1")) == 2  # same rack name, other zone
    assert locality(ASKER, _peer("a")) == 2


def test_empty_labels_never_match():
    blank = PeerInfo("me", "x")
    assert locality(blank, _peer("a")) == 2
    no_rack = PeerInfo("me", "x", zone="z1")
    assert locality(no_rack, _peer("a", zone="z1")) == 1  # empty racks do not count as the same rack


def test_excludes_asker():
    peers = [ASKER, _peer("a", complete=True), PeerInfo("me", "other-addr", complete=True)]
    for policy in (LocalityFirst(), RandomByCompleteness()):
        got = policy.handout(ASKER, peers, 10, random.Random(0))
        assert [p.node for p in got] == ["a"]


def test_bounded_by_limit():
    peers = [_peer(str(i), complete=True) for i in range(20)]
    for policy in (LocalityFirst(), RandomByCompleteness()):
        for limit in (0, 1, 7, 20, 50):
            got = policy.handout(ASKER, peers, limit, random.Random(0))
            assert len(got) == min(limit, 20)
            assert len({p.node for p in got}) == len(got)
        assert policy.handout(ASKER, peers, -1, random.Random(0)) == []


def test_useful_before_useless_regardless_of_locality():
    near_useless = _peer("near", zone="z1", rack="r1", have=5)  # same count as asker: useless
    far_complete = _peer("far", zone="z9", complete=True, have=0)
    far_more = _peer("more", zone="z9", have=6)
    got = LocalityFirst().handout(ASKER, [near_useless, far_complete, far_more], 2, random.Random(0))
    assert {p.node for p in got} == {"far", "more"}


def test_rack_then_zone_then_elsewhere():
    peers = [
        _peer("else", zone="z2", complete=True),
        _peer("zone", zone="z1", rack="r7", complete=True),
        _peer("rack", zone="z1", rack="r1", complete=True),
    ]
    got = LocalityFirst().handout(ASKER, peers, 3, random.Random(0))
    assert [p.node for p in got] == ["rack", "zone", "else"]


def test_least_loaded_first_within_locality():
    peers = [_peer(f"l{load}", zone="z1", rack="r1", complete=True, load=load) for load in (5, 0, 3)]
    got = LocalityFirst().handout(ASKER, peers, 3, random.Random(0))
    assert [p.load for p in got] == [0, 3, 5]
    # Locality beats load.
    far_idle = _peer("far", zone="z2", complete=True, load=0)
    got = LocalityFirst().handout(ASKER, [far_idle, *peers], 1, random.Random(0))
    assert got[0].node == "l0"
    got = LocalityFirst().handout(ASKER, [far_idle, peers[0]], 1, random.Random(0))
    assert got[0].node == "l5"


peer_infos = st.builds(
    PeerInfo,
    node=st.sampled_from([f"n{i}" for i in range(30)] + ["me"]),
    addr=st.just("a:1"),
    zone=st.sampled_from(["", "z1", "z2"]),
    rack=st.sampled_from(["", "r1", "r2"]),
    have=st.integers(0, 10),
    complete=st.booleans(),
    load=st.integers(0, 4),
)


@given(st.lists(peer_infos, max_size=40), st.integers(0, 45), st.integers(0, 2**32))
def test_locality_first_order_property(peers, limit, seed):
    got = LocalityFirst().handout(ASKER, peers, limit, random.Random(seed))
    others = [p for p in peers if p.node != ASKER.node]
    assert len(got) == min(limit, len(others))
    assert all(p.node != ASKER.node for p in got)

    def rank(p):
        useful = p.complete or p.have > ASKER.have
        return (0 if useful else 1, locality(ASKER, p), p.load)

    ranks = [rank(p) for p in got]
    assert ranks == sorted(ranks)
    # Nothing left out ranks strictly better than something handed out (when all are ranked: a
    # large field is sampled first, see test_large_swarms_rank_a_bounded_sample).
    if got and len(others) <= limit * SAMPLE:
        worst = ranks[-1]
        left_out = list(others)
        for p in got:
            left_out.remove(p)
        assert all(rank(p) >= worst for p in left_out)


@given(st.lists(peer_infos, max_size=40), st.integers(0, 45), st.integers(0, 2**32))
def test_kraken_property(peers, limit, seed):
    got = RandomByCompleteness().handout(ASKER, peers, limit, random.Random(seed))
    others = [p for p in peers if p.node != ASKER.node]
    assert len(got) == min(limit, len(others))
    remaining = list(others)
    for p in got:
        remaining.remove(p)  # a sub-multiset of the candidates
    keys = [(not p.complete, -p.have) for p in got]
    assert keys == sorted(keys)
    assert got == RandomByCompleteness().handout(ASKER, peers, limit, random.Random(seed))


def test_kraken_samples_randomly_not_best_first():
    peers = [_peer(f"c{i}", complete=True) for i in range(5)] + [_peer(f"e{i}") for i in range(45)]
    picks = [RandomByCompleteness().handout(ASKER, peers, 5, random.Random(s)) for s in range(20)]
    # Unlike LocalityFirst it does not always return the complete peers.
    assert any(not all(p.complete for p in got) for got in picks)
    assert len({tuple(p.node for p in got) for got in picks}) > 1


def test_handout_registry():
    assert HANDOUTS["locality"]().name == "locality"
    assert HANDOUTS["kraken"]().name == "kraken"


def test_large_swarms_rank_a_bounded_sample():
    asker = PeerInfo("me", "me:1", "z", "r")
    crowd = [PeerInfo(f"n{i}", f"n{i}:1", "z", "r", have=i % 7, load=i % 5) for i in range(5000)]
    ranked: list[PeerInfo] = []

    class Counting(random.Random):
        def choices(self, population, k):  # the policy must shrink the field before sorting it
            chosen = super().choices(population, k=k)
            ranked.extend(chosen)
            return chosen

    got = LocalityFirst().handout(asker, [asker, *crowd], 16, Counting(3))
    assert len(got) == 16 and len({p.node for p in got}) == 16 and asker not in got
    assert len(ranked) == 16 * SAMPLE + 1 and set(got) <= set(ranked)  # one more, in case the asker is drawn
    assert len(set(ranked)) > 16 * SAMPLE * 0.95  # repeats are rare in a swarm this large
    # Within the sample the ranking still holds: useful peers (more pieces than the asker) first.
    assert all(p.have > 0 for p in got)


def test_with_the_asker_s_rack_and_zone_at_hand_near_peers_are_drawn_from_them():
    """480 peers in 12 racks: a uniform sample of 129 holds about 10 of the asker's rack; drawn
    from the rack's own list, the handout is all same-rack useful peers."""
    crowd = [PeerInfo(f"n{i}", f"n{i}:1", zone=f"z{i % 2}", rack=f"r{i % 12}", have=9) for i in range(480)]
    asker = PeerInfo("me", "me:1", zone="z1", rack="r5", have=1)
    rack = [p for p in crowd if p.zone == "z1" and p.rack == "r5"]
    zone = [p for p in crowd if p.zone == "z1"]
    got = LocalityFirst().handout(asker, crowd, 16, random.Random(7), near=(rack, zone))
    assert len(got) == 16 and all(p.rack == "r5" and p.zone == "z1" for p in got)
    uniform = LocalityFirst().handout(asker, crowd, 16, random.Random(7))
    assert sum(p.rack == "r5" and p.zone == "z1" for p in uniform) < 16  # what the index is for


def test_near_peers_that_are_not_useful_yield_to_useful_ones_elsewhere():
    rack = [PeerInfo(f"r{i}", f"r{i}:1", zone="z1", rack="r1", have=0) for i in range(40)]
    far = [PeerInfo(f"f{i}", f"f{i}:1", zone="z2", rack="r9", have=50) for i in range(400)]
    asker = PeerInfo("me", "me:1", zone="z1", rack="r1", have=3)
    got = LocalityFirst().handout(asker, rack + far, 16, random.Random(1), near=(rack, rack))
    assert len(got) == 16 and all(p.have > asker.have for p in got)
