"""Token auth through the mirror, for clients that cannot be sent to the upstream's token service.

containerd names the registry in every request (``?ns=``), so it gets the upstream's own challenge
and talks to the upstream's token service itself. containers/image and Docker cannot: they take the
realm from the mirror's ``GET /v2/`` answer, which names no registry, and ask for the scope of the name
they used (``repository:quay.io/team/app:pull`` with a path prefix). So the mirror's ``/v2/`` challenge
names the mirror's own token endpoint, and this relay asks the routed upstream's token service for
``repository:team/app:pull`` with the client's own credentials (or none) and hands back the
upstream's answer unchanged. The client then presents the upstream's token to the mirror, which
forwards it.

Otherwise the relay answers with a mirror token (``p2pdist.…``) that stands for the client's
credentials on this node only, for ``mirror.auth_ttl`` seconds: for an upstream with basic auth or
none (no token service; basic credentials are checked against the upstream first), and for a client
without credentials at an upstream with a configured robot account, whose credentials and tokens
never leave the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from p2pdist.agent.origin import OriginError, parse_challenges

from .errors import MirrorError
from .membership import ANONYMOUS, fingerprint
from .routes import Route, resolve

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

    from ..config import Upstream

log = logging.getLogger("p2pdist.mirror")

TOKEN_PATH = "/p2pdist/token"
SERVICE = "p2pdist-mirror"
MIRROR_TOKEN_PREFIX = "p2pdist."
MAX_MIRROR_TOKENS = 65536
MAX_SCOPES = 16
PROBE_TTL = 300.0  # seconds an upstream's auth scheme (from GET /v2/) is trusted
LOGIN_TIMEOUT = 10.0  # seconds a login check waits for the upstreams' answers
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")  # what a realm may name


@dataclass(frozen=True)
class UpstreamAuth:
    scheme: str  # "none", "basic" or "bearer"
    realm: str = ""
    service: str = ""
    challenge: str = ""  # the WWW-Authenticate header as the upstream sent it


def parse_auth(header: str | None) -> UpstreamAuth:
    if header is None:
        return UpstreamAuth("none")
    challenges = {c.scheme: c for c in parse_challenges(header)}
    if "bearer" in challenges:
        params = challenges["bearer"].params
        return UpstreamAuth("bearer", params.get("realm", ""), params.get("service", ""), header)
    if "basic" in challenges:
        return UpstreamAuth("basic", challenge=header)
    raise OriginError(f"unsupported auth challenge {header[:200]!r}")


@dataclass(frozen=True)
class MirrorToken:
    registry: str
    authorization: str | None  # what goes upstream: the client's basic credentials, or None
    until: float


class MirrorTokens:
    """Tokens this mirror issued for upstreams without a token service; bounded, expiring."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._tokens: OrderedDict[str, MirrorToken] = OrderedDict()

    def issue(self, registry: str, authorization: str | None) -> str:
        token = MIRROR_TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._tokens[token] = MirrorToken(registry, authorization, self._clock() + self.ttl)
        while len(self._tokens) > MAX_MIRROR_TOKENS:
            self._tokens.popitem(last=False)
        return token

    def lookup(self, token: str) -> MirrorToken | None:
        entry = self._tokens.get(token)
        if entry is None or entry.until <= self._clock():
            self._tokens.pop(token, None)
            return None
        return entry


def relay_challenge(request: web.Request, scope: str | None = None, error: str | None = None) -> str:
    """The mirror's own Bearer challenge, naming the relay on the address the client used."""
    host = request.host
    if not _HOST.fullmatch(host):  # a Host header no realm can carry: the address it reached instead
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = f"{sockname[0]}:{sockname[1]}" if sockname else "127.0.0.1"
    params = [f'realm="http://{host}{TOKEN_PATH}"', f'service="{SERVICE}"']
    if scope:
        params.append(f'scope="{scope}"')
    if error:
        params.append(f'error="{error}"')
    return "Bearer " + ",".join(params)


