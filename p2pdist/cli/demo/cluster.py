"""A tracker and N agents as subprocesses on loopback, sharing a random cluster token."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import p2pdist
from p2pdist.cli.demo.procs import free_port, start_process, stop_all, tail

from ...errors import P2pdistError

STARTUP_TIMEOUT = 30.0  # a cold Python start of each process on a busy 2-core machine
PORT_ATTEMPTS = 3
# Where the p2pdist and tracker packages live, so children import this very source tree.
SOURCE_ROOT = Path(p2pdist.__file__).resolve().parents[1]


class ClusterError(P2pdistError, RuntimeError):
    """A tracker or agent did not start; the message points at its log."""


@dataclass
class Member:
    """One process of the cluster: the tracker or an agent."""

    name: str
    log: Path
    ports: tuple[int, ...] = ()
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where /healthz answers: the tracker's port, or the agent's API port (the last one)."""
        return f"http://127.0.0.1:{self.ports[-1]}"


@dataclass
class Cluster:
    workdir: Path
    origin: str  # 127.0.0.1:PORT of the origin registry (plain HTTP), the agents' one upstream
    agents: int = 4
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    tracker: Member | None = None
    nodes: list[Member] = field(default_factory=list)

    async def tracker_audits(self) -> int:
        """Audit fetches the tracker handed out (pieces a second node took from the origin to check
        a new node's digests: README "Nodes that lie")."""
        assert self.tracker is not None
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.tracker.url}/metrics", headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith('p2pdist_tracker_audits_total{result="assigned"}'):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def _env(self) -> dict[str, str]:
        path = str(SOURCE_ROOT)
        pythonpath = ":".join(p for p in (path, os.environ.get("PYTHONPATH", "")) if p)
        # The same secret for both: agents read P2PDIST_CLUSTER_TOKEN, the tracker its own prefix.
        # Never as a flag, which every local user could read in ps.
        return {"PYTHONPATH": pythonpath, "P2PDIST_CLUSTER_TOKEN": self.token,
                "P2PDIST_TRACKER_CLUSTER_TOKEN": self.token}

    def _launch(self, member: Member) -> None:
        if member is self.tracker:
            (port,) = member.ports = (free_port(),)
            args = [sys.executable, "-m", "tracker", "--listen", f"127.0.0.1:{port}"]
        else:
            assert self.tracker is not None
            peer, api = member.ports = (free_port(), free_port())
            data = self.workdir / "nodes" / member.name
            data.mkdir(mode=0o700, parents=True, exist_ok=True)  # the agent warns about an open data_dir
            args = [sys.executable, "-m", "p2pdist", "daemon", "--node-id", member.name,
                    "--tracker", self.tracker.url, "--peer-listen", f"127.0.0.1:{peer}",
                    "--api-listen", f"127.0.0.1:{api}", "--data-dir", str(data),
                    "--upstream", f"http://{self.origin}",
                    # The demo fetches through the agents' API, not their registry mirror: keep it
                    # off, so its fixed default port cannot collide with another agent here.
                    "--mirror-listen", ""]
        member.proc = start_process(args, member.log, env=self._env(), cwd=self.workdir)

    async def _start(self, members: list[Member]) -> None:
        """Start members together and wait until each answers /healthz; retry one whose port was taken."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            pending = members
            for attempt in range(PORT_ATTEMPTS):
                for member in pending:
                    self._launch(member)
                waits = [asyncio.ensure_future(self._wait_healthy(session, m)) for m in pending]
                try:
                    results = await asyncio.gather(*waits)
                finally:  # one failed: stop polling the others before the session closes
                    for wait in waits:
                        wait.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
                pending = [m for m, ok in zip(pending, results, strict=True) if not ok]
                if not pending:
                    return
                if attempt == PORT_ATTEMPTS - 1:
                    raise ClusterError(f"{pending[0].name} found no free port; log: {pending[0].log}")

    async def _wait_healthy(self, session: aiohttp.ClientSession, member: Member) -> bool:
        """True when healthy; False if it exited because its port was taken (try again)."""
        assert member.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if member.proc.poll() is not None:
                log = tail(member.log)
                if "address already in use" in log.lower():
                    return False
                raise ClusterError(f"{member.name} exited with {member.proc.returncode} during startup "
                                   f"(log {member.log}):\n{log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(member.url + "/healthz") as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.1)
        raise ClusterError(f"{member.name} did not answer /healthz within {STARTUP_TIMEOUT}s; log: {member.log}")

    async def start(self) -> Cluster:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.tracker = Member("tracker", logs / "tracker.log")
        await self._start([self.tracker])
        self.nodes = [Member(f"node{i}", logs / f"node{i}.log") for i in range(1, self.agents + 1)]
        await self._start(self.nodes)
        return self

    def exited(self) -> list[str]:
        """Members that died after starting (e.g. crashed under load), as messages naming their logs."""
        return [f"{m.name} exited with {m.proc.returncode} during the run; log {m.log}:\n{tail(m.log, 5)}"
                for m in (self.tracker, *self.nodes)
                if m is not None and m.proc is not None and m.proc.poll() is not None]

    def stop(self) -> None:
        """Agents first (they may still announce), then the tracker."""
        stop_all([m.proc for m in self.nodes if m.proc is not None])
        if self.tracker is not None and self.tracker.proc is not None:
            stop_all([self.tracker.proc])
