"""p2pdist against the bounds, equal links and a flash crowd (issue: cluster-scale simulation).

The target is a time to all within 1.10 x the chunked bound, for the issue's case: 1 GiB in 4 MiB
pieces over equal 1 Gbit/s links, at N=100 (the scenario's seed) and N=1,000 (the mean of three
seeds: one seed's result spreads 1.08-1.10 there; simulations/README.md "Findings" gives the spread
and where the rest of the time goes).
"""

from __future__ import annotations

import pytest

from simulations.run import run_one, scenario_bounds, summarize
from simulations.scenario import scenario_from_dict


def _flash(nodes: int, size: str) -> dict:
    # Pieces pinned to 1 GiB / 256 = 4 MiB (the case), 64 MiB / 64 = 1 MiB, whatever the rule says.
    piece = "4MiB" if size == "1GiB" else "1MiB"
    return {"name": f"flash-{nodes}", "nodes": nodes, "image": {"layers": [size], "piece_size": piece},
            "network": {"upload": "1Gbit", "download": "1Gbit", "origin_upload": "1Gbit"},
            "arrival": {"pattern": "flash"}}


def _summary(nodes: int, size: str, run: str = "p2pdist", seed: int = 1):
    sc = scenario_from_dict({**_flash(nodes, size), "seed": seed})
    bounds = scenario_bounds(sc)
    return summarize(sc, run, run_one(sc, run), bounds), bounds


@pytest.fixture(scope="module")
def n100():
    return _summary(100, "1GiB")


@pytest.fixture(scope="module")
def n1000():
    return _summary(1000, "1GiB")  # ~40 s of simulation: the case, not a smaller stand-in


def test_no_run_beats_the_bounds(n100, n1000):
    for summary, bounds in (n100, n1000):
        assert summary.completed == summary.nodes
        assert summary.time_to_all >= bounds["chunked"] >= bounds["fluid"] * 0.999
        assert summary.latency["p50"] >= bounds["fluid"]


def test_each_piece_leaves_the_origin_about_once(n100, n1000):
    for summary, _ in (n100, n1000):
        assert summary.origin_copies <= 1.05


def test_the_origins_uplink_does_not_idle_between_a_takers_leases(n1000):
    # Each lease taker holds a spare lease queued behind its stream (core.leases.SPARE_LEASES): its
    # stream goes straight on to the next piece while the announce that reports the last one is out.
    # With one-piece leases and no spare, each stream paused for that round trip, and whenever the
    # pauses of the streams coincided the origin's uplink dipped to 88 % (1,000 nodes: 17 of the
    # 0.086 s bins after the first two seconds, 1.081x the bound over three seeds).
    summary, _ = n1000
    rates = summary.origin_rate
    first, last = int(2.0 / summary.bin_seconds), len(rates) - 1  # after the slow start, before the end
    dips = [i for i in range(first, last) if rates[i] < 0.99 * 125e6]
    assert not dips, [(round(i * summary.bin_seconds, 2), round(rates[i] / 125e6, 3)) for i in dips]


def test_the_swarm_throughput_counts_each_stored_byte_once_and_never_beats_every_uplink(n100, n1000):
    # The series behind the "uplinks" plot: bytes stored at the nodes per bin. All of them add up to
    # every node's copy of the image, and no bin's running total is ahead of what every uplink
    # together could have carried by its end (bytes count when their piece is stored, after they moved).
    for summary, bounds in (n100, n1000):
        width = summary.bin_seconds
        assert sum(summary.delivered_rate) * width == pytest.approx(summary.nodes * bounds["image_bytes"], rel=1e-9)
        assert bounds["uplinks"] == pytest.approx((summary.nodes + 1) * 125e6)  # N nodes and the origin, 1 Gbit/s
        stored = 0.0
        for i, rate in enumerate(summary.delivered_rate):
            stored += rate * width
            assert stored <= bounds["uplinks"] * (i + 1) * width * (1 + 1e-9), i


def test_origin_only_is_n_times_the_image():
    summary, bounds = _summary(20, "64MiB", run="origin-only")
    assert summary.origin_copies == pytest.approx(20, rel=1e-6)
    assert summary.time_to_all == pytest.approx(20 * bounds["image_bytes"] / 125e6, rel=0.01)


def test_p2pdist_within_1_10_of_the_chunked_bound_n100(n100):
    summary, _ = n100
    assert summary.ratio_chunked <= 1.10


def test_p2pdist_within_1_10_of_the_chunked_bound_n1000(n1000):
    ratios = [n1000[0].ratio_chunked] + [_summary(1000, "1GiB", seed=seed)[0].ratio_chunked for seed in (2, 3)]
    assert sum(ratios) / len(ratios) <= 1.10, ratios


def test_a_swarm_larger_than_a_neighbourhood_on_slow_links_leases_no_piece_twice():
    """100 nodes (a neighbourhood is 32) at 50 Mbit/s: a piece none of a node's neighbours holds
    for 3 s is mostly one still spreading, not one whose holder died. Leasing such pieces again
    (the fetcher announcing all along) took 51 leases back from their streams and 1.50x the bound."""
    sc = scenario_from_dict({
        "name": "slow-100", "nodes": 100, "image": {"layers": ["256MiB"], "piece_size": "4MiB"},
        "network": {"upload": "50Mbit", "download": "50Mbit", "origin_upload": "50Mbit"},
        "arrival": {"pattern": "flash"}})
    summary = summarize(sc, "p2pdist", run_one(sc, "p2pdist"), scenario_bounds(sc))
    assert summary.completed == 100
    assert summary.counters["leases_reassigned"] == 0
    assert summary.ratio_chunked <= 1.3
