"""Three tracker replicas on one real redis-server, agents spread across them: a distribution
completes with each byte leaving the origin about once, and survives killing a replica mid-way."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cluster import fetch_all, sha256_file, wait_until
from tests.support.procs import AgentProc, Proc, Tracker
from tests.support.redis import RedisServer
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20
TOKEN = "replica-test-token"


@pytest.fixture
def replicas(tmp_path: Path):
    redis = RedisServer(tmp_path / "redis").start()
    trackers = [Tracker(tmp_path, TOKEN, ["--redis", redis.url]).start() for _ in range(3)]
    yield redis, trackers
    for t in trackers:
        t.stop()
    redis.stop()


def start_agents(tmp_path: Path, urls: str, registry: Registry, count: int, rate: int) -> list[AgentProc]:
    """``count`` agents announcing to the replicas ``urls``, slowed to ``rate`` bytes/s each, so a
    fault can land while pieces still move."""
    slow = {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(rate)}
    return [AgentProc(tmp_path, f"node{i}", urls, TOKEN, slow, upstreams=[f"http://{registry.host}"]).start()
            for i in range(count)]


def _announces(tracker: Tracker) -> float:
    return sum(v for k, v in tracker.metrics().items() if k.startswith("p2pdist_tracker_announces_total"))


def test_agents_spread_over_replicas_share_one_swarm_and_survive_losing_one(
        tmp_path: Path, registry: Registry, replicas: tuple[RedisServer, list[Tracker]]) -> None:
    _redis, trackers = replicas
    urls = ",".join(t.url for t in trackers)
    # Slowed down so a replica can be killed while pieces still move (~4 s per agent alone).
    agents = start_agents(tmp_path, urls, registry, 6, rate=24 * MiB)
    try:
        size = 64 * MiB
        first = registry.push_blob("team/one", os.urandom(size))
        results = fetch_all(agents, f"{registry.host}/team/one@{first}")
        for agent, result in zip(agents, results, strict=True):
            assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-2000:]}"
            assert sha256_file(result["path"]) == first
        counts = [_announces(t) for t in trackers]
        assert all(c > 0 for c in counts), f"agents did not spread over the replicas: {counts}"
        # One swarm across replicas: peers found each other, and the origin sent each byte about once
        # (plus the audits that prove the first reporters, a piece each).
        assert sum(r["from_peers"] for r in results) >= 4 * size
        assert registry.egress(first) <= 1.10 * size, f"origin served {registry.egress(first) / size:.2f}x"

        second = registry.push_blob("team/two", os.urandom(size))
        ref = f"{registry.host}/team/two@{second}"
        victim = trackers[0]
        with ThreadPoolExecutor(len(agents)) as pool:
            pending = [pool.submit(a.fetch, ref) for a in agents]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                    a.status()["downloads"].get(second, {}).get("have", 0) >= size // 4 for a in agents):
                time.sleep(0.05)  # polling a condition (bounded by the deadline), not waiting for time
            before = [_announces(t) for t in trackers[1:]]
            victim.kill9()
            results = [p.result() for p in pending]
        # The agents that announced to the killed replica moved on to another one.
        moved = [a.name for a in agents if "tracker_failover" in a.output() and victim.url in a.output()]
        assert moved, "no agent announced to the killed replica: the kill proved nothing"
        assert all(_announces(t) > n for t, n in zip(trackers[1:], before, strict=True))
        for agent, result in zip(agents, results, strict=True):
            assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-2000:]}"
            assert sha256_file(result["path"]) == second
        # The replicas left kept the swarm: no agent fell back to the origin for everything.
        assert sum(r["from_peers"] for r in results) >= 4 * size
        assert registry.egress(second) <= 1.15 * size, f"origin served {registry.egress(second) / size:.2f}x"
        for t in trackers[1:]:
            assert t.popen is not None and t.popen.poll() is None
    finally:
        for a in agents:
            a.stop()


def test_a_tracker_refuses_to_start_without_its_redis(tmp_path: Path) -> None:
    from tests.support.registry import free_port

    port = free_port()  # nothing listens there
    tracker = Tracker(tmp_path, TOKEN, ["--redis", f"redis://127.0.0.1:{port}/0"])
    Proc.start(tracker)  # not start(): it would wait for a /healthz that never comes
    assert tracker.popen is not None and tracker.popen.wait(timeout=30) == 1
    tracker.stop()
    out = tracker.output()
    assert f"127.0.0.1:{port}" in out and "does not answer" in out and "Traceback" not in out


def test_a_redis_restart_mid_distribution_is_ridden_out_without_an_announce_storm(
        tmp_path: Path, registry: Registry, replicas: tuple[RedisServer, list[Tracker]]) -> None:
    # Redis killed with a quarter of the blob out, back 2 s later and empty: the replicas answer
    # 503 meanwhile. Each verified origin piece sent its digest in an announce at once, back-off or
    # not: some 20 failed announces a second per agent.
    redis, trackers = replicas
    urls = ",".join(t.url for t in trackers)
    agents = start_agents(tmp_path, urls, registry, 4, rate=16 * MiB)
    try:
        size = 96 * MiB
        digest = registry.push_blob("team/app", os.urandom(size))
        with ThreadPoolExecutor(len(agents)) as pool:
            pending = [pool.submit(a.fetch, f"{registry.host}/team/app@{digest}") for a in agents]
            wait_until(lambda: registry.egress(digest) >= size // 4, "a quarter of the blob left the origin")
            redis.kill9()
            outage = time.monotonic()
            time.sleep(2)  # the restart's downtime: what the test is about
            redis.start()
            outage = time.monotonic() - outage
            results = [p.result() for p in pending]
        for agent, result in zip(agents, results, strict=True):
            assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-2000:]}"
            assert sha256_file(result["path"]) == digest
            assert "fetching the rest from the origin" not in agent.output()
            # Failed announces back off 0.5, 1, 2, 4 s: a handful over the outage, not one per piece.
            failed = agent.metrics().get("p2pdist_announce_failures_total", -1)
            assert 1 <= failed <= 2 + 2 * outage, f"{agent.name}: {failed} failed announces in a {outage:.1f} s outage"
        assert registry.egress(digest) <= 1.15 * size, f"origin served {registry.egress(digest) / size:.2f}x"
    finally:
        for a in agents:
            a.stop()
