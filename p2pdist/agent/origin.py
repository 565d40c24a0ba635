"""Origin client: blob size, Range GETs and whole-blob GETs against an OCI distribution registry.

Speaks the Docker/OCI auth flows (bearer token and basic), follows redirects itself so that
``Authorization`` never leaves the registry's origin, and streams every body in bounded chunks.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from p2pdist.agent.origin_target import RangeTarget
from p2pdist.core.digest import Digest
from p2pdist.core.download import ORIGIN_MAX_DELAY, ORIGIN_RETRY_DELAY, backoff
from p2pdist.core.names import check_registry, check_repository

from ..errors import P2pdistError

CHUNK_SIZE = 256 * 1024
MAX_REDIRECTS = 5
# Error bodies and token responses are small; never buffer more than this from either.
MAX_ERROR_BODY = 64 * 1024
MAX_MANIFEST_BODY = 4 << 20  # registries refuse larger manifests (distribution: 4 MiB)
MAX_TOKEN_BODY = 1024 * 1024
# The Docker token spec: a token without expires_in lives 60 seconds.
DEFAULT_TOKEN_LIFETIME = 60
# One token per repository scope; an agent pulls from a bounded set of repositories, but cap it anyway.
MAX_CACHED_TOKENS = 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CHALLENGE_SCHEME = re.compile(r"[\s,]*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)")
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


class OriginError(P2pdistError):
    """The origin registry could not deliver what was asked."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after  # seconds, from the answer's Retry-After (a 429 or 503)

    @property
    def transient(self) -> bool:
        return transient_status(self.status)


def transient_status(status: int | None) -> bool:
    """Whether asking again later may get another answer: no answer at all (None: unreachable, cut
    off), a 5xx, 408 or 429. A 404, a refusal or a wrong range stays what it is."""
    return status is None or status >= 500 or status in (408, 429)


class OriginRetry:
    """When to ask a failing origin again (``core.download``, ORIGIN_RETRY_DELAY).

    A transient failure (``transient_status``, or no answer at all) is asked again after the
    back-off or the answer's Retry-After, until ``patience`` seconds have passed since the first
    failure: a registry restarting mid-pull. Any other is asked again after the back-off, ``tries``
    times in all. ``progress()`` starts over: the last try moved something.
    """

    def __init__(self, patience: float, tries: int) -> None:
        self.patience = patience
        self.tries = tries
        self.progress()

    def progress(self) -> None:
        self._failures, self._give_up = 0, math.inf

    def wait(self, error: BaseException, now: float) -> float | None:
        """Seconds to wait before asking again after ``error``; None: give up."""
        self._failures += 1
        wait = backoff(self._failures, ORIGIN_RETRY_DELAY, ORIGIN_MAX_DELAY)
        if isinstance(error, OriginError) and not error.transient:
            return wait if self._failures < self.tries else None
        if self._give_up == math.inf:
            self._give_up = now + self.patience
        if isinstance(error, OriginError) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        wait = min(wait, self._give_up - now)
        return wait if wait > 0 else None


# Bytes an origin body must move per stall window of waiting on it (StallWatch): curl's
# --speed-limit. A stream of an origin shared by hundreds (50 Mbit/s over 100 streams: 60 KB/s)
# moves ten times that; a body that stopped, or trickles, does not.
STALL_FLOOR = 32 << 10


