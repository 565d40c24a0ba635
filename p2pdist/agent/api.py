"""The agent's local control API (loopback): fetch with progress, status, metrics, health and readiness."""

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
from p2pdist.core.digest import DigestError
from p2pdist.core.names import InvalidName
from p2pdist.core.reference import parse_reference

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

PROGRESS_EVERY = 0.2  # seconds between progress lines streamed to `p2pdist fetch`


def build_app(agent: Agent) -> web.Application:
    app = web.Application()

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

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(agent.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node": agent.node})

    readiness = Readiness(agent)

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness.check()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "node": agent.node, "checks": checks}, status=200 if ready else 503)

    app.router.add_post("/v1/fetch", fetch)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
