"""Mirror benchmarks on loopback against a real docker-registry (issue: registry mirror).

1. warm: one blob already in the agent's store, fetched with curl from the mirror and from the
   registry directly, alternately; reports the throughput ratio mirror / registry (target >= 1.0);
2. cold: `skopeo copy` of a multi-layer image straight from the registry and through a fresh
   agent's mirror (nothing cached), alternately; reports the time ratio mirror / direct (target <= 1.10),
   and the same copy again through that agent, every blob now in its store (warm_time_ratio).

Run: .venv/bin/python -m benchmarks.bench_mirror [--blob-size 1GiB] [--layers 256MiB,64MiB,16MiB] [--runs 3]
     [--only warm|cold]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.bench_fetch import prefault_page_cache
from p2pdist.config import parse_size
from tests.support.clients import registries_conf
from tests.support.procs import AgentProc
from tests.support.registry import Registry

TOKEN = "bench-token"
NO_TRACKER = "http://127.0.0.1:9"


def curl_seconds(url: str) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - start


def warm(work: Path, size: int, runs: int) -> dict:
    with Registry(workdir=work / "registry-warm") as registry:
        digest = registry.push_blob("bench/warm", os.urandom(size))
        agent = AgentProc(work, "warm", NO_TRACKER, TOKEN, upstreams=[f"http://{registry.host}"], mirror=True).start()
        try:
            direct = f"{registry.url}/v2/bench/warm/blobs/{digest}"
            mirrored = f"http://{agent.mirror}/v2/bench/warm/blobs/{digest}?ns={registry.host}"
            curl_seconds(mirrored)  # fills the store: warm from here on
            curl_seconds(direct)
            d_t, m_t = [], []
            for _ in range(runs):
                prefault_page_cache(work, size)
                d_t.append(curl_seconds(direct))
                prefault_page_cache(work, size)
                m_t.append(curl_seconds(mirrored))
        finally:
            agent.stop()
    d, m = statistics.median(d_t), statistics.median(m_t)
    return {"size": size, "direct_s": d_t, "mirror_s": m_t, "direct_MBps": size / d / 1e6,
            "mirror_MBps": size / m / 1e6, "throughput_ratio": d / m}


def skopeo_copy(work: Path, ref: str, conf: Path | None) -> float:
    out = work / "skopeo-out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["skopeo"] + (["--registries-conf", str(conf)] if conf else [])
    cmd += ["copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"dir:{out}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def write_registries_conf(path: Path, registry: str, mirror: str) -> Path:
    path.write_text(registries_conf([registry], mirror))
    return path


def cold(work: Path, layers: list[int], runs: int) -> dict:
    with Registry(workdir=work / "registry-cold") as registry:
        registry.push_image("bench/cold", "v1", [os.urandom(n) for n in layers])
        ref = f"{registry.host}/bench/cold:v1"
        skopeo_copy(work, ref, None)  # warm the registry's page cache for both sides
        d_t, m_t, w_t = [], [], []
        touch = 3 * sum(layers)
        for run in range(runs):
            prefault_page_cache(work, touch)
            d_t.append(skopeo_copy(work, ref, None))
            agent = AgentProc(work, f"cold{run}", NO_TRACKER, TOKEN, upstreams=[f"http://{registry.host}"],
                              mirror=True).start()
            try:
                conf = write_registries_conf(work / "registries.conf", registry.host, agent.mirror)
                prefault_page_cache(work, touch)
                m_t.append(skopeo_copy(work, ref, conf))
                prefault_page_cache(work, touch)
                w_t.append(skopeo_copy(work, ref, conf))  # the same agent again: every blob in its store
            finally:
                agent.stop()
                shutil.rmtree(agent.data_dir, ignore_errors=True)
            if not any(r.user_agent.startswith("p2pdist/") for r in registry.requests() if "/blobs/" in r.path):
                raise RuntimeError("skopeo bypassed the mirror: the cold figure would be meaningless")
    d, m, w = statistics.median(d_t), statistics.median(m_t), statistics.median(w_t)
    # Each copy beside the direct one just before it: the spread the shared machine adds.
    ratios = [x / y for x, y in zip(m_t, d_t, strict=True)]
    return {"layers": layers, "direct_s": d_t, "mirror_s": m_t, "time_ratio": m / d,
            "time_ratios": ratios, "time_ratio_spread": [min(ratios), max(ratios)],
            "warm_mirror_s": w_t, "warm_time_ratio": w / d}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blob-size", default="1GiB")
    p.add_argument("--layers", default="256MiB,64MiB,16MiB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", choices=["warm", "cold"], help="run one of the two benchmarks")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-") as tmp:
        if args.only != "cold":
            print(json.dumps({"warm": warm(Path(tmp), parse_size(args.blob_size), args.runs)}), flush=True)
        if args.only == "warm":
            return
        layers = [parse_size(x) for x in args.layers.split(",")]
        print(json.dumps({"cold": cold(Path(tmp), layers, args.runs)}), flush=True)


if __name__ == "__main__":
    main()
