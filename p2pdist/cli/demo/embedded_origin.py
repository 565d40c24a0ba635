"""An embedded origin: the OCI distribution pull API over an OCI image layout, on 127.0.0.1.

Used when no ``docker-registry`` is installed. It serves one repository: ``GET /v2/``,
``GET``/``HEAD`` manifests by tag or digest, and ``GET``/``HEAD`` blobs with single byte ranges
(206 with Content-Range, 416 when unsatisfiable), ``Docker-Content-Digest``, ``Content-Length``
and OCI error bodies. Blob bodies go out with sendfile (aiohttp ``FileResponse``).

Egress accounting: body bytes of blob GETs answered 200/206, charged when the response starts.
A client that hangs up early is charged the whole response, so the count errs high, never low.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from p2pdist.cli.demo.image import OCI_MANIFEST, REF_NAME
from p2pdist.core.digest import Digest, DigestError
from p2pdist.core.names import InvalidName, check_repository, check_tag

from ...errors import P2pdistError

MAX_MANIFEST = 4 << 20  # manifests are small; refuse to buffer anything bigger
_PATH = re.compile(r"(?P<name>.+)/(?P<kind>blobs|manifests)/(?P<reference>[^/]+)")
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
EGRESS_KEY: web.AppKey[Counter[str]] = web.AppKey("egress", Counter)


class OriginHTTPError(P2pdistError):
    """An OCI error response: status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Layout:
    """Read-only view of an OCI image layout: tags and manifests from index.json, blobs by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        index = json.loads((root / "index.json").read_text())
        self.manifests: dict[str, str] = {}  # digest -> media type
        self.tags: dict[str, str] = {}  # tag -> digest
        for entry in index.get("manifests", []):
            digest = str(Digest.parse(entry["digest"]))
            self.manifests[digest] = entry.get("mediaType", OCI_MANIFEST)
            tag = entry.get("annotations", {}).get(REF_NAME)
            if tag:
                self.tags[tag] = digest

    def blob_path(self, digest: Digest) -> Path:
        # Digest.parse admits only sha256/sha512 with exact-length lowercase hex: no path tricks.
        return self.root / "blobs" / digest.algorithm / digest.encoded


class _CountedFileResponse(web.FileResponse):
    """A FileResponse (Range, 206/416, sendfile) that charges its body to a blob's egress.

    Returned unprepared: aiohttp prepares it once. (FileResponse.prepare is not idempotent, so a
    handler that prepares it itself gets it prepared twice.)
    """

    def __init__(self, path: Path, egress: Counter[str], digest: str, headers: dict[str, str]) -> None:
        super().__init__(path, chunk_size=1 << 20, headers=headers)
        self._egress = egress
        self._digest = digest

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)
        finally:
            if request.method == "GET" and self.status in (200, 206) and self.content_length:
                self._egress[self._digest] += self.content_length


def _error(status: int, code: str, message: str, method: str) -> web.Response:
    body = None if method == "HEAD" else json.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(status=status, text=body, content_type="application/json", headers=API_VERSION)


def _parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise OriginHTTPError(400, "DIGEST_INVALID", str(e)) from None


def build_app(layout_dir: Path, repository: str) -> web.Application:
    """The origin app serving ``layout_dir`` as repository ``repository``."""
    layout = Layout(layout_dir)
    check_repository(repository)
    app = web.Application()
    egress: Counter[str] = Counter()
    app[EGRESS_KEY] = egress

    async def base(request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_VERSION)

    async def manifest(request: web.Request, reference: str) -> web.StreamResponse:
        if ":" in reference:
            digest = str(_parse_digest(reference))
        else:
            try:
                check_tag(reference)
            except InvalidName as e:
                raise OriginHTTPError(400, "MANIFEST_INVALID", str(e)) from None
            if reference not in layout.tags:
                raise OriginHTTPError(404, "MANIFEST_UNKNOWN", f"unknown tag {reference!r}")
            digest = layout.tags[reference]
        if digest not in layout.manifests:
            raise OriginHTTPError(404, "MANIFEST_UNKNOWN", f"unknown manifest {digest}")
        path = layout.blob_path(Digest.parse(digest))
        if path.stat().st_size > MAX_MANIFEST:
            raise OriginHTTPError(500, "MANIFEST_INVALID", f"manifest {digest} is larger than {MAX_MANIFEST} bytes")
        body = path.read_bytes()
        headers = {**API_VERSION, "Docker-Content-Digest": digest, "Content-Type": layout.manifests[digest]}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        return web.Response(body=body, headers=headers)

    async def blob(request: web.Request, reference: str) -> web.StreamResponse:
        digest = _parse_digest(reference)
        path = layout.blob_path(digest)
        if not path.is_file():
            raise OriginHTTPError(404, "BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
        return _CountedFileResponse(path, egress, str(digest), headers={
            **API_VERSION, "Docker-Content-Digest": str(digest), "Content-Type": "application/octet-stream",
        })

    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            if request.method not in ("GET", "HEAD"):
                raise OriginHTTPError(405, "UNSUPPORTED", "this origin is read-only: GET and HEAD only")
            match = _PATH.fullmatch(request.match_info["tail"])
            if match is None:
                raise OriginHTTPError(404, "NAME_UNKNOWN", f"no such endpoint: {request.path[:200]}")
            try:
                check_repository(match["name"])
            except InvalidName as e:
                raise OriginHTTPError(400, "NAME_INVALID", str(e)) from None
            if match["name"] != repository:
                raise OriginHTTPError(404, "NAME_UNKNOWN", f"repository name not known to registry: {match['name']}")
            handler = blob if match["kind"] == "blobs" else manifest
            return await handler(request, match["reference"])
        except OriginHTTPError as e:
            return _error(e.status, e.code, str(e), request.method)

    app.router.add_get("/v2/", base)
    app.router.add_route("*", "/v2/{tail:.+}", dispatch)
    return app


class EmbeddedOrigin:
    """Runs :func:`build_app` on 127.0.0.1 in the current event loop."""

    kind = "embedded"

    def __init__(self, layout_dir: Path, repository: str, port: int = 0) -> None:
        self.app = build_app(layout_dir, repository)
        self._port = port
        self._runner: web.AppRunner | None = None
        self.host = ""

    async def start(self) -> EmbeddedOrigin:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.host = f"127.0.0.1:{port}"
        return self

    async def publish(self, image: object) -> None:
        """Nothing to do: the origin serves the layout it was built on."""

    async def egress(self) -> dict[str, int]:
        """Blob body bytes served so far, per digest."""
        return dict(self.app[EGRESS_KEY])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
