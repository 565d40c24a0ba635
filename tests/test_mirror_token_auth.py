"""Token auth through the mirror, the way Docker Hub, ghcr.io and quay.io do it (issue 14).

The origin is a real docker-registry with ``auth: token`` and the test token server
(tests/support/registry.py): alice may pull and push everything, bob may pull ``other/*`` only, and
anonymous may pull ``public/*`` only, with a token, as on Docker Hub. Two images share the busybox
layer: one in ``public/app`` and ``other/app``, the other in ``private/app``.

Real clients pull public images anonymously and private ones with credentials through the agents'
mirror; the registry's access log proves the clients fetched nothing from it themselves (every
request came from an agent), and a second node takes no blob bytes from the origin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pdist.core.names import path_prefix
from tests.support.clients import Containerd, Dockerd, NetNS, Podman, Skopeo, write_authfile
from tests.support.hub import ALICE, PRIVATE, PUBLIC, RIGHTS, private_only, start_hub
from tests.support.images import OciImage, build_image
from tests.support.pulls import (
    AGENT_UA,
    Cluster,
    assert_second_pull_from_peers,
    blob_gets,
    describe,
    egress,
    mark,
    since,
)
from tests.support.registry import Registry, RequestRecord

pytestmark = pytest.mark.integration

TAG = "1"
PULL_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[OciImage, OciImage]:
    root = tmp_path_factory.mktemp("token-images")
    sizes = (1 << 20, 8 << 20)
    return (build_image(root / "public", tag=TAG, random_sizes=sizes),
            build_image(root / "private", tag=TAG, random_sizes=sizes))


@pytest.fixture
def hub(tmp_path: Path, images: tuple[OciImage, OciImage]) -> Iterator[Registry]:
    registry = start_hub(tmp_path / "hub", images)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def cluster(tmp_path: Path, hub: Registry) -> Iterator[Cluster]:
    c = Cluster(tmp_path, hub)
    try:
        yield c
    finally:
        c.close()


def assert_all_by_agents(records: list[RequestRecord], new_layers: list[str]) -> None:
    """The client never reached the registry; the agents fetched every layer not already cached."""
    direct = [r for r in records if AGENT_UA not in r.user_agent]
    assert not direct, f"the client went to the registry directly:\n{describe(direct)}"
    for digest in new_layers:
        assert blob_gets(records, digest), f"no agent GET of {digest}:\n{describe(records)}"


def assert_pull_by_node(hub: Registry, node: str, image: OciImage, images: tuple[OciImage, OciImage], start: int,
                        egress_before: dict[str, int]) -> None:
    """Node a: the agents fetched every layer not already cached (the public image's are, for the
    private one: they share the busybox layer). Node b: no blob bytes from the origin at all."""
    records = since(hub, start)
    if node == "a":
        assert_all_by_agents(records, image.blob_digests if image is images[0] else private_only(images))
    else:
        assert_second_pull_from_peers(hub, records, image, egress_before)


def assert_relay_asked_for_upstream_scopes(hub: Registry, since_index: int, user: str | None, repo: str) -> None:
    """The token service saw the upstream's own scope (no mirror prefix) for this user."""
    assert hub.issuer is not None
    requests = hub.issuer.token_requests()[since_index:]
    prefixed = [r for r in requests if any("127.0.0.1-" in s for s in r.scopes)]
    assert not prefixed, f"a mirror-prefixed scope reached the token service: {prefixed}"
    assert any(r.user == user and f"repository:{repo}:pull" in r.scopes and r.status == 200 for r in requests), \
        f"no token for {user} and {repo}: {requests}"


def token_mark(hub: Registry) -> int:
    assert hub.issuer is not None
    return len(hub.issuer.token_requests())


# --- clients ------------------------------------------------------------------------------------


