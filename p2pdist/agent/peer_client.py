"""Piece requests to peers: one HTTP range GET per piece, with a deadline, checked block by block."""

from __future__ import annotations

import contextlib
import socket
import ssl as _ssl
from collections.abc import Callable
from typing import NamedTuple

import aiohttp

from p2pdist.core import blocks as blocks_wire
from p2pdist.core.blocks import BlockCheck, BlockError, MissingBlocks

from ..errors import P2pdistError

# Bytes the kernel gathers before it wakes us for a piece's body (SO_RCVLOWAT). On a slow link the
# event loop would otherwise wake for every packet or two: on the 16-node shaped benchmark (2 cores)
# the agents spent 178 CPU-seconds receiving 4 GiB at 25 Mbit/s, and 120 with this.
WAKE_BYTES = 256 << 10
BUSY_BODY_LIMIT = 4096  # a 503's body is a short reason; a longer or unsized one is left (the connection closes)


class PeerError(P2pdistError):
    """A peer failed to deliver a piece (gone, timed out, or answered wrongly)."""


class PeerBusy(PeerError):
    """The peer has no free upload slot; ask someone else."""


class PeerLied(PeerError):
    """The peer's block digests do not make the piece's digest, or a block does not match its digest:
    the peer sent a bad piece (caught at the first bad block, the rest is not read)."""


class Piece(NamedTuple):
    data: bytearray
    blocks: bytes | None  # the piece's block digests, checked (None if no digest was given to check)


class PeerLacks(PeerError):
    """The peer answered 404: it does not hold the piece it advertised (it dropped the blob and its
    LOST is on the way, or it lied)."""


async def fetch_piece(
    session: aiohttp.ClientSession, addr: str, blob: str, offset: int, length: int,
    *, expected: bytes | None = None, sign: Callable[[str, str], str] | None = None, scheme: str = "http",
    ssl: _ssl.SSLContext | bool = True, timeout: float = 30.0,
    on_checked: Callable[[BlockCheck, bytearray], None] | None = None,
) -> Piece:
    """One piece from ``addr``; ``sign(path, range)`` gives the request's Authorization (our ticket
    and signature, meant for this peer only).

    With ``expected`` (the piece digest from the tracker) the answer's block digests must make it and
    every block is checked as it lands: what returns is verified, and a bad piece raises PeerLied at
    its first bad block. Without, the caller has nothing to check it against and must not store it.
    ``on_checked(check, data)`` hears each time more of it checked out (``check.checked`` bytes of
    ``data``): the piece can be passed on from there (agent/relay.py).

    Without ``sign`` the request goes out bare and the peer refuses it (401, a PeerError): our node
    secret opens only our own peer port and is never sent to anyone.
    """
    path = f"/v1/blobs/{blob}"
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    if sign is not None:
        headers["Authorization"] = sign(path, headers["Range"])
    try:
        async with session.get(
            f"{scheme}://{addr}{path}", headers=headers, ssl=ssl,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(5.0, timeout)),
        ) as resp:
            if resp.status == 503:
                # The short body read to its end keeps the connection in the pool: left unread, aiohttp
                # closes it, and the next request to this peer pays a new TCP handshake through the
                # loaded link (on the 16-node shaped benchmark 503s outnumber pieces 4 to 1).
                if resp.content_length is not None and resp.content_length <= BUSY_BODY_LIMIT:
                    await resp.read()
                raise PeerBusy(f"peer {addr} is busy")
            if resp.status == 404:
                raise PeerLacks(f"peer {addr} answered 404 for {blob} @{offset}")
            if resp.status != 206:
                raise PeerError(f"peer {addr} answered {resp.status} for {blob} @{offset}")
            # A length is required up front: read() below must never buffer an unbounded body.
            if resp.content_length != length:
                raise PeerError(f"peer {addr} sent Content-Length {resp.content_length}, expected {length}")
            check = None
            if expected is not None:
                try:
                    blocks = blocks_wire.decode(resp.headers.get(blocks_wire.HEADER), length, expected)
                except MissingBlocks as e:
                    raise PeerError(f"peer {addr}: {e}") from None
                except BlockError as e:
                    raise PeerLied(f"peer {addr}, {blob} @{offset}: {e}") from None
                check = BlockCheck(blocks, length)
            try:
                data = await _read_body(resp, length, check, on_checked)
            except BlockError as e:
                raise PeerLied(f"peer {addr}, {blob} @{offset}: {e}") from None
            if len(data) != length:
                raise PeerError(f"peer {addr} sent {len(data)} bytes, expected {length}")
            return Piece(data, check.blocks if check is not None else None)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise PeerError(f"peer {addr}: {e or type(e).__name__}") from None


async def _read_body(resp: aiohttp.ClientResponse, length: int, check: BlockCheck | None,
                     on_checked: Callable[[BlockCheck, bytearray], None] | None = None) -> bytearray:
    """The body, read in WAKE_BYTES steps: the socket's low-water mark is raised to what is still to
    come (capped at WAKE_BYTES), so the loop wakes when that much is there, never waiting for bytes
    that will not be sent. ``check`` checks each block as it completes (raises BlockError)."""
    transport = resp.connection.transport if resp.connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is not None and transport.get_extra_info("sslcontext") is not None:
        # TLS: bytes the loop already decrypted wait in its buffer, not the socket's; a low-water
        # mark on the socket would then hold back a wake-up for bytes that are never sent.
        sock = None
    content = resp.content
    data = bytearray()
    mark = 1  # the socket's low-water mark: the default, as the pool hands connections out
    try:
        while len(data) < length:
            unread = length - content.total_bytes  # still in the kernel or on the wire
            want = max(1, min(WAKE_BYTES, unread))
            if sock is not None and want != mark:  # a syscall only when it changes: twice per piece, mostly
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                mark = want
            chunk = await content.readany()
            if not chunk:
                break
            data += chunk
            if check is not None:
                # ~45 us per 256 KiB block, BLAKE3 on the loop: a thread hop would cost as much.
                before = check.checked
                if check.advance(data) > before and on_checked is not None:
                    on_checked(check, data)
        if check is not None and length == 0:
            check.advance(data)  # an empty piece: its one empty block
    finally:
        if sock is not None and mark != 1:
            # The connection goes back to the pool: its next reader must see every byte at once.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
    return data
