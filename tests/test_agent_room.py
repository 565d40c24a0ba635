"""A real agent tells its neighbours how many upload slots it has free (ROOM), as they change,
and lets a request beyond them wait in a short line for the next free slot.

A prober connects to the control channel like a neighbour would, then holds the agent's upload
slots with range requests it does not read: every slot taken and given back must show up as a
ROOM frame, and a request beyond the slots and the line gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from p2pdist.config import Limits
from p2pdist.core import wire
from tests.support.identity import Caller
from tests.support.procs import AgentProc, free_port
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

TOKEN = "room-token"
PROBER = Caller(TOKEN, "prober")
SIZE = 48 << 20  # each held range is far larger than the loopback socket buffers, so sendfile blocks


async def _next_room(ws: aiohttp.ClientWebSocketResponse) -> int:
    while True:
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        frame = wire.decode(msg.data)
        if isinstance(frame, wire.Room):
            return frame.free


@dataclass
class Probe:
    """A holder agent with one blob, and the prober's session and control channel to it."""

    agent: AgentProc
    data: bytes
    path: str
    url: str
    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    held: list[aiohttp.ClientResponse] = field(default_factory=list)

    def get(self, byte_range: str):  # the request context manager aiohttp returns
        return self.session.get(self.url, headers=PROBER.peer("holder", self.path, f"bytes={byte_range}"))

    async def request(self, byte_range: str) -> aiohttp.ClientResponse:
        """The response, its body not read yet (the caller releases it)."""
        return await self.get(byte_range)

    async def hold(self) -> None:
        """Take one upload slot with a whole-blob range left unread."""
        self.held.append(await self.request(f"0-{SIZE - 1}"))


@contextlib.asynccontextmanager
async def holder(tmp_path: Path, registry: Registry, repo: str,
                 env: dict[str, str] | None = None) -> AsyncIterator[Probe]:
    agent = AgentProc(tmp_path, "holder", f"http://127.0.0.1:{free_port()}", TOKEN,
                      upstreams=[f"http://{registry.host}"], extra_env=env).start()
    probe = None
    try:
        data = os.urandom(SIZE)
        digest = registry.push_blob(repo, data)
        result = await asyncio.to_thread(agent.fetch, f"{registry.host}/{repo}@{digest}")
        assert result.get("done"), result
        path = f"/v1/blobs/{digest}"
        control = f"http://127.0.0.1:{agent.peer_port}/v1/control"
        # One connection per request (limit=0): each held response keeps its own socket busy.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
                session.ws_connect(control, headers=PROBER.peer("holder", "/v1/control")) as ws:
            await ws.send_bytes(wire.encode(wire.Hello("prober", "127.0.0.1:1")))
            probe = Probe(agent, data, path, f"http://127.0.0.1:{agent.peer_port}{path}", session, ws)
            yield probe
    finally:
        for r in probe.held if probe is not None else []:
            with contextlib.suppress(Exception):
                r.close()
        agent.stop()


async def _until(check, what: str, deadline: float = 20.0) -> None:
    """Poll ``check()`` (a state read over HTTP) until it holds; fail with ``what`` after the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not await asyncio.to_thread(check):
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_room_follows_upload_slots(tmp_path: Path, registry: Registry):
    slots = Limits().upload_slots
    async with holder(tmp_path, registry, "team/room") as probe:
        seen = []
        for _ in range(slots):
            await probe.hold()
            seen.append(await _next_room(probe.ws))
        assert seen == list(range(slots - 1, -1, -1))  # one less free slot per upload
        assert probe.agent.metrics()["p2pdist_uploads_active"] == slots
        async with probe.get("0-9") as busy:
            assert busy.status == 503  # full, as the last ROOM said (after the line's short wait)
        for r in probe.held:
            assert r.status == 206
        probe.held.pop().close()  # drop one reader: its upload ends, a slot frees
        assert await _next_room(probe.ws) == 1


# A line of one place, and a wait far longer than a test needs: the line must hand the slot over,
# not run out.
LINE_OF_ONE = {"P2PDIST_LIMITS_UPLOAD_LINE": "1", "P2PDIST_LIMITS_UPLOAD_LINE_WAIT": "60"}


async def waiting_in_line(probe: Probe) -> asyncio.Task:
    """Every upload slot taken, then one request more: it waits in the line (returned, unanswered)."""
    for _ in range(Limits().upload_slots):
        await probe.hold()
        await _next_room(probe.ws)
    waiter = asyncio.create_task(probe.request("0-9"))
    await _until(lambda: probe.agent.metrics().get("p2pdist_upload_line") == 1, "the request to join the line")
    return waiter


async def test_a_request_beyond_the_slots_waits_in_line_and_gets_the_next_free_slot(tmp_path: Path, registry: Registry):
    """With every slot taken, a request waits for one instead of a 503 (the slot goes straight to it
    when an upload ends), and a request past the line is refused at once."""
    async with holder(tmp_path, registry, "team/line", LINE_OF_ONE) as probe:
        waiter = await waiting_in_line(probe)
        assert not waiter.done()
        async with probe.get("10-19") as refused:
            assert refused.status == 503  # the line (one place) is full
        probe.held.pop().close()  # an upload ends: its slot goes to the request in line
        served = await waiter
        try:
            assert served.status == 206
            assert await served.read() == probe.data[:10]
        finally:
            served.release()
        metrics = probe.agent.metrics()
        assert metrics["p2pdist_upload_line"] == 0
        assert metrics["p2pdist_uploads_refused_total"] == 1


async def test_a_request_whose_asker_left_the_line_frees_its_slot_without_an_error(tmp_path: Path, registry: Registry):
    """An asker that gives up while its request waits in line (killed, or past its piece deadline)
    closes its connection; the slot handed to that request goes back, and nothing is logged as a
    server error (it was a 500 with a traceback, for a routine event in a swarm)."""
    slots = Limits().upload_slots
    async with holder(tmp_path, registry, "team/gone", LINE_OF_ONE) as probe:
        waiter = await waiting_in_line(probe)
        waiter.cancel()  # the asker gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        probe.held.pop().close()  # a slot frees and goes to the request in line, whose asker is gone
        await _until(lambda: probe.agent.metrics().get("p2pdist_upload_line") == 0, "the line to empty")
        await _until(lambda: probe.agent.metrics()["p2pdist_uploads_active"] == slots - 1, "the slot to come back")
        async with probe.get("0-9") as served:
            assert served.status == 206 and await served.read() == probe.data[:10]
        assert "Error handling request" not in probe.agent.output()
