"""No private layer leaves the mirror for a client the registry would refuse (issue 14).

The blob cache and the peers hold blobs by digest alone. After alice pulled a private image through
the mirror, every other identity asks for every private digest under every other repository and
registry name, as a registry would be asked: anonymous, anonymous with a token, bob (who may pull
``other/*``), alice with a wrong password, alice's token for another repository, containerd-style
requests (``?ns=``) with tokens from the token service itself, and another registry behind the same
mirror. GET, HEAD and Range: never 200 or 206, never a byte of the blob. Then the same with the
upstream down. A control request (alice, her token, her repository) gets 200 throughout, so the
test can tell a refusal from a broken mirror.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from p2pdist.core.names import path_prefix
from tests.support.hub import OTHER, PRIVATE, PUBLIC, USERS, private_only, start_hub
from tests.support.images import OciImage, build_image
from tests.support.procs import AgentProc
from tests.support.registry import Registry, basic_header

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NO_TRACKER = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[OciImage, OciImage]:
    root = tmp_path_factory.mktemp("leak-images")
    return (build_image(root / "public", random_sizes=(300_000,)),
            build_image(root / "private", random_sizes=(2 << 20,)))


@pytest.fixture
def hub(tmp_path: Path, images: tuple[OciImage, OciImage]) -> Iterator[Registry]:
    registry = start_hub(tmp_path / "hub", images)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def second(tmp_path: Path, images: tuple[OciImage, OciImage]) -> Iterator[Registry]:
    """Another registry behind the same mirror, without the private image."""
    with Registry(workdir=tmp_path / "second") as registry:
        images[0].push(registry.host, PUBLIC)
        yield registry


@dataclass(frozen=True)
class Ask:
    """One way to name a repository at the mirror, with the Authorization a client would send."""

    who: str
    path: str  # /v2/<name> as the client writes it
    query: str  # "" or "ns=REGISTRY"
    authorization: str | None


async def relay_token(s: aiohttp.ClientSession, mirror: str, name: str, authorization: str | None) -> str | None:
    headers = {"Authorization": authorization} if authorization else {}
    params = {"service": "p2pdist-mirror", "scope": f"repository:{name}:pull"}
    async with s.get(f"http://{mirror}/p2pdist/token", params=params, headers=headers) as r:
        if r.status != 200:
            return None
        body = await r.json()
        return body.get("token") or body.get("access_token")


async def issued(s: aiohttp.ClientSession, mirror: str, name: str, authorization: str | None) -> str:
    """A relay token that must be issued (with whatever rights its holder has): a refusal here would turn
    the ask that uses it into an anonymous one, and a leak test of that identity into a no-op."""
    token = await relay_token(s, mirror, name, authorization)
    assert token is not None, f"the relay refused a token for {name}"
    return token


def upstream_token(registry: Registry, repo: str, user: str | None) -> str:
    """A token straight from the token service, as containerd gets one (it sees the upstream's challenge)."""
    assert registry.issuer is not None
    query = urllib.parse.urlencode({"service": registry.issuer.service, "scope": f"repository:{repo}:pull"})
    request = urllib.request.Request(f"{registry.issuer.realm}?{query}")
    if user is not None:
        request.add_header("Authorization", basic_header(user, USERS[user]))
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())["token"]


def bearer(token: str | None) -> str | None:
    return f"Bearer {token}" if token else None


async def outsiders(s: aiohttp.ClientSession, mirror: str, hub: Registry, second: Registry) -> list[Ask]:
    """Every identity x every repository it may name, except alice's own way to private/app."""
    hp, sp = path_prefix(hub.host), path_prefix(second.host)
    asks: list[Ask] = []
    # containers/image and Docker style: a path prefix, tokens from the mirror's relay.
    for name in (f"{hp}/{PUBLIC}", f"{hp}/{OTHER}", f"{hp}/{PRIVATE}", f"{sp}/{PUBLIC}", f"{sp}/{PRIVATE}"):
        path = f"/v2/{name}"
        asks.append(Ask("anonymous, no token", path, "", None))
        asks.append(Ask("anonymous token", path, "", bearer(await issued(s, mirror, name, None))))
        asks.append(Ask("bob", path, "", bearer(await issued(s, mirror, name, basic_header("bob", "bob-pw")))))
        wrong = basic_header("alice", "wrong")
        assert await relay_token(s, mirror, name, wrong) is None or name.startswith(sp)  # the hub says no
        asks.append(Ask("alice, wrong password", path, "", wrong))
        alice_public = await issued(s, mirror, f"{hp}/{PUBLIC}", basic_header("alice", "alice-pw"))
        asks.append(Ask("alice's token for public/app", path, "", bearer(alice_public)))
        if name.startswith(sp):
            asks.append(Ask("alice under another registry", path, "",
                            bearer(await issued(s, mirror, name, basic_header("alice", "alice-pw")))))
    # containerd style: ?ns=, tokens from the hub's token service.
    for repo in (PUBLIC, OTHER, PRIVATE):
        path, query = f"/v2/{repo}", f"ns={hub.host}"
        asks.append(Ask("containerd, anonymous", path, query, None))
        asks.append(Ask("containerd, anonymous token for public/app", path, query,
                        bearer(upstream_token(hub, PUBLIC, None))))
        asks.append(Ask("containerd, bob's token for other/app", path, query,
                        bearer(upstream_token(hub, OTHER, "bob"))))
        asks.append(Ask("containerd, alice's token for public/app", path, query,
                        bearer(upstream_token(hub, PUBLIC, "alice"))))
    asks.append(Ask("containerd, another registry", f"/v2/{PRIVATE}", f"ns={second.host}", None))
    return asks


