"""A node with a valid cluster token that lies, among honest agents (issue: hostile nodes).

Real processes: docker-registry as the origin, the tracker, four honest agents; the rogue
(tests/support/rogue.py) speaks the real protocol from the test process. Whatever it does, every
honest agent must end with the right blob, and the origin must not pay more than a bounded extra:
the blob digest is the only root of trust, everything a node says is a hint.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.registry import Registry
from tests.support.rogue import MODES, Rogue
from tests.test_cluster import TOKEN, Cluster, fetch_all, sha256_file

pytestmark = pytest.mark.integration

MiB = 1 << 20
SIZE = 48 * MiB
HONEST = 4


@pytest.fixture
def cluster(tmp_path: Path, registry: Registry):
    c = Cluster(tmp_path, registry)
    yield c
    c.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_lying_node_slows_the_cluster_but_never_breaks_it(registry: Registry, cluster: Cluster, mode: str):
    digest = registry.push_blob("team/app", os.urandom(SIZE))
    ref = f"{registry.host}/team/app@{digest}"
    tracker = cluster.start_tracker()
    with Rogue(tracker.url, TOKEN, digest, SIZE, mode) as rogue:
        # The rogue is first: it holds the leases, or the blob's size, or the seeder's place.
        agents = [cluster.agent(f"honest{i}") for i in range(HONEST)]
        start = time.monotonic()
        results = fetch_all(agents, ref)
        elapsed = time.monotonic() - start
        for agent, result in zip(agents, results, strict=True):
            assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-3000:]}"
            assert sha256_file(result["path"]) == digest
        egress = registry.egress(digest) / SIZE
        print(json.dumps({"mode": mode, "seconds": round(elapsed, 2), "origin_egress": round(egress, 3),
                          "rogue_piece_requests": rogue.piece_requests, "rogue_refused": len(rogue.refused)}))
        assert egress <= 1.5, f"{mode}: the origin served {egress:.2f} x the blob"
    # After the rogue has gone, a newcomer still completes, from the cluster.
    late = cluster.agent("late")
    result = late.fetch(ref)
    assert result.get("done") and sha256_file(result["path"]) == digest, late.output()[-3000:]
