"""Routes of the registry mirror: ``/v2/``, manifests and blobs (GET and HEAD), the token relay.

Every request is routed to exactly one upstream (routes.py). Manifests and tags always go to the
upstream first with the client's own credentials (the cache answers only when it is down); blobs
come from the store or the swarm, and a cached blob or manifest is served under a repository only
when the upstream confirmed that this client may read that digest there (membership.py).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from p2pdist.agent.node import UpstreamNotAllowed
from p2pdist.agent.origin import OriginError, OriginNotFound, parse_challenges
from p2pdist.agent.swarm import FetchFailed
from p2pdist.store import StoreFull

from ..core.digest import Digest, DigestError
from ..core.names import InvalidName, check_tag
from .blobs import blob_headers, serve_stored, serve_uncached, stream_from_swarm
from .errors import API_VERSION, MirrorError, oci_error
from .manifests import MAX_MANIFEST, ManifestCache
from .membership import Membership, references
from .relay import TOKEN_PATH, TokenRelay, relay_challenge
from .routes import Route, allowed_upstream, resolve

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

log = logging.getLogger("p2pdist.mirror")

# Headers of the upstream's answer that mean something to the client.
PASSED_HEADERS = ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Retry-After", "Content-Length")
# 401 and 404 are answered above in _confirm_blob; these are the other statuses passed on.
STATUS_CODES = {403: "DENIED", 429: "TOOMANYREQUESTS"}
# The longest valid request path is ~450 bytes (a 255-byte name, "blobs", a sha512 digest).
MAX_PATH = 2048


class Mirror:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        cfg = agent.config.mirror
        self.membership = Membership(cfg.auth_ttl, cfg.public_ttl, time.monotonic)
        self.manifests = ManifestCache(agent.config.data_dir / "manifests", cfg.tag_ttl, time.monotonic)
        self.relay = TokenRelay(agent)
        self.active = 0

    # --- request parsing ---------------------------------------------------------------------

    def route(self, request: web.Request) -> Route:
        return resolve(self.agent.config, request.match_info["name"], request.query.get("ns"),
                       request.headers.get("User-Agent", ""))

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

    def challenge(self, request: web.Request, route: Route, upstream: str | None) -> str:
        """The challenge a client must answer: containerd (?ns=) gets the upstream's own; the others
        the relay's, scoped to the name they used (containers/image retries on insufficient_scope)."""
        if route.by_ns and upstream:
            return upstream
        error = None
        for c in parse_challenges(upstream or ""):
            error = error or c.params.get("error")
        return relay_challenge(request, f"repository:{route.name}:pull", error)

    def unauthorized(self, request: web.Request, route: Route, message: str,
                     upstream: str | None = None) -> MirrorError:
        return MirrorError(401, "UNAUTHORIZED", message,
                           headers={"WWW-Authenticate": self.challenge(request, route, upstream)})

    # --- /v2/ --------------------------------------------------------------------------------

    async def base(self, request: web.Request) -> web.Response:
        """Clients decide here whether to authenticate: without credentials they get a challenge,
        or containers/image and Docker would send none and fall back to the registry on the first 401."""
        if request.headers.get("Authorization"):
            return web.json_response({}, headers=API_VERSION)
        ns = request.query.get("ns")
        if ns:
            auth = await self.relay.upstream_auth(allowed_upstream(self.agent.config, ns))
            if auth is None or auth.scheme == "none":
                return web.json_response({}, headers=API_VERSION)
            raise MirrorError(401, "UNAUTHORIZED", f"{ns} requires authentication",
                              headers={"WWW-Authenticate": auth.challenge})
        raise MirrorError(401, "UNAUTHORIZED", "authenticate through the mirror's token endpoint",
                          headers={"WWW-Authenticate": relay_challenge(request)})

    # --- manifests ---------------------------------------------------------------------------

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        route = self.route(request)
        reference = request.match_info["reference"]
        by_digest = ":" in reference
        if by_digest:
            self.digest(reference)
        else:
            try:
                check_tag(reference)
            except InvalidName as e:
                raise MirrorError(400, "TAG_INVALID", str(e)) from None
        auth = self.relay.upstream_authorization(request, route)
        origin = self.agent.origin_client(route.registry, auth)
        try:
            async with origin.passthrough(request.method, route.repo, "manifests", reference,
                                          self.forwarded_headers(request)) as resp:
                if resp.status != 200:
                    return await self._refusal(request, route, resp)
                return await self._manifest_ok(request, resp, route, reference, by_digest, auth)
        except OriginError as e:
            log.warning("upstream unreachable for manifest; trying the cache",
                        extra={"registry": route.registry, "repo": route.repo, "reference": reference,
                               "error": str(e)})
            return self._cached_manifest(request, route, reference, by_digest, auth)

    async def _manifest_ok(self, request: web.Request, resp: aiohttp.ClientResponse, route: Route,
                           reference: str, by_digest: bool, auth: str | None) -> web.Response:
        media_type = resp.headers.get("Content-Type", "application/octet-stream")
        said = resp.headers.get("Docker-Content-Digest")
        if request.method == "HEAD":
            if said:
                self._confirm_manifest(route, auth, said)
                if not by_digest:
                    self.manifests.resolve(route.registry, route.repo, reference, said, media_type)
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
        self.membership.confirm(route.registry, route.repo, self.relay.who(auth),
                                {str(actual): len(body), **references(body)})
        if not by_digest:
            self.manifests.resolve(route.registry, route.repo, reference, str(actual), media_type)
        return web.Response(body=body, headers={**API_VERSION, "Content-Type": media_type,
                                                "Docker-Content-Digest": str(actual)})

    def _confirm_manifest(self, route: Route, auth: str | None, digest: str) -> None:
        """A manifest the upstream has in this repository links what it references there too."""
        digests: dict[str, int | None] = {digest: None}
        try:
            cached = self.manifests.get(Digest.parse(digest))
        except DigestError:
            return
        if cached is not None:
            digests.update(references(cached.body))
        self.membership.confirm(route.registry, route.repo, self.relay.who(auth), digests)

    def _cached_manifest(self, request: web.Request, route: Route, reference: str, by_digest: bool,
                         auth: str | None) -> web.Response:
        digest = reference if by_digest else self.manifests.resolved(route.registry, route.repo, reference)
        cached = self.manifests.get(Digest.parse(digest)) if digest else None
        if cached is None:
            raise MirrorError(503, "UNAVAILABLE", f"upstream {route.registry} is unreachable and "
                                                  f"{route.repo}:{reference} is not in the mirror's cache")
        if not self.membership.allowed(route.registry, route.repo, self.relay.who(auth), cached.digest):
            raise self.unauthorized(request, route, f"upstream {route.registry} is unreachable and did not "
                                                    f"recently confirm this manifest in {route.repo} for "
                                                    "these credentials")
        headers = {**API_VERSION, "Content-Type": cached.media_type, "Docker-Content-Digest": cached.digest}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(cached.body))
            return web.Response(headers=headers)
        return web.Response(body=cached.body, headers=headers)

    async def _refusal(self, request: web.Request, route: Route, resp: aiohttp.ClientResponse) -> web.Response:
        """The upstream's refusal goes back with its status and OCI error body; a 401 with the
        challenge this client can answer."""
        headers = {name: resp.headers[name] for name in PASSED_HEADERS if name in resp.headers}
        headers.pop("Content-Length", None)
        if resp.status == 401:
            upstream = resp.headers.get("WWW-Authenticate")
            self.relay.learn(route.registry, upstream)
            headers["WWW-Authenticate"] = self.challenge(request, route, upstream)
        if request.method == "HEAD":
            return web.Response(status=resp.status, headers={**API_VERSION, **headers})
        body = await resp.content.read(64 << 10)
        return web.Response(status=resp.status, body=body, headers={**API_VERSION, **headers})

    # --- blobs -------------------------------------------------------------------------------

    async def blob(self, request: web.Request) -> web.StreamResponse:
        route = self.route(request)
        digest = self.digest(request.match_info["digest"])
        auth = self.relay.upstream_authorization(request, route)
        who = self.relay.who(auth)
        if self.membership.allowed(route.registry, route.repo, who, str(digest)):
            # The size the upstream gave with its confirmation (a manifest's descriptor): the
            # download need not ask for it again.
            size = self.membership.size(route.registry, route.repo, who, str(digest))
        else:
            size = await self._confirm_blob(request, route, digest, auth)
        stored = await serve_stored(request, self.agent, digest)
        if stored is not None:
            return self._served(request, stored, "hit", "cache")
        if request.method == "HEAD":
            if size is None:
                size = await self._upstream_size(route, digest, auth)
            return web.Response(headers={**blob_headers(digest), "Content-Length": str(size)})
        swarm, done = self.agent.fetch(route.registry, route.repo, digest, auth, size=size)
        if swarm is None:  # completed between our check and now
            stored = await serve_stored(request, self.agent, digest)
            if stored is not None:
                return self._served(request, stored, "hit", "cache")
        try:
            return self._served(request, await stream_from_swarm(request, self.agent, swarm, done, digest),
                                "miss", "swarm")
        except FetchFailed as e:
            # No room to keep the blob: the client still gets it, from the origin through us, not
            # kept (a pull must not fail because this node's disk is full; containerd would not
            # even try the next host on a 5xx).
            if not isinstance(e.__cause__, StoreFull) or "Range" in request.headers or request.transport is None:
                raise
            log.warning("no room to keep the blob; passing it through from the upstream",
                        extra={"blob": str(digest), "error": str(e)})
            self.agent.metrics.origin_fallbacks.labels("disk").inc()
            sent = await serve_uncached(request, self.agent.origin_client(route.registry, auth), route.repo,
                                        digest, size)
            return self._served(request, sent, "passthrough", "origin")

    def _served(self, request: web.Request, resp: web.StreamResponse, cache: str, source: str) -> web.StreamResponse:
        """Count a blob answer that went out whole (an aborted one raised before this)."""
        if request.method == "GET":
            metrics = self.agent.metrics
            metrics.mirror_blobs.labels(cache).inc()
            metrics.mirror_bytes.labels(source).inc(resp.content_length or 0)
        return resp

    async def _confirm_blob(self, request: web.Request, route: Route, digest: Digest,
                            auth: str | None) -> int | None:
        """Ask the upstream whether this client may read this blob in this repository (a HEAD with its
        credentials), as a registry answers: 404 for a blob not linked there. Returns the size it
        gave (None if it sent no usable Content-Length)."""
        origin = self.agent.origin_client(route.registry, auth)
        try:
            async with origin.passthrough("HEAD", route.repo, "blobs", str(digest), CIMultiDict()) as resp:
                if resp.status == 200:
                    length = resp.headers.get("Content-Length", "")
                    size = int(length) if length.isdigit() else None
                    self.membership.confirm(route.registry, route.repo, self.relay.who(auth), {str(digest): size})
                    self.agent.metrics.mirror_upstream_checks.labels("confirmed").inc()
                    return size
                self.agent.metrics.mirror_upstream_checks.labels(str(resp.status)).inc()
                if resp.status == 404:
                    raise MirrorError(404, "BLOB_UNKNOWN", f"blob {digest} is unknown to {route.registry}/{route.repo}")
                if resp.status == 401:
                    upstream = resp.headers.get("WWW-Authenticate")
                    self.relay.learn(route.registry, upstream)
                    raise self.unauthorized(request, route, f"{route.registry} wants credentials for {route.repo}",
                                            upstream)
                headers = {k: resp.headers[k] for k in ("Retry-After",) if k in resp.headers}
                code = STATUS_CODES.get(resp.status, "UNKNOWN")
                raise MirrorError(resp.status if resp.status < 500 else 502, code,
                                  f"upstream {route.registry} answered {resp.status} for {route.repo}",
                                  headers=headers)
        except OriginError as e:
            self.agent.metrics.mirror_upstream_checks.labels("unreachable").inc()
            raise MirrorError(503, "UNAVAILABLE", f"upstream {route.registry} is unreachable and did not recently "
                                                  f"confirm {digest} in {route.repo} for these credentials: {e}"
                              ) from None

    async def _upstream_size(self, route: Route, digest: Digest, auth: str | None) -> int:
        try:
            return await self.agent.origin_client(route.registry, auth).blob_size(route.repo, str(digest))
        except OriginNotFound as e:
            raise MirrorError(404, "BLOB_UNKNOWN", str(e)) from None
        except OriginError as e:
            raise MirrorError(502, "UNAVAILABLE", str(e)) from None


