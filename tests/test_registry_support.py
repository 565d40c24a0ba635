"""The test registry support itself: byte accounting, request records, auth setup, failure modes."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import aiohttp
import pytest

from p2pdist.origin import Credentials, OriginClient
from tests.support.registry import OCI_MANIFEST, Registry, RegistryError, TokenIssuer

pytestmark = pytest.mark.integration


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Message]:
    """A GET with urllib: status, body and (case-insensitive) headers, errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


async def test_egress_counts_bytes_actually_fetched(registry: Registry) -> None:
    data = os.urandom(1_000_003)
    other = os.urandom(4096)
    digest = registry.push_blob("library/app", data)
    other_digest = registry.push_blob("library/app", other)
    assert registry.egress() == 0, "pushes are not egress"

    received = 0
    async with aiohttp.ClientSession() as http:
        origin = OriginClient(http, registry.host, plain_http=True)
        assert await origin.blob_size("library/app", digest) == len(data)
        assert registry.egress(digest) == 0, "HEAD serves no body"

        async for chunk in origin.fetch_all("library/app", digest):
            received += len(chunk)
        assert received == len(data)
        assert registry.egress(digest) == len(data)

        for start, end in [(0, 1), (12_345, 262_144), (len(data) - 77, len(data))]:
            async for chunk in origin.fetch_range("library/app", digest, start, end):
                received += len(chunk)
            assert registry.egress(digest) == received

        async for chunk in origin.fetch_all("library/app", other_digest):
            received += len(chunk)
    assert registry.egress(other_digest) == len(other)
    expected = len(data) + 1 + (262_144 - 12_345) + 77 + len(other)
    assert received == expected
    assert registry.egress() == expected


def test_egress_ignores_errors_and_manifests(registry: Registry) -> None:
    _, (digest,) = registry.push_image("library/app", "v1", [b"layer"])
    assert get(f"{registry.url}/v2/library/app/blobs/sha256:{'1' * 64}")[0] == 404
    status, body, _ = get(f"{registry.url}/v2/library/app/manifests/v1", {"Accept": OCI_MANIFEST})
    assert status == 200 and body
    assert registry.egress() == 0
    assert get(f"{registry.url}/v2/library/app/blobs/{digest}", {"Range": "bytes=1-3"})[1] == b"aye"
    assert registry.egress() == 3


def test_requests_lists_every_request_with_status_and_size(registry_basic: Registry) -> None:
    digest = registry_basic.push_blob("private/app", b"0123456789")
    url = f"{registry_basic.url}/v2/private/app/blobs/{digest}"
    auth = {"Authorization": "Basic YWxpY2U6c2VjcmV0LXB3", "User-Agent": "probe/1"}  # alice:secret-pw
    assert get(url, {"User-Agent": "probe/1"})[0] == 401
    assert get(url, {**auth, "Range": "bytes=2-5"})[1] == b"2345"
    assert get(url, auth)[1] == b"0123456789"
    records = [r for r in registry_basic.requests() if r.user_agent == "probe/1"]
    assert [(r.method, r.path, r.status) for r in records] == [
        ("GET", f"/v2/private/app/blobs/{digest}", 401),
        ("GET", f"/v2/private/app/blobs/{digest}", 206),
        ("GET", f"/v2/private/app/blobs/{digest}", 200),
    ]
    assert [r.written for r in records[1:]] == [4, 10]
    assert all(r.remote == "127.0.0.1" for r in records)
    # The access log and the app log's http.response.written agree on blob bytes.
    assert registry_basic.egress(digest) == 14
    entries = [e for e in registry_basic.log_entries() if e.get("http.request.useragent") == "probe/1"]
    assert {e["http.request.host"] for e in entries} == {registry_basic.host}


def test_push_image_serves_the_manifest_it_returns(registry: Registry) -> None:
    layers = [os.urandom(100), os.urandom(200)]
    manifest_digest, layer_digests = registry.push_image("team/app", "1.0", layers)
    status, body, headers = get(f"{registry.url}/v2/team/app/manifests/1.0", {"Accept": OCI_MANIFEST})
    assert status == 200
    assert headers["Docker-Content-Digest"] == manifest_digest
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == layer_digests
    assert [layer["size"] for layer in manifest["layers"]] == [100, 200]


def test_token_registry_verifies_signatures(registry_token: Registry) -> None:
    issuer = registry_token.issuer
    assert issuer is not None
    digest = registry_token.push_blob("private/app", b"layer")
    url = f"{registry_token.url}/v2/private/app/blobs/{digest}"
    pull = [{"type": "repository", "name": "private/app", "actions": ["pull"]}]

    status, _, headers = get(url)
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{issuer.realm}",service="{issuer.service}",scope="repository:private/app:pull"'
    )
    assert get(url, {"Authorization": "Bearer " + issuer.mint("alice", pull)})[:2] == (200, b"layer")
    # Same claims, signed by a key the registry's rootcertbundle does not hold.
    stranger = TokenIssuer({}, service=issuer.service, issuer=issuer.issuer)
    assert get(url, {"Authorization": "Bearer " + stranger.mint("alice", pull)})[0] == 401
    # Expired, and granting another repository only.
    assert get(url, {"Authorization": "Bearer " + issuer.mint("alice", pull, expires_in=-120)})[0] == 401
    other = [{"type": "repository", "name": "private/other", "actions": ["pull"]}]
    assert get(url, {"Authorization": "Bearer " + issuer.mint("alice", other)})[0] == 401


async def test_token_issuer_checks_credentials(registry_token: Registry) -> None:
    issuer = registry_token.issuer
    assert issuer is not None
    query = f"?service={issuer.service}&scope=repository:private/app:pull"
    assert get(issuer.realm + query)[0] == 401
    assert get(issuer.realm + query, {"Authorization": "Basic YWxpY2U6d3Jvbmc="})[0] == 401  # alice:wrong
    status, body, _ = get(issuer.realm + query, {"Authorization": "Basic YWxpY2U6c2VjcmV0LXB3"})
    assert status == 200
    document = json.loads(body)
    assert document["token"] == document["access_token"]
    assert document["expires_in"] == issuer.expires_in
    assert [(r.user, r.status) for r in issuer.token_requests()] == [(None, 401), (None, 401), ("alice", 200)]
    async with aiohttp.ClientSession() as http:
        origin = OriginClient(http, registry_token.host, plain_http=True, credentials=Credentials("alice", "secret-pw"))
        digest = registry_token.push_blob("private/app", b"x" * 10)
        assert await origin.blob_size("private/app", digest) == 10


def test_missing_binary_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RegistryError, match="docker-registry not found on PATH: install"):
        Registry(workdir=tmp_path / "registry").start()


def test_stop_ends_the_process(tmp_path: Path) -> None:
    registry = Registry(workdir=tmp_path / "registry").start()
    process = registry._proc
    assert process is not None and process.poll() is None
    registry.stop()
    assert process.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{registry.url}/v2/", timeout=1)
