"""Verified cut-through (agent/relay.py): a piece passed on while it still arrives, block by block.

Real parts on loopback: the upstream peer is an aiohttp server that sends the piece one 256 KiB block
at a time when the test says so; the relaying node is an Agent (real store) with its own peer server
(``peer_server.build_app``), fetching through the swarm's driver; the asker is ``fetch_piece``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from p2pdist.agent import Agent
from p2pdist.agent.neighbours import Neighbour
from p2pdist.agent.peer_client import PeerError, PeerLacks, PeerLied, fetch_piece
from p2pdist.agent.peer_server import build_app
from p2pdist.agent.swarm import Swarm
from p2pdist.config import AgentConfig
from p2pdist.core import blocks as blocks_wire
from p2pdist.core.bitfield import Bitfield
from p2pdist.core.digest import Digest
from p2pdist.core.download import Request
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import BLOCK_SIZE, block_digests, piece_digest
from tests.support.servers import serving

BLOCKS = 4
DATA = os.urandom(BLOCKS * BLOCK_SIZE)  # one 1 MiB piece (the blob's only one)
BLOB = Digest.of(DATA)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    async with serving(app) as port:
        yield f"127.0.0.1:{port}"


class Upstream:
    """A peer that sends block k of the piece once ``release(k)`` (or fails after ``cut_after`` blocks)."""

    def __init__(self, cut_after: int | None = None) -> None:
        self.gates = [asyncio.Event() for _ in range(BLOCKS)]
        self.sent = 0  # blocks written so far
        self.cut_after = cut_after

    def release(self, *blocks: int) -> None:
        for k in blocks:
            self.gates[k].set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/blobs/{digest}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={
            "Content-Length": str(len(DATA)), "Content-Range": f"bytes 0-{len(DATA) - 1}/{len(DATA)}",
            blocks_wire.HEADER: blocks_wire.encode(block_digests(DATA))})
        await resp.prepare(request)
        for k in range(BLOCKS):
            if self.cut_after is not None and k == self.cut_after:
                assert request.transport is not None
                request.transport.close()  # the upstream goes away mid-piece
                return resp
            await self.gates[k].wait()
            await resp.write(DATA[k * BLOCK_SIZE:(k + 1) * BLOCK_SIZE])
            self.sent = k + 1
        await resp.write_eof()
        return resp


async def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def relaying_node(tmp_path: Path, upstream: Upstream, faults: dict | None = None,
                        **limits) -> AsyncIterator[tuple]:
    """The relaying agent with its peer server, a swarm for BLOB, and its request of the piece from
    ``upstream`` under way: yields (agent, swarm, the relay's address, the request's task, asker kwargs)."""
    async with aiohttp.ClientSession() as session, serve(upstream.app()) as up_addr:
        config = AgentConfig(data_dir=tmp_path, limits=limits, faults=faults or {})
        agent = Agent(config, "relay", session, node_secret="s" * 43)
        layout = PieceLayout(len(DATA), len(DATA))
        swarm = Swarm(agent, BLOB, "docker.io", "library/app")
        swarm.layout = layout
        swarm.partial = agent.store.open_partial(BLOB, layout)
        swarm.partial.manifest.set(0, piece_digest(DATA))  # the tracker's digest
        agent.swarms[str(BLOB)] = swarm
        dl = swarm.machine = swarm._new_machine()
        up = Neighbour("up", up_addr, limit=2, advertised=2)
        up.bitfields[str(BLOB)] = Bitfield(1, [0])
        agent.neighbours.peers["up"] = up
        try:
            async with serve(build_app(agent)) as relay_addr:
                req = Request(0, up, len(DATA), time.monotonic())
                dl.requests.add(req)  # as a pass places it: counted on the peer and in the byte budget
                up.inflight += 1
                dl.inflight_bytes += len(DATA)
                task = asyncio.ensure_future(swarm._peer_piece(dl, req))
                asker = {"expected": piece_digest(DATA), "sign": lambda _path, _rng: f"Bearer {agent.peer_secret}"}
                try:
                    yield agent, swarm, relay_addr, task, asker, session
                finally:
                    upstream.release(*range(BLOCKS))
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            swarm.partial.close()


async def test_an_asker_gets_each_block_once_it_checked_out_here_before_the_rest_arrived(tmp_path: Path):
    upstream = Upstream()
    async with relaying_node(tmp_path, upstream) as (agent, swarm, addr, task, asker, session):
        upstream.release(0)
        await until(lambda: swarm.machine.offering(0), "the piece offered at its first block")
        checked: list[tuple[int, int]] = []  # (bytes the asker verified, blocks the upstream had sent then)
        fetch = asyncio.ensure_future(fetch_piece(
            session, addr, str(BLOB), 0, len(DATA), timeout=10,
            on_checked=lambda check, _data: checked.append((check.checked, upstream.sent)), **asker))
        # The asker verified block 0 while the upstream had sent block 0 only: passed on as it came.
        await until(lambda: checked, "block 0 at the asker")
        assert checked[0] == (BLOCK_SIZE, 1)
        upstream.release(1, 2, 3)
        piece = await fetch
        assert bytes(piece.data) == DATA and piece.blocks == block_digests(DATA)
        await task
        assert 0 in swarm.partial.have and not swarm.relays  # stored: from now on served from the store
        assert agent.metrics.pieces_relayed._value.get() == 1
        again = await fetch_piece(session, addr, str(BLOB), 0, len(DATA), timeout=10, **asker)
        assert bytes(again.data) == DATA


async def test_a_piece_that_stops_arriving_cuts_its_askers_off_and_is_not_offered_after(tmp_path: Path):
    upstream = Upstream(cut_after=2)
    async with relaying_node(tmp_path, upstream) as (agent, swarm, addr, task, asker, session):
        upstream.release(0)
        await until(lambda: swarm.machine.offering(0), "the piece offered at its first block")
        fetch = asyncio.ensure_future(fetch_piece(session, addr, str(BLOB), 0, len(DATA), timeout=10, **asker))
        await until(lambda: agent.metrics.pieces_relayed._value.get() == 1, "the asker's request at the relay")
        upstream.release(1)  # then the upstream goes away after block 1
        # The asker's answer is cut off: a failed transfer, not bad data (the relay did not lie).
        with pytest.raises(PeerError) as caught:
            await fetch
        assert not isinstance(caught.value, PeerLied)
        await task
        assert 0 not in swarm.partial.have and not swarm.machine.offering(0) and not swarm.relays
        assert agent.metrics.offers_withdrawn._value.get() == 1
        # Asked again, the relay says it lacks the piece (the asker drops it as a holder of it).
        with pytest.raises(PeerLacks):
            await fetch_piece(session, addr, str(BLOB), 0, len(DATA), timeout=10, **asker)


async def test_with_cut_through_off_a_piece_is_passed_on_only_once_stored(tmp_path: Path):
    upstream = Upstream()
    async with relaying_node(tmp_path, upstream, cut_through=False) as (agent, swarm, addr, task, asker, session):
        upstream.release(0, 1)
        await until(lambda: upstream.sent == 2, "two blocks sent")
        with pytest.raises(PeerLacks):  # arriving, checked as far as it came, but not offered
            await fetch_piece(session, addr, str(BLOB), 0, len(DATA), timeout=10, **asker)
        assert not swarm.machine.offering(0)
        upstream.release(2, 3)
        await task
        assert 0 in swarm.partial.have
        assert agent.metrics.pieces_relayed._value.get() == 0


async def test_a_relay_that_corrupts_what_it_passes_on_is_caught_at_the_bad_block(tmp_path: Path):
    """``faults.corrupt_uploads`` covers relayed pieces too: the hostile tests' corrupting node lies
    whether its piece came from its store or is still arriving."""
    upstream = Upstream()
    async with relaying_node(tmp_path, upstream, faults={"corrupt_uploads": True}) as (
            agent, swarm, addr, task, asker, session):
        upstream.release(0)
        await until(lambda: swarm.machine.offering(0), "the piece offered at its first block")
        fetch = asyncio.ensure_future(fetch_piece(session, addr, str(BLOB), 0, len(DATA), timeout=10, **asker))
        await until(lambda: agent.metrics.pieces_relayed._value.get() == 1, "the asker's request at the relay")
        upstream.release(1, 2, 3)
        with pytest.raises(PeerLied, match="block 2"):  # the middle byte is in block 2 of 4
            await fetch
        await task
        assert 0 in swarm.partial.have  # the relay's own copy is good: only what it sent was not