def test_skopeo_public_anonymously_and_private_with_credentials(tmp_path: Path, cluster: Cluster, hub: Registry,
                                                                images: tuple[OciImage, OciImage]) -> None:
    public, private = images
    secret_layers = private_only(images)
    for node in ("a", "b"):
        agent = cluster.agent(f"node-{node}")
        skopeo = Skopeo(tmp_path / f"skopeo-{node}", agent.mirror, [hub.host])
        out = tmp_path / f"out-{node}"
        # Without credentials a private image is refused, through the mirror and at the registry.
        before = egress(hub, private)
        refused = skopeo.copy(f"{hub.host}/{PRIVATE}:{TAG}", out, check=False, timeout=PULL_TIMEOUT)
        assert refused.refused_auth, refused.stderr[-2000:]
        assert egress(hub, private) == before

        start, tokens = mark(hub), token_mark(hub)
        with cluster.diagnosed():
            skopeo.copy(f"{hub.host}/{PUBLIC}:{TAG}", out, timeout=PULL_TIMEOUT)
        public.verify_dir(out)
        assert_relay_asked_for_upstream_scopes(hub, tokens, None, PUBLIC)
        if node == "a":
            assert_all_by_agents(since(hub, start), public.blob_digests)

        # Credentials for the mirror's host (containers/image sends --creds to the registry only).
        authfile = write_authfile(tmp_path / f"auth-{node}.json", {agent.mirror: ALICE})
        before, start, tokens = egress(hub, private), mark(hub), token_mark(hub)
        with cluster.diagnosed():
            skopeo.copy(f"{hub.host}/{PRIVATE}:{TAG}", out, args=("--src-authfile", str(authfile)),
                        timeout=PULL_TIMEOUT)
        private.verify_dir(out)
        assert_relay_asked_for_upstream_scopes(hub, tokens, "alice", PRIVATE)
        records = since(hub, start)
        if node == "a":
            assert_all_by_agents(records, secret_layers)
        else:
            assert_second_pull_from_peers(hub, records, private, before)


def test_podman_pulls_and_runs_public_and_private(tmp_path: Path, cluster: Cluster, hub: Registry,
                                                  images: tuple[OciImage, OciImage]) -> None:
    public, private = images
    pods: list[Podman] = []
    try:
        for node in ("a", "b"):
            agent = cluster.agent(f"node-{node}")
            podman = Podman(tmp_path / f"podman-{node}", agent.mirror, [hub.host])
            pods.append(podman)
            authfile = tmp_path / f"auth-{node}.json"
            if node == "a":
                write_authfile(authfile, {agent.mirror: ALICE})
            else:  # as the README says: log in to the mirror; the relay checks the password upstream
                wrong = podman.login(agent.mirror, "alice", "wrong", authfile, check=False)
                assert wrong.refused_auth, wrong.stderr[-2000:]
                podman.login(agent.mirror, *ALICE, authfile)
            for image, repo, args in ((public, PUBLIC, ()), (private, PRIVATE, ("--authfile", str(authfile)))):
                ref = f"{hub.host}/{repo}:{TAG}"
                before, start = egress(hub, image), mark(hub)
                with cluster.diagnosed():
                    podman.pull(ref, args=args, timeout=PULL_TIMEOUT)
                assert podman.image_digest(ref) == image.manifest_digest
                assert_pull_by_node(hub, node, image, images, start, before)
                out = podman.run_container(ref, "sh", "-c", "echo hi")
                assert out.stdout.strip() == "hi", out
    finally:
        for podman in pods:
            podman.stop()


def test_containerd_pulls_public_and_private_with_its_own_token_requests(
        tmp_path: Path, cluster: Cluster, hub: Registry, images: tuple[OciImage, OciImage]) -> None:
    """containerd names the registry (?ns=), gets the upstream's own challenge and asks the token
    service itself (a POST first, as containerd does); the mirror forwards its token."""
    public, private = images
    daemons: list[Containerd] = []
    try:
        for node in ("a", "b"):
            agent = cluster.agent(f"node-{node}")
            ctr = Containerd(tmp_path / f"containerd-{node}", agent.mirror, hub.host)
            daemons.append(ctr)
            ctr.start()
            for image, repo, user in ((public, PUBLIC, None), (private, PRIVATE, ":".join(ALICE))):
                before, start, tokens = egress(hub, image), mark(hub), token_mark(hub)
                with cluster.diagnosed():
                    out = ctr.pull(f"{hub.host}/{repo}:{TAG}", user=user, timeout=PULL_TIMEOUT)
                assert "unpacking linux/amd64" in out.stdout, out.stdout[-2000:]
                run = ctr.run_container(f"{hub.host}/{repo}:{TAG}", "sh", "-c", "echo hi")
                assert run.stdout.strip() == "hi", run
                assert_relay_asked_for_upstream_scopes(hub, tokens, user and "alice", repo)
                assert hub.issuer is not None
                if user:  # containerd POSTs (OAuth2 password grant) when it has credentials
                    assert any(r.method == "POST" for r in hub.issuer.token_requests()[tokens:])
                assert_pull_by_node(hub, node, image, images, start, before)
    finally:
        for ctr in daemons:
            ctr.stop()


