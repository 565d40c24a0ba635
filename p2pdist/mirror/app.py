"""Routes of the registry mirror: ``/v2/``, manifests and blobs (GET and HEAD), nothing else.

Manifests and tags always go to the upstream first (the cache only answers when it is down);
blobs come from the store or the swarm, and only to clients the upstream accepted for the
repository (see grants.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..agent import UpstreamNotAllowed
from ..core.digest import Digest, DigestError
from ..core.names import InvalidName, check_repository, check_tag
from ..origin import OriginError
from ..swarm import FetchFailed
from .blobs import blob_headers, serve_stored, stream_from_swarm
from .errors import API_VERSION, MirrorError, oci_error
from .grants import Grants
from .manifests import MAX_MANIFEST, ManifestCache

if TYPE_CHECKING:
    from ..agent import Agent
    from ..config import Upstream

log = logging.getLogger("p2pdist.mirror")

# Headers of the upstream's answer that mean something to the client.
PASSED_HEADERS = ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Retry-After", "Content-Length")
STATUS_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "MANIFEST_UNKNOWN", 429: "TOOMANYREQUESTS"}


class Mirror:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        cfg = agent.config.mirror
        self.grants = Grants(cfg.auth_ttl, cfg.public_ttl, time.monotonic)
        self.manifests = ManifestCache(agent.config.data_dir / "manifests", cfg.tag_ttl, time.monotonic)
        self.active = 0

    # --- request parsing ---------------------------------------------------------------------

    def upstream(self, request: web.Request) -> Upstream:
        """containerd names the registry in ?ns=; Docker's registry-mirrors do not (the default)."""
        name = request.query.get("ns") or self.agent.config.mirror.default_upstream
        up = self.agent.config.upstream(name)
        if up is None:
            raise MirrorError(403, "DENIED", f"registry {name[:100]!r} is not an upstream of this mirror "
                                             "(add it with --upstream or [[upstream]] in the agent config)")
        return up

    @staticmethod
    def repository(request: web.Request) -> str:
        try:
            return check_repository(request.match_info["name"])
        except InvalidName as e:
            raise MirrorError(400, "NAME_INVALID", str(e)) from None

    @staticmethod
    def digest(text: str) -> Digest:
        try:
            return Digest.parse(text)
        except DigestError as e:
            raise MirrorError(400, "DIGEST_INVALID", str(e)) from None

    @staticmethod
    def forwarded_headers(request: web.Request) -> CIMultiDict[str]:
        """Every Accept the client sent, each on its own: the upstream picks the manifest by them."""
        headers: CIMultiDict[str] = CIMultiDict()
        for value in request.headers.getall("Accept", []):
            headers.add("Accept", value)
        return headers

    # --- manifests ---------------------------------------------------------------------------

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        up, repo = self.upstream(request), self.repository(request)
        reference = request.match_info["reference"]
        by_digest = ":" in reference
        if by_digest:
            self.digest(reference)
        else:
            try:
                check_tag(reference)
            except InvalidName as e:
                raise MirrorError(400, "TAG_INVALID", str(e)) from None
        auth = request.headers.get("Authorization")
        origin = self.agent.origin_client(up.registry, auth)
        try:
            async with origin.passthrough(request.method, repo, "manifests", reference,
                                          self.forwarded_headers(request)) as resp:
                if resp.status != 200:
                    return await self._pass_error(resp, request.method)
                self.grants.allow(up.registry, repo, auth)
                return await self._manifest_ok(request, resp, up.registry, repo, reference, by_digest)
        except OriginError as e:
            log.warning("upstream unreachable for manifest; trying the cache",
                        extra={"registry": up.registry, "repo": repo, "reference": reference, "error": str(e)})
            return self._cached_manifest(request, up.registry, repo, reference, by_digest, auth)

    async def _manifest_ok(self, request: web.Request, resp: aiohttp.ClientResponse, registry: str, repo: str,
                           reference: str, by_digest: bool) -> web.Response:
        media_type = resp.headers.get("Content-Type", "application/octet-stream")
        said = resp.headers.get("Docker-Content-Digest")
        if request.method == "HEAD":
            if said and not by_digest:
                self.manifests.resolve(registry, repo, reference, said, media_type)
            headers = {**API_VERSION, "Content-Type": media_type}
            for name in ("Docker-Content-Digest", "Content-Length"):
                if name in resp.headers:
                    headers[name] = resp.headers[name]
            return web.Response(status=200, headers=headers)
        body = await resp.content.read(MAX_MANIFEST + 1)
        if len(body) > MAX_MANIFEST:
            raise MirrorError(502, "MANIFEST_INVALID", f"upstream manifest exceeds {MAX_MANIFEST} bytes")
        expected = self.digest(reference) if by_digest else (self.digest(said) if said else None)
        actual = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and actual != expected:
            raise MirrorError(502, "MANIFEST_INVALID", f"upstream sent a manifest hashing to {actual}, not {expected}")
        self.manifests.put(actual, media_type, body)
        if not by_digest:
            self.manifests.resolve(registry, repo, reference, str(actual), media_type)
        return web.Response(body=body, headers={**API_VERSION, "Content-Type": media_type,
                                                "Docker-Content-Digest": str(actual)})

    def _cached_manifest(self, request: web.Request, registry: str, repo: str, reference: str, by_digest: bool,
                         auth: str | None) -> web.Response:
        digest = reference if by_digest else self.manifests.resolved(registry, repo, reference)
        cached = self.manifests.get(Digest.parse(digest)) if digest else None
        if cached is None:
            raise MirrorError(503, "UNAVAILABLE", f"upstream {registry} is unreachable and {repo}:{reference} "
                                                  "is not in the mirror's cache")
        if not self.grants.allowed(registry, repo, auth):
            raise MirrorError(401, "UNAUTHORIZED", f"upstream {registry} is unreachable and these credentials "
                                                   f"were not recently accepted for {repo}")
        headers = {**API_VERSION, "Content-Type": cached.media_type, "Docker-Content-Digest": cached.digest}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(cached.body))
            return web.Response(headers=headers)
        return web.Response(body=cached.body, headers=headers)

    @staticmethod
    async def _pass_error(resp: aiohttp.ClientResponse, method: str) -> web.Response:
        """The upstream's refusal goes back as it came: status, challenge and OCI error body."""
        headers = {name: resp.headers[name] for name in PASSED_HEADERS if name in resp.headers}
        headers.pop("Content-Length", None)
        if method == "HEAD":
            return web.Response(status=resp.status, headers={**API_VERSION, **headers})
        body = await resp.content.read(64 << 10)
        return web.Response(status=resp.status, body=body, headers={**API_VERSION, **headers})

    # --- blobs -------------------------------------------------------------------------------

    async def blob(self, request: web.Request) -> web.StreamResponse:
        up, repo = self.upstream(request), self.repository(request)
        digest = self.digest(request.match_info["digest"])
        auth = request.headers.get("Authorization")
        size = None
        if not self.grants.allowed(up.registry, repo, auth):
            size = await self._check_upstream(request, up.registry, repo, digest, auth)
        stored = await serve_stored(request, self.agent, digest)
        if stored is not None:
            return stored
        if request.method == "HEAD":
            if size is None:
                size = await self._upstream_size(up.registry, repo, digest, auth)
            return web.Response(headers={**blob_headers(digest), "Content-Length": str(size)})
        swarm, done = self.agent.fetch(up.registry, repo, digest, auth)
        if swarm is None:  # completed between our check and now
            stored = await serve_stored(request, self.agent, digest)
            if stored is not None:
                return stored
        return await stream_from_swarm(request, self.agent, swarm, done, digest)

    async def _check_upstream(self, request: web.Request, registry: str, repo: str, digest: Digest,
                              auth: str | None) -> int:
        """Ask the upstream whether this client may read this blob (HEAD with its credentials)."""
        origin = self.agent.origin_client(registry, auth)
        try:
            async with origin.passthrough("HEAD", repo, "blobs", str(digest), CIMultiDict()) as resp:
                if resp.status == 200:
                    self.grants.allow(registry, repo, auth)
                    return int(resp.headers.get("Content-Length", "0"))
                if resp.status == 404:
                    raise MirrorError(404, "BLOB_UNKNOWN", f"blob {digest} is unknown to {registry}/{repo}")
                headers = {k: resp.headers[k] for k in ("WWW-Authenticate", "Retry-After") if k in resp.headers}
                code = STATUS_CODES.get(resp.status, "UNKNOWN")
                raise MirrorError(resp.status, code, f"upstream {registry} answered {resp.status} for {repo}",
                                  headers=headers)
        except OriginError as e:
            raise MirrorError(503, "UNAVAILABLE", f"upstream {registry} is unreachable and these credentials were "
                                                  f"not recently accepted for {repo}: {e}") from None

    async def _upstream_size(self, registry: str, repo: str, digest: Digest, auth: str | None) -> int:
        try:
            return await self.agent.origin_client(registry, auth).blob_size(repo, str(digest))
        except OriginError as e:
            raise MirrorError(e.status or 502, "BLOB_UNKNOWN" if e.status == 404 else "UNKNOWN", str(e)) from None


