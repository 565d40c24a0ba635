"""The agent's local control API (loopback): fetch with progress, status, the store (``p2pdist cache``
and ``p2pdist import``), metrics, health and readiness; and the metrics listener, which has only the
last three (``metrics_listen``: safe to expose, it neither fetches nor writes)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from p2pdist.agent.node import UpstreamNotAllowed
from p2pdist.agent.readiness import Readiness
from p2pdist.agent.swarm import FetchFailed
from p2pdist.core.digest import Digest, DigestError, DigestMismatch
from p2pdist.core.image import INDEX_TYPES, MANIFEST_TYPES
from p2pdist.core.layout import LayoutError
from p2pdist.core.names import InvalidName
from p2pdist.core.reference import parse_reference
from p2pdist.mirror.manifests import MAX_MANIFEST, ManifestCache
from p2pdist.store import StoreFull, admin
from p2pdist.store.ingest import BlobWriter, Ingested, IngestError

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

PROGRESS_EVERY = 0.2  # seconds between progress lines streamed to `p2pdist fetch`
CHUNK = 1 << 20  # imported bytes handed to the writer thread at once


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


@web.middleware
async def no_web_pages(request: web.Request, handler) -> web.StreamResponse:
    """The API is for this node's own programs, which never send ``Origin``; a browser always does
    with a cross-site POST, and a page on any site could otherwise make the daemon fetch or evict
    (a form POST needs no CORS preflight)."""
    if request.method not in ("GET", "HEAD") and "Origin" in request.headers:
        return web.json_response({"error": "the daemon's API takes no requests from web pages"}, status=403)
    return await handler(request)


def build_app(agent: Agent, readiness: Readiness | None = None) -> web.Application:
    app = web.Application(middlewares=[no_web_pages])

    async def fetch(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            ref = parse_reference(str(body["ref"]))
        except (ValueError, KeyError, TypeError, DigestError, InvalidName) as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"bad fetch request: {e}"}),
                                     content_type="application/json") from None
        except RecursionError:  # json nested thousands deep
            raise web.HTTPBadRequest(text=json.dumps({"error": "bad fetch request: JSON nested too deeply; "
                                                               'send {"ref": "REGISTRY/REPO@DIGEST"}'}),
                                     content_type="application/json") from None
        if ref.digest is None:
            raise web.HTTPBadRequest(text=json.dumps({"error": "fetch needs REGISTRY/REPO@DIGEST"}),
                                     content_type="application/json")
        started = time.monotonic()
        try:
            swarm, done = agent.fetch(ref.registry, ref.repository, ref.digest)
        except UpstreamNotAllowed as e:
            raise web.HTTPForbidden(text=json.dumps({"error": str(e)}), content_type="application/json") from None
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)

        async def line(obj: dict) -> None:
            await resp.write((json.dumps(obj) + "\n").encode())

        while not done.done():
            if swarm is not None:
                s = swarm.stats
                await line({"size": s.size, "have": s.have, "from_peers": s.from_peers, "from_origin": s.from_origin})
            await asyncio.wait([done], timeout=PROGRESS_EVERY)
        try:
            path = done.result()
        except (FetchFailed, OSError, ValueError) as e:
            await line({"error": str(e)})
        else:
            s = swarm.stats if swarm else None
            await line({
                "done": True, "path": str(path), "seconds": time.monotonic() - started,
                "size": agent.store.size(ref.digest) or 0,
                "from_peers": s.from_peers if s else 0, "from_origin": s.from_origin if s else 0,
                "resumed": s.resumed if s else 0,
                "cached": swarm is None,
            })
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        return web.json_response({
            "node": agent.node,
            "peer_addr": agent.addr,
            "neighbours": sorted(agent.neighbours.peers),
            "banned": sorted(agent.neighbours.banned),
            "downloads": {
                blob: {"size": s.stats.size, "have": s.stats.have, "resumed": s.stats.resumed,
                       "from_peers": s.stats.from_peers, "from_origin": s.stats.from_origin}
                for blob, s in agent.swarms.items()
            },
            "store": {"bytes": agent.store.usage(), "blobs": len(agent.store.blobs())},
        })

    app.router.add_post("/v1/fetch", fetch)
    app.router.add_get("/v1/status", status)
    _add_cache_routes(app, agent)
    _add_probes(app, agent, readiness or Readiness(agent))
    return app


def build_metrics_app(agent: Agent, readiness: Readiness) -> web.Application:
    """Only GET /metrics, /healthz and /readyz: no fetch, no status, nothing that writes. Metric
    labels are fixed words (sources, results, endpoints, statuses), never a repository, registry,
    digest or credential, so this may listen beyond loopback without a token."""
    app = web.Application()
    _add_probes(app, agent, readiness)
    return app


def _add_probes(app: web.Application, agent: Agent, readiness: Readiness) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(agent.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node": agent.node})

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness.check()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "node": agent.node, "checks": checks}, status=200 if ready else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def _digest(request: web.Request) -> Digest:
    try:
        return Digest.parse(request.match_info["digest"])
    except DigestError as e:
        raise _json_error(web.HTTPBadRequest, str(e)) from None


def _add_cache_routes(app: web.Application, agent: Agent) -> None:
    """The store, for `p2pdist cache` and `p2pdist import` while the daemon runs: it owns the store
    (store.lock), so the command line goes through here, and the daemon's own rules hold (a blob
    being read or downloaded is left alone)."""
    store = agent.store
    manifests = ManifestCache(agent.config.data_dir / "manifests", agent.config.mirror.tag_ttl, time.monotonic)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response((await asyncio.to_thread(admin.listing, store)).to_json())

    async def remove(request: web.Request) -> web.Response:
        digest = _digest(request)
        removed = await asyncio.to_thread(admin.remove, store, digest)
        if removed.blob:
            _forget(agent, digest)
        body = {"digest": removed.digest, "blob": removed.blob, "partial": removed.partial,
                "in_use": removed.in_use, "downloading": removed.downloading}
        if not removed.found:
            return web.json_response({**body, "error": f"{digest} is not in the store"}, status=404)
        if removed.in_use or removed.downloading:
            why = "a reader has it open" if removed.in_use else "it is being downloaded now"
            return web.json_response({**body, "error": f"{digest} was left in place: {why}; try again later"},
                                     status=409)
        return web.json_response(body)

    async def gc(request: web.Request) -> web.Response:
        try:
            ask = await request.json() if request.can_read_body else {}
            keep, older_than = ask.get("keep"), ask.get("older_than")
            partials, blobs = bool(ask.get("partials", False)), bool(ask.get("blobs", True))
            if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 0):
                raise ValueError("keep must be a byte count >= 0")
            if older_than is not None and (not isinstance(older_than, int | float) or older_than < 0):
                raise ValueError("older_than must be seconds >= 0")
        except (ValueError, TypeError, AttributeError, RecursionError) as e:
            raise _json_error(web.HTTPBadRequest, f"bad gc request: {e}") from None
        if blobs and keep is None and older_than is None:
            if store.capacity is None:
                raise _json_error(web.HTTPBadRequest, "the daemon has no capacity set: say how much to keep "
                                                      "(--keep SIZE) or what age goes (--older-than DURATION)")
            keep = store.capacity
        # The daemon's own temp files are being written now: only those untouched for a while go.
        done = await asyncio.to_thread(admin.collect, store, keep, older_than, partials, blobs,
                                       leftover_age=600.0)
        for blob in done.evicted:
            _forget(agent, Digest.parse(blob))
        return web.json_response(done.to_json())

    async def put_blob(request: web.Request) -> web.Response:
        digest = _digest(request)
        size = request.content_length
        if size is None:
            raise _json_error(web.HTTPLengthRequired, "send the blob with its Content-Length")
        if store.has(digest):
            async for _ in request.content.iter_chunked(CHUNK):
                pass  # the client sends it anyway; nothing to write
            return web.json_response({"digest": str(digest), "status": Ingested.PRESENT.value})
        try:
            writer = await asyncio.to_thread(BlobWriter, store, digest, size, agent.config.limits.piece_size)
        except StoreFull as e:
            raise _json_error(web.HTTPInsufficientStorage, str(e)) from None
        except LayoutError as e:  # a size past what a blob may be
            raise _json_error(web.HTTPBadRequest, f"blob size {size}: {e}") from None
        try:
            buf = bytearray()
            async for chunk in request.content.iter_chunked(CHUNK):
                buf += chunk
                if len(buf) >= CHUNK:
                    data, buf = buf, bytearray()
                    await asyncio.to_thread(writer.write, data)
            if buf:
                await asyncio.to_thread(writer.write, buf)
            outcome = await asyncio.to_thread(writer.commit)
        except (DigestMismatch, IngestError) as e:
            raise _json_error(web.HTTPBadRequest, str(e)) from None
        except StoreFull as e:
            writer.abort()
            raise _json_error(web.HTTPInsufficientStorage, str(e)) from None
        except BaseException:
            writer.abort()  # the client went away, or the disk failed: nothing half-written stays
            raise
        if outcome is Ingested.ADDED:
            # Seeded like a finished download: announced complete to the tracker at its next round.
            agent.seeding(digest, interval=0.001)
        return web.json_response({"digest": str(digest), "status": outcome.value},
                                 status=201 if outcome is Ingested.ADDED else 200)

    async def put_manifest(request: web.Request) -> web.Response:
        """A manifest by its digest, for the mirror's cache: it is served under a repository only
        after the upstream confirmed it there (mirror.membership), as any cached manifest."""
        digest = _digest(request)
        body = await request.content.read(MAX_MANIFEST + 1)
        if len(body) > MAX_MANIFEST:
            raise _json_error(web.HTTPRequestEntityTooLarge, f"a manifest is at most {MAX_MANIFEST} bytes")
        actual = Digest.of(body, digest.algorithm)
        if actual != digest:
            raise _json_error(web.HTTPBadRequest, str(DigestMismatch(str(digest), str(actual))))
        if request.content_type not in INDEX_TYPES | MANIFEST_TYPES:
            # The mirror serves a cached manifest with the type it was stored with.
            raise _json_error(web.HTTPUnsupportedMediaType, f"{request.content_type!r} is not an image manifest "
                                                            "or index media type")
        await asyncio.to_thread(manifests.put, digest, request.content_type, body)
        return web.json_response({"digest": str(digest), "status": "added"}, status=201)

    app.router.add_get("/v1/cache", listing)
    app.router.add_delete("/v1/cache/blobs/{digest}", remove)
    app.router.add_put("/v1/cache/blobs/{digest}", put_blob)
    app.router.add_put("/v1/cache/manifests/{digest}", put_manifest)
    app.router.add_post("/v1/cache/gc", gc)


def _forget(agent: Agent, digest: Digest) -> None:
    """A removed blob is no longer seeded (Agent.forget)."""
    agent.forget(digest)