class TokenRelay:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.tokens = MirrorTokens(agent.config.mirror.auth_ttl)
        self._auth: dict[str, tuple[UpstreamAuth, float]] = {}
        self._anonymous: OrderedDict[str, float] = OrderedDict()  # fingerprints of anonymous upstream tokens

    # --- what each upstream wants -----------------------------------------------------------

    def learn(self, registry: str, header: str | None) -> None:
        """Remember an upstream's challenge seen on the way (saves a probe)."""
        if not header:
            return
        with contextlib.suppress(OriginError):
            self._auth[registry] = (parse_auth(header), time.monotonic() + PROBE_TTL)

    async def upstream_auth(self, up: Upstream) -> UpstreamAuth | None:
        """How the upstream authenticates; None when it cannot be reached and was never seen."""
        known = self._auth.get(up.registry)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        try:
            status, header = await self.agent.origin_client(up.registry).ping()
            if status not in (200, 401):
                raise OriginError(f"origin {up.registry} answered GET /v2/ with {status}", status=status)
            auth = parse_auth((header or "") if status == 401 else None)
        except OriginError as e:
            log.warning("cannot learn how the upstream authenticates", extra={"registry": up.registry,
                                                                              "error": str(e)})
            return known[0] if known is not None else None  # stale beats nothing while it is down
        self._auth[up.registry] = (auth, time.monotonic() + PROBE_TTL)
        return auth

    # --- who a credential is ----------------------------------------------------------------

    def who(self, authorization: str | None) -> str:
        """The identity the upstream's confirmations are kept under: a token this relay fetched
        without credentials is anonymous, like no credentials at all (public repositories, which
        then stay readable from the cache while the upstream is down)."""
        fp = fingerprint(authorization)
        until = self._anonymous.get(fp)
        if until is not None:
            if until > time.monotonic():
                return ANONYMOUS
            del self._anonymous[fp]
        return fp

    def _anonymous_token(self, body: bytes) -> None:
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, TypeError, AttributeError):
            return
        if isinstance(token, str):
            self._anonymous[fingerprint(f"Bearer {token}")] = time.monotonic() + lifetime
            while len(self._anonymous) > MAX_MIRROR_TOKENS:
                self._anonymous.popitem(last=False)

    # --- GET /p2pdist/token ------------------------------------------------------------------

    def _routes(self, request: web.Request) -> list[Route]:
        scopes = [s for value in request.query.getall("scope", []) for s in value.split()]
        if len(scopes) > MAX_SCOPES:
            raise MirrorError(400, "UNSUPPORTED", f"ask for at most {MAX_SCOPES} repository:NAME:pull scopes")
        routes = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, _actions = rest.rpartition(":")
            if kind != "repository" or not name:
                raise MirrorError(400, "UNSUPPORTED", f"scope {scope[:200]!r}: only repository:NAME:pull")
            routes.append(resolve(self.agent.config, name, None, request.headers.get("User-Agent", "")))
        if len({r.registry for r in routes}) > 1:
            raise MirrorError(400, "DENIED", "one token cannot span registries: ask for each registry apart")
        return routes

    async def token(self, request: web.Request) -> web.Response:
        routes = self._routes(request)
        client = request.headers.get("Authorization")
        if client is not None and not client.lower().startswith("basic "):
            raise MirrorError(400, "UNSUPPORTED", "the token endpoint takes basic credentials or none")
        if not routes:
            return await self._login(client)
        up = routes[0].upstream
        auth = await self.upstream_auth(up)
        origin = self.agent.origin_client(up.registry)
        try:
            # A client without credentials at an upstream with a robot account gets a mirror token:
            # the robot's credentials and tokens never leave the agent (it answers the challenges).
            if auth is not None and auth.scheme == "bearer" and (client is not None or not up.username):
                params = [("service", auth.service)] if auth.service else []
                # Pull only: a mirror never pushes.
                params += [("scope", f"repository:{r.repo}:pull") for r in routes]
                status, body = await origin.request_token(auth.realm, params, client)
                if status == 200:
                    if client is None:
                        self._anonymous_token(body)
                    return web.Response(body=body, content_type="application/json")
            else:
                status = 200
                if auth is not None and auth.scheme == "basic" and client is not None:
                    status, _ = await origin.ping(client)
        except OriginError as e:
            # Unreachable: a mirror token for what the client sent, so what the upstream confirmed
            # for it (public images for anonymous) can still be served from the cache.
            log.warning("token service unreachable; answering with a mirror token",
                        extra={"registry": up.registry, "error": str(e)})
            status = 200
        if status == 200:
            # No credentials for an anonymous upstream: everyone is the same reader there.
            standing = client if auth is None or auth.scheme != "none" else None
            mirror_token = self.tokens.issue(up.registry, standing)
            return web.json_response({"token": mirror_token, "access_token": mirror_token,
                                      "expires_in": int(self.tokens.ttl)})
        if status in (401, 403):
            raise MirrorError(401, "UNAUTHORIZED", f"{up.registry} refused these credentials",
                              headers={"WWW-Authenticate": f'Basic realm="p2pdist mirror for {up.registry}"'})
        raise MirrorError(502, "UNAVAILABLE", f"token service of {up.registry} answered {status}")

    async def _login(self, client: str | None) -> web.Response:
        """A token request without a scope: a client checking credentials (`podman login MIRROR`).

        The mirror fronts several registries and cannot know which one the credentials are for, so
        they pass if an upstream that authenticates takes them (asked in parallel, LOGIN_TIMEOUT at
        most), or if no upstream authenticates at all. The token is for nothing: a login keeps the
        credentials, and each pull asks for a token of its own.
        """
        if client is not None:
            checks = [asyncio.ensure_future(self._accepts(up, client)) for up in self.agent.config.upstreams]
            answers: set[bool | None] = set()
            try:
                for check in asyncio.as_completed(checks, timeout=LOGIN_TIMEOUT):
                    answers.add(await check)
                    if True in answers:
                        break
            except TimeoutError:
                pass
            finally:
                for check in checks:
                    check.cancel()
            if True not in answers and False in answers:
                raise MirrorError(401, "UNAUTHORIZED", "no upstream of this mirror accepts these credentials",
                                  headers={"WWW-Authenticate": 'Basic realm="p2pdist mirror"'})
        # Not kept: it opens nothing (a pull asks for a scoped token of its own), and keeping one per
        # anonymous request would let anyone push everyone's live tokens out of the bounded table.
        token = MIRROR_TOKEN_PREFIX + secrets.token_urlsafe(32)
        return web.json_response({"token": token, "access_token": token, "expires_in": int(self.tokens.ttl)})

    async def _accepts(self, up: Upstream, client: str) -> bool | None:
        """Whether ``up`` takes these basic credentials; None when it does not authenticate or is down."""
        try:
            auth = await self.upstream_auth(up)
            if auth is None or auth.scheme == "none":
                return None
            origin = self.agent.origin_client(up.registry)
            if auth.scheme == "basic":
                status, _ = await origin.ping(client)
            else:
                params = [("service", auth.service)] if auth.service else []
                status, _ = await origin.request_token(auth.realm, params, client)
        except OriginError:
            return None
        return status == 200 if status in (200, 401, 403) else None

    def upstream_authorization(self, request: web.Request, route: Route) -> str | None:
        """What goes upstream for this request: the client's own Authorization, a mirror token's stand-in."""
        given = request.headers.get("Authorization")
        if given is None or not given.startswith("Bearer " + MIRROR_TOKEN_PREFIX):
            return given
        entry = self.tokens.lookup(given.removeprefix("Bearer "))
        if entry is None or entry.registry != route.registry:
            raise MirrorError(401, "UNAUTHORIZED", "mirror token expired or issued for another registry",
                              headers={"WWW-Authenticate": relay_challenge(request, f"repository:{route.name}:pull",
                                                                           "invalid_token")})
        return entry.authorization

