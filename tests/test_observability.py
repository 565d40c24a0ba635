"""What an operator sees of a running agent and tracker: /readyz that follows the tracker and the
disk, build and process metrics, and one info line per pull. Real processes: docker-registry,
the tracker, agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from p2pdist import __version__
from tests.support.disks import tmpfs
from tests.support.procs import ROOT, AgentProc, Tracker
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20


def readyz(agent: AgentProc) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(agent.api + "/readyz", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(check, what: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for: {what}")
        time.sleep(0.1)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "8M") as mount:
        yield mount


def test_readyz_follows_the_tracker_and_a_pull_is_logged_and_counted(tmp_path: Path, registry: Registry):
    tracker = Tracker(tmp_path).start()
    agent = AgentProc(tmp_path, "seen", tracker.url, upstreams=[f"http://{registry.host}"])
    try:
        agent.start()
        assert readyz(agent) == (200, {"ready": True, "node": "seen", "checks": {"store": "ok", "tracker": "ok"}})
        digest = registry.push_blob("team/app", os.urandom(3 * MiB))
        result = agent.fetch(f"{registry.host}/team/app@{digest}")
        assert result.get("done"), result
        lines = [json.loads(line) for line in agent.output().splitlines() if line.startswith("{")]
        (pulled,) = [line for line in lines if line.get("msg") == "blob fetched"]
        assert pulled["level"] == "info" and pulled["blob"] == digest and pulled["repository"] == "team/app"
        assert pulled["from_origin"] + pulled["from_peers"] == 3 * MiB == pulled["size"]
        metrics = agent.metrics()
        assert metrics[f'p2pdist_build_info{{version="{__version__}"}}'] == 1
        assert metrics["process_resident_memory_bytes"] > 0 and "process_cpu_seconds_total" in metrics
        assert "p2pdist_announce_failures_total" in metrics and "p2pdist_tracker_errors_total" not in metrics
        assert tracker.metrics()[f'p2pdist_tracker_build_info{{version="{__version__}"}}'] == 1

        tracker.stop()
        _, body = wait_for(lambda: (r := readyz(agent))[0] == 503 and r, "readyz to notice the tracker is gone")
        assert body["checks"]["store"] == "ok" and "unreachable" in body["checks"]["tracker"]
        with urllib.request.urlopen(agent.api + "/healthz", timeout=10) as resp:
            assert resp.status == 200  # alive: pulls still work, from the origin
    finally:
        agent.stop()
        tracker.stop()


def test_readyz_says_when_the_store_takes_no_writes(tmp_path: Path, registry: Registry, small_disk: Path):
    agent = AgentProc(tmp_path, "full", "", token="", data_dir=small_disk / "data",
                      upstreams=[f"http://{registry.host}"]).start()
    try:
        assert readyz(agent) == (200, {"ready": True, "node": "full", "checks": {"store": "ok", "tracker": "ok"}})
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * (64 << 10))
        status, body = readyz(agent)
        assert status == 503 and "takes no writes" in body["checks"]["store"], body
        filler.unlink()
        assert readyz(agent)[0] == 200
    finally:
        agent.stop()


def test_status_shows_a_download_in_progress_and_readiness(tmp_path: Path, registry: Registry):
    tracker = Tracker(tmp_path).start()
    slow = {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(2 * MiB)}  # 16 MiB: about 8 s to watch
    agent = AgentProc(tmp_path, "busy", tracker.url, extra_env=slow, upstreams=[f"http://{registry.host}"])
    try:
        agent.start()
        digest = registry.push_blob("team/big", os.urandom(16 * MiB))
        with ThreadPoolExecutor(1) as pool:
            pulled = pool.submit(agent.fetch, f"{registry.host}/team/big@{digest}")
            shown = wait_for(lambda: (s := status(agent, "--json"))["downloads"] and s, "a download in status")
            assert shown["readiness"]["ready"] is True and shown["node"] == "busy"
            assert shown["downloads"][digest]["size"] == 16 * MiB
            table = status(agent)
            assert "ready" in table and "downloads in progress" in table and digest[:19] in table
            assert pulled.result().get("done")
        assert "no downloads in progress" in status(agent)
        tracker.stop()
        assert "not ready" in wait_for(lambda: "not ready" in (t := status(agent)) and t, "status to say not ready")
    finally:
        agent.stop()
        tracker.stop()


def status(agent: AgentProc, *flags: str):
    done = subprocess.run([sys.executable, "-m", "p2pdist", "status", "--api", f"127.0.0.1:{agent.api_port}", *flags],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                           "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if flags else done.stdout


def test_status_without_a_daemon_says_how_to_start_one():
    done = subprocess.run([sys.executable, "-m", "p2pdist", "status", "--api", "127.0.0.1:9"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert "no daemon answers at 127.0.0.1:9" in done.stderr and "p2pdist daemon" in done.stderr
