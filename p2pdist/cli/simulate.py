"""`p2pdist simulate SCENARIO`: predict distribution on thousands of nodes before deploying.

Wired into the CLI with ``add_parser(subparsers)`` and ``run(args)``. The simulator lives in the
top-level ``simulations`` package and runs the same core policies the agents ship.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  p2pdist simulate simulations/scenarios/flash-100.toml
  p2pdist simulate simulations/scenarios/flash-1000.toml --runs p2pdist,origin-only --out results/
  p2pdist simulate simulations/scenarios/flash-100.toml --nodes 500 --seed 7 --json result.json
  p2pdist simulate simulations/scenarios/flash-100.toml --sweep 10,100,1000 --runs p2pdist,kraken
  p2pdist simulate simulations/scenarios/flash-100.toml --runs p2pdist --seeds 1-6

Runs are p2pdist, origin-only, pull-through-cache, kraken and dragonfly (default: the scenario's
`runs`, else all). --out writes <name>.json and the PNG plots (completion CDF, origin egress,
time to all vs N, ratio to the chunked bound vs N). The same scenario and seed give the same numbers;
another seed gives other random choices, often a few percent apart: judge a what-if with --seeds.

With the compiled core on Linux, the simulator's objects sit on transparent huge pages where the
kernel offers them (faster at thousands of nodes, same numbers); P2PDIST_SIM_HUGEPAGES=0 turns that off.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="simulate distribution to a cluster (flow-level, same policies as the agents)",
        description="Simulate a TOML scenario: the time until every node has the image, origin load and tail "
                    "latency, for p2pdist and the baselines, against the fluid and chunked bounds.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", type=Path, help="scenario TOML file (see simulations/scenarios/)")
    p.add_argument("--runs", help="comma-separated runs, e.g. p2pdist,origin-only (default: the scenario's)")
    p.add_argument("--nodes", type=int, help="override the scenario's node count")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--sweep", help="comma-separated node counts for the time-to-all vs N plots")
    p.add_argument("--seeds", help="also run every run once per seed, e.g. 1-6 or 1,5,9, and report mean, min "
                                   "and max: one seed's result is not a trend")
    p.add_argument("--out", type=Path, help="directory for <name>.json and the PNG plots")
    p.add_argument("--json", type=Path, dest="json_path", help="write the JSON result to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the table")


# The simulator and its plotting are an extra: a node's daemon needs neither (tests/test_packaging.py).
SIM_EXTRA = ("p2pdist simulate needs the simulator extra, which this install lacks (missing module {name!r}): "
             "pip install 'p2pdist[sim]' (scripts/setup.sh installs it)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from simulations import native
        from simulations.report import print_table, write_json, write_plots
        from simulations.run import PROFILES, run_scenario, run_seeds, run_sweep
        from simulations.scenario import load_scenario
        from simulations.units import ScenarioError
    except ModuleNotFoundError as e:
        print(SIM_EXTRA.format(name=e.name), file=sys.stderr)
        return 2

    try:
        scenario = load_scenario(args.scenario)
        if args.nodes is not None:
            if args.nodes <= scenario.seeds:
                raise ScenarioError(f"--nodes must exceed the scenario's {scenario.seeds} seeds")
            scenario = scenario.with_nodes(args.nodes)
        if args.seed is not None:
            scenario = dataclasses.replace(scenario, seed=args.seed)
        runs = tuple(r.strip() for r in args.runs.split(",") if r.strip()) if args.runs else scenario.runs
        for r in runs:
            if r not in PROFILES:
                raise ScenarioError(f"--runs: unknown run {r!r}; choose from {', '.join(PROFILES)}")
        sizes = _sizes(args.sweep) if args.sweep else scenario.sweep
        seeds = _seeds(args.seeds) if args.seeds is not None else ()
    except ScenarioError as e:
        print(f"p2pdist simulate: {e}", file=sys.stderr)
        return 2

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 140)
    say = None if args.quiet else (lambda msg: console.print(f"[dim]simulating {msg}[/dim]"))
    if native.CORE != "compiled" and not args.quiet:
        # Same numbers, several times the wall time: worth saying before a long run starts.
        console.print(f"[yellow]simulator core: {native.CORE}[/yellow]")
    report = run_scenario(scenario, runs, progress=say)
    if sizes:
        report.sweep = run_sweep(scenario, sizes, runs, progress=say)
    if seeds:
        report.seeds = run_seeds(scenario, seeds, runs, progress=say)
    print_table(report, console)
    if args.json_path:
        write_json(report, args.json_path)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(report, args.out / f"{scenario.name}.json")
        for path in write_plots(report, args.out):
            console.print(f"wrote {path}")
    return 0


def _sizes(text: str) -> tuple[int, ...]:
    from simulations.units import ScenarioError

    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ScenarioError(f"--sweep: expected node counts like 10,100,1000, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ScenarioError("--sweep: node counts must be >= 1")
    return sizes


def _seeds(text: str) -> tuple[int, ...]:
    """``1-6`` or ``1,5,9`` (or both: ``1-3,10``) into distinct seeds, in order."""
    from simulations.units import ScenarioError

    seeds: list[int] = []
    try:
        for part in (x.strip() for x in text.split(",") if x.strip()):
            first, dash, last = part.partition("-")
            seeds.extend(range(int(first), int(last) + 1) if dash else [int(part)])
    except ValueError:
        raise ScenarioError(f"--seeds: expected seeds like 1-6 or 1,5,9, got {text!r}") from None
    seeds = list(dict.fromkeys(seeds))
    if not seeds or min(seeds) < 0:
        raise ScenarioError(f"--seeds: expected non-negative seeds like 1-6, got {text!r}")
    if len(seeds) > 1000:
        raise ScenarioError(f"--seeds: {len(seeds)} seeds is more runs than anyone wants to wait for; at most 1000")
    return tuple(seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pdist")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
