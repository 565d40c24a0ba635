"""Fetch benchmarks on loopback against a real docker-registry (issue: P2P core).

1. one agent fetching a blob from the origin vs `curl` of the same blob, run alternately;
2. N agents fetching the same blob at once: time until all have it, origin egress / blob size.

Run: .venv/bin/python -m benchmarks.bench_fetch [--single-size 1GiB] [--crowd 8] [--crowd-size 256MiB]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2pdist.config import parse_size
from p2pdist.core.manifest import piece_hasher
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

TOKEN = "bench-token"


def random_file_bytes(size: int) -> bytes:
    return os.urandom(size)


def prefault_page_cache(work: Path, size: int) -> None:
    """Write and delete ``size`` bytes once before measuring.

    These VMs hand freed guest pages back to the host within seconds, and touching them again costs
    ~2.5 s of kernel time per GiB (measured: a 1 GiB write 2.6 s, again at once 0.29 s, again after
    10 s idle 2.5 s). Whichever side writes into returned pages pays it, so each timed run starts
    right after this touches (and frees) enough memory for its writes.
    """
    chunk = os.urandom(8 << 20)
    path = work / "prefault"
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
    path.unlink()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_curl(url: str, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of curl writing the blob to a file."""
    cpu = children_cpu_seconds()
    start = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - start
    cpu = children_cpu_seconds() - cpu
    out.unlink()
    return elapsed, cpu


def time_agent(work: Path, tracker: Tracker, ref: str, run: int, upstream: str) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the agent process during the fetch, final event)."""
    agent = AgentProc(work, f"single{run}", tracker.url, TOKEN, upstreams=[upstream]).start()
    try:
        assert agent.popen is not None
        cpu = process_cpu_seconds(agent.popen.pid)
        start = time.perf_counter()
        result = agent.fetch(ref)
        elapsed = time.perf_counter() - start
        cpu = process_cpu_seconds(agent.popen.pid) - cpu
    finally:
        agent.stop()
        shutil.rmtree(agent.data_dir, ignore_errors=True)
    assert result.get("done"), result
    return elapsed, cpu, result


def hashing_cpu_seconds(data: bytes) -> float:
    """CPU seconds of the hashing an agent cannot skip for ``data`` from the origin, at its fastest
    (each 256 KiB chunk hashed while it is in the cache): sha256 over the blob, and the piece digests."""
    view = memoryview(data)
    chunk = 256 << 10
    start = time.process_time()
    whole, piece = hashlib.sha256(), piece_hasher()
    for at in range(0, len(view), chunk):
        part = view[at:at + chunk]
        whole.update(part)
        piece.update(part)
    whole.digest()
    piece.digest()
    return time.process_time() - start


def single(work: Path, size: int, runs: int) -> dict:
    with Registry(workdir=work / "registry-single") as registry:
        blob = random_file_bytes(size)
        digest = registry.push_blob("bench/single", blob)
        hashing = min(hashing_cpu_seconds(blob) for _ in range(3))
        del blob
        tracker = Tracker(work, TOKEN).start()
        try:
            ref = f"{registry.host}/bench/single@{digest}"
            url = f"{registry.url}/v2/bench/single/blobs/{digest}"
            time_curl(url, work / "warm")  # the registry's first read warms the page cache for both
            curl_t, agent_t, curl_cpu, agent_cpu, origin_curl, origin_agent = [], [], [], [], [], []
            for run in range(runs):
                prefault_page_cache(work, 2 * size)
                origin = process_cpu_seconds(registry.pid)
                wall, cpu = time_curl(url, work / "curl.out")
                origin_curl.append(process_cpu_seconds(registry.pid) - origin)
                curl_t.append(wall)
                curl_cpu.append(cpu)
                prefault_page_cache(work, 2 * size)
                origin = process_cpu_seconds(registry.pid)
                wall, cpu, _ = time_agent(work, tracker, ref, run, f"http://{registry.host}")
                origin_agent.append(process_cpu_seconds(registry.pid) - origin)
                agent_t.append(wall)
                agent_cpu.append(cpu)
        finally:
            tracker.stop()
    c, a = statistics.median(curl_t), statistics.median(agent_t)
    gib = size / (1 << 30)
    cpus = len(os.sched_getaffinity(0))
    # The fastest the agent could be on this host if every CPU-second it must add to curl's work
    # (the hashing, at its fastest) had to share the CPUs that curl and the registry already use:
    # with both busy for curl's whole run (2 CPUs here), nothing runs "for free" beside them.
    floor = max(c, (statistics.median(origin_curl) + statistics.median(curl_cpu) + hashing) / cpus)
    return {"size": size, "curl_s": curl_t, "agent_s": agent_t, "curl_median_s": c, "agent_median_s": a,
            "ratio": a / c, "ratios": [x / y for x, y in zip(agent_t, curl_t, strict=True)],
            "curl_MBps": size / c / 1e6, "agent_MBps": size / a / 1e6,
            # CPU the fetch costs (all threads of the agent, or curl), and the registry's while serving it.
            "curl_cpu_s_per_GiB": statistics.median(curl_cpu) / gib,
            "agent_cpu_s_per_GiB": statistics.median(agent_cpu) / gib,
            "registry_cpu_s_per_GiB": {"curl": statistics.median(origin_curl) / gib,
                                       "agent": statistics.median(origin_agent) / gib},
            "hashing_cpu_s_per_GiB": hashing / gib, "cpus": cpus,
            "cpu_floor_ratio": floor / c}


def crowd(work: Path, size: int, nodes: int) -> dict:
    with Registry(workdir=work / "registry-crowd") as registry:
        digest = registry.push_blob("bench/crowd", random_file_bytes(size))
        tracker = Tracker(work, TOKEN).start()
        agents = [AgentProc(work, f"crowd{i}", tracker.url, TOKEN, upstreams=[f"http://{registry.host}"]).start()
                  for i in range(nodes)]
        try:
            ref = f"{registry.host}/bench/crowd@{digest}"
            start = time.perf_counter()

            def one(agent: AgentProc) -> tuple[float, dict]:
                result = agent.fetch(ref)
                return time.perf_counter() - start, result

            with ThreadPoolExecutor(nodes) as pool:
                done = list(pool.map(one, agents))
            egress = registry.egress(digest)
        finally:
            for agent in agents:
                agent.stop()
            tracker.stop()
    for _t, result in done:
        assert result.get("done"), result
    times = sorted(t for t, _ in done)
    return {"size": size, "nodes": nodes, "time_to_all_s": times[-1], "first_s": times[0],
            "median_s": statistics.median(times), "origin_egress_ratio": egress / size,
            "from_peers_total": sum(r["from_peers"] for _, r in done)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single-size", default="1GiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--crowd", type=int, default=8)
    p.add_argument("--crowd-size", default="256MiB")
    p.add_argument("--skip-single", action="store_true")
    p.add_argument("--skip-crowd", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-") as tmp:
        work = Path(tmp)
        out = {}
        if not args.skip_single:
            out["single"] = single(work, parse_size(args.single_size), args.runs)
            print(json.dumps(out["single"]), flush=True)
        if not args.skip_crowd:
            out["crowd"] = crowd(work, parse_size(args.crowd_size), args.crowd)
            print(json.dumps(out["crowd"]), flush=True)


if __name__ == "__main__":
    main()
