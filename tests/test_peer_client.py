"""fetch_piece over a real TCP connection: bodies read in WAKE_BYTES steps (SO_RCVLOWAT) arrive whole,
including a tail shorter than one step, and the pooled connection serves the next request; each
block is checked against the block digests sent ahead (core.blocks) as it lands, and a peer that
lies is caught at its first bad block, before the rest of the piece is sent.

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

from p2pdist.agent.peer_client import WAKE_BYTES, PeerError, PeerLied, fetch_piece
from p2pdist.core import blocks as blocks_wire
from p2pdist.core.manifest import BLOCK_SIZE, block_digests, piece_digest
from tests.support.registry import free_port

BLOB = os.urandom(3 * WAKE_BYTES + 12345)
DIGEST = "sha256:" + "ab" * 32


def _range(request: web.Request) -> tuple[int, int]:
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["Range"])
    assert m is not None
    return int(m.group(1)), int(m.group(2))


async def _send(request: web.Request, body: bytes, headers: dict[str, str], sent: list[int] | None = None,
                ) -> web.StreamResponse:
    """``body`` 16 KiB at a time with pauses, as a shaped link delivers it; ``sent`` counts what went out."""
    first, last = _range(request)
    resp = web.StreamResponse(status=206, headers={"Content-Length": str(len(body)),
                                                   "Content-Range": f"bytes {first}-{last}/{len(BLOB)}", **headers})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(body), 16 << 10):
            await resp.write(body[i:i + (16 << 10)])
            if sent is not None:
                sent.append(len(body[i:i + (16 << 10)]))
            await asyncio.sleep(0.001)
        await resp.write_eof()
    return resp


async def _trickle(request: web.Request) -> web.StreamResponse:
    """Range GETs answered with the range's block digests, as the agent's peer server does."""
    first, last = _range(request)
    body = BLOB[first:last + 1]
    return await _send(request, body, {blocks_wire.HEADER: blocks_wire.encode(block_digests(body))})


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
        piece = await fetch_piece(session, peer, DIGEST, 0, len(BLOB), expected=piece_digest(BLOB), timeout=10)
        assert bytes(piece.data) == BLOB
        assert piece.blocks == block_digests(BLOB)  # checked, and kept to serve the piece with
        # A 10-byte answer on the same socket: it arrives only if the mark was put back to 1.
        piece = await fetch_piece(session, peer, DIGEST, 100, 10, expected=piece_digest(BLOB[100:110]), timeout=10)
        assert bytes(piece.data) == BLOB[100:110]
        # Nothing to check against (no digest known): the bytes come unchecked, with no blocks.
        piece = await fetch_piece(session, peer, DIGEST, 7, 9, timeout=10)
        assert bytes(piece.data) == BLOB[7:16] and piece.blocks is None


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


async def test_a_bad_block_is_caught_when_it_lands_and_the_rest_is_not_read() -> None:
    """Block digests of the true piece, bytes with block 1 of 16 changed: the asker stops at block 1."""
    true = os.urandom(16 * BLOCK_SIZE)
    bad = bytearray(true)
    bad[BLOCK_SIZE + 5] ^= 1
    sent: list[int] = []
    finished = asyncio.Event()

    async def liar(request: web.Request) -> web.StreamResponse:
        try:
            return await _send(request, bytes(bad), {blocks_wire.HEADER: blocks_wire.encode(block_digests(true))},
                               sent)
        finally:
            finished.set()

    async with serve(liar) as addr, aiohttp.ClientSession() as session:
        with pytest.raises(PeerLied, match="block 1 "):
            await fetch_piece(session, addr, DIGEST, 0, len(true), expected=piece_digest(true), timeout=10)
        # The asker dropped the connection at block 1: the sender's writes failed long before the
        # end (what went out after is what the loopback socket took before the reset reached it).
        await asyncio.wait_for(finished.wait(), 10)
        assert sum(sent) <= len(true) // 2, (sum(sent), len(true))


async def test_block_digests_that_do_not_make_the_piece_digest_are_a_lie_found_before_the_body() -> None:
    sent: list[int] = []
    other = os.urandom(len(BLOB))

    async def liar(request: web.Request) -> web.StreamResponse:
        # Bytes and block digests that agree with each other, not with the digest the tracker gave.
        return await _send(request, other, {blocks_wire.HEADER: blocks_wire.encode(block_digests(other))}, sent)

    async with serve(liar) as addr, aiohttp.ClientSession() as session:
        with pytest.raises(PeerLied, match="do not make the piece's digest"):
            await fetch_piece(session, addr, DIGEST, 0, len(BLOB), expected=piece_digest(BLOB), timeout=10)


@pytest.mark.parametrize(("header", "error", "match"), [
    (None, PeerError, "no P2pdist-Blocks header"),
    ("not base64!", PeerLied, "not base64"),
    (blocks_wire.encode(b"x" * 32), PeerLied, "carries 32 bytes of digests, a 798777-byte piece has 128"),
    ("A" * (blocks_wire.MAX_HEADER + 4), PeerLied, "more than a piece ever needs"),
])
async def test_malformed_or_missing_block_digests_are_refused(header, error, match) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return await _send(request, BLOB, {} if header is None else {blocks_wire.HEADER: header})

    async with serve(answer) as addr, aiohttp.ClientSession() as session:
        with pytest.raises(error, match=match) as caught:
            await fetch_piece(session, addr, DIGEST, 0, len(BLOB), expected=piece_digest(BLOB), timeout=10)
        assert (caught.type is PeerLied) == (error is PeerLied)  # a missing header is not a lie
