"""Overload shedding: announces whose agent stopped waiting are dropped before any work, and a node
whose clock is off is never dropped for its clock. Against the real tracker app over HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from p2pdist.core.identity import NodeCredential, sign_request
from p2pdist.core.wire import Announce, encode
from tracker.app import create_app
from tracker.config import TrackerConfig
from tracker.shedding import Shedder

TOKEN = "shedding-test-secret"
BLOB = "sha256:" + "d" * 64


def test_a_prompt_node_s_stale_announce_is_late_a_skewed_node_s_never() -> None:
    s = Shedder(give_up_after=5.0, max_nodes=2)
    now = 1_000_000.0
    assert not s.late("skewed", int((now - 60) * 1e6), now)  # its clock is a minute behind: never shown sane
    assert not s.late("skewed", int((now - 61) * 1e6), now + 1)
    assert not s.late("prompt", int((now - 0.01) * 1e6), now)  # arrived at once: its clock is sane
    assert s.late("prompt", int((now - 6) * 1e6), now)  # then one that waited 6 s: its agent gave up
    assert not s.late("prompt", int((now - 4) * 1e6), now)  # 4 s: still waited for
    for n in ("a", "b"):  # bounded: the oldest sane node is forgotten first
        s.late(n, int(now * 1e6), now)
    assert not s.late("prompt", int((now - 6) * 1e6), now)


@pytest.fixture
async def tracker() -> AsyncIterator[TestServer]:
    server = TestServer(create_app(TrackerConfig(cluster_token=TOKEN)))
    await server.start_server()
    yield server
    await server.close()


async def _post(session: aiohttp.ClientSession, server: TestServer, node: str, signed_at: float) -> int:
    body = encode(Announce(node=node, addr=f"{node}:7001", blob=BLOB, size=1 << 20))
    cred = NodeCredential.issue(TOKEN, node, int(time.time()) + 3600)
    headers = {"Authorization": sign_request(cred, "POST", "/v1/announce", body, signed_at),
               "Content-Type": "application/msgpack"}
    async with session.post(server.make_url("/v1/announce"), data=body, headers=headers) as resp:
        return resp.status


async def test_the_tracker_drops_what_its_agent_gave_up_on(tracker: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        assert await _post(session, tracker, "n1", time.time()) == 200
        # Signed 6 s ago (it queued behind an overload, say): its agent's 5 s timeout has fired.
        assert await _post(session, tracker, "n1", time.time() - 6) == 503
        # A node whose first announce is already 6 s "old" has a slow clock, not a late request.
        assert await _post(session, tracker, "n2", time.time() - 6) == 200
        async with session.get(tracker.make_url("/metrics"), headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            text = await r.text()
    assert 'p2pdist_tracker_announces_dropped_total{reason="late"} 1.0' in text
