"""fetch_piece over a real TCP connection: bodies read in WAKE_BYTES steps (SO_RCVLOWAT) arrive whole,
including a tail shorter than one step, and the pooled connection serves the next request.

The server trickles its answer, as a shaped link would: the agent's own peer server (run by
tests/test_cluster.py) sends at loopback speed, so the steps would not show."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from p2pdist.agent.peer_client import WAKE_BYTES, PeerError, fetch_piece
from tests.support.registry import free_port

BLOB = os.urandom(3 * WAKE_BYTES + 12345)
DIGEST = "sha256:" + "ab" * 32


async def _trickle(request: web.Request) -> web.StreamResponse:
    """Range GETs answered 16 KiB at a time with pauses, as a shaped link delivers them."""
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["Range"])
    assert m is not None
    first, last = int(m.group(1)), int(m.group(2))
    body = BLOB[first:last + 1]
    resp = web.StreamResponse(status=206, headers={"Content-Length": str(len(body)),
                                                   "Content-Range": f"bytes {first}-{last}/{len(BLOB)}"})
    await resp.prepare(request)
    for i in range(0, len(body), 16 << 10):
        await resp.write(body[i:i + (16 << 10)])
        await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


@contextlib.asynccontextmanager
async def serve(handler) -> AsyncIterator[str]:
    """A real aiohttp server on loopback answering blob GETs with ``handler``; yields its address."""
    app = web.Application()
    app.router.add_get("/v1/blobs/{digest}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def peer() -> AsyncIterator[str]:
    async with serve(_trickle) as addr:
        yield addr


async def test_pieces_longer_and_shorter_than_a_wake_step_arrive_whole_on_one_connection(peer: str) -> None:
    connector = aiohttp.TCPConnector(limit=1)  # one connection: the second request reuses the first's socket
    async with aiohttp.ClientSession(connector=connector) as session:
        # 3 steps and a 12,345-byte tail: the low-water mark must drop to the tail or the read hangs.
        data = await fetch_piece(session, peer, DIGEST, 0, len(BLOB), timeout=10)
        assert bytes(data) == BLOB
        # A 10-byte answer on the same socket: it arrives only if the mark was put back to 1.
        data = await fetch_piece(session, peer, DIGEST, 100, 10, timeout=10)
        assert bytes(data) == BLOB[100:110]


async def test_a_body_cut_short_is_an_error_not_a_hang() -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Length": str(WAKE_BYTES * 2)})
        await resp.prepare(request)
        await resp.write(BLOB[:WAKE_BYTES // 2])
        request.transport.close()  # the peer dies mid-piece
        return resp

    async with serve(short) as addr, aiohttp.ClientSession() as session:
        with pytest.raises(PeerError):
            await fetch_piece(session, addr, DIGEST, 0, WAKE_BYTES * 2, timeout=10)
