"""Bandwidth benchmark on real shaped links: N agents in network namespaces, a flash crowd for one blob.

Each node, the origin registry and the tracker live in their own network namespace on a private
bridge (benchmarks/netns.py); every node's upload and download and the origin's upload are capped
with tbf at --rate. All agents fetch the blob at the same moment, under two setups run side by side
in one invocation (the machine is noisy):

  p2pdist      tracker + agents: pieces move between peers, origin pieces only under leases
  origin-only  the same agents without a tracker: every node pulls the whole blob from the origin

Per run: time to all (first fetch start to last completion), p50/p99 of per-node fetch times,
origin egress / blob size (counted in the registry's log), and the ratio to the chunked bound
(F/u)(1 + floor(log2 N)/M), M pieces, u the goodput of one shaped link measured at the start
(one node alone pulling from the origin; --no-probe uses the nominal rate instead).
--simulate runs simulations/scenarios/bench-16.toml (nodes, rate and size set to this run's) at the
nominal rate and at the measured goodput, and compares the simulated time to all with the measured
one; --from-json OUT does only that, for results saved earlier with --json OUT.

Fetches start together: by default threads inside the nodes' namespaces pass one barrier and send
the request `p2pdist fetch` sends (POST /v1/fetch); --fetch cli runs `p2pdist fetch` itself, whose
Python startup (~0.5 s of CPU per node, all at once on a small machine) spreads the starts.

Run as root: python -m benchmarks.bench_shaped [--nodes 16] [--rate 50mbit] [--size 256MiB]
  [--runs 1] [--only p2pdist,origin-only] [--simulate] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.netns import sweep_stale
from benchmarks.shaped_cluster import (
    ClusterError,
    LinkMeter,
    NodeResult,
    RttProbe,
    ShapedCluster,
    agent_counters,
    cpu_times,
    crowd,
    hash_results,
    process_cpu_seconds,
    remove_tree,
    stop_all,
)
from p2pdist.config import parse_size
from p2pdist.core.layout import PieceLayout, piece_size_for
from simulations.bounds import chunked_bound

MODES = ("p2pdist", "origin-only")
ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "scenarios" / "bench-16.toml"
PROBE_BYTES = 32 << 20  # ~5 s at 50 Mbit/s: long enough that TCP start-up and tbf's burst do not show
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_BITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


class Reporter(Protocol):
    """What the benchmark tells whoever watches it (the terminal, or nobody in tests)."""

    def step(self, message: str) -> None: ...

    def run(self, name: str, nodes: int, size: int) -> contextlib.AbstractContextManager[Any]: ...

    def node(self, label: str, have: int) -> None: ...


class Quiet:
    def step(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def run(self, name: str, nodes: int, size: int) -> Iterator[None]:
        yield

    def node(self, label: str, have: int) -> None:
        pass


def parse_rate(text: str) -> tuple[str, float]:
    """'50mbit' -> ('50mbit', bytes/s). Bit rates only: tc reads 'mbps' as megaBYTES per second."""
    m = _RATE.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f"rate must look like 50mbit, 1gbit or 800kbit, got {text!r}")
    return m.group(0), float(m.group(1)) * _BITS[m.group(2)] / 8


@dataclass(frozen=True)
class BenchConfig:
    nodes: int = 16
    rate: str = "50mbit"  # every node's upload and download, and the origin's upload
    size: int = 256 << 20
    runs: int = 1
    only: tuple[str, ...] = MODES
    probe: bool = True  # measure one link's goodput for the bound; False = the nominal rate
    fetch: str = "api"  # "api": POST /v1/fetch from threads at one barrier; "cli": `p2pdist fetch`
    simulate: bool = False

    @property
    def rate_bytes(self) -> float:
        return parse_rate(self.rate)[1]


@dataclass
class RunResult:
    mode: str
    repeat: int
    size: int
    egress: int  # origin blob bytes written during this run
    bound: float
    nodes: list[NodeResult]
    cpu_busy: float = 0.0  # share of the machine's CPU in use during the crowd, by anyone
    cpu_seconds: float = 0.0  # CPU the agents (and tracker) used during the crowd
    counters: dict[str, float] = field(default_factory=dict)  # shaped_cluster.COUNTERS, summed over agents
    rtts: list[float] = field(default_factory=list)  # first -> last node round trips during the crowd (RttProbe)
    links: dict[str, Any] = field(default_factory=dict)  # every host's link byte counters during the crowd (LinkMeter)

    @property
    def loaded_rtt(self) -> float | None:
        """Median round trip between two nodes while the links were loaded."""
        return statistics.median(self.rtts) if self.rtts else None

    @property
    def ok(self) -> bool:
        return bool(self.nodes) and all(n.ok for n in self.nodes)

    def link_use(self, rate: float) -> dict[str, float]:
        """How busy the links were over the crowd, as shares of ``rate`` (bytes/s, the shaped rate):
        the origin's upload, and the nodes' downloads and uploads (mean, and the least busy
        download). Empty for results saved before the benchmark metered links."""
        t = self.links.get("t_s", [])
        if len(t) < 2 or t[-1] <= t[0]:
            return {}
        span = (t[-1] - t[0]) * rate

        def share(series: list[int]) -> float:
            return (series[-1] - series[0]) / span

        up, down = self.links["uploaded_bytes"], self.links["downloaded_bytes"]
        nodes = [n.label for n in self.nodes if n.label in down]
        downs = [share(down[label]) for label in nodes]
        return {"origin up": share(up["origin"]), "nodes down": statistics.fmean(downs),
                "nodes down, least": min(downs), "nodes up": statistics.fmean(share(up[label]) for label in nodes)}

    @property
    def time_to_all(self) -> float | None:
        if not self.ok:
            return None
        return max(n.end for n in self.nodes) - min(n.start for n in self.nodes)

    def percentile(self, q: float) -> float | None:
        """Nearest rank, as simulations/run.py computes it, over per-node fetch times."""
        times = sorted(n.seconds for n in self.nodes if n.ok)
        return times[min(len(times) - 1, math.ceil(q * len(times)) - 1)] if times else None

    @property
    def egress_ratio(self) -> float:
        return self.egress / self.size

    @property
    def ratio(self) -> float | None:
        t = self.time_to_all
        return t / self.bound if t is not None and self.bound else None

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "repeat": self.repeat, "ok": self.ok, "time_to_all_s": self.time_to_all,
                "p50_s": self.percentile(0.5), "p99_s": self.percentile(0.99), "origin_egress_bytes": self.egress,
                "origin_egress_ratio": self.egress_ratio, "chunked_bound_s": self.bound, "ratio_to_bound": self.ratio,
                "machine_cpu_busy": self.cpu_busy, "agents_cpu_s": self.cpu_seconds,
                "agent_counters": self.counters, "loaded_rtt_s": self.loaded_rtt, "rtt_samples_s": self.rtts,
                "links": self.links,
                "nodes": [dataclasses.asdict(n) | {"seconds": n.seconds} for n in self.nodes]}


@dataclass
class BenchResult:
    config: BenchConfig
    digest: str = ""
    pieces: int = 0
    goodput: float | None = None  # bytes/s of one shaped link, measured
    u: float = 0.0  # the rate in the bound
    u_source: str = "nominal"
    bound: float = 0.0
    runs: list[RunResult] = field(default_factory=list)
    simulation: dict[str, Any] | None = None
    namespaces: list[str] = field(default_factory=list)  # every namespace this run made
    seconds: float = 0.0
    code: dict[str, Any] = field(default_factory=dict)  # which commit ran, and what was edited on top of it

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {"config": dataclasses.asdict(cfg), "digest": self.digest, "size": cfg.size, "pieces": self.pieces,
                "nominal_rate_Bps": cfg.rate_bytes, "goodput_Bps": self.goodput, "u_Bps": self.u,
                "u_source": self.u_source, "chunked_bound_s": self.bound, "runs": [r.to_json() for r in self.runs],
                "simulation": self.simulation, "namespaces": self.namespaces, "wall_seconds": self.seconds,
                "code": self.code}

    def loaded_rtt(self, mode: str) -> float | None:
        """Median round trip between two nodes over every run of ``mode`` (None if none was sampled)."""
        samples = [x for r in self.runs if r.mode == mode for x in r.rtts]
        return statistics.median(samples) if samples else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResult:
        """A saved result, to compare it with the simulator again without measuring again."""
        cfg = BenchConfig(**(data["config"] | {"only": tuple(data["config"]["only"])}))
        runs = [RunResult(r["mode"], r["repeat"], cfg.size, r["origin_egress_bytes"], r["chunked_bound_s"],
                          [_node_from_json(n) for n in r["nodes"]], r["machine_cpu_busy"], r["agents_cpu_s"],
                          r.get("agent_counters", {}), r.get("rtt_samples_s", []), r.get("links", {}))
                for r in data["runs"]]
        return cls(cfg, data["digest"], data["pieces"], data["goodput_Bps"], data["u_Bps"], data["u_source"],
                   data["chunked_bound_s"], runs, data.get("simulation"), data["namespaces"], data["wall_seconds"],
                   data.get("code", {}))


def _node_from_json(data: dict[str, Any]) -> NodeResult:
    return NodeResult(**{k: v for k, v in data.items() if k != "seconds"})


def code_state() -> dict[str, Any]:
    """The commit the agents and the simulator ran from, and files changed on top of it (the tree is shared)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return proc.stdout if proc.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "p2pdist", "tracker", "simulations")
    return {"root": str(ROOT), "commit": git("rev-parse", "HEAD").strip() or None,
            "dirty": [line[3:] for line in dirty.splitlines() if line.strip()]}


