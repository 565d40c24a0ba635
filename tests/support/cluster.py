"""A tracker and agents as processes on loopback against a real registry, for the cluster tests."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.images import file_sha256
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

TOKEN = "cluster-test-token"


class Cluster:
    def __init__(self, workdir: Path, registry: Registry) -> None:
        self.workdir = workdir
        self.upstreams = [f"http://{registry.host}"]
        self.procs: list = []
        self.tracker: Tracker | None = None

    def start_tracker(self, extra: list[str] | None = None) -> Tracker:
        self.tracker = Tracker(self.workdir, TOKEN, extra).start()
        self.procs.append(self.tracker)
        return self.tracker

    def agent(self, name: str, env: dict[str, str] | None = None, tracker: str | None = None,
              start: bool = True) -> AgentProc:
        url = tracker if tracker is not None else self.tracker.url
        agent = AgentProc(self.workdir, name, url, TOKEN, env, upstreams=self.upstreams)
        self.procs.append(agent)
        return agent.start() if start else agent

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def sha256_file(path: str) -> str:
    return "sha256:" + file_sha256(Path(path))


def fetch_all(agents: list[AgentProc], ref: str) -> list[dict]:
    with ThreadPoolExecutor(len(agents)) as pool:
        return list(pool.map(lambda a: a.fetch(ref), agents))


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` (a condition, bounded by ``timeout``) until it holds."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for: {what}")
        time.sleep(0.05)
