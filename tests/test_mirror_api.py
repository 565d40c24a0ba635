"""The mirror's OCI pull API against a real docker-registry upstream, spoken to with plain HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest
import yarl

from p2pdist.mirror.blobs import parse_range
from p2pdist.mirror.errors import MirrorError
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

TOKEN = "mirror-api-token"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MiB = 1 << 20


def start_agent(tmp_path: Path, registry: Registry, name: str = "m", tracker: Tracker | None = None) -> AgentProc:
    url = tracker.url if tracker else "http://127.0.0.1:9"  # no tracker: a single node
    return AgentProc(tmp_path, name, url, TOKEN, upstreams=[f"http://{registry.host}"], mirror=True).start()


@pytest.fixture
def image(registry: Registry):
    layers = [os.urandom(5 * MiB + 123), os.urandom(300_000), os.urandom(17)]
    manifest, digests = registry.push_image("team/app", "v1", layers)
    return manifest, digests, layers


@pytest.fixture
def mirror(tmp_path: Path, registry: Registry):
    agent = start_agent(tmp_path, registry)
    yield agent
    agent.stop()


def ns(registry: Registry) -> dict[str, str]:
    return {"ns": registry.host}


async def test_base_endpoint_answers_like_a_registry(mirror: AgentProc, registry: Registry):
    async with aiohttp.ClientSession() as s:
        # No registry named: the challenge names the mirror's token relay, so containers/image and
        # Docker authenticate (without one they would send no credentials and skip the mirror).
        async with s.get(f"http://{mirror.mirror}/v2/") as r:
            assert r.status == 401
            assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
            assert r.headers["WWW-Authenticate"] == (
                f'Bearer realm="http://{mirror.mirror}/p2pdist/token",service="p2pdist-mirror"')
            assert (await r.json())["errors"][0]["code"] == "UNAUTHORIZED"
        # The registry named (containerd's ?ns=): its own answer, here an anonymous registry's 200.
        async with s.get(f"http://{mirror.mirror}/v2/", params=ns(registry)) as r:
            assert r.status == 200
        async with s.get(f"http://{mirror.mirror}/v2/", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 200
        # A Host header that would break out of the quoted realm: the realm names the address reached.
        async with s.get(f"http://{mirror.mirror}/v2/", headers={"Host": 'evil",realm="http://x'}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="http://{mirror.mirror}/p2pdist/token"')


@pytest.mark.parametrize(("length", "status"), [(3000, 414), (20000, 400)])
async def test_oversized_paths_get_oci_errors(mirror: AgentProc, length: int, status: int):
    """Past MAX_PATH the mirror refuses; past aiohttp's line limit its parser does: both in OCI form."""
    path = "/v2/" + "a" * length + "/manifests/v1"
    async with aiohttp.ClientSession() as s, s.get(f"http://{mirror.mirror}{path}") as r:
        assert r.status == status
        assert r.headers["Content-Type"].startswith("application/json")
        assert (await r.json())["errors"][0]["code"] in ("NAME_INVALID", "UNSUPPORTED")


async def test_requests_are_routed_by_ns_path_prefix_or_docker_only(mirror: AgentProc, registry: Registry, image):
    """Never guessed: a name without ?ns= or a registry prefix goes to the default upstream only for the
    Docker engine (whose registry-mirrors are docker.io only); here the default is the local registry."""
    manifest_digest = image[0]
    prefix = registry.host.replace(":", "-")
    accept = {"Accept": OCI_MANIFEST}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{mirror.mirror}/v2/{prefix}/team/app/manifests/v1", headers=accept) as r:
            assert r.status == 200
            assert r.headers["Docker-Content-Digest"] == manifest_digest
        async with s.get(f"http://{mirror.mirror}/v2/team/app/manifests/v1", headers=accept) as r:
            assert r.status == 404
            body = await r.json()
            assert body["errors"][0]["code"] == "NAME_UNKNOWN"
            assert prefix in body["errors"][0]["message"]
        docker = {**accept, "User-Agent": "docker/20.10.24 go/go1.19 os/linux"}
        async with s.get(f"http://{mirror.mirror}/v2/team/app/manifests/v1", headers=docker) as r:
            assert r.status == 200
            assert r.headers["Docker-Content-Digest"] == manifest_digest
        # A prefix that names no upstream is not a registry: refused like any unrouted name.
        async with s.get(f"http://{mirror.mirror}/v2/quay.io/team/app/manifests/v1", headers=accept) as r:
            assert r.status == 404


