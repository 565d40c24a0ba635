"""Run a scenario under p2pdist and the baselines, and condense each run into comparable numbers."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import native
from .bounds import chunked_bound, fluid_bound
from .cache import run_cache
from .cluster import Cluster, Outcome, draw_population, make_blobs, population_rng
from .profiles import Profile, dragonfly_profile, kraken_profile, origin_only_profile, p2pdist_profile
from .scenario import Scenario

PROFILES: dict[str, Callable[[Scenario], Profile]] = {
    "p2pdist": p2pdist_profile,
    "origin-only": origin_only_profile,
    "pull-through-cache": lambda s: dataclasses.replace(origin_only_profile(s), name="pull-through-cache"),
    "kraken": kraken_profile,
    "dragonfly": dragonfly_profile,
}


@dataclass
class RunSummary:
    run: str
    policy: dict[str, Any]
    nodes: int
    completed: int
    departed: int
    time_to_all: float | None  # seconds from the first arrival to the last completion; None if cut off
    latency: dict[str, float]  # per-node arrival-to-completion: p50, p90, p99, max, mean
    origin_bytes: float
    origin_copies: float  # origin bytes / image size: 1.0 means every byte left the origin once
    from_peers: float
    ratio_chunked: float | None
    ratio_fluid: float | None
    counters: dict[str, float]
    completion_times: list[float] = field(repr=False)  # sorted, seconds since the first arrival
    origin_rate: list[float] = field(repr=False)  # bytes/s per bin
    bin_seconds: float = 0.0
    # Bytes/s stored at the downloaders per bin, from peers and the origin: against bounds["uplinks"],
    # the share of every uplink's capacity the swarm used at each moment (the ramp at its start).
    delivered_rate: list[float] = field(repr=False, default_factory=list)


@dataclass
class Report:
    scenario: Scenario
    bounds: dict[str, float]
    runs: list[RunSummary]
    sweep: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[dict[str, Any]] = field(default_factory=list)
    # Which simulator core ran (simulations/native.py): "compiled", or "python (<why not>)". The
    # numbers are the same either way; the wall time is not.
    core: str = field(default_factory=lambda: native.CORE)
    # Whether the runs' objects sat on transparent huge pages (huge_pages): "huge pages" or "default".
    # Same numbers; less wall time at thousands of nodes.
    memory: str = field(default_factory=lambda: "huge pages" if _huge else "default")

    def to_json(self) -> dict[str, Any]:
        sc = self.scenario
        return {
            "scenario": {"name": sc.name, "description": sc.description, "seed": sc.seed, "nodes": sc.nodes,
                         "image_bytes": sc.image.size, "layers": list(sc.image.layers),
                         "arrival": sc.arrival.pattern},
            "bounds": self.bounds,
            "runs": [dataclasses.asdict(r) for r in self.runs],
            "sweep": self.sweep,
            "seeds": self.seeds,
            "core": self.core,
            "memory": self.memory,
        }


_huge = False  # huge_pages() installed the arenas (once per process)


def huge_pages() -> bool:
    """CPython's object arenas on transparent huge pages from now on, if the compiled core runs and
    the kernel gives huge pages to memory that asks (transparent_hugepage "always" or "madvise").

    A 10,000-node run reaches ~0.4 GB of small objects at random (every stored piece updates ~40
    neighbours' state); with 4 KiB pages most of those reads miss the TLB as well as the cache.
    simulations/_hugepages.pyx gives pymalloc its arenas from one region advised for huge pages.
    Measured side by side: README. Installed once per process and kept (a sweep's later runs, and
    whatever else the process does, allocate there too). ``P2PDIST_SIM_HUGEPAGES=0`` turns it off.
    """
    global _huge
    if _huge:
        return True
    if native.CORE != "compiled" or not native.huge_pages_allowed():
        return False
    if os.environ.get("PYTHONMALLOC", "").startswith("malloc"):
        return False  # CPython allocates through malloc: pymalloc's arenas are never asked for
    from . import _hugepages

    _huge = _hugepages.install()
    return _huge


_frozen = False  # a finished run's objects sit in gc's permanent generation (see run_one)


def run_one(scenario: Scenario, run: str) -> Outcome:
    """One run of one profile, with the cyclic garbage collector off.

    A run allocates millions of short-lived tuples and transfers that reference counting frees (none
    is part of a cycle), and every collection walks all the live state of the cluster: at 1,000 nodes
    the collector took 40 % of the run, a share that grows with the node count; peak memory was the
    same without it. What the run allocated is then frozen: re-enabled, the collector would first
    walk every one of those objects (1.5 s of a 14 s run at 1,000 nodes). The dead cluster is
    collected when the next run starts, so a sweep holds at most one; a single run leaves it to the
    process's exit.
    """
    global _frozen
    if _frozen:
        gc.unfreeze()
        gc.collect()
        _frozen = False
    profile = PROFILES[run](scenario)
    huge_pages()
    collecting = gc.isenabled()
    gc.disable()
    try:
        if run == "pull-through-cache":
            return run_cache(scenario, profile)
        return Cluster(scenario, profile).run()
    finally:
        if collecting:
            gc.freeze()
            _frozen = True
            gc.enable()


def scenario_bounds(scenario: Scenario) -> dict[str, float]:
    """Fluid and chunked bounds for the nodes that download (seeds help upload)."""
    net = scenario.network
    # The same population the runs see, drawn without building a cluster (a dead cluster left for the
    # collector slowed the run after it by 10-20 %).
    pop = draw_population(scenario, population_rng(scenario))
    down = [pop.down[i] for i in range(scenario.nodes) if i not in pop.seeds]
    size = scenario.image.size
    pieces = sum(b.count for b in make_blobs(scenario, p2pdist_profile(scenario)))
    uploads = pop.up
    u = min(net.origin_upload, statistics.fmean(uploads))
    return {
        "fluid": fluid_bound(size, len(down), net.origin_upload, uploads, min(down)),
        "chunked": chunked_bound(size, len(down), u, pieces),
        "pieces": pieces,
        "image_bytes": size,
        "uplinks": net.origin_upload + sum(uploads),  # bytes/s: every uplink at once, the swarm's ceiling
    }


def summarize(scenario: Scenario, run: str, outcome: Outcome, bounds: dict[str, float]) -> RunSummary:
    rows = [(a, d, left) for a, d, seed, left in zip(outcome.arrived, outcome.done, outcome.seeds, outcome.left,
                                                      strict=True) if not seed]
    first = min((a for a, _, _ in rows if a >= 0), default=0.0)
    done = sorted(d - first for _, d, _ in rows if d >= 0)
    latencies = sorted(d - a for a, d, _ in rows if d >= 0)
    departed = sum(1 for _, d, left in rows if left)
    finished = not outcome.cut_off and len(done) + departed == len(rows)
    t_all = done[-1] if finished and done else None
    size = scenario.image.size
    counters = {k: getattr(outcome, k) for k in (
        "announces", "handouts", "leases_granted", "leases_reassigned", "leases_expired", "digests_rejected",
        "audits", "stalls", "busy_replies", "timeouts", "events", "wall_seconds", "sim_seconds")}
    return RunSummary(
        run=run, policy=outcome.profile.describe(), nodes=len(rows), completed=len(done), departed=departed,
        time_to_all=t_all, latency=_percentiles(latencies), origin_bytes=outcome.origin_bytes,
        origin_copies=outcome.origin_bytes / size, from_peers=float(outcome.from_peers),
        ratio_chunked=t_all / bounds["chunked"] if t_all is not None and bounds["chunked"] else None,
        ratio_fluid=t_all / bounds["fluid"] if t_all is not None and bounds["fluid"] else None,
        counters=counters, completion_times=done,
        origin_rate=[b / outcome.bin_seconds for b in outcome.origin_bins], bin_seconds=outcome.bin_seconds,
        delivered_rate=[b / outcome.bin_seconds for b in outcome.delivered_bins],
    )


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}

    def at(q: float) -> float:
        return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": values[-1], "mean": statistics.fmean(values)}


def run_scenario(scenario: Scenario, runs: Sequence[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> Report:
    bounds = scenario_bounds(scenario)
    summaries = []
    for run in runs or scenario.runs:
        if progress:
            progress(f"{scenario.name}: {run} with {scenario.nodes} nodes")
        summaries.append(summarize(scenario, run, run_one(scenario, run), bounds))
    return Report(scenario, bounds, summaries)


def run_sweep(scenario: Scenario, sizes: Sequence[int], runs: Sequence[str] | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time to all and ratio to the chunked bound for each node count (the vs-N plots)."""
    points = []
    for n in sizes:
        sc = scenario.with_nodes(n)
        bounds = scenario_bounds(sc)
        for run in runs or sc.runs:
            if progress:
                progress(f"{sc.name}: {run} with {n} nodes")
            points.append({"nodes": n, **_point(sc, run, bounds),
                           "chunked": bounds["chunked"], "fluid": bounds["fluid"]})
    return points


def _point(scenario: Scenario, run: str, bounds: dict[str, float]) -> dict[str, Any]:
    """One run condensed to the numbers a sweep or a seed table shows."""
    s = summarize(scenario, run, run_one(scenario, run), bounds)
    return {"run": run, "time_to_all": s.time_to_all, "ratio_chunked": s.ratio_chunked,
            "origin_copies": s.origin_copies, "wall_seconds": s.counters["wall_seconds"]}


def run_seeds(scenario: Scenario, seeds: Sequence[int], runs: Sequence[str] | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Each run once per seed: one seed's time to all can differ by several percent from another's
    (random tie-breaks, handouts, arrival order), so a what-if should be judged over several."""
    points = []
    for seed in seeds:
        sc = dataclasses.replace(scenario, seed=seed)
        bounds = scenario_bounds(sc)
        for run in runs or sc.runs:
            if progress:
                progress(f"{sc.name}: {run} with seed {seed}")
            points.append({"seed": seed, **_point(sc, run, bounds)})
    return points


def seed_spread(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per run: mean, min and max of time to all and of the ratio to the chunked bound, over the
    seeds whose run finished (``finished`` counts them)."""
    out: dict[str, dict[str, float]] = {}
    for run in dict.fromkeys(p["run"] for p in points):
        done = [p for p in points if p["run"] == run and p["time_to_all"] is not None]
        stats: dict[str, float] = {"finished": float(len(done)), "seeds": float(sum(p["run"] == run for p in points))}
        for key in ("time_to_all", "ratio_chunked"):
            values = [p[key] for p in done if p[key] is not None]
            if values:
                stats |= {f"{key}_mean": statistics.fmean(values), f"{key}_min": min(values),
                          f"{key}_max": max(values)}
        out[run] = stats
    return out
