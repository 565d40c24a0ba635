"""What TLS costs on the peer path: one node fetching a blob from one seeder, plain vs TLS, run
alternately on loopback (where the CPU, not the link, sets the speed: the worst case for TLS).

Each run starts a tracker, a seeder that first takes the blob from docker-registry, and a leecher
whose fetch is timed; both agents hold node credentials (signed requests and peer tickets in both
modes: this measures TLS, with identity on either side). Reported: the median of the runs and the
spread, TLS/plain ratio, and the CPU-seconds per GiB of seeder + leecher during the timed fetch.

Run: .venv/bin/python -m benchmarks.bench_tls [--size 512MiB] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_fetch import prefault_page_cache, process_cpu_seconds, random_file_bytes
from p2pdist.config import parse_size
from p2pdist.tls import init_ca, issue_cert
from tests.support.procs import AgentProc, TlsFiles, Tracker
from tests.support.registry import Registry

SECRET = "bench-tls-secret"


def _ca(work: Path) -> Path:
    directory = work / "ca"
    init_ca(directory)
    for name in ("tracker", "seeder", "leecher"):
        issue_cert(directory, name, ["127.0.0.1"])
    return directory


def _files(ca: Path, name: str) -> TlsFiles:
    return TlsFiles(ca / "ca.pem", ca / f"{name}.pem", ca / f"{name}-key.pem")


def one_run(work: Path, registry: Registry, ref: str, size: int, tls: bool, ca: Path, run: int) -> dict:
    tag = f"{'tls' if tls else 'plain'}{run}"
    tracker = Tracker(work, SECRET, tls=_files(ca, "tracker") if tls else None).start()
    procs: list = [tracker]
    try:
        agents = {}
        for name in ("seeder", "leecher"):
            agents[name] = AgentProc(work, name, tracker.url, SECRET, data_dir=work / f"{tag}-{name}",
                                     tls=_files(ca, name) if tls else None,
                                     upstreams=[f"http://{registry.host}"]).start()
            procs.append(agents[name])
        seeded = agents["seeder"].fetch(ref)
        assert seeded.get("done"), seeded
        prefault_page_cache(work, 2 * size)
        cpu_before = sum(process_cpu_seconds(a.pid) for a in agents.values())
        start = time.perf_counter()
        result = agents["leecher"].fetch(ref)
        wall = time.perf_counter() - start
        cpu = sum(process_cpu_seconds(a.pid) for a in agents.values()) - cpu_before
        assert result.get("done"), result
        # Over the peer path, but for the piece the fresh tracker has it audit (fetch from the origin).
        assert result["from_peers"] >= size * 0.95, result
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {"seconds": wall, "cpu_s": cpu, "from_origin": result["from_origin"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="512MiB")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-tls-") as tmp:
        work = Path(tmp)
        ca = _ca(work)
        with Registry(workdir=work / "registry") as registry:
            digest = registry.push_blob("bench/tls", random_file_bytes(size))
            ref = f"{registry.host}/bench/tls@{digest}"
            runs: dict[str, list[dict]] = {"plain": [], "tls": []}
            for run in range(args.runs):
                for mode in ("plain", "tls"):  # alternately: the machine's noise falls on both
                    runs[mode].append(one_run(work, registry, ref, size, mode == "tls", ca, run))
                    print(json.dumps({"run": run, "mode": mode, **runs[mode][-1]}), flush=True)
    gib = size / (1 << 30)
    out: dict = {"size": size, "runs": args.runs}
    for mode, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        out[mode] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                     "MBps": size / statistics.median(secs) / 1e6,
                     "cpu_s_per_GiB": statistics.median(r["cpu_s"] for r in rs) / gib}
    ratios = [t["seconds"] / p_["seconds"] for t, p_ in zip(runs["tls"], runs["plain"], strict=True)]
    out["tls_over_plain"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
