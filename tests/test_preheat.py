"""Preheat: picking an image's manifest for a platform, the tracker's job desk (in memory and on a
real Redis), and `p2pdist preheat` end to end: a multi-platform image in a real registry, a
tracker, agents that poll for orders and fetch what they were ordered to."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from p2pdist.core.image import ImageError, image_blobs, parse_platform, select_manifest
from tests.support.procs import ROOT, AgentProc, Tracker
from tests.support.redis import RedisServer
from tests.support.registry import Registry
from tracker.preheat import MemoryPreheat, PreheatError, RedisPreheat

TOKEN = "preheat-test-secret"
MiB = 1 << 20
D = "sha256:" + "a" * 64


def _index(*platforms: tuple[str, str, str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + c * 64, "size": 100,
         "platform": {"os": o, "architecture": a, **({"variant": v} if v else {})}}
        for c, (o, a, v) in zip("bcd", platforms, strict=False)]}).encode()


def test_the_platform_s_manifest_is_picked_from_an_index() -> None:
    body = _index(("linux", "amd64", ""), ("linux", "arm64", "v8"))
    assert str(select_manifest(body, parse_platform("linux/arm64")).digest) == "sha256:" + "c" * 64
    assert str(select_manifest(body, parse_platform("linux/arm64/v8")).digest) == "sha256:" + "c" * 64
    with pytest.raises(ImageError, match="no manifest for linux/s390x; it offers linux/amd64, linux/arm64/v8"):
        select_manifest(body, parse_platform("linux/s390x"))
    with pytest.raises(ImageError, match="OS/ARCH"):
        parse_platform("amd64")


def test_an_image_is_its_config_and_layers() -> None:
    manifest = json.dumps({"config": {"digest": D, "size": 5},
                           "layers": [{"digest": "sha256:" + "e" * 64, "size": 7}]}).encode()
    assert [(str(b.digest), b.size) for b in image_blobs(manifest)] == [(D, 5), ("sha256:" + "e" * 64, 7)]
    with pytest.raises(ImageError, match="an index"):
        image_blobs(_index(("linux", "amd64", "")))
    with pytest.raises(ImageError, match="size"):
        image_blobs(json.dumps({"config": {"digest": D, "size": -1}, "layers": []}).encode())


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_desk_orders_live_nodes_and_counts_their_reports(kind: str, redis_server: RedisServer) -> None:
    async def run() -> None:
        client = Redis.from_url(redis_server.url)
        desk = MemoryPreheat(poll=1.0) if kind == "memory" else RedisPreheat(client, f"desk{os.getpid()}:", poll=1.0)
        with pytest.raises(PreheatError, match="no agent has polled"):
            await desk.create([("r.example/app@" + D, 10)], 1, None, 100.0)
        for n in ("a", "b", "c"):
            assert await desk.poll(n, 100.0, [], []) == []
        await desk.poll("stale", 90.0, [], [])  # polled 10 s ago: past 3 poll intervals, not alive
        job = await desk.create([("r.example/app@" + D, 10)], None, 0.5, 100.5)
        assert len(job["nodes"]) == 2 and "stale" not in job["nodes"] and not job["finished"]
        picked, other = job["nodes"], ({"a", "b", "c"} - set(job["nodes"])).pop()
        assert await desk.poll(other, 101.0, [], []) == []
        orders = await desk.poll(picked[0], 101.0, [], [])
        assert [(o.job, o.ref, o.size) for o in orders] == [(job["job"], "r.example/app@" + D, 10)]
        assert await desk.poll(picked[0], 101.5, [], []) == []  # handed out once
        await desk.poll(picked[0], 102.0, [(job["job"], "r.example/app@" + D)], [])
        await desk.poll(other, 102.0, [(job["job"], "r.example/app@" + D)], [])  # not picked: not counted
        await desk.poll(picked[1], 102.0, [], [(job["job"], "r.example/app@" + D, "OriginError: 404")])
        progress = await desk.progress(job["job"])
        assert progress is not None and progress["finished"]
        (blob,) = progress["blobs"]
        assert blob["done"] == 1 and blob["failed"] == {picked[1]: "OriginError: 404"}
        assert await desk.progress("nope") is None
        # A report on a job that does not exist leaves nothing behind (no keys made up by a node).
        await desk.poll(picked[0], 103.0, [("made-up", "r.example/app@" + D)], [("made-up", "x", "y")])
        if kind == "redis":
            assert not await client.keys(f"desk{os.getpid()}:pre:*made-up*")
        await client.aclose()

    asyncio.run(run())


def test_preheat_spreads_one_platform_of_an_image_to_the_nodes_asked(tmp_path: Path, registry: Registry) -> None:
    amd64 = [os.urandom(3 * MiB), os.urandom(1000)]
    arm64 = [os.urandom(4 * MiB + 7), os.urandom(2000)]
    _, layers = registry.push_index("team/multi", "v1", {"amd64": amd64, "arm64": arm64})
    tracker = Tracker(tmp_path, TOKEN)
    tracker.env["P2PDIST_TRACKER_PREHEAT_POLL"] = "0.5"
    tracker.start()
    agents = [AgentProc(tmp_path, f"n{i}", tracker.url, TOKEN, upstreams=[f"http://{registry.host}"]).start()
              for i in range(3)]
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "P2PDIST_CLUSTER_TOKEN": TOKEN}
        done = subprocess.run(
            [sys.executable, "-m", "p2pdist", "preheat", f"{registry.host}/team/multi:v1", "--plain-http",
             "--nodes", "2", "--platform", "linux/arm64", "--tracker", tracker.url, "--timeout", "120", "--json"],
            env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr + "\n".join(a.output()[-1500:] for a in agents)
        final = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(final["nodes"]) == 2 and final["finished"]
        assert len(final["blobs"]) == 3  # arm64's config and two layers
        for agent in agents:
            stored = {p.name for p in (agent.data_dir / "store" / "blobs" / "sha256").glob("*")}
            has = {d.split(":")[1] for d in layers["arm64"]} <= stored
            assert has == (agent.name in final["nodes"]), f"{agent.name}: {stored}"
            assert not {d.split(":")[1] for d in layers["amd64"]} & stored  # the other platform: never
        # Each layer left the origin about once for the two nodes (plus an audit piece at most).
        big = layers["arm64"][0]
        assert registry.egress(big) <= len(arm64[0]) + 4 * MiB
        assert hashlib.sha256(arm64[0]).hexdigest() == big.split(":")[1]
        # Without the cluster secret the tracker takes no job, and the command says what to do.
        env.pop("P2PDIST_CLUSTER_TOKEN")
        refused = subprocess.run([sys.executable, "-m", "p2pdist", "preheat", f"{registry.host}/team/multi:v1",
                                  "--plain-http", "--tracker", tracker.url], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 2 and "P2PDIST_CLUSTER_TOKEN" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        for a in agents:
            a.stop()
        tracker.stop()


async def test_the_tracker_takes_jobs_from_operators_and_polls_from_nodes_only() -> None:
    import time

    import aiohttp
    from aiohttp.test_utils import TestServer

    from p2pdist.core.identity import NodeCredential, sign_request
    from tracker.app import create_app
    from tracker.config import TrackerConfig

    server = TestServer(create_app(TrackerConfig(cluster_token=TOKEN)))
    await server.start_server()
    operator = {"Authorization": f"Bearer {TOKEN}"}

    def signed(node: str, path: str, body: bytes) -> dict[str, str]:
        cred = NodeCredential.issue(TOKEN, node, int(time.time()) + 3600)
        return {"Authorization": sign_request(cred, "POST", path, body, time.time()),
                "Content-Type": "application/json"}

    job = json.dumps({"blobs": [{"ref": f"r.example/app@{D}", "size": 1}], "nodes": 1}).encode()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.make_url("/v1/preheat"), data=job, headers=signed("n1", "/v1/preheat", job)) as r:
                assert r.status == 401 and "operator" in (await r.json())["error"]  # a node may not order others
            async with s.post(server.make_url("/v1/preheat"), data=job, headers=operator) as r:
                assert r.status == 409 and "no agent has polled" in (await r.json())["error"]
            poll = json.dumps({"node": "n1", "done": [], "failed": []}).encode()
            async with s.post(server.make_url("/v1/orders"), data=poll, headers=signed("n1", "/v1/orders", poll)) as r:
                assert r.status == 200 and (await r.json())["fetch"] == []
            lie = json.dumps({"node": "n2"}).encode()
            async with s.post(server.make_url("/v1/orders"), data=lie, headers=signed("n1", "/v1/orders", lie)) as r:
                assert r.status == 400  # a node polls for itself only
            bad = json.dumps({"blobs": [{"ref": "r.example/app:v1", "size": 1}], "nodes": 1}).encode()
            async with s.post(server.make_url("/v1/preheat"), data=bad, headers=operator) as r:
                assert r.status == 400 and "needs a digest" in (await r.json())["error"]
            async with s.post(server.make_url("/v1/preheat"), data=job, headers=operator) as r:
                assert r.status == 201
                created = await r.json()
            assert created["nodes"] == ["n1"]
            async with s.get(server.make_url(f"/v1/preheat/{created['job']}"), headers=operator) as r:
                assert r.status == 200 and not (await r.json())["finished"]
            async with s.get(server.make_url("/v1/preheat/unknown"), headers=operator) as r:
                assert r.status == 404
    finally:
        await server.close()
