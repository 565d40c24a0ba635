"""p2pdist on a shaped private LAN: an origin registry, a tracker and N agents, each in its own namespace.

Addresses (198.18.0.0/24, see benchmarks/netns.py): origin .2, tracker .3, node i at .(10 + i).
The origin's uplink and every node's uplink and downlink are shaped; the tracker's link is not, so
announces are never held back by the tracker's own queue (nodes' announces do wait in their own
upload queue, as on a real saturated link).

The controller (this process) never opens a socket to a LAN address from its own namespace: with no
route of ours there, such a packet would follow the machine's default route out. Every probe, push
and fetch runs in a thread that has entered the host's namespace (:func:`benchmarks.netns.entered`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from benchmarks.netns import Host, Lan, Process, entered
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-shaped-token"  # peers and tracker refuse non-loopback listeners without one
REPO = "bench/shaped"
API = "127.0.0.1:65002"  # each namespace has its own loopback, so every agent can use the same port
PEER_PORT = 65003
TRACKER_PORT = 7070
ORIGIN_OCTET, TRACKER_OCTET, FIRST_NODE_OCTET = 2, 3, 10
MAX_NODES = 240
MiB = 1 << 20

# Called with (node label, bytes that node has) as fetches progress.
ProgressFn = Callable[[str, int], None]


class ClusterError(RuntimeError):
    """A process of the benchmark cluster failed to start or answer; the message has its log tail."""


def direct_opener() -> urllib.request.OpenerDirector:
    """urllib without proxies: a proxy from the environment would carry LAN requests off the machine."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NamespacedRegistry(Registry):
    """The tests' docker-registry (log-based egress accounting), listening on every address of its namespace.

    There that is loopback (push, log sync, all from inside) and eth0 (the agents). Every method must be
    called from a thread inside the namespace: it talks to 127.0.0.1.
    """

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["http"]["addr"] = f"0.0.0.0:{self.port}"
        return config