def tracker_pieces(size: int) -> int:
    """Pieces the tracker will cut the blob into: its layout rule, with its configuration from the environment."""
    from tracker.config import load

    tc = load()
    piece = piece_size_for(size, target_pieces=tc.piece_target, min_size=tc.piece_min, max_size=tc.piece_max)
    return PieceLayout(size, piece).count


def run_benchmark(cfg: BenchConfig, reporter: Reporter | None = None, workdir: Path | None = None) -> BenchResult:
    """Build the LAN, run every repeat of every mode, tear everything down (also on error or Ctrl-C)."""
    reporter = reporter or Quiet()
    for mode in cfg.only:
        if mode not in MODES:
            raise ValueError(f"unknown run {mode!r}: choose from {', '.join(MODES)}")
    started = time.monotonic()
    result = BenchResult(cfg, pieces=tracker_pieces(cfg.size), code=code_state())
    stale = sweep_stale()
    if stale:
        reporter.step(f"deleted {len(stale)} namespaces left by a killed benchmark")
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="p2pdist-shaped-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = ShapedCluster(workdir, cfg.nodes, cfg.rate, cfg.rate)
    clean = False
    try:
        reporter.step(f"building {cfg.nodes + 3} namespaces, links shaped at {cfg.rate}")
        cluster.build()
        reporter.step(f"pushing a {cfg.size / (1 << 20):.0f} MiB random blob to the origin")
        ref = cluster.push(os.urandom(cfg.size))
        result.digest = ref.rpartition("@")[2]
        _set_bound(cluster, cfg, result, reporter)
        for repeat in range(cfg.runs):
            for mode in cfg.only:
                result.runs.append(_one_run(cluster, cfg, mode, repeat, ref, result, reporter))
        clean = all(r.ok for r in result.runs)
    finally:
        result.namespaces = cluster.lan.namespaces()
        cluster.close()
        if clean and own_workdir:
            remove_tree(workdir)
        else:
            reporter.step(f"logs kept in {workdir}")
    result.seconds = time.monotonic() - started
    return result