def build_app(agent: Agent) -> web.Application:
    mirror = Mirror(agent)

    def refused_early(request: web.Request) -> web.Response | None:
        if request.method not in ("GET", "HEAD"):
            return oci_error(405, "UNSUPPORTED", f"{request.method} is not supported: this is a pull-only mirror "
                                                 "(push to the upstream registry itself)",
                             headers={"Allow": "GET, HEAD"})
        if len(request.raw_path) > MAX_PATH:
            return oci_error(414, "NAME_INVALID", f"request path of {len(request.raw_path)} bytes: no valid "
                                                  f"name, tag or digest is longer than {MAX_PATH}")
        if mirror.active >= agent.config.mirror.max_requests:
            return oci_error(429, "TOOMANYREQUESTS", "the mirror is at its request limit; retry shortly",
                             headers={"Retry-After": "1"})
        return None

    async def answer(request: web.Request, handler) -> web.StreamResponse:
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
            cause = e if isinstance(e, OriginError) else e.__cause__  # the origin's own answer, if any
            if isinstance(cause, OriginNotFound):
                return oci_error(404, "BLOB_UNKNOWN", f"the upstream no longer has this blob: {e}")
            if isinstance(cause, OriginError) and cause.status == 429:
                # Said as the upstream said it (docker and podman print "toomanyrequests"), with its
                # Retry-After, not as a 502 the client would take for the mirror's fault.
                wait = {"Retry-After": str(math.ceil(cause.retry_after))} if cause.retry_after is not None else {}
                return oci_error(429, "TOOMANYREQUESTS", f"the upstream is rate-limiting this node: {e}",
                                 headers=wait)
            return oci_error(502, "UNAVAILABLE", f"download failed: {e}")
        except web.HTTPException as e:
            if e.status == 404:
                return oci_error(404, "NAME_UNKNOWN", f"no such endpoint {request.path[:100]!r}")
            raise

    @web.middleware
    async def oci_errors(request: web.Request, handler) -> web.StreamResponse:
        status = "aborted"  # the connection was cut (a failed download, a client gone)
        response = refused_early(request)
        try:
            if response is None:
                mirror.active += 1
                try:
                    response = await answer(request, handler)
                finally:
                    mirror.active -= 1
            status = str(response.status)
            return response
        finally:
            endpoint = request.match_info.route.name or "other"
            agent.metrics.mirror_responses.labels(endpoint, status).inc()

    app = web.Application(middlewares=[oci_errors])
    app.router.add_get("/v2/", mirror.base, name="base")
    app.router.add_get(TOKEN_PATH, mirror.relay.token, name="token")
    app.router.add_get(r"/v2/{name:.+}/manifests/{reference}", mirror.manifest, name="manifest")
    app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", mirror.blob, name="blob")
    app["mirror"] = mirror
    return app
