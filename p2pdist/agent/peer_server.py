"""Peer data endpoint: verified piece ranges served from the store with sendfile, block digests ahead.

``GET /v1/blobs/<digest>`` with a single ``Range`` is answered only when every piece covering the
range is verified here (complete blob, or verified pieces of a partial). A request that finds every
upload slot taken waits briefly in a short line for the next (``upload_slots``); past the line or
the wait it gets 503 and the asker goes elsewhere. Neighbours also hear our free slots, less the
line (ROOM), and rarely ask a full peer at all. Everything but ``/healthz`` needs a request signed
under a tracker ticket (or, on a node on its own, its node secret): see ``auth``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from p2pdist.agent.auth import peer_auth
from p2pdist.agent.relay import Relay, RelayFailed
from p2pdist.agent.sendfile import SentFile
from p2pdist.core import blocks as blocks_wire
from p2pdist.core.digest import Digest, DigestError
from p2pdist.core.layout import MAX_PIECE_SIZE
from p2pdist.store import BlobNotFound, CorruptData, read_range

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

log = logging.getLogger("p2pdist.peer_server")

# At most 19 digits: no blob is larger, and int() refuses strings past 4,300 digits (a 500, not a 400).
_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{1,19})")


def _error(status: type[web.HTTPException], text: str) -> web.HTTPException:
    return status(text=text)


def build_app(agent: Agent) -> web.Application:
    # Data and control need a signed request from a node of the cluster, or this node's own secret
    # on a node on its own: loopback too, so a local process cannot read pieces of images it was
    # never allowed to pull.
    app = web.Application(middlewares=[peer_auth(agent.identity, agent.peer_secret)])

    async def blob_range(request: web.Request) -> web.StreamResponse:
        try:
            digest = Digest.parse(request.match_info["digest"])
        except DigestError as e:
            raise _error(web.HTTPBadRequest, str(e)) from None
        m = _RANGE.fullmatch(request.headers.get("Range", ""))
        if not m:
            raise _error(web.HTTPBadRequest, "peer requests need one 'Range: bytes=FIRST-LAST' header")
        first, last = int(m.group(1)), int(m.group(2))
        if last < first:
            raise _error(web.HTTPRequestRangeNotSatisfiable, f"empty range {first}-{last}")
        source = agent.piece_source(digest, first, last + 1)
        relay = agent.relay_for(digest, first, last + 1) if source is None else None
        if source is None and relay is None:
            raise _error(web.HTTPNotFound, f"{digest} bytes {first}-{last} are not verified on this node")
        if not await agent.upload_slots.acquire():
            agent.metrics.uploads_busy.inc()
            raise web.HTTPServiceUnavailable(text="all upload slots busy", headers={"Retry-After": "1"})
        if relay is not None:
            try:
                return await _relayed(request, agent, relay, digest, first, last)
            finally:
                agent.upload_slots.release()
        assert source is not None
        path, size = source
        pin = None
        try:  # from here on the slot is ours: whatever happens, it is given back
            # A complete blob is pinned while it is sent, so garbage collection cannot pull it away.
            if agent.store.has(digest):
                with contextlib.suppress(BlobNotFound):
                    pin = agent.store.open_blob(digest)
            # The range's block digests go ahead of its bytes (core.blocks): askers check each block as
            # it lands. Asked for a piece, that is the piece's; a range longer than any piece gets none.
            headers = {}
            if last + 1 - first <= MAX_PIECE_SIZE:
                try:
                    blocks = await agent.block_lists.for_range(str(digest), path, first, last + 1 - first)
                except (CorruptData, OSError) as e:
                    log.error("a verified range cannot be read back", extra={"blob": str(digest), "error": str(e)})
                    raise _error(web.HTTPNotFound, f"{digest} bytes {first}-{last} cannot be read here") from None
                headers[blocks_wire.HEADER] = blocks_wire.encode(blocks)
            agent.metrics.bytes_out.inc(last + 1 - first)
            if agent.config.faults.corrupt_uploads:
                resp: web.StreamResponse = _corrupted(path, first, last, size, headers)
            else:
                # FileResponse answers the Range with 206 using sendfile (zero copy).
                resp = SentFile(path, chunk_size=1 << 20, headers=headers)
            # Sent here, not after returning, so the slot stays taken while the bytes flow.
            try:
                await resp.prepare(request)
            except ConnectionResetError:
                # The asker went away mid-send (killed, or it gave up on the piece): routine in a
                # swarm, not the 500 and traceback aiohttp logs for an exception it is handed.
                log.debug("piece upload cut short by the asker", extra={"blob": str(digest), "first": first})
            return resp
        finally:
            agent.upload_slots.release()
            if pin is not None:
                pin.close()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"node": agent.node, "ok": True})

    async def control(request: web.Request) -> web.StreamResponse:
        return await agent.neighbours.accept(request)

    app.router.add_get("/v1/blobs/{digest}", blob_range)
    app.router.add_get("/v1/control", control)
    app.router.add_get("/healthz", healthz)
    return app


async def _relayed(request: web.Request, agent: Agent, relay: Relay, digest: Digest, first: int,
                   last: int) -> web.StreamResponse:
    """A piece still arriving here, sent block by block as each checks out (agent/relay.py). Should it
    stop arriving, the answer is cut off: the asker sees a short body, a failed request."""
    length = last + 1 - first
    blob = str(digest)
    resp = web.StreamResponse(status=206, headers={
        "Content-Range": f"bytes {first}-{last}/{relay.blob_size}", "Content-Length": str(length),
        "Content-Type": "application/octet-stream", blocks_wire.HEADER: blocks_wire.encode(relay.blocks)})
    agent.metrics.bytes_out.inc(length)
    agent.metrics.pieces_relayed.inc()
    await resp.prepare(request)
    write = _corrupting(resp.write, length // 2) if agent.config.faults.corrupt_uploads else resp.write
    try:
        await relay.stream(write)
        await resp.write_eof()
    except RelayFailed as e:
        log.info("a piece passed on stopped arriving: the answer is cut off", extra={
            "blob": blob, "first": first, "error": str(e)})
        if request.transport is not None:
            request.transport.close()
    except ConnectionResetError:
        log.debug("relayed piece cut short by the asker", extra={"blob": blob, "first": first})
    return resp


def _corrupting(write: Callable[[bytearray], Awaitable[None]], at: int) -> Callable[[bytearray], Awaitable[None]]:
    """Fault injection for a relayed piece: ``write`` with the byte at offset ``at`` flipped (each
    chunk is the relay's own copy, so it is flipped in place)."""
    sent = 0

    async def corrupt(chunk: bytearray) -> None:
        nonlocal sent
        if sent <= at < sent + len(chunk):
            chunk[at - sent] ^= 0xFF
        sent += len(chunk)
        await write(chunk)

    return corrupt


def _corrupted(path, first: int, last: int, size: int, headers: dict[str, str]) -> web.Response:
    """Fault injection: the right length and block digests, the wrong bytes."""
    data = bytearray(read_range(path, first, last + 1 - first))
    if data:
        data[len(data) // 2] ^= 0xFF
    return web.Response(
        body=bytes(data), status=206,
        headers={"Content-Range": f"bytes {first}-{last}/{size}", "Content-Type": "application/octet-stream",
                 **headers},
    )
