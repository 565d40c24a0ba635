"""Piece requests to peers: one HTTP range GET per piece, with a deadline."""

from __future__ import annotations

import aiohttp


class PeerError(Exception):
    """A peer failed to deliver a piece (gone, timed out, or answered wrongly)."""


class PeerBusy(PeerError):
    """The peer has no free upload slot; ask someone else."""


async def fetch_piece(
    session: aiohttp.ClientSession, addr: str, blob: str, offset: int, length: int,
    *, token: str = "", timeout: float = 30.0,
) -> bytes:
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with session.get(
            f"http://{addr}/v1/blobs/{blob}", headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(5.0, timeout)),
        ) as resp:
            if resp.status == 503:
                raise PeerBusy(f"peer {addr} is busy")
            if resp.status != 206:
                raise PeerError(f"peer {addr} answered {resp.status} for {blob} @{offset}")
            # A length is required up front: read() below must never buffer an unbounded body.
            if resp.content_length != length:
                raise PeerError(f"peer {addr} sent Content-Length {resp.content_length}, expected {length}")
            data = await resp.read()  # one join of the received chunks (readexactly copies per chunk)
            if len(data) != length:
                raise PeerError(f"peer {addr} sent {len(data)} bytes, expected {length}")
            return data
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise PeerError(f"peer {addr}: {e or type(e).__name__}") from None
