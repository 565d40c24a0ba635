"""The mirror's HTTP server: OCI error bodies even for requests the HTTP parser refuses.

aiohttp answers a request line or header past its limits (8 KiB) with a plain-text 400 before any
handler runs; a registry client then shows the user a bare "400 Bad Request". Here those answers
carry an OCI error body like every other refusal.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..serving import CappedServer
from .errors import API_VERSION


class _OciErrorHandler(RequestHandler):
    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        detail = str(exc or message or "bad request")[:200]
        body = {"errors": [{"code": "UNSUPPORTED", "message": f"malformed request: {detail}", "detail": None}]}
        resp = web.Response(status=status, text=json.dumps(body), content_type="application/json",
                            headers=API_VERSION)
        resp.force_close()
        return resp


class OciServer(CappedServer):
    """A capped server whose connections answer parser errors with OCI error bodies."""

    def __call__(self) -> RequestHandler:
        return _OciErrorHandler(self, loop=self._loop, **self._kwargs)
