"""Scenario files, units, the `p2pdist simulate` command and its outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from p2pdist.cli import simulate as simulate_cmd
from simulations.cluster import Cluster
from simulations.profiles import p2pdist_profile
from simulations.run import run_scenario, seed_spread
from simulations.scenario import load_scenario, scenario_from_dict
from simulations.units import ScenarioError, parse_duration, parse_rate, parse_size

SCENARIOS = sorted((Path(__file__).parent.parent / "simulations" / "scenarios").glob("*.toml"))


def test_units():
    assert parse_size("1GiB", "x") == 1 << 30
    assert parse_size("512MB", "x") == 512_000_000
    assert parse_rate("1Gbit", "x") == 125e6
    assert parse_rate("100Mbps", "x") == 12.5e6
    assert parse_rate("125MB/s", "x") == 125e6
    assert parse_rate("1MiB/s", "x") == 1 << 20
    assert parse_duration("500ms", "x") == 0.5
    assert parse_duration("2m", "x") == 120
    for bad in ("fast", "1Gbyte", "-1s"):
        with pytest.raises(ScenarioError):
            parse_rate(bad, "x")


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_load(path):
    sc = load_scenario(path)
    assert sc.nodes > sc.seeds >= 0 and sc.image.size > 0 and sc.runs


@pytest.mark.parametrize("bad, message", [
    ({"nodes": 0}, "nodes"),
    ({"nodez": 3}, "unknown setting"),
    ({"arrival": {"pattern": "stampede"}}, "arrival.pattern"),
    ({"image": {"layers": ["1GiB"], "piece_size": "3MiB"}}, "power of two"),
    ({"network": {"upload": {"dist": "zipf"}}}, "unknown dist"),
    ({"p2pdist": {"limits": {"peer_concurency": 2}}}, "peer_concurency"),
    ({"p2pdist": {"selector": "fastest"}}, "selector"),
    ({"runs": ["bittorrent"]}, "bittorrent"),
    ({"nodes": 3, "seeds": 3}, "seeds"),
])
def test_bad_scenarios_say_what_is_wrong(bad, message):
    with pytest.raises(ScenarioError, match=message):
        scenario_from_dict(bad)


def test_churn_stragglers_seeds_and_racks_run_to_completion():
    sc = scenario_from_dict({
        "nodes": 40, "seeds": 2, "image": {"layers": ["32MiB", "16MiB"]},
        "network": {"upload": {"dist": "uniform", "low": "500Mbit", "high": "2Gbit"}, "origin_upload": "1Gbit",
                    "topology": {"zones": 2, "racks_per_zone": 2, "rack_uplink": "2Gbit", "zone_uplink": "2Gbit"}},
        "arrival": {"pattern": "poisson", "rate": 20.0},
        "churn": {"fraction": 0.2, "start": "0.1s", "end": "1s", "rejoin_after": "2s"},
        "stragglers": {"fraction": 0.1, "factor": 0.2},
    })
    out = Cluster(sc, p2pdist_profile(sc)).run()
    downloaders = [d for d, seed in zip(out.done, out.seeds, strict=True) if not seed]
    assert len(downloaders) == 38 and all(d > 0 for d in downloaders)
    assert not out.cut_off


def test_nodes_that_leave_for_good_are_counted_not_waited_for():
    sc = scenario_from_dict({"nodes": 20, "image": {"layers": ["32MiB"]},
                             "churn": {"fraction": 0.25, "start": "0.05s", "end": "0.1s"}})
    report = run_scenario(sc, ["p2pdist"])
    summary = report.runs[0]
    assert summary.departed == 5 and summary.completed == 15 and summary.time_to_all is not None


def test_simulate_command_writes_table_json_and_plots(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="p2pdist")
    simulate_cmd.add_parser(parser.add_subparsers(dest="command"))
    scenario = Path(__file__).parent.parent / "simulations" / "scenarios" / "flash-100.toml"
    args = parser.parse_args(["simulate", str(scenario), "--nodes", "12", "--sweep", "4,12",
                              "--runs", "p2pdist,origin-only,pull-through-cache,kraken,dragonfly",
                              "--out", str(tmp_path), "--quiet"])
    assert simulate_cmd.run(args) == 0
    printed = capsys.readouterr().out
    assert "p2pdist" in printed and "origin-only" in printed and "chunked" in printed
    data = json.loads((tmp_path / "flash-100.json").read_text())
    assert [r["run"] for r in data["runs"]] == ["p2pdist", "origin-only", "pull-through-cache", "kraken",
                                               "dragonfly"]
    assert all(r["completed"] == 12 for r in data["runs"])
    assert {p["nodes"] for p in data["sweep"]} == {4, 12}
    for run in data["runs"]:  # every profile counts what its nodes store, once (Swarm.stored)
        stored = sum(run["delivered_rate"]) * run["bin_seconds"]
        assert stored == pytest.approx(12 * data["scenario"]["image_bytes"], rel=1e-9), run["run"]
    for suffix in ("cdf", "origin", "uplinks", "vs-n", "ratio"):
        png = tmp_path / f"flash-100-{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Deterministic per seed: the same command gives the same numbers.
    first = data["runs"][0]["completion_times"]
    assert simulate_cmd.run(args) == 0
    again = json.loads((tmp_path / "flash-100.json").read_text())["runs"][0]["completion_times"]
    assert first == again


def test_simulate_command_rejects_a_missing_file(capsys, tmp_path):
    assert simulate_cmd.main(["simulate", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_simulate_over_seeds_reports_each_seed_and_their_spread(tmp_path, capsys):
    scenario = Path(__file__).parent.parent / "simulations" / "scenarios" / "flash-100.toml"
    out = tmp_path / "seeds.json"
    argv = ["simulate", str(scenario), "--nodes", "12", "--runs", "p2pdist", "--seeds", "3-5,9,3",
            "--json", str(out), "--quiet"]
    assert simulate_cmd.main(argv) == 0
    printed = capsys.readouterr().out
    assert "over 4 seeds" in printed
    points = json.loads(out.read_text())["seeds"]
    assert [p["seed"] for p in points] == [3, 4, 5, 9]  # ranges expanded, the repeated 3 run once
    # Each seed is its own run: the same as --seed alone would give.
    alone = tmp_path / "alone.json"
    assert simulate_cmd.main(["simulate", str(scenario), "--nodes", "12", "--runs", "p2pdist", "--seed", "5",
                              "--json", str(alone), "--quiet"]) == 0
    assert json.loads(alone.read_text())["runs"][0]["time_to_all"] == points[2]["time_to_all"]
    spread = seed_spread(points)["p2pdist"]
    times = [p["time_to_all"] for p in points]
    assert spread["time_to_all_min"] == min(times) and spread["time_to_all_max"] == max(times)
    assert min(times) < max(times)  # seeds really differ, or the option would be pointless
    assert spread["finished"] == spread["seeds"] == 4


@pytest.mark.parametrize("text", ["", "x", "5-", "-3", "1-2-3", ",,"])
def test_simulate_rejects_malformed_seeds(text, capsys):
    scenario = Path(__file__).parent.parent / "simulations" / "scenarios" / "flash-100.toml"
    assert simulate_cmd.main(["simulate", str(scenario), "--seeds", text, "--quiet"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_a_slow_tracker_slows_the_swarm_and_its_pacer_spaces_announces():
    """The simulated tracker is a FIFO server charging tracker_service_time per announce, and its
    pacer (the real one, tracker/pacer.py) asks for room above the announce budget."""

    def run(service: str, budget: int, nodes: int = 30) -> tuple[float, float]:
        # Seconds long: the pacer counts announces per whole second.
        sc = scenario_from_dict({"nodes": nodes, "image": {"layers": ["1GiB"]}, "network": {"upload": "1Gbit"},
                                 "p2pdist": {"tracker_service_time": service,
                                             "tracker": {"announce_budget": budget}}})
        cluster = Cluster(sc, p2pdist_profile(sc))
        out = cluster.run()
        return max(out.done), cluster.tally.announces / max(out.done)

    fast, _ = run("0ms", 100)  # no cost: an infinitely fast tracker keeps no budget
    slow, _ = run("40ms", 0)  # 40 ms of tracker per announce: announces queue behind it, replies come late
    assert slow > 1.5 * fast
    # Replies ask for room once past 20 announces/s. 100 nodes make ~130/s unpaced: the lease
    # holders' (never spaced), and the others' kicks for digests their neighbours' HAVEs do not
    # prove yet and their steady heartbeats. (30 nodes made too few of the spaceable kind since
    # only origin fetchers announce every busy interval.)
    _, free_rate = run("0ms", 100, nodes=100)
    _, paced_rate = run("0.01ms", 20, nodes=100)
    assert paced_rate < 0.8 * free_rate


def test_a_reports_first_tracker_keeps_the_origin_streaming_through_a_crowds_first_announces():
    """tracker_queue = "reports-first" (a what-if): announces that report digests are served before
    the others waiting. 1,000 "started" announces at 1 ms each keep a FIFO tracker busy for a second,
    and the lease holders' reports, which the next origin leases wait for, queue behind them."""

    def run(queue: str):
        sc = scenario_from_dict({"nodes": 1000, "image": {"layers": ["64MiB"], "piece_size": "1MiB"},
                                 "network": {"upload": "1Gbit"},
                                 "p2pdist": {"tracker_service_time": "1ms", "tracker_queue": queue}})
        out = Cluster(sc, p2pdist_profile(sc)).run()
        first = int(0.9 / out.bin_seconds)  # origin bytes in the crowd's first 0.9 s
        return sum(out.origin_bins[:first]), max(out.done), out

    fifo_bytes, fifo_done, _ = run("fifo")
    first_bytes, first_done, out = run("reports-first")
    assert all(d >= 0 for d in out.done)
    assert first_bytes > 3 * fifo_bytes
    assert first_done < fifo_done
    with pytest.raises(ScenarioError, match="tracker_queue"):
        scenario_from_dict({"p2pdist": {"tracker_queue": "lifo"}})
