"""OCI distribution error responses."""

from __future__ import annotations

import json

from aiohttp import web

from ..errors import P2pdistError

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def oci_error(status: int, code: str, message: str, detail: object = None,
              headers: dict[str, str] | None = None) -> web.Response:
    """``{"errors": [{"code", "message", "detail"}]}`` with the given status."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers={**API_VERSION, **(headers or {})})


class MirrorError(P2pdistError):
    """Raised inside handlers; the app turns it into an OCI error response."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        return oci_error(self.status, self.code, str(self), headers=self.headers)
