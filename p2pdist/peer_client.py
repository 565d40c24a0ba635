"""Piece requests to peers: one HTTP range GET per piece, with a deadline."""

from __future__ import annotations

import asyncio

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
            if resp.content_length is not None and resp.content_length != length:
                raise PeerError(f"peer {addr} sent Content-Length {resp.content_length}, expected {length}")
            return await resp.content.readexactly(length)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise PeerError(f"peer {addr}: {e or type(e).__name__}") from None
    except asyncio.IncompleteReadError:
        raise PeerError(f"peer {addr} hung up mid-piece") from None