async def test_manifests_by_tag_and_digest_with_every_accept_forwarded(mirror, registry, image):
    manifest_digest, _, _ = image
    base = f"http://{mirror.mirror}/v2/team/app/manifests"
    # Docker's type first: if the mirror kept only one Accept, the registry would refuse the OCI manifest.
    accept = [("Accept", DOCKER_MANIFEST), ("Accept", OCI_MANIFEST)]
    async with aiohttp.ClientSession() as s:
        async with s.head(f"{base}/v1", params=ns(registry), headers=accept) as r:
            assert r.status == 200
            assert r.headers["Docker-Content-Digest"] == manifest_digest
            assert r.headers["Content-Type"] == OCI_MANIFEST
            assert int(r.headers["Content-Length"]) > 0
        async with s.get(f"{base}/{manifest_digest}", params=ns(registry), headers=accept) as r:
            body = await r.read()
            assert r.status == 200
            assert "sha256:" + hashlib.sha256(body).hexdigest() == manifest_digest
            assert r.headers["Docker-Content-Digest"] == manifest_digest
            assert r.headers["Content-Type"] == OCI_MANIFEST
        async with s.get(f"{base}/v1", params=ns(registry), headers=[("Accept", DOCKER_MANIFEST)]) as r:
            assert r.status == 404  # the upstream's own answer to an Accept it cannot meet, passed on
            assert (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_blobs_whole_head_and_ranges(mirror, registry, image):
    _, digests, layers = image
    big, data = digests[0], layers[0]
    url = f"http://{mirror.mirror}/v2/team/app/blobs/{big}"
    async with aiohttp.ClientSession() as s:
        async with s.head(url, params=ns(registry)) as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == len(data)
            assert r.headers["Docker-Content-Digest"] == big
        async with s.get(url, params=ns(registry), headers={"Range": "bytes=1048570-1048585"}) as r:
            assert r.status == 206  # served from the swarm while the blob is still cold
            assert r.headers["Content-Range"] == f"bytes 1048570-1048585/{len(data)}"
            assert await r.read() == data[1048570:1048586]
        async with s.get(url, params=ns(registry)) as r:
            assert r.status == 200
            assert r.headers["Docker-Content-Digest"] == big
            assert await r.read() == data
        for header, status, expect in [
            ("bytes=10-19", 206, data[10:20]),
            ("bytes=-7", 206, data[-7:]),
            (f"bytes={len(data) - 3}-", 206, data[-3:]),
        ]:
            async with s.get(url, params=ns(registry), headers={"Range": header}) as r:
                assert r.status == status, header
                assert await r.read() == expect
        async with s.get(url, params=ns(registry), headers={"Range": f"bytes={len(data)}-"}) as r:
            assert r.status == 416
        # A range no blob can have, of more digits than int() takes: refused, not a 500.
        async with s.get(url, params=ns(registry), headers={"Range": "bytes=0-" + "9" * 5000}) as r:
            assert r.status == 416
    assert registry.egress(big) == len(data)  # every byte from the origin once, despite four requests


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v2/team/app/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
    ("HEAD", "/v2/team/app/blobs/sha256:" + "0" * 64, 404, None),
    ("GET", "/v2/team/app/manifests/nope", 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/Team/App/manifests/v1", 400, "NAME_INVALID"),
    ("GET", "/v2/team/../etc/blobs/sha256:" + "0" * 64, 400, "NAME_INVALID"),
    ("GET", "/v2/team/app/blobs/sha256:..%2F..%2Fetc", 400, "DIGEST_INVALID"),
    ("GET", "/v2/team/app/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
    ("GET", "/v2/team/app/manifests/sha256:1234", 400, "DIGEST_INVALID"),
    ("GET", "/v2/team/app/manifests/-bad-tag", 400, "TAG_INVALID"),
    ("POST", "/v2/team/app/blobs/uploads/", 405, "UNSUPPORTED"),
    ("PUT", "/v2/team/app/manifests/v2", 405, "UNSUPPORTED"),
    ("PATCH", "/v2/team/app/blobs/uploads/x", 405, "UNSUPPORTED"),
    ("DELETE", "/v2/team/app/manifests/v1", 405, "UNSUPPORTED"),
    ("GET", "/v2/team/app/tags/list", 404, "NAME_UNKNOWN"),
])
async def test_bad_and_unsupported_requests_get_oci_errors(mirror, registry, image, method, path, status, code):
    # encoded=True: send the path exactly as written (no client-side '..' folding).
    url = yarl.URL(f"http://{mirror.mirror}{path}?ns={registry.host}", encoded=True)
    async with aiohttp.ClientSession() as s:
        # A pull of team/app first: what the mirror learned about the repository must not turn an
        # unknown blob there into anything but the registry's 404 (containerd falls back only on a 404).
        async with s.get(f"http://{mirror.mirror}/v2/team/app/manifests/v1", params=ns(registry),
                         headers={"Accept": OCI_MANIFEST}) as r:
            assert r.status == 200
        async with s.request(method, url) as r:
            assert r.status == status
            if code is not None:
                assert (await r.json())["errors"][0]["code"] == code
        async with s.get(f"http://{mirror.mirror}/v2/", params=ns(registry)) as r:
            assert r.status == 200  # still serving


async def test_registry_outside_the_allow_list_is_denied(mirror, image):
    url = f"http://{mirror.mirror}/v2/team/app/manifests/v1"
    async with aiohttp.ClientSession() as s, s.get(url, params={"ns": "evil.example:5000"}) as r:
        assert r.status == 403
        assert (await r.json())["errors"][0]["code"] == "DENIED"


async def test_private_repository_needs_the_clients_own_credentials(tmp_path, registry_basic: Registry):
    layer = os.urandom(2 * MiB)
    manifest = registry_basic.push_image("private/app", "v1", [layer])[0]
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    agent = start_agent(tmp_path, registry_basic)
    good = {"Authorization": "Basic " + base64.b64encode(b"alice:secret-pw").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}
    base = f"http://{agent.mirror}/v2/private/app"
    params = ns(registry_basic)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/manifests/v1", params=params, headers={"Accept": OCI_MANIFEST}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Basic")  # the upstream's challenge, unchanged
            async with s.get(f"{base}/manifests/v1", params=params, headers={"Accept": OCI_MANIFEST, **good}) as r:
                assert r.status == 200
                assert r.headers["Docker-Content-Digest"] == manifest
            async with s.get(f"{base}/blobs/{layer_digest}", params=params, headers=good) as r:
                assert r.status == 200
                assert await r.read() == layer
            # The blob is now in the cache; clients without accepted credentials still get nothing.
            for headers in ({}, bad):
                async with s.get(f"{base}/blobs/{layer_digest}", params=params, headers=headers) as r:
                    assert r.status == 401
                    assert "WWW-Authenticate" in r.headers
                    assert await r.read() != layer
                async with s.head(f"{base}/blobs/{layer_digest}", params=params, headers=headers) as r:
                    assert r.status == 401
                async with s.get(f"{base}/manifests/{manifest}", params=params, headers=headers) as r:
                    assert r.status == 401
    finally:
        agent.stop()
    assert registry_basic.egress(layer_digest) == len(layer)


