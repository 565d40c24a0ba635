"""OriginClient against a real CNCF distribution registry: anonymous, basic auth and token auth."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from p2pdist.agent.origin import (
    CHUNK_SIZE,
    Credentials,
    OriginAuthError,
    OriginClient,
    OriginError,
    OriginNotFound,
    RangeNotSupported,
)
from p2pdist.core.digest import DigestError
from p2pdist.core.names import InvalidName
from tests.support.registry import Registry, free_port
from tests.support.servers import blob_store, serving

pytestmark = pytest.mark.integration

ALICE = Credentials("alice", "secret-pw")
MISSING = "sha256:" + "0" * 64


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def client(http: aiohttp.ClientSession, registry: Registry, **options: object) -> OriginClient:
    return OriginClient(http, registry.host, plain_http=True, **options)


# -- anonymous ------------------------------------------------------------------------------------


async def test_blob_size(http: aiohttp.ClientSession, registry: Registry) -> None:
    data = os.urandom(70_001)
    digest = registry.push_blob("library/app", data)
    assert await client(http, registry).blob_size("library/app", digest) == len(data)


async def test_ranges_at_start_middle_and_end(http: aiohttp.ClientSession, registry: Registry) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 17)
    digest = registry.push_blob("library/app", data)
    origin = client(http, registry)
    size = len(data)
    for start, end in [(0, 1), (0, 1000), (CHUNK_SIZE - 5, 2 * CHUNK_SIZE + 9), (size - 1000, size), (size - 1, size)]:
        chunks = [chunk async for chunk in origin.fetch_range("library/app", digest, start, end)]
        assert b"".join(chunks) == data[start:end], (start, end)
        assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)


async def test_fetch_all_streams_in_bounded_chunks(http: aiohttp.ClientSession, registry: Registry) -> None:
    data = os.urandom(4 * CHUNK_SIZE + 3)
    digest = registry.push_blob("library/app", data)
    chunks = [chunk async for chunk in client(http, registry).fetch_all("library/app", digest)]
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and all(len(chunk) <= CHUNK_SIZE for chunk in chunks)


async def test_fetch_all_of_image_layers(http: aiohttp.ClientSession, registry: Registry) -> None:
    layers = [os.urandom(1000), os.urandom(50_000)]
    _, digests = registry.push_image("team/service", "v1", layers)
    origin = client(http, registry)
    for layer, digest in zip(layers, digests, strict=True):
        assert await collect(origin.fetch_all("team/service", digest)) == layer


async def test_unknown_digest_is_not_found(http: aiohttp.ClientSession, registry: Registry) -> None:
    registry.push_blob("library/app", b"something")
    origin = client(http, registry)
    with pytest.raises(OriginNotFound) as raised:
        await origin.blob_size("library/app", MISSING)
    assert raised.value.status == 404
    with pytest.raises(OriginNotFound) as raised:
        await collect(origin.fetch_range("library/app", MISSING, 0, 10))
    assert raised.value.code == "BLOB_UNKNOWN"
    assert "blob unknown to registry" in str(raised.value)
    with pytest.raises(OriginNotFound):
        await collect(origin.fetch_all("no/such-repo", MISSING))


async def test_unsatisfiable_range_is_an_origin_error(http: aiohttp.ClientSession, registry: Registry) -> None:
    digest = registry.push_blob("library/app", b"0123456789")
    with pytest.raises(OriginError) as raised:
        await collect(client(http, registry).fetch_range("library/app", digest, 10, 20))
    assert raised.value.status == 416


async def test_invalid_byte_range_is_refused(http: aiohttp.ClientSession, registry: Registry) -> None:
    origin = client(http, registry)
    for start, end in [(5, 5), (6, 5), (-1, 3)]:
        with pytest.raises(ValueError):
            await collect(origin.fetch_range("library/app", MISSING, start, end))


@pytest.mark.parametrize(
    ("repo", "digest", "error"),
    [
        ("Library/App", MISSING, InvalidName),
        ("library/../etc", MISSING, InvalidName),
        ("/library/app", MISSING, InvalidName),
        ("library//app", MISSING, InvalidName),
        ("library/app?x=1", MISSING, InvalidName),
        ("library/app", "sha256:abc", DigestError),
        ("library/app", "sha256:" + "A" * 64, DigestError),
        ("library/app", "md5:" + "0" * 32, DigestError),
        ("library/app", "sha256:" + "0" * 64 + "/../x", DigestError),
    ],
)
async def test_invalid_names_are_rejected_before_any_request(
    http: aiohttp.ClientSession, registry: Registry, repo: str, digest: str, error: type[Exception]
) -> None:
    origin = client(http, registry)
    before = registry.requests()
    with pytest.raises(error):
        await origin.blob_size(repo, digest)
    with pytest.raises(error):
        await collect(origin.fetch_range(repo, digest, 0, 1))
    with pytest.raises(error):
        await collect(origin.fetch_all(repo, digest))
    assert registry.requests() == before


async def test_unreachable_origin_is_an_origin_error(http: aiohttp.ClientSession) -> None:
    origin = OriginClient(http, f"127.0.0.1:{free_port()}", plain_http=True)
    with pytest.raises(OriginError, match="cannot reach origin"):
        await origin.blob_size("library/app", MISSING)


# -- basic auth -----------------------------------------------------------------------------------


async def test_basic_auth(http: aiohttp.ClientSession, registry_basic: Registry) -> None:
    data = os.urandom(10_000)
    digest = registry_basic.push_blob("private/app", data)
    origin = client(http, registry_basic, credentials=ALICE)
    assert await origin.blob_size("private/app", digest) == len(data)
    assert await collect(origin.fetch_range("private/app", digest, 100, 200)) == data[100:200]
    assert await collect(origin.fetch_all("private/app", digest)) == data
    # One challenge, then credentials are sent up front.
    def ours() -> list:
        return [r for r in registry_basic.requests() if r.path.endswith(digest) and r.method in ("HEAD", "GET")]

    # The registry logs a request after its handler returns, which can be after we read the last
    # byte and even after the log-sync marker (seen once in CI on a busy machine): look again, each
    # time behind a new marker, until all four are there or 5 s pass.
    deadline = time.monotonic() + 5.0
    seen = ours()
    while len(seen) < 4 and time.monotonic() < deadline:
        seen = ours()
    assert [r.status for r in seen] == [401, 200, 206, 200]


async def test_basic_auth_wrong_password(http: aiohttp.ClientSession, registry_basic: Registry) -> None:
    digest = registry_basic.push_blob("private/app", b"secret layer")
    origin = client(http, registry_basic, credentials=Credentials("alice", "wrong"))
    with pytest.raises(OriginAuthError, match="'alice' were refused") as raised:
        await collect(origin.fetch_all("private/app", digest))
    assert raised.value.status == 401
    assert raised.value.challenge is not None and raised.value.challenge.startswith("Basic")


async def test_basic_auth_without_credentials(http: aiohttp.ClientSession, registry_basic: Registry) -> None:
    digest = registry_basic.push_blob("private/app", b"secret layer")
    with pytest.raises(OriginAuthError, match=f"configure credentials for registry {registry_basic.host}"):
        await client(http, registry_basic).blob_size("private/app", digest)


async def test_forwarded_authorization(http: aiohttp.ClientSession, registry_basic: Registry) -> None:
    data = os.urandom(5000)
    digest = registry_basic.push_blob("private/app", data)
    good = basic_header("alice", "secret-pw")
    origin = client(http, registry_basic, authorization=good)
    assert await collect(origin.fetch_range("private/app", digest, 0, 10)) == data[:10]
    # A refused client header comes back with the origin's challenge for the mirror to relay.
    bad = client(http, registry_basic, authorization=basic_header("alice", "nope"))
    with pytest.raises(OriginAuthError, match="client's credentials were refused") as raised:
        await bad.blob_size("private/app", digest)
    assert raised.value.challenge == 'Basic realm="p2pdist-test"'


# -- token auth -----------------------------------------------------------------------------------


async def test_token_auth_and_token_caching(http: aiohttp.ClientSession, registry_token: Registry) -> None:
    data = os.urandom(300_000)
    digest = registry_token.push_blob("private/app", data)
    other = registry_token.push_blob("private/other", b"other")
    issuer = registry_token.issuer
    assert issuer is not None
    origin = client(http, registry_token, credentials=ALICE)

    assert await origin.blob_size("private/app", digest) == len(data)
    assert await collect(origin.fetch_range("private/app", digest, 1000, 2000)) == data[1000:2000]
    assert await collect(origin.fetch_all("private/app", digest)) == data
    assert await collect(origin.fetch_range("private/app", digest, len(data) - 5, len(data))) == data[-5:]
    requests = issuer.token_requests()
    assert len(requests) == 1, "one token serves every request for the same scope"
    assert requests[0].user == "alice"
    assert requests[0].scopes == ("repository:private/app:pull",)
    assert requests[0].service == issuer.service

    # Another repository is another scope: another token.
    assert await collect(origin.fetch_all("private/other", other)) == b"other"
    assert [r.scopes for r in issuer.token_requests()] == [
        ("repository:private/app:pull",),
        ("repository:private/other:pull",),
    ]
    # Only the first request per scope met a challenge.
    statuses = [r.status for r in registry_token.requests() if r.user_agent != "p2pdist-test-push"]
    assert statuses.count(401) == 2


async def test_token_is_refetched_when_it_expires(http: aiohttp.ClientSession, registry_token: Registry) -> None:
    digest = registry_token.push_blob("private/app", b"layer bytes")
    issuer = registry_token.issuer
    assert issuer is not None
    now = [1000.0]
    origin = client(http, registry_token, credentials=ALICE, clock=lambda: now[0])
    await origin.blob_size("private/app", digest)
    now[0] += issuer.expires_in * 0.5
    await origin.blob_size("private/app", digest)
    assert len(issuer.token_requests()) == 1
    now[0] += issuer.expires_in * 0.5  # past expires_in (less our safety margin)
    await origin.blob_size("private/app", digest)
    assert len(issuer.token_requests()) == 2


async def test_refused_cached_token_is_replaced(http: aiohttp.ClientSession, registry_token: Registry) -> None:
    digest = registry_token.push_blob("private/app", b"layer bytes")
    issuer = registry_token.issuer
    assert issuer is not None
    origin = client(http, registry_token, credentials=ALICE)
    await origin.blob_size("private/app", digest)
    # A token the registry no longer accepts (e.g. revoked, or the issuer's key rotated).
    origin._tokens["repository:private/app:pull"] = ("not-a-valid-token", float("inf"))
    assert await origin.blob_size("private/app", digest) == len(b"layer bytes")
    assert len(issuer.token_requests()) == 2


async def test_token_auth_wrong_password(http: aiohttp.ClientSession, registry_token: Registry) -> None:
    digest = registry_token.push_blob("private/app", b"layer bytes")
    origin = client(http, registry_token, credentials=Credentials("alice", "wrong"))
    with pytest.raises(OriginAuthError, match="rejected the credentials of 'alice'"):
        await collect(origin.fetch_range("private/app", digest, 0, 4))
    assert registry_token.issuer is not None
    assert [r.status for r in registry_token.issuer.token_requests()] == [401]


async def test_token_auth_without_credentials(http: aiohttp.ClientSession, registry_token: Registry) -> None:
    digest = registry_token.push_blob("private/app", b"layer bytes")
    issuer = registry_token.issuer
    assert issuer is not None
    origin = client(http, registry_token)
    with pytest.raises(OriginAuthError, match=f"configure credentials for registry {registry_token.host}") as raised:
        await origin.blob_size("private/app", digest)
    assert raised.value.challenge is not None and raised.value.challenge.startswith("Bearer realm=")
    assert issuer.token_requests()[0].user is None  # asked anonymously

    # An issuer that grants anonymous pulls (a public repository) works without credentials.
    issuer.anonymous_pull = True
    assert await collect(origin.fetch_all("private/app", digest)) == b"layer bytes"


# -- an origin without Range support ---------------------------------------------------------------


async def test_range_not_supported(http: aiohttp.ClientSession) -> None:
    # A stand-in, legitimately: distribution always honours Range, so an origin that ignores it
    # (some CDNs and minimal registries do) has to be a tiny server written for the test.
    data = os.urandom(600_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    served: list[str | None] = []

    async def blob(request: web.Request) -> web.StreamResponse:
        served.append(request.headers.get("Range"))
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        return web.Response(body=data, content_type="application/octet-stream")  # Range ignored

    app = web.Application()
    app.router.add_get("/v2/library/app/blobs/{digest}", blob)
    async with serving(app) as port:
        origin = OriginClient(http, f"127.0.0.1:{port}", plain_http=True)
        received: list[bytes] = []
        with pytest.raises(RangeNotSupported):
            async for chunk in origin.fetch_range("library/app", digest, 100, 200):
                received.append(chunk)
        assert received == [], "nothing may be yielded before RangeNotSupported"
        assert served == ["bytes=100-199"]
        assert await origin.blob_size("library/app", digest) == len(data)
        assert await collect(origin.fetch_all("library/app", digest)) == data


# -- redirects --------------------------------------------------------------------------------------


async def test_redirect_does_not_carry_authorization(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # The registry is real (distribution's `redirect` storage middleware answers blob requests with
    # 307 to baseurl + storage path, as with S3 or a CDN); the redirect target is a small file server
    # over the registry's storage, standing in for the blob store.
    seen: list[tuple[str, str | None, str | None]] = []
    root: list[Path] = []
    async with serving(blob_store(root, seen)) as port:
        store_url = f"http://127.0.0.1:{port}/"
        with Registry(auth="basic", redirect_baseurl=store_url, workdir=tmp_path / "registry") as registry:
            root.append(registry.root)
            data = os.urandom(100_000)
            digest = registry.push_blob("private/app", data)
            origin = client(http, registry, credentials=ALICE)
            assert await origin.blob_size("private/app", digest) == len(data)
            assert await collect(origin.fetch_range("private/app", digest, 10, 5000)) == data[10:5000]
            assert await collect(origin.fetch_all("private/app", digest)) == data
            at_registry = [r for r in registry.requests() if r.path.endswith(digest) and r.method != "PUT"]
            assert [r.status for r in at_registry] == [401, 307, 307, 307]
            assert registry.egress(digest) == 0  # every byte came from the blob store
        assert [(method, auth) for method, auth, _ in seen] == [("HEAD", None), ("GET", None), ("GET", None)]
        assert seen[1][2] == "bytes=10-4999", "Range survives the redirect"


async def test_concurrent_requests_share_one_token(http: aiohttp.ClientSession, registry_token: Registry) -> None:
    data = os.urandom(64_000)
    digest = registry_token.push_blob("private/app", data)
    issuer = registry_token.issuer
    assert issuer is not None
    origin = client(http, registry_token, credentials=ALICE)
    pieces = [(i * 8000, (i + 1) * 8000) for i in range(8)]
    results = await asyncio.gather(*(collect(origin.fetch_range("private/app", digest, a, b)) for a, b in pieces))
    assert b"".join(results) == data
    assert len(issuer.token_requests()) == 1


# -- bodies that stall, and long ones -----------------------------------------------------------------


def paced_origin(data: bytes, pace: str) -> web.Application:
    """Answers a blob Range GET with 206 and a body sent as ``pace`` says: ``trickle`` (the first
    64 KiB, then 64 bytes every 50 ms), ``silent`` (the first 64 KiB, then nothing for 2 s) or ``steady``
    (64 KiB every 100 ms: slow but moving)."""

    async def blob(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
        resp.content_length = len(data)
        await resp.prepare(request)
        step = 64 if pace == "trickle" else 65536
        await resp.write(data[:65536])
        for at in range(65536, len(data), step):
            # Silent for 2 s: four stall windows, and short enough for the server's own shutdown.
            await asyncio.sleep(2 if pace == "silent" else 0.05 if pace == "trickle" else 0.1)
            await resp.write(data[at:at + step])
        return resp

    app = web.Application()
    app.router.add_get("/v2/library/app/blobs/{digest}", blob)
    return app


@pytest.mark.parametrize(("pace", "said"), [("trickle", "stalled"), ("silent", "sent nothing for 0.5 s")])
async def test_a_body_that_stalls_is_given_up_after_the_stall_window(http: aiohttp.ClientSession, pace: str,
                                                                     said: str) -> None:
    # An async run (a redirect to a blob store, a token challenge) read a trickle until it ended
    # and a silent body until the session's 300 s total.
    data = os.urandom(256 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with serving(paced_origin(data, pace)) as port:
        origin = OriginClient(http, f"127.0.0.1:{port}", plain_http=True, stall_timeout=0.5)
        received: list[bytes] = []
        with pytest.raises(OriginError, match=re.escape(said)) as caught:
            async for chunk in origin.fetch_range("library/app", digest, 0, len(data)):
                received.append(chunk)
    assert caught.value.transient  # asked again (OriginRetry), from the first piece not stored
    assert b"".join(received) == data[: len(b"".join(received))] and len(b"".join(received)) >= 65536


async def test_a_long_body_that_keeps_moving_is_not_cut_by_the_sessions_total_timeout() -> None:
    # The daemon's session keeps aiohttp's default total of 300 s, which cut every body longer than
    # that (a large layer from a slow origin, or without Range) and its retries too. Here the
    # session allows 1 s and the body takes 1.5 s.
    data = os.urandom(16 * 65536)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
                serving(paced_origin(data, "steady")) as port):
        origin = OriginClient(http, f"127.0.0.1:{port}", plain_http=True, stall_timeout=0.5)
        assert await collect(origin.fetch_range("library/app", digest, 0, len(data))) == data