def build_app(agent: Agent) -> web.Application:
    mirror = Mirror(agent)

    @web.middleware
    async def oci_errors(request: web.Request, handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return oci_error(405, "UNSUPPORTED", f"{request.method} is not supported: this is a pull-only mirror "
                                                 "(push to the upstream registry itself)",
                             headers={"Allow": "GET, HEAD"})
        if mirror.active >= agent.config.mirror.max_requests:
            return oci_error(429, "TOOMANYREQUESTS", "the mirror is at its request limit; retry shortly",
                             headers={"Retry-After": "1"})
        mirror.active += 1
        try:
            return await handler(request)
        except MirrorError as e:
            return e.response()
        except UpstreamNotAllowed as e:
            return oci_error(403, "DENIED", str(e))
        except (FetchFailed, OriginError) as e:
            log.warning("blob download failed", extra={"path": request.path, "error": str(e)})
            if request.transport is not None and request.transport.is_closing():
                raise
            return oci_error(502, "UNKNOWN", f"download failed: {e}")
        except web.HTTPException as e:
            if e.status == 404:
                return oci_error(404, "NAME_UNKNOWN", f"no such endpoint {request.path[:100]!r}")
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        finally:
            mirror.active -= 1

    async def base(request: web.Request) -> web.Response:
        return web.json_response({}, headers=API_VERSION)

    app = web.Application(middlewares=[oci_errors])
    app.router.add_get("/v2/", base)
    app.router.add_get(r"/v2/{name:.+}/manifests/{reference}", mirror.manifest)
    app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", mirror.blob)
    app["mirror"] = mirror
    return app