async def test_upstream_down_cached_manifest_by_digest_and_blobs_still_served(mirror, registry, image):
    manifest_digest, digests, layers = image
    base = f"http://{mirror.mirror}/v2/team/app"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/manifests/v1", params=ns(registry), headers={"Accept": OCI_MANIFEST}) as r:
            manifest = await r.read()
        for d, layer in zip(digests, layers, strict=True):
            async with s.get(f"{base}/blobs/{d}", params=ns(registry)) as r:
                assert r.status == 200
                assert await r.read() == layer  # the whole pull happened before the upstream went away
        registry.stop()
        async with s.get(f"{base}/manifests/{manifest_digest}", params=ns(registry)) as r:
            assert r.status == 200
            assert await r.read() == manifest
        async with s.get(f"{base}/manifests/v1", params=ns(registry)) as r:
            assert r.status == 200  # the tag was resolved within the window
            assert r.headers["Docker-Content-Digest"] == manifest_digest
        for d, layer in zip(digests, layers, strict=True):
            async with s.get(f"{base}/blobs/{d}", params=ns(registry)) as r:
                assert r.status == 200
                assert await r.read() == layer
        async with s.get(f"{base}/manifests/never-seen", params=ns(registry)) as r:
            assert r.status == 503


async def test_many_clients_share_one_download(tmp_path, registry: Registry):
    data = os.urandom(24 * MiB)
    digest = registry.push_blob("team/shared", data)
    agent = start_agent(tmp_path, registry)
    url = f"http://{agent.mirror}/v2/team/shared/blobs/{digest}"
    try:
        async with aiohttp.ClientSession() as s:
            async def get() -> bytes:
                async with s.get(url, params=ns(registry)) as r:
                    assert r.status == 200
                    return await r.read()

            bodies = await asyncio.gather(*(get() for _ in range(6)))
    finally:
        agent.stop()
    assert all(b == data for b in bodies)
    assert registry.egress(digest) == len(data)


