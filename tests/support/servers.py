"""Small real aiohttp servers for tests: fault-injecting origins and a blob store behind redirects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` served on 127.0.0.1; yields its port and stops it on exit."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def blob_store(root: list[Path], seen: list[tuple[str, str | None, str | None]] | None = None) -> web.Application:
    """What distribution's ``redirect`` middleware points at (S3, a CDN): files under the registry's
    storage (``root[0]``, set once the registry exists), Range and HEAD honoured. ``seen`` records
    (method, Authorization, Range) of every request."""

    async def blob(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append((request.method, request.headers.get("Authorization"), request.headers.get("Range")))
        path = root[0] / request.match_info["path"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{path:docker/registry/v2/blobs/.+}", blob)
    return app
