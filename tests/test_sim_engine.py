"""The flow-level engine on cases with known answers, and the simulator's determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest

from p2pdist.core.layout import decide_layout
from p2pdist.settings import replace
from simulations.cluster import Cluster
from simulations.engine import Link, Network, Simulator
from simulations.profiles import origin_only_profile, p2pdist_profile
from simulations.scenario import scenario_from_dict

MIB = 1 << 20
GBIT = 125e6  # bytes per second


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def test_events_run_in_time_order_fifo_at_equal_times_and_move_or_cancel_by_handle():
    sim = Simulator()
    ran: list[tuple[float, str]] = []

    def note(name: str) -> None:
        ran.append((sim.now, name))

    # More events than the heap's first allocation (1024), so it grows while handles are held.
    for i in range(1500):
        sim.at(10.0 + (i * 7919 % 1500) / 1000, note, f"bulk{i}")
    a = sim.schedule(2.0, note, "a")
    b = sim.schedule(2.0, note, "b")
    c = sim.schedule(3.0, note, "c")
    d = sim.schedule(4.0, note, "d")
    sim.at(2.0, note, "e")
    b = sim.move(b, 5.0)  # later
    d = sim.move(d, 1.0)  # earlier
    c = sim.move(c, 2.0)  # the same time as a and e, ordered as if scheduled now: after them
    sim.cancel(a)
    sim.run(until=9.0)
    assert ran == [(1.0, "d"), (2.0, "e"), (2.0, "c"), (5.0, "b")]
    assert sim.events == 4  # moved and cancelled entries are not events
    sim.run()
    bulk = [t for t, name in ran[4:]]
    assert len(bulk) == 1500 and bulk == sorted(bulk)
    assert sim.events == 1504


def test_one_transfer_takes_size_over_capacity():
    sim = Simulator()
    net = Network(sim)
    origin, down = Link(sim, "origin", GBIT), Link(sim, "down", 10 * GBIT)
    done = []
    net.transfer(1 << 30, [origin, down], lambda t: done.append(sim.now))
    sim.run()
    assert _close(done[0], (1 << 30) / GBIT)


def test_two_transfers_share_an_uplink_equally():
    sim = Simulator()
    net = Network(sim)
    up = Link(sim, "up", GBIT)
    a, b = Link(sim, "a", 10 * GBIT), Link(sim, "b", 10 * GBIT)
    done = {}
    net.transfer(100 * MIB, [up, a], lambda t: done.__setitem__("a", sim.now))
    net.transfer(100 * MIB, [up, b], lambda t: done.__setitem__("b", sim.now))
    sim.run()
    assert _close(done["a"], 2 * 100 * MIB / GBIT) and _close(done["b"], done["a"])


def test_sharing_changes_when_transfers_come_and_go():
    # A runs alone for 1 s, shares with B (half each) until A is done, then B has the link alone.
    sim = Simulator()
    net = Network(sim)
    up = Link(sim, "up", 100.0)
    done = {}
    net.transfer(200.0, [up], lambda t: done.__setitem__("a", sim.now))
    sim.at(1.0, lambda _: net.transfer(200.0, [up], lambda t: done.__setitem__("b", sim.now)))
    sim.run()
    assert _close(done["a"], 3.0)  # 100 bytes alone, then 100 at 50 B/s
    assert _close(done["b"], 4.0)  # 100 bytes at 50 B/s, then 100 alone


def test_the_slowest_link_on_the_path_decides():
    sim = Simulator()
    net = Network(sim)
    up, slow = Link(sim, "up", 100.0), Link(sim, "slow", 25.0)
    done = []
    net.transfer(100.0, [up, slow], lambda t: done.append(sim.now))
    sim.run()
    assert _close(done[0], 4.0)
    assert _close(up.busy, 1.0) and _close(slow.busy, 4.0)


def test_a_cancelled_transfer_gives_its_share_back():
    sim = Simulator()
    net = Network(sim)
    up = Link(sim, "up", 100.0)
    done = []
    keep = net.transfer(100.0, [up], lambda t: done.append(sim.now))
    gone = net.transfer(100.0, [up], lambda t: done.append(-1.0))
    sim.at(0.5, lambda _: net.cancel(gone))
    sim.run()
    assert done == [pytest.approx(1.25)]  # 25 bytes at 50 B/s in 0.5 s, then 75 alone in 0.75 s
    assert keep.pending == 0 and gone.cancelled


@pytest.mark.parametrize("relays", [1, 2, 5])
def test_pipelining_along_a_chain(relays):
    """Origin -> n1 -> n2 ... : each node forwards a piece as soon as it has it, so the last of
    ``relays`` nodes is done after (M + relays - 1) piece times, not relays * M."""
    sim = Simulator()
    net = Network(sim)
    pieces, piece = 16, 4 * MIB
    origin = Link(sim, "origin", GBIT)
    ups = [Link(sim, f"n{k}.up", GBIT) for k in range(relays)]
    downs = [Link(sim, f"n{k}.down", GBIT) for k in range(relays)]
    finished = [0.0] * relays
    queues: list[list[int]] = [[] for _ in range(relays)]
    busy = [False] * relays

    def received(k: int, i: int) -> None:
        finished[k] = sim.now
        if k + 1 < relays:
            queues[k].append(i)
            forward(k)

    def forward(k: int) -> None:
        # One upload at a time per node: the schedule of the chunked bound.
        if busy[k] or not queues[k]:
            return
        busy[k] = True
        i = queues[k].pop(0)

        def sent(_t, k=k, i=i):
            busy[k] = False
            received(k + 1, i)
            forward(k)

        net.transfer(piece, [ups[k], downs[k + 1]], sent)

    def from_origin(i: int) -> None:
        def got(_t, i=i):
            received(0, i)
            if i + 1 < pieces:
                from_origin(i + 1)

        net.transfer(piece, [origin, downs[0]], got)

    from_origin(0)
    sim.run()
    tau = piece / GBIT
    assert _close(finished[-1], (pieces + relays - 1) * tau)


def _flash(nodes: int, **extra) -> dict:
    data = {"nodes": nodes, "image": {"layers": ["64MiB"]},
            "network": {"upload": "1Gbit", "download": "10Gbit", "origin_upload": "1Gbit", "rtt": 0,
                        "origin_rtt": 0}}
    data.update(extra)
    return data


def test_agent_alone_with_the_origin_takes_size_over_origin_uplink():
    sc = scenario_from_dict(_flash(1))
    out = Cluster(sc, origin_only_profile(sc)).run()
    assert _close(out.done[0], (64 * MIB) / GBIT, rel=1e-6)
    assert _close(out.origin_bytes, 64 * MIB, rel=1e-9)


def test_n_agents_origin_only_take_n_times_size_over_origin_uplink():
    sc = scenario_from_dict(_flash(5))
    out = Cluster(sc, origin_only_profile(sc)).run()
    assert _close(max(out.done), 5 * (64 * MIB) / GBIT, rel=1e-6)
    assert _close(out.origin_bytes, 5 * 64 * MIB, rel=1e-9)


def test_p2pdist_takes_each_piece_from_the_origin_once_plus_its_audits():
    sc = scenario_from_dict(_flash(20))
    profile = p2pdist_profile(sc)
    out = Cluster(sc, profile).run()
    assert all(d > 0 for d in out.done)
    # A fresh tracker audits a few first reporters (one piece fetched twice each), then no more.
    piece = decide_layout(64 * MIB, rule=profile.tracker.piece_rule).piece_size
    assert 1 <= out.audits <= 2 * profile.tracker.probation_nodes
    assert _close(out.origin_bytes, 64 * MIB + out.audits * piece, rel=1e-9)
    plain = Cluster(sc, dataclasses.replace(profile, tracker=replace(profile.tracker, audits=False))).run()
    assert plain.audits == 0 and _close(plain.origin_bytes, 64 * MIB, rel=1e-9)
    # Nobody can beat the origin sending every byte once.
    assert min(out.done) >= (64 * MIB) / GBIT


def test_same_seed_same_result_other_seed_other_result():
    def run(seed: int) -> list[float]:
        sc = scenario_from_dict(_flash(30, seed=seed, arrival={"pattern": "flash", "spread": "1s"}))
        return Cluster(sc, p2pdist_profile(sc)).run().done

    assert run(1) == run(1)
    assert run(1) != run(2)
