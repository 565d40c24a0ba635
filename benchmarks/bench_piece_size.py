"""Piece size against time-to-all: N agents fetch one blob at once, for several fixed piece sizes.

The tracker fixes the layout (P2PDIST_TRACKER_PIECE_MIN = _MAX = the size under test). Sizes are run
round-robin, several rounds, so machine noise spreads over all of them.

Run: .venv/bin/python -m benchmarks.bench_piece_size [--size 256MiB] [--nodes 8] [--pieces 256KiB,1MiB,4MiB,16MiB]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2pdist.config import parse_size
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

TOKEN = "bench-token"


def one(work: Path, registry: Registry, digest: str, nodes: int, piece: int, tag: str) -> tuple[float, float]:
    tracker = Tracker(work, TOKEN)
    tracker.env = {"P2PDIST_TRACKER_PIECE_MIN": str(piece), "P2PDIST_TRACKER_PIECE_MAX": str(piece)}
    tracker.start()
    agents = [AgentProc(work, f"{tag}-{i}", tracker.url, TOKEN, upstreams=[f"http://{registry.host}"]).start()
              for i in range(nodes)]
    before = registry.egress(digest)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(nodes) as pool:
            results = list(pool.map(lambda a: a.fetch(f"{registry.host}/bench/p@{digest}"), agents))
        elapsed = time.perf_counter() - start
    finally:
        for a in agents:
            a.stop()
        tracker.stop()
    assert all(r.get("done") for r in results), results
    return elapsed, registry.egress(digest) - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256MiB")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--pieces", default="256KiB,1MiB,4MiB,16MiB")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    size, pieces = parse_size(args.size), [parse_size(x) for x in args.pieces.split(",")]
    times: dict[int, list[float]] = {piece: [] for piece in pieces}
    egress: dict[int, list[float]] = {piece: [] for piece in pieces}
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-") as tmp, Registry(workdir=Path(tmp) / "reg") as reg:
        digest = reg.push_blob("bench/p", os.urandom(size))
        for r in range(args.rounds):
            for piece in pieces:
                t, e = one(Path(tmp), reg, digest, args.nodes, piece, f"r{r}p{piece}")
                times[piece].append(t)
                egress[piece].append(e / size)
    for piece in pieces:
        print(json.dumps({"piece_size": piece, "time_to_all_s": times[piece],
                          "median_s": statistics.median(times[piece]), "egress_ratio": egress[piece]}))


if __name__ == "__main__":
    main()
