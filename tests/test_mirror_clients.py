"""Real clients pull a multi-layer image through the agents' registry mirror (issue 3, must-show 1, 3, 5).

One image, built once per session: a busybox layer, a 3 MiB and a 64 MiB random layer (see
tests/support/images.py). Each test starts a real docker-registry, a tracker and agents with the
mirror on, and pulls with skopeo, containerd (ctr, with unpack), podman or dockerd (in a network
namespace with only ``lo``). It checks, from the registry's own access log:

- every request the pull caused came from an agent (aiohttp's user agent), none from the client;
- every layer blob was fetched by an agent;
- a second node (its own agent, mirror and client store) pulls the same image with no blob bytes
  from the registry: the layers came from the first agent.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pdist.core.wire import Announce, AnnounceReply, decode, encode
from tests.support.clients import Containerd, Dockerd, NetNS, Podman, Skopeo
from tests.support.identity import Caller
from tests.support.images import OciImage, build_image, file_sha256
from tests.support.procs import AgentProc
from tests.support.pulls import (
    Cluster,
    assert_pulled_by_agents,
    assert_second_pull_from_peers,
    describe,
    egress,
    mark,
    since,
    wait_mirror,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

REPO = "test/p2ptest"
DOCKER_REPO = "library/p2ptest"  # a docker.io name: dockerd's registry-mirrors apply to no other
TAG = "1"
PULL_TIMEOUT = 60.0  # a pull takes ~3 s here; a stuck one should fail fast


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    return build_image(tmp_path_factory.mktemp("image") / "layout", tag=TAG)


@pytest.fixture
def cluster(tmp_path: Path, registry: Registry, image: OciImage) -> Iterator[Cluster]:
    image.push(registry.host, REPO)
    c = Cluster(tmp_path, registry)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def netns() -> Iterator[NetNS]:
    ns = NetNS().create()
    try:
        yield ns
    finally:
        ns.delete()


# --- must-show 1: each client, two nodes -------------------------------------------------------------


def test_skopeo_pulls_through_mirror(tmp_path: Path, cluster: Cluster, image: OciImage) -> None:
    registry = cluster.registry
    ref = f"{registry.host}/{REPO}:{TAG}"
    first, second = cluster.agent("node-a"), cluster.agent("node-b")

    start = mark(registry)
    skopeo_a = Skopeo(tmp_path / "skopeo-a", first.mirror, [registry.host])
    with cluster.diagnosed():
        skopeo_a.copy(ref, tmp_path / "out-a", timeout=PULL_TIMEOUT)
    image.verify_dir(tmp_path / "out-a")
    assert_pulled_by_agents(since(registry, start), image)

    before, start = egress(registry, image), mark(registry)
    skopeo_b = Skopeo(tmp_path / "skopeo-b", second.mirror, [registry.host])
    with cluster.diagnosed():
        skopeo_b.copy(ref, tmp_path / "out-b", timeout=PULL_TIMEOUT)
    image.verify_dir(tmp_path / "out-b")
    assert_second_pull_from_peers(registry, since(registry, start), image, before)


def test_containerd_pulls_and_unpacks_through_mirror(tmp_path: Path, cluster: Cluster, image: OciImage) -> None:
    registry = cluster.registry
    ref = f"{registry.host}/{REPO}:{TAG}"
    first, second = cluster.agent("node-a"), cluster.agent("node-b")
    daemons: list[Containerd] = []
    try:
        for node, agent in (("a", first), ("b", second)):
            ctr = Containerd(tmp_path / f"containerd-{node}", agent.mirror, registry.host)
            daemons.append(ctr)
            ctr.start()
            before, start = egress(registry, image), mark(registry)
            with cluster.diagnosed():
                out = ctr.pull(ref, timeout=PULL_TIMEOUT)
            assert "unpacking linux/amd64" in out.stdout, out.stdout[-2000:]
            # The unpacked rootfs holds every layer's files, byte for byte.
            with ctr.mounted(ref) as root:
                assert (root / "bin" / "busybox").stat().st_size > 0
                assert (root / "bin" / "sh").is_symlink()
                sizes = sorted((root / "data" / name).stat().st_size for name in ("random-1.bin", "random-2.bin"))
                assert sizes[-1] >= 64 << 20
            records = since(registry, start)
            if node == "a":
                assert_pulled_by_agents(records, image)
                # containerd resolves the tag with HEAD and fetches the manifest by digest, both via ?ns=.
                assert any(r.path.endswith(f"/manifests/{image.manifest_digest}") for r in records), describe(records)
            else:
                assert_second_pull_from_peers(registry, records, image, before)
    finally:
        for ctr in daemons:
            ctr.stop()


def test_podman_pulls_and_runs_through_mirror(tmp_path: Path, cluster: Cluster, image: OciImage) -> None:
    registry = cluster.registry
    ref = f"{registry.host}/{REPO}:{TAG}"
    first, second = cluster.agent("node-a"), cluster.agent("node-b")
    pods: list[Podman] = []
    try:
        for node, agent in (("a", first), ("b", second)):
            podman = Podman(tmp_path / f"podman-{node}", agent.mirror, [registry.host])
            pods.append(podman)
            before, start = egress(registry, image), mark(registry)
            with cluster.diagnosed():
                podman.pull(ref, timeout=PULL_TIMEOUT)
            assert podman.image_digest(ref) == image.manifest_digest
            records = since(registry, start)
            if node == "a":
                assert_pulled_by_agents(records, image)
            else:
                assert_second_pull_from_peers(registry, records, image, before)
            out = podman.run_container(ref, "sh", "-c", "echo hi")
            assert out.stdout.strip() == "hi", out
    finally:
        for podman in pods:
            podman.stop()


def test_dockerd_pulls_through_registry_mirrors_in_netns(tmp_path: Path, netns: NetNS, image: OciImage) -> None:
    """dockerd uses registry-mirrors for docker.io names only: the mirror maps docker.io to the local
    registry, and the namespace has nothing but lo, so a pull that bypassed the mirror would fail."""
    with netns.entered(), contextlib.ExitStack() as stack:
        assert netns.links() == ["lo"]
        registry = stack.enter_context(Registry(workdir=tmp_path / "registry"))
        image.push(registry.host, DOCKER_REPO)
        # docker.io -> the local plain-http registry; docker.io is the mirror's default upstream.
        cluster = Cluster(tmp_path, registry, upstreams=[], env={"P2PDIST_UPSTREAMS": f"http://docker.io={registry.host}"})
        stack.callback(cluster.close)
        ref = f"{DOCKER_REPO}:{TAG}"
        for node in ("a", "b"):
            agent = cluster.agent(f"node-{node}")
            dockerd = Dockerd(tmp_path / f"dockerd-{node}", agent.mirror, netns)
            stack.callback(dockerd.stop)
            dockerd.start()
            before, start = egress(registry, image), mark(registry)
            with cluster.diagnosed():
                out = dockerd.pull(ref, timeout=PULL_TIMEOUT)
            assert f"Digest: {image.manifest_digest}" in out.stdout, out.stdout
            records = since(registry, start)
            if node == "a":
                assert_pulled_by_agents(records, image)
            else:
                assert_second_pull_from_peers(registry, records, image, before)
            run = dockerd.run_container(ref, "sh", "-c", "echo hi")
            assert run.stdout.strip() == "hi", run


# --- sizes come from the manifest the client pulled ------------------------------------------------


def test_a_cold_pull_asks_no_blob_size_of_the_registry(tmp_path: Path, cluster: Cluster, image: OciImage) -> None:
    """The manifest fetched for the client declares every blob's size: the agents start downloading
    without a HEAD of each blob (one upstream round trip less per blob, a WAN round trip on a node)."""
    registry = cluster.registry
    agent = cluster.agent("node-a")
    start = mark(registry)
    with cluster.diagnosed():
        Skopeo(tmp_path / "skopeo", agent.mirror, [registry.host]).copy(
            f"{registry.host}/{REPO}:{TAG}", tmp_path / "out", timeout=PULL_TIMEOUT)
    image.verify_dir(tmp_path / "out")
    records = since(registry, start)
    assert_pulled_by_agents(records, image)
    heads = [r for r in records if r.method == "HEAD" and "/blobs/" in r.path]
    assert not heads, f"blob sizes were asked of the registry:\n{describe(heads)}"


def test_a_forged_size_at_the_tracker_does_not_break_a_mirror_pull(tmp_path: Path, cluster: Cluster,
                                                                   image: OciImage) -> None:
    """A node with a valid credential announces the big layer with a wrong size first. The mirror's
    download trusts the size from the manifest (the root of trust), and the tracker keys swarms by
    digest and size: the pull joins the real swarm, the forged one stays the rogue's."""
    registry = cluster.registry
    big = image.big_layer
    forged = Announce(node="rogue", addr="127.0.0.1:9", blob=big.digest, size=big.size + 4096, want_leases=1)
    body = encode(forged)
    request = urllib.request.Request(cluster.tracker.url + "/v1/announce", data=body, method="POST",
                                     headers=Caller(cluster.tracker.token, "rogue").tracker(body))
    with urllib.request.urlopen(request, timeout=10) as resp:
        reply = decode(resp.read(), expect=(AnnounceReply,))
    assert reply.size == big.size + 4096  # a swarm of that size, the rogue's own
    agent = cluster.agent("node-a")
    with cluster.diagnosed():
        Skopeo(tmp_path / "skopeo", agent.mirror, [registry.host]).copy(
            f"{registry.host}/{REPO}:{TAG}", tmp_path / "out", timeout=PULL_TIMEOUT)
    image.verify_dir(tmp_path / "out")
    metrics = agent.metrics()
    assert metrics.get('p2pdist_origin_fallbacks_total{reason="size"}') is None  # no fallback needed
    assert metrics.get('p2pdist_origin_fallbacks_total{reason="tracker"}') is None


