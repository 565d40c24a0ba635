"""The tracker's announce pacer (tracker/pacer.py) and the agent machine honouring its spacing
(p2pdist.core.download), then a real tracker asking for room once announces exceed its budget."""

from __future__ import annotations

import os
import time

import aiohttp
import pytest

from p2pdist.core.wire import Announce, AnnounceReply, decode, encode
from tests.support.identity import Caller
from tests.support.procs import Tracker
from tracker.config import TrackerConfig
from tracker.pacer import BUDGET_IN_MEMORY, BUDGET_ON_REDIS, MAX_SPACING, MIN_SPACING, Pacer, budget_of


def _second(pacer: Pacer, second: int, announces: int) -> float:
    spacing = 0.0
    for k in range(announces):
        spacing = pacer.announced(second + k / max(1, announces))
    return spacing


def test_spacing_grows_with_the_excess_and_relaxes_when_load_falls():
    pacer = Pacer(budget=100)
    assert _second(pacer, 0, 90) == 0.0  # under budget: agents keep their own spacing
    assert _second(pacer, 1, 400) == 0.0  # the count of second 0 (90) decides second 1
    first = _second(pacer, 2, 400)  # second 1 had 400: four times the budget
    assert first == pytest.approx(MIN_SPACING * 4)
    assert _second(pacer, 3, 400) == pytest.approx(first * 4)  # still over: grows again
    assert _second(pacer, 4, 400) <= MAX_SPACING
    high = pacer.spacing
    assert _second(pacer, 5, 30) == pytest.approx(min(MAX_SPACING, high * 4))  # second 4 was still 400
    assert _second(pacer, 6, 30) == pytest.approx(pacer.spacing)  # second 5: 30 < 50, halved
    for s in range(7, 20):
        _second(pacer, s, 30)
    assert pacer.spacing == 0.0  # back to the agents' own


def test_lease_holders_are_counted_but_never_spaced():
    pacer = Pacer(budget=100)
    holder = AnnounceReply(interval=1.0, leases=[(0, 1, 10.0)])
    other = AnnounceReply(interval=1.0)
    for k in range(400):  # second 0: four times the budget, half of it from lease holders
        pacer.announced(k / 400, holder if k % 2 == 0 else other)
    assert pacer.announced(1.0, other) == pytest.approx(MIN_SPACING * 4)  # everyone counted
    assert pacer.announced(1.1, holder) == 0.0  # a holder reports and takes leases at once
    assert pacer.spacing == pytest.approx(MIN_SPACING * 4)


def test_a_quiet_gap_counts_as_no_load_and_no_budget_means_no_pacing():
    pacer = Pacer(budget=10)
    _second(pacer, 0, 100)
    _second(pacer, 1, 100)
    assert pacer.spacing > 0
    pacer.announced(10.0)  # nine silent seconds in between
    assert pacer.rate == 0
    assert Pacer(budget=0).announced(1.0) == 0.0


async def test_a_real_tracker_over_its_budget_asks_agents_for_room(tmp_path):
    proc = Tracker(tmp_path, "pacer-secret")
    # Low, so a loaded machine still goes over it: one announce at a time, at a few ms each.
    proc.env["P2PDIST_TRACKER_ANNOUNCE_BUDGET"] = "5"
    proc.start()
    blob = "sha256:" + os.urandom(32).hex()
    callers = [Caller("pacer-secret", f"n{i}") for i in range(11)]
    try:
        async with aiohttp.ClientSession() as http:
            async def announce(i: int, want_leases: int = 0) -> AnnounceReply:
                body = encode(Announce(node=f"n{i % 11}", addr="127.0.0.1:9", blob=blob, size=1 << 20,
                                       want_leases=want_leases))
                async with http.post(f"{proc.url}/v1/announce", data=body,
                                     headers=callers[i % 11].tracker(body)) as r:
                    assert r.status == 200
                    reply = decode(await r.read(), expect=(AnnounceReply,))
                    assert isinstance(reply, AnnounceReply)
                    return reply

            busy, steady = TrackerConfig().busy_interval, TrackerConfig().announce_interval
            first = await announce(10, want_leases=2)  # origin work: the blob's pieces are leased now
            assert first.leases and first.spacing == 0.0
            # Not loaded yet: every node of a blob whose pieces are leased is asked back soon.
            assert (await announce(0)).interval == busy
            spacing = 0.0
            # Over budget until a second's boundary has passed: the pacer decides on whole seconds,
            # and a fast machine answered 2,000 announces within one (spacing stayed 0).
            i, until = 1, time.monotonic() + 30.0
            while not spacing and time.monotonic() < until:
                spacing = (await announce(i % 10)).spacing
                i += 1
            assert spacing >= MIN_SPACING
            # A node holding origin leases is never asked to wait: the swarm waits for its digests.
            holder = await announce(10, want_leases=2)
            assert holder.leases and holder.spacing == 0.0 and holder.interval == busy
            # Loaded: a node without origin work learns digests from its neighbours, and is asked
            # back on the steady interval (tracker.service._interval).
            other = await announce(1)
            assert other.spacing >= MIN_SPACING and other.interval == steady
        metrics = proc.metrics()
        assert metrics["p2pdist_tracker_announce_spacing_seconds"] >= MIN_SPACING
    finally:
        proc.stop()


def test_the_budget_follows_where_the_state_is_unless_configured():
    assert budget_of(TrackerConfig(), on_redis=False) == BUDGET_IN_MEMORY == 4500
    assert budget_of(TrackerConfig(), on_redis=True) == BUDGET_ON_REDIS == 3000
    assert budget_of(TrackerConfig(announce_budget=0), on_redis=False) == 0  # pacing off, as asked
    assert budget_of(TrackerConfig(announce_budget=1234), on_redis=True) == 1234
