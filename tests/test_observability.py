"""What an operator sees of a running agent and tracker: /readyz that follows the tracker and the
disk, build and process metrics, and one info line per pull. Real processes: docker-registry,
the tracker, agents."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pdist import __version__
from tests.support.procs import AgentProc, Tracker
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
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


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
