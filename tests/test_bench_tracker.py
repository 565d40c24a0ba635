"""The tracker load generator, small and for real: a real tracker process, 300 credentialed nodes.

No timing is asserted (benchmarks measure, tests check): that every announce was answered 200, that
the generator's nodes took leases and reported their digests as agents do (the tracker published
them), and that a step's figures are all there.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_tracker import run_one

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_small_load_is_answered_and_behaves_like_agents(capsys: pytest.CaptureFixture[str]) -> None:
    steps = run_one(nodes_count=300, blobs=2, rates=[300.0], seconds=2.0, connections=16, timeout=5.0,
                    core=0, seed=3, extra=[])
    (step,) = steps
    assert step["statuses"] == {"200": 600} and step["requests"] == 600
    assert step["answered_200_per_s"] > 200 and step["p99_ms"] is not None
    assert step["tracker_cpu_ms_per_announce"] > 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed[-1]["offered_per_s"] == 300.0
    assert step["digests_published"] > 0  # leases were taken, fetched (as far as the tracker knows) and reported