def test_dockerd_registry_mirrors_with_a_hub_that_wants_tokens_even_anonymously(
        tmp_path: Path, images: tuple[OciImage, OciImage]) -> None:
    """dockerd's registry-mirrors apply to docker.io only: the token registry stands in for docker.io,
    in a namespace with nothing but lo, so a pull that slipped past the mirror could reach nothing."""
    public, private = images
    netns = NetNS().create()
    try:
        with netns.entered(), contextlib.ExitStack() as stack:
            assert netns.links() == ["lo"]
            hub = start_hub(tmp_path / "hub", images)
            stack.callback(hub.stop)
            cluster = Cluster(tmp_path, hub, upstreams=[], env={"P2PDIST_UPSTREAMS": f"http://docker.io={hub.host}"})
            stack.callback(cluster.close)
            for node in ("a", "b"):
                agent = cluster.agent(f"node-{node}")
                dockerd = Dockerd(tmp_path / f"dockerd-{node}", agent.mirror, netns)
                stack.callback(dockerd.stop)
                dockerd.start()
                for image, repo, credentials in ((public, PUBLIC, None), (private, PRIVATE, ALICE)):
                    before, start = egress(hub, image), mark(hub)
                    with cluster.diagnosed():
                        out = dockerd.pull(f"{repo}:{TAG}", credentials=credentials, timeout=PULL_TIMEOUT)
                    assert f"Digest: {image.manifest_digest}" in out.stdout, out.stdout
                    assert_pull_by_node(hub, node, image, images, start, before)
                run = dockerd.run_container(f"{PRIVATE}:{TAG}", "sh", "-c", "echo hi")
                assert run.stdout.strip() == "hi", run
    finally:
        netns.delete()


def test_two_registries_same_repository_each_pull_gets_its_own_image(
        tmp_path: Path, hub: Registry, images: tuple[OciImage, OciImage]) -> None:
    """One mirror in front of two registries holding different images under the same name: podman,
    which sends no ?ns=, gets each registry's own image (the mirror location names the registry)."""
    public, private = images
    with Registry(workdir=tmp_path / "second") as second:
        private.push(second.host, PUBLIC)  # same name, other content
        cluster = Cluster(tmp_path, hub, upstreams=[f"http://{hub.host}", f"http://{second.host}"])
        podman = None
        try:
            agent = cluster.agent("node-a")
            podman = Podman(tmp_path / "podman", agent.mirror, [hub.host, second.host])
            for registry, image in ((hub, public), (second, private), (hub, public)):
                ref = f"{registry.host}/{PUBLIC}:{TAG}"
                start = mark(registry)
                with cluster.diagnosed():
                    podman.pull(ref, timeout=PULL_TIMEOUT)
                assert podman.image_digest(ref) == image.manifest_digest
                direct = [r for r in since(registry, start) if AGENT_UA not in r.user_agent]
                assert not direct, describe(direct)
            assert any(blob_gets(second.requests(), d) for d in private_only(images))
        finally:
            if podman is not None:
                podman.stop()
            cluster.close()


def test_podman_with_other_credentials_per_registry_behind_one_mirror(
        tmp_path: Path, hub: Registry, images: tuple[OciImage, OciImage]) -> None:
    """Two token registries behind one mirror, where alice has another password on each: an
    auth-file entry per mirror location (``MIRROR/<registry prefix>``, what ``podman login`` writes
    for a namespace) sends each registry its own credentials, so both private pulls succeed."""
    private = images[1]
    second = Registry(auth="token", users={"alice": "second-pw"}, rights=RIGHTS,
                      workdir=tmp_path / "second").start()
    cluster = podman = None
    try:
        private.push(second.host, PRIVATE, creds="alice:second-pw")
        cluster = Cluster(tmp_path, hub, upstreams=[f"http://{hub.host}", f"http://{second.host}"])
        agent = cluster.agent("node-a")
        podman = Podman(tmp_path / "podman", agent.mirror, [hub.host, second.host])
        authfile = write_authfile(tmp_path / "auth.json", {
            f"{agent.mirror}/{path_prefix(hub.host)}": ALICE,
            f"{agent.mirror}/{path_prefix(second.host)}": ("alice", "second-pw"),
        })
        for registry in (hub, second):
            ref = f"{registry.host}/{PRIVATE}:{TAG}"
            start = mark(registry)
            with cluster.diagnosed():
                podman.pull(ref, args=("--authfile", str(authfile)), timeout=PULL_TIMEOUT)
            assert podman.image_digest(ref) == private.manifest_digest
            direct = [r for r in since(registry, start) if AGENT_UA not in r.user_agent]
            assert not direct, describe(direct)
            assert registry.issuer is not None
            assert any(r.user == "alice" and r.status == 200 for r in registry.issuer.token_requests())
        # The control: one entry for the whole mirror carries hub's password to the second registry too.
        podman.stop()
        podman = Podman(tmp_path / "podman-2", agent.mirror, [hub.host, second.host])
        shared = write_authfile(tmp_path / "shared.json", {agent.mirror: ALICE})
        refused = podman.pull(f"{second.host}/{PRIVATE}:{TAG}", args=("--authfile", str(shared)),
                              timeout=PULL_TIMEOUT, check=False)
        assert refused.returncode != 0 and refused.refused_auth, refused.stderr[-2000:]
    finally:
        if podman is not None:
            podman.stop()
        if cluster is not None:
            cluster.close()
        second.stop()