class StallWatch:
    """Whether an origin body has stalled: ``window`` seconds spent waiting on it since it last moved
    STALL_FLOOR bytes (curl's --speed-time, counted over the waits only, so that our own pauses to
    hash, write or keep to the download rate are not the origin's). A fixed window judged a burst
    and the trickle after it together: a stall took two windows to see.

    A body that stops mid-way, or trickles a few bytes a second, otherwise held its origin run for
    the 30 s read timeout, or for ever, while the lease kept the pieces from everyone else: one
    stalled response (a proxy, a degraded backend) cost its node 30 s and sent the others to the
    origin for the whole blob at their stall timeout. A stall is transient (OriginRetry asks again).
    """

    def __init__(self, window: float, origin: str) -> None:
        self.window = window
        self._origin = origin
        self._waited = 0.0
        self._moved = 0

    def read(self, waited: float, moved: int) -> None:
        """A read of the body waited ``waited`` seconds for ``moved`` bytes; raises OriginError on a stall."""
        self._waited += waited
        self._moved += moved
        if self._moved >= STALL_FLOOR:
            self._waited, self._moved = 0.0, 0
        elif self._waited >= self.window:
            raise OriginError(f"origin {self._origin} stalled: {self._moved} bytes in {self._waited:.1f} s "
                              f"(less than {STALL_FLOOR} bytes per limits.origin_stall_timeout)")

    def silent(self) -> OriginError:
        """The error for a read that got nothing at all within the window."""
        return OriginError(f"origin {self._origin} sent nothing for {self.window:g} s "
                           "(limits.origin_stall_timeout)")


class OriginAuthError(OriginError):
    """The origin wants credentials we don't have, or refused the ones we sent.

    ``challenge`` keeps the origin's WWW-Authenticate header so a mirror can pass it on unchanged.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, challenge: str | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.challenge = challenge


class OriginNotFound(OriginError):
    """The origin has no such repository or blob (404)."""


class RangeNotSupported(OriginError):
    """The origin ignored a Range request and answered 200: use fetch_all instead."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"  # keep secrets out of logs


@dataclass(frozen=True)
class Challenge:
    """One parsed WWW-Authenticate challenge."""

    scheme: str  # lower case: "bearer", "basic"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header (RFC 9110 auth-params) into its challenges."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        match = _CHALLENGE_SCHEME.match(header, pos)
        if match is None:
            break
        scheme, pos = match.group(1).lower(), match.end()
        params: dict[str, str] = {}
        while True:
            param = _CHALLENGE_PARAM.match(header, pos)
            if param is None or param.end() == pos:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme, params))
    return challenges