# --- must-show 3: upstream down --------------------------------------------------------------------


def test_pull_by_digest_with_upstream_down(tmp_path: Path, cluster: Cluster, image: OciImage) -> None:
    registry = cluster.registry
    agent = cluster.agent("node-a")
    skopeo = Skopeo(tmp_path / "skopeo", agent.mirror, [registry.host])
    with cluster.diagnosed():
        skopeo.copy(f"{registry.host}/{REPO}:{TAG}", tmp_path / "warm", timeout=PULL_TIMEOUT)
    registry.stop()

    by_digest = f"{registry.host}/{REPO}@{image.manifest_digest}"
    skopeo.copy(by_digest, tmp_path / "cold-skopeo", timeout=PULL_TIMEOUT)
    image.verify_dir(tmp_path / "cold-skopeo")

    # containerd too: HEAD and GET of the manifest by digest with ?ns=, blobs from the agent's store.
    ctr = Containerd(tmp_path / "containerd", agent.mirror, registry.host)
    try:
        ctr.start()
        out = ctr.pull(by_digest, timeout=PULL_TIMEOUT)
        assert "unpacking linux/amd64" in out.stdout, out.stdout[-2000:]
    finally:
        ctr.stop()


# --- must-show 5: agent killed mid-pull -----------------------------------------------------------