def _set_bound(cluster: ShapedCluster, cfg: BenchConfig, result: BenchResult, reporter: Reporter) -> None:
    result.u = cfg.rate_bytes
    if cfg.probe:
        length = min(cfg.size, PROBE_BYTES)
        reporter.step(f"measuring one link's goodput: node0 alone pulls {length >> 20} MiB from the origin")
        result.goodput = cluster.probe_goodput(result.digest, length)
        result.u, result.u_source = result.goodput, "measured"
    result.bound = chunked_bound(cfg.size, cfg.nodes, result.u, result.pieces)


def _one_run(cluster: ShapedCluster, cfg: BenchConfig, mode: str, repeat: int, ref: str, result: BenchResult,
             reporter: Reporter) -> RunResult:
    rundir = cluster.workdir / f"{mode}-{repeat}"
    rundir.mkdir(parents=True)
    procs = []
    try:
        tracker_url = ""
        if mode == "p2pdist":
            tracker, tracker_url = cluster.start_tracker(rundir / "tracker.log")
            procs.append(tracker)
        reporter.step(f"{mode} run {repeat + 1}/{cfg.runs}: starting {cfg.nodes} agents")
        procs.extend(cluster.start_agents(rundir, tracker_url))
        before = cluster.egress(result.digest)
        # Generous: origin-only should take N*F/u; a run slower than three times that is broken.
        deadline = 3 * cfg.nodes * cfg.size / result.u + 120
        cpu_before, procs_before = cpu_times(), process_cpu_seconds(procs)
        hosts = [cluster.origin.label] + [h.label for h in cluster.node_hosts]
        with reporter.run(f"{mode} {repeat + 1}/{cfg.runs}", cfg.nodes, cfg.size), \
                RttProbe(cluster.node_hosts[0], cluster.node_hosts[-1]) as probe, \
                LinkMeter(cluster.lan.hub, hosts) as meter:
            nodes = crowd(cluster.node_hosts, ref, via=cfg.fetch, deadline=deadline, progress=reporter.node)
        cpu_after, procs_after = cpu_times(), process_cpu_seconds(procs)
        egress = cluster.egress(result.digest) - before
        counters = agent_counters(cluster.node_hosts)
        hash_results(nodes)
    finally:
        stop_all(procs)
        # N copies of the blob: gone before the next run writes its own. The logs stay for a failed run.
        for host in cluster.node_hosts:
            remove_tree(rundir / host.label)
    busy = (cpu_after[0] - cpu_before[0]) / max(cpu_after[1] - cpu_before[1], 1.0)
    return RunResult(mode, repeat, cfg.size, egress, result.bound, nodes, busy, procs_after - procs_before, counters,
                     probe.samples, meter.to_json())