@dataclass
class NodeResult:
    """One node's fetch, timed by the controller's monotonic clock."""

    label: str
    start: float
    end: float = 0.0
    ok: bool = False
    error: str = ""
    path: str = ""
    from_peers: int = 0
    from_origin: int = 0
    sha256: str = ""  # of the stored file, computed after the run; "" if the fetch failed

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class ShapedCluster:
    """The LAN plus the origin registry; agents and trackers come and go per run."""

    workdir: Path
    nodes: int
    rate: str  # tc rate for every shaped direction, e.g. "50mbit"
    origin_rate: str
    lan: Lan = field(default_factory=Lan)
    registry: NamespacedRegistry | None = None
    origin: Host | None = None
    tracker_host: Host | None = None
    node_hosts: list[Host] = field(default_factory=list)

    # --- building --------------------------------------------------------------------------

    def build(self) -> ShapedCluster:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes must be in 1..{MAX_NODES} (one /24), got {self.nodes}")
        self.lan.open()
        # The origin only sends blob bytes: its uplink is the one that matters (and the bound's u_s).
        self.origin = self.lan.add_host("origin", ORIGIN_OCTET, upload=self.origin_rate)
        self.tracker_host = self.lan.add_host("tracker", TRACKER_OCTET)
        self.node_hosts = [self.lan.add_host(f"node{i}", FIRST_NODE_OCTET + i, self.rate, self.rate)
                           for i in range(self.nodes)]
        self._start_registry()
        return self

    def _start_registry(self) -> None:
        assert self.origin is not None
        self.registry = NamespacedRegistry(workdir=self.workdir / "registry")
        with entered(self.origin.namespace):
            self.registry.start()

    @property
    def upstream(self) -> str:
        assert self.origin is not None and self.registry is not None
        return f"{self.origin.addr}:{self.registry.port}"

    def push(self, data: bytes) -> str:
        """Put the blob into the origin over its loopback (unshaped); returns the reference agents fetch."""
        assert self.origin is not None and self.registry is not None
        with entered(self.origin.namespace):
            digest = self.registry.push_blob(REPO, data)
        return f"{self.upstream}/{REPO}@{digest}"

    def egress(self, digest: str) -> int:
        """Blob bytes the origin has written so far, from its own log."""
        assert self.origin is not None and self.registry is not None
        with entered(self.origin.namespace):
            return self.registry.egress(digest)

    def probe_goodput(self, digest: str, length: int) -> float:
        """Bytes/s of one origin download to node0 alone: what one shaped link carries after TCP/IP overhead.

        Timed from the first body byte to the last, so connection setup and the registry's first disk
        read do not count; ``length`` is a prefix of the blob (a Range request).
        """
        assert self.registry is not None
        host = self.node_hosts[0]
        url = f"http://{self.upstream}/v2/{REPO}/blobs/{digest}"
        request = urllib.request.Request(url, headers={"Range": f"bytes=0-{length - 1}"})
        with entered(host.namespace), direct_opener().open(request, timeout=60) as response:
            first = response.read(64 << 10)
            started, received = time.monotonic(), 0
            while chunk := response.read(1 << 20):
                received += len(chunk)
            elapsed = time.monotonic() - started
        if not first or received == 0 or elapsed <= 0:
            raise ClusterError(f"goodput probe got {len(first) + received} bytes of {length}")
        return received / elapsed

    # --- processes -------------------------------------------------------------------------

    def start_tracker(self, log: Path) -> tuple[Process, str]:
        host = self.tracker_host
        assert host is not None
        listen = f"{host.addr}:{TRACKER_PORT}"
        proc = self.lan.spawn(host, [sys.executable, "-m", "tracker", "--listen", listen], log,
                              {"P2PDIST_TRACKER_CLUSTER_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)})
        url = f"http://{listen}"
        wait_ready(host, url + "/healthz", proc)
        return proc, url

    def start_agents(self, rundir: Path, tracker: str) -> list[Process]:
        """One agent per node, all started before any is waited for (startup is CPU-bound)."""
        procs: list[Process] = []
        try:
            for host in self.node_hosts:
                procs.append(self._spawn_agent(host, rundir, tracker))
            for host, proc in zip(self.node_hosts, procs, strict=True):
                wait_ready(host, f"http://{API}/healthz", proc)
        except BaseException:
            stop_all(procs)
            raise
        return procs

    def _spawn_agent(self, host: Host, rundir: Path, tracker: str) -> Process:
        args = [sys.executable, "-m", "p2pdist", "daemon", "--node-id", host.label, "--tracker", tracker,
                "--peer-listen", f"{host.addr}:{PEER_PORT}", "--api-listen", API, "--mirror-listen", "",
                "--data-dir", str(rundir / host.label), "--upstream", f"http://{self.upstream}"]
        env = {"P2PDIST_CLUSTER_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
        return self.lan.spawn(host, args, rundir / f"{host.label}.log", env)

    def close(self) -> None:
        try:
            if self.registry is not None:
                self.registry.stop()
                # The blob itself: a kept workdir is for reading logs, not for another copy of it.
                remove_tree(self.registry.root)
        finally:
            self.lan.close()


def wait_ready(host: Host, url: str, proc: Process, deadline: float = 60.0) -> None:
    """Poll ``url`` from inside the host's namespace until it answers; fail early if the process died."""
    opener = direct_opener()
    end = time.monotonic() + deadline
    with entered(host.namespace):
        while True:
            if not proc.alive():
                raise ClusterError(f"{proc.popen.args[4:7]} in {host.label} exited with {proc.popen.returncode} "
                                   f"before answering {url}; log tail:\n{proc.tail()}")
            try:
                opener.open(url, timeout=1.0).close()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                if time.monotonic() > end:
                    raise ClusterError(f"{url} in {host.label} did not answer within {deadline}s") from None
                time.sleep(0.1)


def stop_all(procs: list[Process], timeout: float = 10.0) -> None:
    """SIGTERM everyone first, then wait: agents stop in parallel, each announcing its departure."""
    for proc in procs:
        if proc.alive():
            proc.popen.terminate()
    for proc in procs:
        proc.stop(timeout)


# --- the flash crowd -----------------------------------------------------------------------


def crowd(hosts: list[Host], ref: str, *, via: str = "api", deadline: float = 3600.0,
          progress: ProgressFn | None = None) -> list[NodeResult]:
    """Every node fetches ``ref`` at the same moment; returns each node's result.

    ``via="api"``: threads inside the nodes' namespaces wait at one barrier, then each sends the
    request `p2pdist fetch` sends (POST /v1/fetch) and follows its progress stream: the start is
    simultaneous to a millisecond. ``via="cli"``: the `p2pdist fetch --json` command itself in each
    namespace; its Python startup (~0.5 s of CPU each, all at once) spreads the starts.
    """
    if via not in ("api", "cli"):
        raise ValueError(f"via must be 'api' or 'cli', got {via!r}")
    barrier = threading.Barrier(len(hosts))
    results: list[NodeResult | None] = [None] * len(hosts)
    fetch = _fetch_api if via == "api" else _fetch_cli

    def worker(i: int) -> None:
        host = hosts[i]
        try:
            results[i] = fetch(host, ref, barrier, deadline, progress)
        except Exception as e:  # one node's failure is a result, not the end of the run
            results[i] = NodeResult(host.label, time.monotonic(), time.monotonic(), error=f"{type(e).__name__}: {e}")
            barrier.abort()  # never leave the others waiting for a thread that is gone

    threads = [threading.Thread(target=worker, args=(i,), name=f"fetch-{h.label}", daemon=True)
               for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def _fetch_api(host: Host, ref: str, barrier: threading.Barrier, deadline: float,
               progress: ProgressFn | None) -> NodeResult:
    body = json.dumps({"ref": ref}).encode()
    request = urllib.request.Request(f"http://{API}/v1/fetch", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    opener = direct_opener()
    with entered(host.namespace):
        barrier.wait()
        result = NodeResult(host.label, time.monotonic())
        # The daemon streams a progress line every 0.2 s, so a 60 s read timeout only fires on a hang.
        with opener.open(request, timeout=60) as response:
            for line in response:
                event = json.loads(line)
                if progress is not None and "have" in event:
                    progress(host.label, int(event["have"]))
                if "done" in event or "error" in event:
                    if progress is not None and event.get("done"):
                        progress(host.label, int(event["size"]))
                    return _finish(result, event)
                if time.monotonic() - result.start > deadline:
                    return _finish(result, {"error": f"not done after {deadline:.0f}s"})
    return _finish(result, {"error": "the daemon closed the stream without a result"})


def _fetch_cli(host: Host, ref: str, barrier: threading.Barrier, deadline: float,
               progress: ProgressFn | None) -> NodeResult:
    args = ["ip", "netns", "exec", host.namespace, sys.executable, "-m", "p2pdist", "fetch", "--json",
            "--api", API, ref]
    barrier.wait()
    result = NodeResult(host.label, time.monotonic())
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=deadline, check=False)
    except subprocess.TimeoutExpired:
        return _finish(result, {"error": f"p2pdist fetch not done after {deadline:.0f}s"})
    lines = proc.stdout.strip().splitlines()
    event = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
        "error": f"p2pdist fetch exited {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    if progress is not None and event.get("done"):
        progress(host.label, int(event["size"]))
    return _finish(result, event)


def _finish(result: NodeResult, event: dict[str, Any]) -> NodeResult:
    result.end = time.monotonic()
    if event.get("done"):
        result.ok = True
        result.path = str(event["path"])
        result.from_peers = int(event.get("from_peers", 0))
        result.from_origin = int(event.get("from_origin", 0))
    else:
        result.error = str(event.get("error", event))
    return result


def hash_results(results: list[NodeResult]) -> None:
    """sha256 of what each node stored: checked by us, not taken from the agent's word."""
    for r in results:
        if r.ok:
            h = hashlib.sha256()
            with open(r.path, "rb") as f:
                while chunk := f.read(4 * MiB):
                    h.update(chunk)
            r.sha256 = "sha256:" + h.hexdigest()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat: how loaded it was during a run."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu_seconds(procs: list[Process]) -> float:
    """User + system CPU seconds the processes have used so far (0 for those already gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in procs:
        try:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


class _Sampler:
    """A thread that samples something while a run goes: started on entering, stopped and joined on
    leaving (subclasses give ``_run``, which returns once ``_stop`` is set)."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class RttProbe(_Sampler):
    """Round-trip times between two nodes while a run loads the links: TCP connects from ``src`` to
    ``dst``'s peer port every ``interval`` s. The SYN and its answer wait in the same tbf queues as
    the pieces, so this is the delay a piece request meets, which the simulator needs as its rtt."""

    def __init__(self, src: Host, dst: Host, interval: float = 0.25) -> None:
        self.src, self.dst, self.interval = src, dst, interval
        self.samples: list[float] = []
        super().__init__("rtt-probe")

    def _run(self) -> None:
        with entered(self.src.namespace):
            while not self._stop.wait(self.interval):
                start = time.monotonic()
                try:
                    with socket.create_connection((self.dst.addr, PEER_PORT), timeout=5):
                        self.samples.append(time.monotonic() - start)
                except OSError:
                    continue  # a lost SYN says nothing about queueing; the next sample will


class LinkMeter(_Sampler):
    """Bytes every host sent and was sent through its link, sampled every ``interval`` s from the
    hub's side: in the hub namespace ``/proc/net/dev`` lists one bridge port per host, whose received
    bytes are what the host uploaded (after its tbf) and whose sent bytes what it downloaded (through
    the tbf on that port). A run slower than the bound spent its time with some of these idle; the
    counters say which. Frames, not payload: Ethernet, IP and TCP headers are counted too."""

    def __init__(self, hub: str, labels: list[str], interval: float = 1.0) -> None:
        self.hub, self.labels, self.interval = hub, labels, interval
        self.times: list[float] = []  # monotonic seconds of each sample
        self.uploaded: dict[str, list[int]] = {label: [] for label in labels}  # cumulative bytes per sample
        self.downloaded: dict[str, list[int]] = {label: [] for label in labels}
        super().__init__("link-meter")

    def _run(self) -> None:
        with entered(self.hub):
            self._sample()  # the first at once, the last at the end: the counts cover the whole run
            while not self._stop.wait(self.interval):
                self._sample()
            self._sample()

    def _sample(self) -> None:
        ports = port_bytes(Path("/proc/thread-self/net/dev").read_text())
        self.times.append(time.monotonic())
        for label in self.labels:
            rx, tx = ports.get(label, (0, 0))
            self.uploaded[label].append(rx)
            self.downloaded[label].append(tx)

    def to_json(self) -> dict[str, Any]:
        start = self.times[0] if self.times else 0.0
        return {"t_s": [round(t - start, 3) for t in self.times], "uploaded_bytes": self.uploaded,
                "downloaded_bytes": self.downloaded}


def port_bytes(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/net/dev`` as {interface: (received bytes, sent bytes)}."""
    out = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) >= 9:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


# Agent counters summed over the nodes after a run: how often peers were busy and requests failed,
# the numbers to read when a run is slower than the simulator says. (The uploaders' own count of
# refusals, p2pdist_uploads_refused_total, is the same 503s seen from the other end.)
COUNTERS = {
    'p2pdist_peer_errors_total{kind="busy"}': "busy_replies",
    'p2pdist_peer_errors_total{kind="transfer"}': "failed_requests",
    "p2pdist_origin_fallbacks_total": "origin_fallbacks",
}


def agent_counters(hosts: list[Host]) -> dict[str, float]:
    """COUNTERS summed over every node's /metrics (scraped inside its namespace); missing ones count 0."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(COUNTERS.values(), 0.0)
    opener = direct_opener()
    for host in hosts:
        with entered(host.namespace), opener.open(f"http://{API}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                name = COUNTERS.get(f"{sample.name}{{{labels}}}" if labels else sample.name)
                if name is not None:
                    totals[name] += sample.value
    return totals


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
