"""Tracker load: announces/s and latency for thousands of simulated nodes against one tracker process.

The real tracker (`python -m tracker`, with a cluster secret: every announce is HMAC-checked) runs
pinned to one core; this generator runs on another. Each simulated node announces as an agent's
swarm does while pulling (progress, a growing piece count, wanting peers and leases, sometimes
reporting a digest), signed with its own node credential. The load is open-loop: announces are due
at a fixed rate whatever the tracker does, and each one's latency counts from when it was due, so a
tracker that falls behind shows it in p99 instead of slowing the generator down (no coordinated
omission). A request unanswered after --timeout seconds is abandoned, as an agent would.

Requests are signed before each step (signing is the agents' cost, not the tracker's), then sent on
--connections keep-alive connections by a small raw HTTP/1.1 client on uvloop.

Run: .venv/bin/python -m benchmarks.bench_tracker [--nodes 10000] [--blobs 1,20] [--rates 1000,2500,5000,10000]
     [--redis]   (state in a redis-server the benchmark starts, as tracker replicas keep it)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from benchmarks.bench_fetch import process_cpu_seconds
from p2pdist.core.identity import NodeCredential, sign_request
from p2pdist.core.manifest import PIECE_DIGEST_SIZE
from p2pdist.core.wire import Announce, encode
from tests.support.procs import ROOT, parse_metrics, wait_http
from tests.support.redis import RedisServer
from tests.support.registry import free_port

SECRET = "bench-tracker-secret"
MiB = 1 << 20
BLOB_SIZE = 1 << 30  # 256 pieces of 4 MiB


@dataclass
class Node:
    name: str
    cred: NodeCredential
    blob: str
    have: int = 0
    digest_pos: int = 0
    leased: list[int] = field(default_factory=list)  # pieces the tracker leased it, not reported yet


def _digest_of(blob: str, index: int) -> bytes:
    """Every honest node gets the same bytes from the origin: the same digest for a piece."""
    return hashlib.blake2b(f"{blob}/{index}".encode(), digest_size=PIECE_DIGEST_SIZE).digest()


def _nodes(count: int, blobs: int, rng: random.Random) -> list[Node]:
    digests = [f"sha256:{rng.getrandbits(256):064x}" for _ in range(blobs)]
    expires = int(time.time()) + 86400
    return [Node(f"node-{i:05d}", NodeCredential.issue(SECRET, f"node-{i:05d}", expires), digests[i % blobs])
            for i in range(count)]


def _announce(node: Node, rng: random.Random, event: str = "progress") -> bytes:
    """What an agent pulling the blob sends: its progress, the digests of the pieces it fetched under
    lease (as it reports them, one announce later), more leases now and then, peers while its
    neighbourhood is not full."""
    node.have = min(256, node.have + (1 if rng.random() < 0.5 else 0))
    digests = [(i, _digest_of(node.blob, i)) for i in node.leased]
    node.leased.clear()
    return encode(Announce(node=node.name, addr=f"10.{hash(node.name) % 250}.0.1:65003", blob=node.blob,
                           zone=f"z{hash(node.name) % 3}", size=BLOB_SIZE, have=node.have, event=event,
                           want_leases=1 if rng.random() < 0.2 else 0, digests=digests,
                           digest_pos=node.digest_pos, wants_peers=rng.random() < 0.3))


def _request(host: str, node: Node, body: bytes) -> bytes:
    auth = sign_request(node.cred, "POST", "/v1/announce", body, time.time())
    head = (f"POST /v1/announce HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/msgpack\r\n"
            f"Authorization: {auth}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection: a request at a time, the status and body read back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length) if length else b""


def _learn(node: Node, status: int, body: bytes) -> None:
    """What the agent takes from a reply: its digest cursor and new leases (reported next time)."""
    if status != 200:
        return
    reply = msgpack.unpackb(body)  # not wire.decode: its checks would cost the generator, not the tracker
    node.digest_pos = reply.get("digest_pos", node.digest_pos)
    node.leased = sorted({i for start, end, _ttl in reply.get("leases", []) for i in range(start, end)})


async def _step(host: str, port: int, nodes: list[Node], rate: float, connections: int, timeout: float,
                rng: random.Random, event: str = "progress") -> dict:
    """One announce per entry of ``nodes`` at ``rate``/s, open loop; latencies from each one's due
    time. Each is made and signed when it is sent: it carries what the node's last reply leased it,
    as an agent's does (the signing is the generator's cost, before the clock of the request starts)."""
    queue: asyncio.Queue[tuple[float, Node]] = asyncio.Queue()
    where = f"127.0.0.1:{port}"
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def worker() -> None:
        conn: Connection | None = None
        while True:
            due, node = await queue.get()
            try:
                request = _request(where, node, _announce(node, rng, event))
                if conn is None:
                    conn = Connection(*await asyncio.open_connection(host, port))
                status, body = await asyncio.wait_for(conn.exchange(request), timeout)
                latencies.append(time.perf_counter() - due)
                _learn(node, status, body)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                statuses["timeout/error"] = statuses.get("timeout/error", 0) + 1
                if conn is not None:
                    conn.writer.close()
                conn = None  # the connection may hold a late answer: a fresh one, as agents do
            finally:
                queue.task_done()

    # The generator is the instrument: a pause of its own collector would delay every announce due
    # meanwhile and count as the tracker's latency. Reference counting frees what a step makes; the
    # cycles wait for the collection after it.
    gc.disable()
    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds.
    start = time.perf_counter()
    for i, node in enumerate(nodes):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, node))
    await queue.join()
    elapsed = time.perf_counter() - start
    for w in workers:
        w.cancel()
    gc.enable()
    gc.collect()
    ok = statuses.get("200", 0)
    latencies.sort()
    return {"offered_per_s": rate, "answered_200_per_s": round(ok / elapsed), "requests": len(nodes),
            "statuses": statuses,
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
            "max_ms": round(1000 * latencies[-1], 2) if latencies else None}


def _published(host: str) -> int:
    """Piece digests the tracker took as facts so far (its metrics): the generator's nodes lease
    and report like agents, or this stays 0."""
    request = urllib.request.Request(f"http://{host}/metrics", headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(parse_metrics(resp.read().decode()).get("p2pdist_tracker_digests_accepted_total", 0))


def run_one(nodes_count: int, blobs: int, rates: list[float], seconds: float, connections: int,
            timeout: float, core: int, seed: int, extra: list[str], tree: Path = ROOT,
            redis: bool = False) -> list[dict]:
    rng = random.Random(seed)
    nodes = _nodes(nodes_count, blobs, rng)
    port = free_port()
    host = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-tracker-") as tmp:
        server = None
        if redis:
            # On the generator's cores, not the tracker's: the tracker's core is its own.
            server = RedisServer(Path(tmp) / "redis").start()
            os.sched_setaffinity(server.popen.pid, os.sched_getaffinity(0))
            extra = [*extra, "--redis", server.url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PDIST_")}
        env.update({"PYTHONPATH": str(tree), "P2PDIST_TRACKER_CLUSTER_TOKEN": SECRET,
                    "P2PDIST_TRACKER_LOG_LEVEL": "warning"})
        with open(Path(tmp) / "tracker.log", "wb") as log:
            proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "tracker", "--listen", host,
                                     *extra], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tree)
        try:
            wait_http(f"http://{host}/healthz", proc)
            results = []

            async def drive() -> None:
                # Every node joins first (its "started"), not timed: the swarm is then full size.
                await _step("127.0.0.1", port, nodes, 5000.0, connections, 10.0, rng, "started")
                for rate in rates:
                    count = int(rate * seconds)
                    cpu = process_cpu_seconds(proc.pid)
                    redis_cpu = process_cpu_seconds(server.popen.pid) if server is not None else 0.0
                    step = await _step("127.0.0.1", port, [nodes[i % len(nodes)] for i in range(count)], rate,
                                       connections, timeout, rng)
                    step["tracker_cpu_ms_per_announce"] = round(
                        1000 * (process_cpu_seconds(proc.pid) - cpu) / max(1, sum(step["statuses"].values())), 3)
                    if server is not None:
                        step["redis_cpu_ms_per_announce"] = round(
                            1000 * (process_cpu_seconds(server.popen.pid) - redis_cpu)
                            / max(1, sum(step["statuses"].values())), 3)
                    step["digests_published"] = _published(host)
                    step.update({"nodes": nodes_count, "blobs": blobs})
                    print(json.dumps(step), flush=True)
                    results.append(step)

            import uvloop

            uvloop.run(drive())
        finally:
            proc.terminate()
            proc.wait(10)
            if server is not None:
                server.stop()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--blobs", default="1,20", help="comma-separated: one run per count (default %(default)s)")
    p.add_argument("--rates", default="1000,2500,5000,7500,10000", help="announces/s to offer, in steps")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each step")
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--timeout", type=float, default=5.0, help="an agent's announce timeout")
    p.add_argument("--core", type=int, default=0, help="the CPU the tracker is pinned to")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tracker-arg", action="append", default=[], help="extra flag for the tracker")
    p.add_argument("--redis", action="store_true",
                   help="the tracker keeps its state in a redis-server this benchmark starts (on the generator's "
                        "cores)")
    p.add_argument("--tracker-tree", type=Path, default=ROOT,
                   help="run the tracker from this checkout (a baseline, side by side; default: this one)")
    args = p.parse_args()
    os.sched_setaffinity(0, {c for c in os.sched_getaffinity(0) if c != args.core} or {args.core})
    rates = [float(r) for r in args.rates.split(",")]
    summary = []
    for blobs in (int(b) for b in args.blobs.split(",")):
        steps = run_one(args.nodes, blobs, rates, args.seconds, args.connections, args.timeout, args.core,
                        args.seed, args.tracker_arg, args.tracker_tree, args.redis)
        good = [s for s in steps if s["p99_ms"] is not None and s["p99_ms"] < 20
                and s["answered_200_per_s"] >= 0.98 * s["offered_per_s"]]
        summary.append({"tree": str(args.tracker_tree), "state": "redis" if args.redis else "memory",
                        "nodes": args.nodes, "blobs": blobs,
                        "max_rate_p99_under_20ms": max((s["offered_per_s"] for s in good), default=0),
                        "cpu_ms_per_announce": statistics.median(s["tracker_cpu_ms_per_announce"] for s in steps)})
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