# --- simulation ------------------------------------------------------------------------------


def simulate(cfg: BenchConfig, goodput: float | None, loaded_rtt: float | None = None) -> dict[str, Any]:
    """The scenario file's prediction for this benchmark: at the nominal rate, at the measured
    goodput, and at the goodput with the round trip measured under load (the tbf queues add up to
    TBF_LATENCY per shaped hop, which the scenario's idle-LAN rtt leaves out)."""
    from simulations.scenario import load_scenario

    base = load_scenario(SCENARIO)
    out: dict[str, Any] = {"scenario": str(SCENARIO.relative_to(ROOT)), "overridden": _overrides(base, cfg), "at": {}}
    conditions: dict[str, tuple[float, float | None]] = {"nominal": (cfg.rate_bytes, None)}
    if goodput:
        conditions["goodput"] = (goodput, None)
        if loaded_rtt:
            conditions[f"goodput, rtt {loaded_rtt * 1000:.0f} ms"] = (goodput, loaded_rtt)
    for label, (u, rtt) in conditions.items():
        out["at"][label] = {"u_Bps": u, "rtt_s": rtt, "runs": _simulate_at(base, cfg, u, rtt)}
    return out


def _overrides(base: Any, cfg: BenchConfig) -> list[str]:
    """Which of the scenario's settings this benchmark's flags changed (none with the defaults)."""
    changed = []
    if base.nodes != cfg.nodes:
        changed.append(f"nodes {base.nodes} -> {cfg.nodes}")
    if base.image.layers != (cfg.size,):
        changed.append(f"layers {list(base.image.layers)} -> [{cfg.size}]")
    net = base.network
    if {net.upload.value, net.download.value, net.origin_upload} != {cfg.rate_bytes}:
        changed.append(f"rates -> {cfg.rate}")
    return changed


