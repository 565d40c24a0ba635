"""Blob responses: from the store when complete, else streamed from the swarm as pieces verify."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import TYPE_CHECKING

from aiohttp import web

from p2pdist.agent.sendfile import SentFile, copy_range

from ..core.digest import Verifier
from ..store import BlobExists, BlobNotFound
from .errors import API_VERSION, MirrorError

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent
    from p2pdist.agent.origin import OriginClient
    from p2pdist.agent.swarm import Swarm

    from ..core.digest import Digest

# At most 19 digits: no blob is larger, and int() refuses strings past 4,300 digits (a 500, not a 416).
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_readers = itertools.count()


def blob_headers(digest: Digest) -> dict[str, str]:
    return {**API_VERSION, "Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream"}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single RFC 9110 byte range, None for the whole blob."""
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise MirrorError(416, "UNSUPPORTED", f"unsupported Range {header[:60]!r}: use one bytes=FIRST-LAST range",
                          headers={"Content-Range": f"bytes */{size}"})
    if not m.group(1):  # suffix: the last n bytes
        n = int(m.group(2))
        if n == 0:
            raise MirrorError(416, "UNSUPPORTED", "empty suffix range", headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size
    start = int(m.group(1))
    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
    if start >= size or end <= start:
        raise MirrorError(416, "UNSUPPORTED", f"range {header[:60]!r} not satisfiable for {size} bytes",
                          headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def serve_stored(request: web.Request, agent: Agent, digest: Digest) -> web.StreamResponse | None:
    """A complete blob from the store with sendfile; aiohttp answers Range and HEAD itself."""
    try:
        reader = agent.store.open_blob(digest)
    except BlobNotFound:
        return None
    try:
        resp = SentFile(reader.path, headers=blob_headers(digest), copy=True)  # a client on this host
        await resp.prepare(request)
        return resp
    finally:
        reader.close()


async def stream_from_swarm(request: web.Request, agent: Agent, swarm: Swarm, done: asyncio.Future,
                            digest: Digest) -> web.StreamResponse:
    """Send pieces in order as they verify, so the first byte leaves long before the last arrives.

    The final bytes of a whole-blob response are held until the blob passed its digest check and was
    committed: if the check fails the connection is cut, so no client ever sees a complete wrong blob.
    """
    reader = next(_readers)
    if "Range" not in request.headers:
        # Known as a reader before the download starts: a direct download then opens its origin
        # streams at this reader's pace (core.download.Download.follow), from the first one.
        swarm.follow(reader, 0)
    try:
        return await _send_pieces(request, agent, swarm, done, digest, reader)
    finally:
        swarm.unfollow(reader)


async def _send_pieces(request: web.Request, agent: Agent, swarm: Swarm, done: asyncio.Future, digest: Digest,
                       reader: int) -> web.StreamResponse:
    ready = asyncio.ensure_future(swarm.ready.wait())
    await asyncio.wait([ready, done], return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if done.done() and done.exception() is None:
        stored = await serve_stored(request, agent, digest)
        if stored is not None:
            return stored
    if swarm.layout is None or swarm.partial is None:
        await done  # raises the download's error
        raise MirrorError(500, "UNKNOWN", f"download of {digest} ended without data")
    layout = swarm.layout
    try:
        partial = agent.store.open_partial(digest, layout)  # our own reference: survives the commit
    except BlobExists:
        stored = await serve_stored(request, agent, digest)
        if stored is None:
            raise MirrorError(404, "BLOB_UNKNOWN", f"blob {digest} vanished") from None
        return stored
    resp: web.StreamResponse | None = None
    try:
        span = parse_range(request.headers.get("Range"), layout.blob_size)
        start, end = span or (0, layout.blob_size)
        headers = blob_headers(digest)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{layout.blob_size}"
        resp = web.StreamResponse(status=206 if span else 200, headers=headers)
        resp.content_length = end - start
        # The status goes once the first piece is here: a download that fails before (the upstream's
        # rate limit, its refusal) is answered with that error, not a 200 cut off after its headers.
        swarm.follow(reader, layout.piece_at(start))
        if not await swarm.wait_piece(partial, layout.piece_at(start)):
            if done.done():
                done.result()  # raises the download's error
            raise MirrorError(503, "UNAVAILABLE", f"the download of {digest} started over; retry",
                              headers={"Retry-After": "1"})
        await resp.prepare(request)
        pos = start
        while pos < end:
            index = layout.piece_at(pos)
            swarm.follow(reader, index)
            if not await swarm.wait_piece(partial, index):
                await done  # the download failed: its error cuts the connection
                raise ConnectionAbortedError(f"download of {digest} restarted")
            offset, length = layout.span(index)
            stop = min(offset + length, end)
            if stop == end == layout.blob_size and span is None:
                await swarm.wait_verified(done)  # the whole-blob digest check; raises on a mismatch
            await copy_range(partial.fileno(), pos, stop - pos, resp.write)
            pos = stop
        await resp.write_eof()
        return resp
    except MirrorError:
        raise
    except BaseException:
        # Abort, never finish cleanly: a client must see a broken transfer, not a short blob. Before
        # the status went out, the error is answered as one (app.py) instead.
        if resp is not None and resp.prepared and request.transport is not None:
            request.transport.abort()
        raise
    finally:
        partial.close()


async def serve_uncached(request: web.Request, origin: OriginClient, repo: str, digest: Digest,
                         size: int | None) -> web.StreamResponse:
    """The whole blob straight from the origin, checked against its digest as it passes and not
    kept. As with a download, the last bytes wait for the digest check: on a mismatch the connection
    is cut, so no client sees a complete wrong blob."""
    resp = web.StreamResponse(status=200, headers=blob_headers(digest))
    if size is not None:
        resp.content_length = size
    verifier = Verifier(digest)
    held: bytes | None = None
    try:
        async for chunk in origin.fetch_all(repo, str(digest)):
            if not resp.prepared:
                await resp.prepare(request)
            if held is not None:
                await resp.write(held)
            verifier.update(chunk)
            held = chunk
        verifier.check()  # raises DigestMismatch
        if not resp.prepared:
            await resp.prepare(request)
        if held is not None:
            await resp.write(held)
        await resp.write_eof()
        return resp
    except BaseException:
        if resp.prepared and request.transport is not None:
            request.transport.abort()
        raise