async def assert_nothing_served(s: aiohttp.ClientSession, mirror: str, asks: list[Ask], private: OciImage,
                                secrets: list[str]) -> None:
    for ask in asks:
        headers = {"Authorization": ask.authorization} if ask.authorization else {}
        targets = [f"blobs/{d}" for d in secrets] + [f"manifests/{private.manifest_digest}"]
        for target in targets:
            url = f"http://{mirror}{ask.path}/{target}" + (f"?{ask.query}" if ask.query else "")
            for method, extra in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-99"})):
                async with s.request(method, url, headers={**headers, **extra, "Accept": OCI_MANIFEST}) as r:
                    body = await r.read()
                    what = f"{ask.who}: {method} {ask.path}/{target[:20]}… {extra} -> {r.status}"
                    assert r.status not in (200, 206), what
                    assert r.status != 500, what
                    if body:
                        assert json.loads(body)["errors"], what  # an OCI error, not content


async def test_private_blobs_and_manifests_reach_no_one_else(tmp_path: Path, hub: Registry, second: Registry,
                                                             images: tuple[OciImage, OciImage]) -> None:
    _, private = images
    secrets = private_only(images)
    assert secrets, "the private image must have layers of its own"
    agent = AgentProc(tmp_path, "leaky", NO_TRACKER, upstreams=[f"http://{hub.host}", f"http://{second.host}"],
                      mirror=True).start()
    name = f"{path_prefix(hub.host)}/{PRIVATE}"
    try:
        async with aiohttp.ClientSession() as s:
            # alice pulls the private image through the mirror: every private blob is now cached.
            alice = bearer(await relay_token(s, agent.mirror, name, basic_header("alice", "alice-pw")))
            assert alice is not None
            own = {"Authorization": alice}

            async def control() -> None:
                async with s.get(f"http://{agent.mirror}/v2/{name}/manifests/{private.manifest_digest}",
                                 headers={**own, "Accept": OCI_MANIFEST}) as r:
                    assert r.status == 200 and await r.read() == private.manifest
                for digest in secrets:
                    async with s.get(f"http://{agent.mirror}/v2/{name}/blobs/{digest}", headers=own) as r:
                        assert r.status == 200
                        assert await r.read() == private.blob_path(digest).read_bytes()

            async with s.get(f"http://{agent.mirror}/v2/{name}/manifests/{private.tag}",
                             headers={**own, "Accept": OCI_MANIFEST}) as r:
                assert r.status == 200
            await control()
            asks = await outsiders(s, agent.mirror, hub, second)
            await assert_nothing_served(s, agent.mirror, asks, private, secrets)

            hub.stop()
            await control()  # alice's own pull still works from the cache, within the window
            await assert_nothing_served(s, agent.mirror, asks, private, secrets)
        metrics = agent.metrics()
    finally:
        agent.stop()
    assert asks and secrets  # the checks above ran over something
    # Operators see the refusals: the registry's 404s (unlinked blobs) and the checks while it was down.
    assert metrics['p2pdist_mirror_upstream_checks_total{result="404"}'] > 0
    assert metrics['p2pdist_mirror_upstream_checks_total{result="unreachable"}'] > 0
    assert metrics['p2pdist_mirror_responses_total{endpoint="blob",status="200"}'] >= 2 * len(secrets)


async def test_robot_credentials_serve_clients_that_send_none(tmp_path: Path, hub: Registry,
                                                              images: tuple[OciImage, OciImage]) -> None:
    """[[upstream]] username/password (a robot account): a client without credentials (CRI-O with
    pull secrets sends them to the registry, never to a mirror) still gets the private image."""
    _, private = images
    config = tmp_path / "robot.toml"
    config.write_text(f'[[upstream]]\nregistry = "{hub.host}"\nplain_http = true\n'
                      'username = "alice"\npassword = "alice-pw"\n')
    robot = AgentProc(tmp_path, "robot", NO_TRACKER, mirror=True, extra_env={"P2PDIST_CONFIG": str(config)}).start()
    plain = AgentProc(tmp_path, "plain", NO_TRACKER, upstreams=[f"http://{hub.host}"], mirror=True).start()
    name = f"{path_prefix(hub.host)}/{PRIVATE}"
    layer = max(private.layers, key=lambda layer: layer.size)
    try:
        async with aiohttp.ClientSession() as s:
            assert hub.issuer is not None
            tokens = len(hub.issuer.token_requests())
            token = await relay_token(s, robot.mirror, name, None)
            # A mirror token: the robot's credentials and upstream tokens stay inside the agent.
            assert token is not None and token.startswith("p2pdist.")
            async with s.get(f"http://{robot.mirror}/v2/{name}/blobs/{layer.digest}",
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                assert await r.read() == private.blob_path(layer.digest).read_bytes()
            assert any(r.user == "alice" for r in hub.issuer.token_requests()[tokens:])  # the robot asked
            # The same anonymous client at a mirror without the robot: refused.
            token = await issued(s, plain.mirror, name, None)
            async with s.get(f"http://{plain.mirror}/v2/{name}/blobs/{layer.digest}",
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 401
                assert "p2pdist/token" in r.headers["WWW-Authenticate"]
                assert len(await r.read()) < 1024
    finally:
        robot.stop()
        plain.stop()