def _simulate_at(base: Any, cfg: BenchConfig, u: float, rtt: float | None) -> dict[str, Any]:
    from simulations.run import run_scenario
    from simulations.scenario import Distribution

    net = dataclasses.replace(base.network, upload=Distribution(value=u), download=Distribution(value=u),
                              origin_upload=u)
    if rtt is not None:  # origin requests cross the same loaded queues as piece requests
        net = dataclasses.replace(net, rtt=rtt, origin_rtt=rtt)
    image = dataclasses.replace(base.image, layers=(cfg.size,))
    scenario = dataclasses.replace(base.with_nodes(cfg.nodes), image=image, network=net)
    report = run_scenario(scenario, runs=list(cfg.only))
    return {r.run: {"time_to_all_s": r.time_to_all, "p50_s": r.latency.get("p50"), "p99_s": r.latency.get("p99"),
                    "origin_copies": r.origin_copies, "ratio_chunked": r.ratio_chunked} for r in report.runs}


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_shaped", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=16, help="agents, one namespace each (default %(default)s)")
    p.add_argument("--rate", default="50mbit", help="tbf rate of every shaped direction (default %(default)s)")
    p.add_argument("--size", default="256MiB", help="blob size (default %(default)s)")
    p.add_argument("--runs", type=int, default=1, help="repeats of each setup, interleaved (default %(default)s)")
    p.add_argument("--only", default=",".join(MODES), help="setups to run (default %(default)s)")
    p.add_argument("--fetch", choices=("api", "cli"), default="api",
                   help="start fetches from threads at one barrier (api) or as `p2pdist fetch` commands (cli)")
    p.add_argument("--no-probe", action="store_true", help="bound at the nominal rate, skip measuring goodput")
    p.add_argument("--simulate", action="store_true", help="also simulate the scenario and compare")
    p.add_argument("--json", type=Path, dest="json_path", help="write every number to this file")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="work in DIR and keep every log there (registry, tracker, agents); by default a "
                        "temporary directory, deleted unless a run failed")
    p.add_argument("--from-json", type=Path, metavar="FILE",
                   help="measure nothing: simulate and compare with the results saved in FILE by --json")
    args = p.parse_args(argv)
    try:
        parse_rate(args.rate)
        cfg = BenchConfig(nodes=args.nodes, rate=parse_rate(args.rate)[0], size=parse_size(args.size),
                          runs=args.runs, only=tuple(m.strip() for m in args.only.split(",") if m.strip()),
                          probe=not args.no_probe, fetch=args.fetch, simulate=args.simulate)
    except ValueError as e:
        p.error(str(e))
    if cfg.runs < 1 or not cfg.only or any(m not in MODES for m in cfg.only):
        p.error(f"--runs must be >= 1 and --only a comma-separated subset of {','.join(MODES)}")
    return cfg, args


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM takes the same way out as Ctrl-C, so the finally blocks stop processes and delete namespaces.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.shaped_report import ConsoleReporter, print_results

    cfg, args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    reporter = ConsoleReporter()
    if args.from_json:
        result = BenchResult.from_json(json.loads(args.from_json.read_text()))
    else:
        try:
            result = run_benchmark(cfg, reporter, workdir=args.keep)
        except (ClusterError, OSError, RuntimeError) as e:
            reporter.console.print(f"[red]bench_shaped: {e}")
            return 1
        except KeyboardInterrupt:
            reporter.console.print("[yellow]interrupted: processes stopped, namespaces deleted")
            return 130
    # Measurements are shown and saved before the simulator runs: they took minutes, it may fail.
    print_results(result, reporter.console)
    save(result, args.json_path, reporter)
    status = 0 if all(r.ok for r in result.runs) else 1
    if cfg.simulate or args.from_json:
        reporter.step(f"simulating {SCENARIO.relative_to(ROOT)}")
        try:
            result.simulation = simulate(result.config, result.goodput, result.loaded_rtt("p2pdist"))
        except Exception as e:  # the simulator is another package, often mid-change: keep what we measured
            reporter.console.print(f"[red]bench_shaped: the simulation failed: {type(e).__name__}: {e}")
            return 1
        print_results(result, reporter.console, runs=False)
        save(result, args.json_path, reporter)
    return status


def save(result: BenchResult, path: Path | None, reporter: Reporter) -> None:
    if path is not None:
        path.write_text(json.dumps(result.to_json(), indent=2))
        reporter.step(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