async def test_a_client_streaming_a_cold_blob_paces_the_origin_streams(mirror, registry: Registry):
    """Without a tracker, a blob fetched for nobody (the fetch API) comes in guided runs for four
    streams; one streamed to a client that keeps up comes in one Range request: the paced stream
    takes the runs of the streams it did not open (core.download.Download.follow)."""
    fetched = registry.push_blob("team/paced", os.urandom(16 * MiB))  # 16 pieces, runs of 4
    streamed = registry.push_blob("team/paced", os.urandom(16 * MiB))
    assert mirror.fetch(f"{registry.host}/team/paced@{fetched}").get("done")
    url = f"http://{mirror.mirror}/v2/team/paced/blobs/{streamed}"
    async with aiohttp.ClientSession() as s, s.get(url, params=ns(registry)) as r:
        assert r.status == 200
        assert hashlib.sha256(await r.read()).hexdigest() == streamed.split(":")[1]

    def ranges(digest: str) -> list[int]:
        return [r.written for r in registry.requests()
                if r.method == "GET" and r.path.endswith(digest) and r.status == 206]

    assert len(ranges(fetched)) >= 4 and sum(ranges(fetched)) == 16 * MiB
    assert ranges(streamed) == [16 * MiB]


async def test_a_blob_that_fails_its_digest_is_cut_never_finished(mirror, registry: Registry):
    """The origin's copy is corrupt (same length, one byte flipped on the registry's disk): the mirror
    streams pieces as they arrive but holds the last ones until the whole-blob digest check, which
    fails, so the client sees a broken transfer, never a complete wrong blob."""
    data = os.urandom(6 * MiB + 5)
    digest = registry.push_blob("team/bad", data)
    hexdigest = digest.split(":")[1]
    stored = registry.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))
    url = f"http://{mirror.mirror}/v2/team/bad/blobs/{digest}"
    async with aiohttp.ClientSession() as s:
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.get(url, params=ns(registry)) as r:
                assert r.status == 200
                assert r.content_length == len(data)
                async for chunk in r.content.iter_chunked(1 << 16):
                    received += chunk
        assert len(received) < len(data)
        assert bytes(received) == bytes(raw[:len(received)])  # the origin's bytes, never all of them
        # Nothing was committed under the digest: a second request is refused or cut again.
        async with s.get(url, params=ns(registry)) as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


@pytest.mark.parametrize("header", ["bytes=0-" + "9" * 5000, "bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000])
def test_a_range_longer_than_any_blob_is_refused_with_an_oci_error(header: str) -> None:
    """The streaming path parses Range itself: thousands of digits used to raise from int() (a 500)."""
    with pytest.raises(MirrorError) as refused:
        parse_range(header, 1 << 20)
    assert refused.value.status == 416
    assert parse_range("bytes=0-" + "9" * 19, 1 << 20) == (0, 1 << 20)  # the largest accepted: clamped


async def test_blob_answers_are_counted_by_cache_and_bytes_by_source(mirror, registry, image):
    """First GET of a cold blob: a miss, its bytes from the swarm; the second: a hit, from the store."""
    _, digests, layers = image
    url = f"http://{mirror.mirror}/v2/team/app/blobs/{digests[1]}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, params=ns(registry)) as r:
            assert r.status == 200 and await r.read() == layers[1]
        deadline = asyncio.get_running_loop().time() + 30
        while mirror.status()["downloads"] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)  # polling for the commit after the last byte, bounded
        async with s.get(url, params=ns(registry)) as r:
            assert r.status == 200 and await r.read() == layers[1]
        async with s.head(url, params=ns(registry)) as r:  # a HEAD sends no blob bytes
            assert r.status == 200
    m = mirror.metrics()
    assert m['p2pdist_mirror_blob_requests_total{cache="miss"}'] == 1
    assert m['p2pdist_mirror_blob_requests_total{cache="hit"}'] == 1
    assert m['p2pdist_mirror_bytes_served_total{source="swarm"}'] == len(layers[1])
    assert m['p2pdist_mirror_bytes_served_total{source="cache"}'] == len(layers[1])