def test_public_images_stay_pullable_while_the_token_registry_is_down(tmp_path: Path, cluster: Cluster,
                                                                      hub: Registry,
                                                                      images: tuple[OciImage, OciImage]) -> None:
    """Registry and token service down: the mirror answers its token relay itself, and a public
    image the upstream confirmed for anonymous readers still comes from the cache, by digest and by
    tag (within tag_ttl). A private one needs the upstream to vouch for the client: refused."""
    public, private = images
    agent = cluster.agent("node-a")
    skopeo = Skopeo(tmp_path / "skopeo", agent.mirror, [hub.host])
    authfile = write_authfile(tmp_path / "auth.json", {agent.mirror: ALICE})
    out = tmp_path / "out"
    with cluster.diagnosed():
        skopeo.copy(f"{hub.host}/{PUBLIC}:{TAG}", out, timeout=PULL_TIMEOUT)
        skopeo.copy(f"{hub.host}/{PRIVATE}:{TAG}", out, args=("--src-authfile", str(authfile)), timeout=PULL_TIMEOUT)
    hub.stop()
    for ref in (f"{hub.host}/{PUBLIC}@{public.manifest_digest}", f"{hub.host}/{PUBLIC}:{TAG}"):
        skopeo.copy(ref, out, timeout=PULL_TIMEOUT)
        public.verify_dir(out)
    refused = skopeo.copy(f"{hub.host}/{PRIVATE}@{private.manifest_digest}", out, check=False,
                          args=("--src-authfile", str(authfile)), timeout=PULL_TIMEOUT)
    assert refused.refused_auth, refused.stderr[-2000:]


def test_podman_and_skopeo_through_a_basic_auth_registry(tmp_path: Path, images: tuple[OciImage, OciImage]) -> None:
    """A registry with htpasswd (no token service): the relay checks the client's basic credentials
    against it and answers with a mirror token that stands for them on this node; a wrong password
    gets no token, and so no image."""
    _, private = images
    with Registry(auth="basic", users={"alice": "alice-pw"}, workdir=tmp_path / "basic") as registry:
        private.push(registry.host, PRIVATE, creds=":".join(ALICE))
        cluster = Cluster(tmp_path, registry)
        podman = None
        try:
            agent = cluster.agent("node-a")
            ref = f"{registry.host}/{PRIVATE}:{TAG}"
            skopeo = Skopeo(tmp_path / "skopeo", agent.mirror, [registry.host])
            wrong = write_authfile(tmp_path / "wrong.json", {agent.mirror: ("alice", "nope")})
            before = egress(registry, private)
            refused = skopeo.copy(ref, tmp_path / "out", check=False, args=("--src-authfile", str(wrong)),
                                  timeout=PULL_TIMEOUT)
            assert refused.refused_auth, refused.stderr[-2000:]
            assert egress(registry, private) == before
            authfile = write_authfile(tmp_path / "auth.json", {agent.mirror: ALICE})
            podman = Podman(tmp_path / "podman", agent.mirror, [registry.host])
            start = mark(registry)
            with cluster.diagnosed():
                podman.pull(ref, args=("--authfile", str(authfile)), timeout=PULL_TIMEOUT)
            assert podman.image_digest(ref) == private.manifest_digest
            assert_all_by_agents(since(registry, start), private.blob_digests)
            out = podman.run_container(ref, "sh", "-c", "echo hi")
            assert out.stdout.strip() == "hi", out
        finally:
            if podman is not None:
                podman.stop()
            cluster.close()