class OriginClient:
    """Pulls blobs from one origin registry ("host[:port]") through a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        registry: str,
        *,
        plain_http: bool = False,
        credentials: Credentials | None = None,
        authorization: str | None = None,
        verify_tls: bool = True,
        clock: Callable[[], float] = time.monotonic,
        first_byte_timeout: float = 30.0,
        stall_timeout: float = 5.0,
    ) -> None:
        self._session = session
        # Blob bodies: no cap on the whole (the session's 300 s cut every long body, a large layer
        # from a slow origin or without Range, and its retry as well); up to ``first_byte_timeout``
        # for the answer, then StallWatch on the body (``stall_timeout``, limits.origin_stall_timeout).
        self._body_timeout = aiohttp.ClientTimeout(total=None, sock_connect=first_byte_timeout,
                                                   sock_read=first_byte_timeout)
        self.stall_timeout = stall_timeout
        self._ssl = verify_tls  # False only for insecure registries the operator configured as such
        self.registry = check_registry(registry)
        self._base = URL.build(scheme="http" if plain_http else "https", authority=registry)
        self._credentials = credentials
        # A client's own Authorization (mirror use): sent as-is, and its 401s go back to the client,
        # because only the client can answer a challenge for its own identity.
        self._authorization = authorization
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, usable until)
        # One token request per scope at a time: a swarm starts many piece fetches at once, and
        # they should share one trip to the token service rather than each take its own.
        self._token_fetches: dict[str, asyncio.Future[str]] = {}
        self._basic = False  # the registry asked for basic auth once: send it up front from then on

    # -- public API -------------------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: str) -> int:
        """The blob's size from HEAD /v2/<repo>/blobs/<digest>."""
        async with self._request("HEAD", repo, digest, {}) as response:
            if response.status != 200:
                raise OriginError(
                    f"HEAD blob {digest} in {repo}: unexpected status {response.status}", status=response.status
                )
            length = response.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise OriginError(f"HEAD blob {digest} in {repo}: no valid Content-Length", status=200)
            served = response.headers.get("Docker-Content-Digest")
            if served is not None and served != digest:
                raise OriginError(f"origin {self.registry} answered for {served} when asked for {digest}")
            return int(length)

    async def fetch_range(self, repo: str, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of the blob. Raises RangeNotSupported before any byte if the
        origin ignores Range."""
        if not 0 <= start < end:
            raise ValueError(f"invalid byte range [{start}, {end})")
        headers = {"Range": f"bytes={start}-{end - 1}"}
        async with self._request("GET", repo, digest, headers, self._body_timeout) as response:
            if response.status == 200:
                raise RangeNotSupported(f"origin {self.registry} ignored Range for {digest}", status=200)
            if response.status != 206:
                raise OriginError(f"GET blob range: unexpected status {response.status}", status=response.status,
                                  retry_after=retry_after_seconds(response.headers.get("Retry-After")))
            content_range = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if content_range is None or (int(content_range[1]), int(content_range[2])) != (start, end - 1):
                raise OriginError(
                    f"origin {self.registry} answered Range bytes={start}-{end - 1} with "
                    f"Content-Range {response.headers.get('Content-Range')!r}",
                    status=206,
                )
            async for chunk in self._stream(response, end - start, digest):
                yield chunk

    async def fetch_all(self, repo: str, digest: str) -> AsyncIterator[bytes]:
        """Stream the whole blob (for origins without Range support)."""
        async with self._request("GET", repo, digest, {}, self._body_timeout) as response:
            if response.status != 200:
                raise OriginError(f"GET blob: unexpected status {response.status}", status=response.status,
                                  retry_after=retry_after_seconds(response.headers.get("Retry-After")))
            async for chunk in self._stream(response, response.content_length, digest):
                yield chunk

    @asynccontextmanager
    async def passthrough(
        self, method: str, repo: str, kind: str, reference: str, headers: CIMultiDict[str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A manifest or blob request whose answer, whatever its status, goes back to a mirror client.

        Repeated headers (every ``Accept``) are sent as they came. With a client's own Authorization
        the upstream's 401 and its challenge are yielded as they are, for the client to answer.
        """
        check_repository(repo)
        if kind not in ("manifests", "blobs"):
            raise ValueError(f"unknown endpoint kind {kind!r}")
        url = self._base.with_path(f"/v2/{repo}/{kind}/{reference}")
        # Only with configured credentials: an anonymous client's 401 goes back to it, for its own token.
        response = await self._send_authorized(method, url, headers, repo, anonymous=False)
        try:
            yield response
        finally:
            response.release()

    async def manifest(self, repo: str, reference: str, accept: str) -> tuple[bytes, str]:
        """GET a manifest or index (anonymous tokens and configured credentials as for blobs):
        its bytes (bounded) and media type. A digest reference is checked against the bytes."""
        check_repository(repo)
        url = self._base.with_path(f"/v2/{repo}/manifests/{reference}")
        response = await self._send_authorized("GET", url, {"Accept": accept}, repo)
        try:
            body = await _read_bounded(response, MAX_MANIFEST_BODY)
            if response.status != 200:
                raise OriginError(f"origin {self.registry} answered {response.status} for {repo}:{reference}: "
                                  f"{_error_message(body)}", status=response.status)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        finally:
            response.release()
        if reference.startswith("sha256:") and Digest.of(body) != Digest.parse(reference):
            raise OriginError(f"origin {self.registry} sent a manifest for {repo}@{reference} with another digest")
        return body, media_type

    def range_target(self, repo: str, digest: str, timeout: float) -> RangeTarget:
        """What a worker thread needs to GET a range of this blob with the authorization known now."""
        check_repository(repo)
        Digest.parse(digest)
        url = self._base.with_path(f"/v2/{repo}/blobs/{digest}")
        authorization = self._authorization or self._cached_authorization(f"repository:{repo}:pull")
        assert url.host is not None and url.port is not None
        return RangeTarget(url.scheme, url.host, url.port, url.raw_path, authorization, bool(self._ssl), timeout,
                           self.stall_timeout)

    async def ping(self, authorization: str | None = None) -> tuple[int, str | None]:
        """``GET /v2/`` with these credentials (or none): the status and the challenge, if any.

        Without credentials it tells how the registry authenticates (200: not at all); with a
        client's basic credentials, whether the registry takes them.
        """
        response = await self._send("GET", self._base.with_path("/v2/"), {}, authorization)
        response.release()
        return response.status, response.headers.get("WWW-Authenticate")

    async def request_token(self, realm: str, params: list[tuple[str, str]],
                            authorization: str | None) -> tuple[int, bytes]:
        """GET a token from the registry's token service for a mirror client: (status, body).

        ``authorization`` is the client's own basic credential (None: anonymous); the answer goes
        back to the client as it came.
        """
        url = URL(realm)
        if url.scheme not in ("http", "https") or not url.host:
            raise OriginError(f"origin {self.registry} names an unusable token realm {realm[:200]!r}")
        response = await self._send("GET", url.with_query(params), {}, authorization)
        try:
            return response.status, await _read_bounded(response, MAX_TOKEN_BODY)
        finally:
            response.release()

    # -- request plumbing -------------------------------------------------------------------------

    async def _stream(
        self, response: aiohttp.ClientResponse, expected: int | None, digest: str
    ) -> AsyncIterator[bytes]:
        received = 0
        watch = StallWatch(self.stall_timeout, self.registry)
        loop = asyncio.get_running_loop()
        try:
            while True:
                began = loop.time()
                try:
                    async with asyncio.timeout(self.stall_timeout):
                        # What has arrived, up to a chunk (read(n) waits for any byte, not for n):
                        # iter_chunked waited for whole chunks, and so for the whole of a trickle.
                        chunk = await response.content.read(CHUNK_SIZE)
                except TimeoutError:
                    raise watch.silent() from None
                if not chunk:
                    break
                watch.read(loop.time() - began, len(chunk))
                received += len(chunk)
                if expected is not None and received > expected:
                    raise OriginError(f"origin {self.registry} sent more than {expected} bytes of {digest}")
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as e:
            raise OriginError(f"transfer of {digest} from {self.registry} failed: {e}") from e
        if expected is not None and received != expected:
            raise OriginError(f"origin {self.registry} sent {received} of {expected} bytes of {digest} (truncated)")

    @asynccontextmanager
    async def _request(
        self, method: str, repo: str, digest: str, headers: dict[str, str],
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A blob request with auth handled; yields a 2xx response, raises for everything else."""
        # Validate before any URL exists: these strings end up in a path on someone else's server.
        check_repository(repo)
        Digest.parse(digest)
        url = self._base.with_path(f"/v2/{repo}/blobs/{digest}")
        # Byte ranges index the stored blob, not a compressed transfer of it.
        headers = {**headers, "Accept-Encoding": "identity"}
        response = await self._send_authorized(method, url, headers, repo, timeout=timeout)
        try:
            if not 200 <= response.status < 300:
                await self._raise_for(response, repo, digest)
            yield response
        finally:
            response.release()

    async def _send_authorized(self, method: str, url: URL, headers: dict[str, str] | CIMultiDict[str], repo: str,
                               *, anonymous: bool = True,
                               timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientResponse:
        """Send with the pull authorization known for ``repo`` (a client's own, a cached token, basic);
        on a 401 without a client's own credential, answer the challenge and send again
        (``anonymous``: also without configured credentials, for anonymous tokens)."""
        scope = f"repository:{repo}:pull"
        authorization = self._authorization or self._cached_authorization(scope)
        response = await self._send(method, url, headers, authorization, timeout)
        if response.status == 401 and self._authorization is None and (anonymous or self._credentials is not None):
            challenge = response.headers.get("WWW-Authenticate", "")
            response.release()
            authorization = await self._answer_challenge(challenge, scope, repo, refused=authorization)
            response = await self._send(method, url, headers, authorization, timeout)
        return response

    async def _send(
        self, method: str, url: URL, headers: dict[str, str] | CIMultiDict[str], authorization: str | None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send, following redirects ourselves: Authorization goes only to the origin it was meant for.

        aiohttp (3.14) also strips it on a cross-origin redirect, but older releases and
        session-level auth differ; blob redirects typically point at S3/CDN URLs that must never
        see registry credentials, so we don't leave that to the library.
        """
        origin = url.origin()
        for _ in range(MAX_REDIRECTS + 1):
            request_headers = CIMultiDict(headers)  # a multidict: repeated Accept headers survive
            request_headers.popall("Authorization", None)
            if authorization is not None and url.origin() == origin:
                request_headers["Authorization"] = authorization
            else:
                authorization = None  # once we left the origin, never send it again
            try:
                response = await self._session.request(
                    method, url, headers=request_headers, allow_redirects=False, ssl=self._ssl,
                    **({} if timeout is None else {"timeout": timeout}),
                )
            except (aiohttp.ClientError, TimeoutError) as e:
                raise OriginError(f"cannot reach origin {url.host}:{url.port}: {e}") from e
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or location is None:
                return response
            response.release()
            target = url.join(URL(location))
            if target.scheme not in ("http", "https") or not target.host:
                raise OriginError(f"origin {self.registry} redirected to an unusable URL {location!r}")
            url = target
        raise OriginError(f"origin {self.registry}: more than {MAX_REDIRECTS} redirects")

    def _cached_authorization(self, scope: str) -> str | None:
        cached = self._tokens.get(scope)
        if cached is not None:
            token, usable_until = cached
            if self._clock() < usable_until:
                return f"Bearer {token}"
            del self._tokens[scope]
        if self._basic and self._credentials is not None:
            return _basic(self._credentials)
        return None

    def _need_credentials(self, repo: str, challenge: str, detail: str) -> OriginAuthError:
        return OriginAuthError(
            f"origin {self.registry} requires authentication for {repo} ({detail}): "
            f"configure credentials for registry {self.registry}",
            status=401,
            code="UNAUTHORIZED",
            challenge=challenge,
        )

    async def _answer_challenge(self, header: str, scope: str, repo: str, *, refused: str | None) -> str:
        """The Authorization value that answers the origin's 401 challenge (``refused``: what we sent)."""
        challenges = {c.scheme: c for c in parse_challenges(header)}
        if "bearer" in challenges:
            return f"Bearer {await self._bearer_token(challenges['bearer'], scope, repo, header, refused)}"
        if "basic" in challenges:
            if self._credentials is None:
                raise self._need_credentials(repo, header, "basic auth")
            self._basic = True
            return _basic(self._credentials)
        raise OriginAuthError(
            f"origin {self.registry} answered 401 with an unsupported challenge {header[:200]!r}",
            status=401,
            challenge=header or None,
        )

    async def _bearer_token(self, challenge: Challenge, scope: str, repo: str, header: str, refused: str | None) -> str:
        """A token for ``scope``: one fetched meanwhile by a concurrent request, or a new one."""
        cached = self._tokens.get(scope)
        if cached is not None:
            if f"Bearer {cached[0]}" != refused and self._clock() < cached[1]:
                return cached[0]
            del self._tokens[scope]
        fetch = self._token_fetches.get(scope)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch_token(challenge, scope, repo, header))
            self._token_fetches[scope] = fetch
            fetch.add_done_callback(lambda done: self._token_fetch_done(scope, done))
        # Shielded: one waiter being cancelled must not cancel the fetch the others wait for.
        return await asyncio.shield(fetch)

    def _token_fetch_done(self, scope: str, done: asyncio.Future[str]) -> None:
        if self._token_fetches.get(scope) is done:
            del self._token_fetches[scope]
        if not done.cancelled():
            done.exception()  # waiters re-raise it; this only stops "never retrieved" noise if none is left

    async def _fetch_token(self, challenge: Challenge, scope: str, repo: str, header: str) -> str:
        """Get a bearer token from the challenge's realm (anonymously without credentials)."""
        realm = URL(challenge.params.get("realm", ""))
        if realm.scheme not in ("http", "https") or not realm.host:
            raise OriginAuthError(
                f"origin {self.registry} sent a bearer challenge without a usable realm: {header[:200]!r}",
                status=401,
                challenge=header,
            )
        query = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        basic = None
        if self._credentials is not None:
            basic = _basic(self._credentials)
        response = await self._send("GET", realm.update_query(query), {}, basic)
        try:
            body = await _read_bounded(response, MAX_TOKEN_BODY)
            if response.status in (401, 403):
                if self._credentials is None:
                    raise self._need_credentials(repo, header, f"token service answered {response.status}")
                raise OriginAuthError(
                    f"token service {realm.host} rejected the credentials of {self._credentials.username!r} "
                    f"for registry {self.registry} ({response.status}): check the configured credentials",
                    status=response.status,
                    challenge=header,
                )
            if response.status != 200:
                raise OriginError(
                    f"token service {realm.host} for {self.registry} answered {response.status}: "
                    f"{_error_message(body)}",
                    status=response.status,
                )
        finally:
            response.release()
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            lifetime = int(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, TypeError, AttributeError) as e:
            raise OriginError(f"token service {realm.host} sent an unreadable token response") from e
        if not isinstance(token, str) or not token:
            raise OriginError(f"token service {realm.host} sent no token")
        # Retire it 10% early so a token never expires between our check and the origin's.
        if len(self._tokens) >= MAX_CACHED_TOKENS:
            now = self._clock()
            for key in [k for k, (_, until) in self._tokens.items() if until <= now]:
                del self._tokens[key]
            while len(self._tokens) >= MAX_CACHED_TOKENS:
                del self._tokens[next(iter(self._tokens))]  # the oldest
        self._tokens[scope] = (token, self._clock() + lifetime * 0.9)
        return token

    async def _raise_for(self, response: aiohttp.ClientResponse, repo: str, digest: str) -> None:
        """Turn a non-2xx answer into the matching OriginError, with the OCI error body's message."""
        status = response.status
        body = await _read_bounded(response, MAX_ERROR_BODY)
        code, message = _error_code(body), _error_message(body)
        where = f"blob {digest} in {self.registry}/{repo}"
        if status == 404:
            raise OriginNotFound(f"{where}: not found ({message})", status=404, code=code)
        if status in (401, 403):
            challenge = response.headers.get("WWW-Authenticate")
            if self._authorization is not None:
                detail = "the client's credentials were refused"
            elif self._credentials is None:
                raise self._need_credentials(repo, challenge or "", f"{status}: {message}")
            else:
                detail = f"credentials of {self._credentials.username!r} were refused"
            raise OriginAuthError(
                f"{where}: {detail} ({status}: {message})", status=status, code=code, challenge=challenge
            )
        raise OriginError(f"{where}: origin answered {status}: {message}", status=status, code=code,
                          retry_after=retry_after_seconds(response.headers.get("Retry-After")))


def _basic(credentials: Credentials) -> str:
    # Our own encoder: aiohttp.BasicAuth is deprecated in 3.14 and encode_basic_auth is missing before it.
    return "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a body: error and token bodies are small or hostile."""
    parts: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = await response.content.read(limit - size)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status is what matters; a broken error body just loses its message
    return b"".join(parts)


def _first_error(body: bytes) -> dict[str, object] | None:
    try:
        errors = json.loads(body).get("errors")
        return errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
    except (ValueError, AttributeError):
        return None


def _error_code(body: bytes) -> str | None:
    error = _first_error(body)
    return str(error.get("code")) if error and error.get("code") else None


def _error_message(body: bytes) -> str:
    """The OCI error body's message, or the start of whatever text came back."""
    error = _first_error(body)
    if error is not None:
        return str(error.get("message") or error.get("code") or "no message")
    text = body[:200].decode("utf-8", errors="replace").strip()
    return text or "empty body"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait that a Retry-After header asks for: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
