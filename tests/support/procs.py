"""Real processes for integration tests: start, wait until they answer, stop by PID."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]

# The cluster token of every tracker and agent a test starts without naming one. Agents trade pieces
# only over a shared token: without one, an agent's peer port takes nothing but its own node secret.
SESSION_TOKEN = secrets.token_hex(16)


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate and key, and the cluster CA that checks everyone's (``p2pdist certs``)."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def wait_http(url: str, proc: subprocess.Popen | None = None, deadline: float = 20.0,
              context: ssl.SSLContext | None = None) -> None:
    """Poll until ``url`` answers; fail early if the process died."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=context):
                return
        except urllib.error.HTTPError:
            return  # it answers, even if not with 200
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {deadline}s")


@dataclass
class Proc:
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self._logf = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(self.args, stdout=self._logf, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill9(self) -> None:
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def until_ready(self, wait: Callable[[], object]) -> None:
        """Run ``wait`` (it raises if the process never gets ready); on failure the process is
        stopped before the error goes on, so a server that never answered does not outlive its test."""
        try:
            wait()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._logf.close()  # also for a process that exited by itself (e.g. refused to start)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Tracker(Proc):
    """``token`` None: the session's shared cluster token; "": authentication off."""

    def __init__(self, workdir: Path, token: str | None = None, extra: list[str] | None = None,
                 port: int = 0, tls: TlsFiles | None = None) -> None:
        self.port = port or free_port()  # a port: a tracker restarted where its agents look for it
        self.token = SESSION_TOKEN if token is None else token
        self.tls = tls
        args = [sys.executable, "-m", "tracker", "--listen", f"127.0.0.1:{self.port}", *(extra or [])]
        if tls is not None:
            args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        # In the environment, not a flag (which every local user could read in ps); set even when
        # empty, so a token in the environment of the test run does not leak in.
        super().__init__(args, workdir / f"tracker-{self.port}.log", {"P2PDIST_TRACKER_CLUSTER_TOKEN": self.token})

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Tracker:
        super().start()
        self.until_ready(lambda: wait_http(self.url + "/healthz", self.popen,
                                           context=self.tls.context() if self.tls else None))
        return self

    def metrics(self, token: str | None = None) -> dict[str, float]:
        token = self.token if token is None else token
        request = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5, context=self.tls.context() if self.tls else None) as resp:
            return parse_metrics(resp.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format: sample name (with labels) to value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class AgentProc(Proc):
    """``token`` None: the session's shared cluster token; "": none (the peer port wants the node secret)."""

    def __init__(self, workdir: Path, name: str, tracker: str, token: str | None = None,
                 extra_env: dict[str, str] | None = None, data_dir: Path | None = None,
                 upstreams: list[str] | None = None, mirror: bool = False,
                 credential: Path | None = None, tls: TlsFiles | None = None) -> None:
        self.name = name
        self.peer_port, self.api_port = free_port(), free_port()
        self.data_dir = data_dir or workdir / name
        args = [sys.executable, "-m", "p2pdist", "daemon", "--node-id", name, "--tracker", tracker,
                "--peer-listen", f"127.0.0.1:{self.peer_port}", "--api-listen", f"127.0.0.1:{self.api_port}",
                "--data-dir", str(self.data_dir)]
        self.mirror_port = free_port() if mirror else 0
        args += ["--mirror-listen", f"127.0.0.1:{self.mirror_port}" if mirror else ""]
        for spec in upstreams or []:
            args += ["--upstream", spec]
        env = dict(extra_env or {})
        if upstreams:
            # Requests without ?ns= (skopeo, podman, Docker) go to the default upstream: in tests that
            # must be the local registry, never a real one out on the internet.
            first = upstreams[0].removeprefix("http://").removeprefix("https://").split("=")[0]
            env.setdefault("P2PDIST_MIRROR_DEFAULT_UPSTREAM", first)
        self.token = SESSION_TOKEN if token is None else token
        env["P2PDIST_CLUSTER_TOKEN"] = self.token  # even when empty: nothing leaks in from the test run
        if credential is not None:
            env["P2PDIST_NODE_CREDENTIAL"] = str(credential)
        if tls is not None:
            env.update({"P2PDIST_TLS_CA": str(tls.ca), "P2PDIST_TLS_CERT": str(tls.cert),
                        "P2PDIST_TLS_KEY": str(tls.key)})
        super().__init__(args, workdir / f"{name}.log", env)

    @property
    def mirror(self) -> str:
        return f"127.0.0.1:{self.mirror_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> AgentProc:
        super().start()
        self.until_ready(lambda: wait_http(self.api + "/healthz", self.popen))
        return self

    def refused_start(self, timeout: float = 30.0) -> str:
        """Start a daemon expected to refuse (exit status 1, before its API answers); its output."""
        Proc.start(self)  # not start(): it would wait for an API that never comes
        try:
            assert self.popen is not None and self.popen.wait(timeout=timeout) == 1
        finally:
            self.stop()
        return self.output()

    def fetch(self, ref: str, timeout: float = 300.0) -> dict:
        """Fetch through the daemon's API; returns the final event (done or error)."""
        req = urllib.request.Request(self.api + "/v1/fetch", data=json.dumps({"ref": ref}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        last: dict = {}
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for line in resp:
                last = json.loads(line)
        return last

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.api + "/metrics", timeout=5) as resp:
            return parse_metrics(resp.read().decode())

    def status(self) -> dict:
        with urllib.request.urlopen(self.api + "/v1/status", timeout=5) as resp:
            return json.loads(resp.read())