def _download_progress(agent: AgentProc, digest: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(agent.status().get("downloads", {}).get(digest, {}).get("have", 0))
    return 0


def test_agent_killed_mid_pull_then_retry_succeeds(tmp_path: Path, cluster: Cluster, image: OciImage) -> None:
    registry = cluster.registry
    big = image.big_layer
    # Slowed to ~24 MB/s so the kill lands inside the 64 MiB layer, not after it.
    agent = cluster.agent("node-a", P2PDIST_LIMITS_DOWNLOAD_RATE=str(24_000_000))
    skopeo = Skopeo(tmp_path / "skopeo", agent.mirror, [registry.host])
    ref = f"{registry.host}/{REPO}:{TAG}"

    pull = skopeo.popen_copy(ref, tmp_path / "out")
    try:
        end = time.monotonic() + 60
        while _download_progress(agent, big.digest) < 16 << 20:
            assert pull.poll() is None, "the pull finished before the agent could be killed mid-layer"
            assert time.monotonic() < end, f"the 64 MiB layer never started: {agent.status()}"
            time.sleep(0.02)
        have = _download_progress(agent, big.digest)
        agent.kill9()
        assert have < big.size
        assert pull.wait(timeout=60) != 0, "skopeo reported success although the mirror died mid-blob"
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()

    # Whatever skopeo kept of the failed pull is verified or absent, never a short blob under a digest name.
    for path in (tmp_path / "out").glob("*"):
        if len(path.name) == 64:
            assert file_sha256(path) == path.name, f"{path} is a partial blob stored as complete"
    # Nothing unverified in the agent's store either.
    for path in (agent.data_dir / "blobs" / "sha256").glob("*"):
        if len(path.name) == 64:
            assert file_sha256(path) == path.name, f"{path} in the store does not match its digest"

    agent.env.pop("P2PDIST_LIMITS_DOWNLOAD_RATE")
    agent.start()
    wait_mirror(agent)
    with cluster.diagnosed():
        out = skopeo.copy(ref, tmp_path / "out", timeout=PULL_TIMEOUT)
    image.verify_dir(tmp_path / "out")
    # For the record (pytest -s): how much of the big layer the origin served in all, kill included.
    print(json.dumps({"killed_at": have, "big_layer": big.size, "origin_bytes_big_layer": registry.egress(big.digest),
                      "retry_seconds": round(out.seconds, 2)}))
