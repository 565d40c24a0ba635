"""The one authentication hook for peer and tracker endpoints (cluster token; mTLS later)."""

from __future__ import annotations

import hmac

from aiohttp import web


def cluster_auth(token: str, open_paths: tuple[str, ...] = ("/healthz",)):
    """aiohttp middleware: requests must carry ``Authorization: Bearer <cluster token>``."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler):
        if token and request.path not in open_paths:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise web.HTTPUnauthorized(
                    text="cluster authentication required: send the cluster token as 'Authorization: Bearer'",
                    headers={"WWW-Authenticate": 'Bearer realm="p2pdist-cluster"'},
                )
        return await handler(request)

    return middleware
