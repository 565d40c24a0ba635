"""The shaped-link benchmark, small and for real: 4 agents in namespaces on 100 Mbit/s tbf links, 32 MiB.

No timing is asserted (benchmarks measure, tests check): only that every node got the right bytes,
the origin sent the blob about once, and no namespace outlives the run. Without root, ``ip`` or
namespace support this fails rather than skips: the benchmark cannot run there either.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_shaped import BenchConfig, run_benchmark
from benchmarks.netns import namespaces
from benchmarks.shaped_cluster import port_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MiB = 1 << 20


def test_small_shaped_run_delivers_the_blob_once_from_origin_and_leaves_no_namespace(tmp_path: Path) -> None:
    cfg = BenchConfig(nodes=4, rate="100mbit", size=32 * MiB, only=("p2pdist",), probe=False)
    result = run_benchmark(cfg, workdir=tmp_path)

    (run,) = result.runs
    failed = {n.label: n.error for n in run.nodes if not n.ok}
    assert not failed, f"fetches failed: {failed}; logs in {tmp_path}"
    assert len(run.nodes) == cfg.nodes
    for node in run.nodes:
        assert node.sha256 == result.digest, f"{node.label} stored different bytes"
    assert cfg.size <= run.egress <= 1.10 * cfg.size, f"origin sent {run.egress_ratio:.2f} x the blob"
    # The agents' own accounting agrees that the other copies came from peers.
    assert sum(n.from_peers for n in run.nodes) >= 2 * cfg.size

    # The link meter saw every node take the whole blob in through its link, and the origin send at
    # least what its log says it sent; no link above its shaped rate (tbf caps the frames).
    links = run.links
    assert len(links["t_s"]) >= 2
    for node in run.nodes:
        got = links["downloaded_bytes"][node.label]
        assert got[-1] - got[0] >= cfg.size, f"{node.label}: its link carried less than the blob"
    sent = links["uploaded_bytes"]["origin"]
    assert sent[-1] - sent[0] >= run.egress
    use = run.link_use(cfg.rate_bytes)
    assert 0 < use["nodes down, least"] <= use["nodes down"] <= 1.05
    assert 0 < use["origin up"] <= 1.05 and 0 < use["nodes up"] <= 1.05

    # hub, origin, tracker and one per node: made, and all gone again.
    assert len(result.namespaces) == cfg.nodes + 3
    assert not set(result.namespaces) & set(namespaces())


def test_port_bytes_reads_received_and_sent_bytes_per_interface() -> None:
    rest = " 0 0 0 0 0"  # the columns after the counters read (errs, drop, ...): not used
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs ...\n"
        f"    lo:       0       0    0    0    0     0          0         0        0       0{rest}\n"
        f" node0: 1048576     700    0    0    0     0          0         0 268435456  180000{rest}\n"
        f"origin:     123       2    0    0    0     0          0         0      456       3{rest}\n"
    )
    assert port_bytes(text) == {"lo": (0, 0), "node0": (1048576, 268435456), "origin": (123, 456)}
