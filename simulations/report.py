"""Output: a rich summary table, a JSON file, and PNG plots (completion CDF, origin egress over time,
swarm throughput and the capacity lost over time, time to all vs N on a log axis, ratio to the
chunked bound vs N)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .run import Report, seed_spread
from .units import human_bytes

COLOURS = {"p2pdist": "tab:blue", "origin-only": "tab:red", "pull-through-cache": "tab:orange",
           "kraken": "tab:green", "dragonfly": "tab:purple"}


def _secs(value: float | None) -> str:
    return "did not finish" if value is None else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    sc, b = report.scenario, report.bounds
    table = Table(title=f"{sc.name}: {sc.nodes} nodes, {human_bytes(sc.image.size)} in {int(b['pieces'])} pieces, "
                        f"{sc.arrival.pattern} arrival, seed {sc.seed}")
    for col in ("run", "time to all", "x chunked", "x fluid", "p50", "p99", "origin egress", "done/left",
                "wall"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in report.runs:
        table.add_row(
            r.run, _secs(r.time_to_all), _ratio(r.ratio_chunked), _ratio(r.ratio_fluid),
            _secs(r.latency.get("p50")), _secs(r.latency.get("p99")),
            f"{human_bytes(r.origin_bytes)} ({r.origin_copies:.2f}x)", f"{r.completed}/{r.departed}",
            f"{r.counters['wall_seconds']:.1f} s",
        )
    table.caption = (f"bounds: fluid {b['fluid']:.2f} s, chunked {b['chunked']:.2f} s; "
                     f"simulator core: {report.core}, memory: {report.memory}")
    console.print(table)
    if report.sweep:
        sweep = Table(title="time to all vs N")
        for col in ("N", "run", "time to all", "x chunked", "origin egress", "wall"):
            sweep.add_column(col, justify="right")
        for p in report.sweep:
            sweep.add_row(str(p["nodes"]), p["run"], _secs(p["time_to_all"]), _ratio(p["ratio_chunked"]),
                          f"{p['origin_copies']:.2f}x", f"{p['wall_seconds']:.1f} s")
        console.print(sweep)
    if report.seeds:
        spread = seed_spread(report.seeds)
        seeds = Table(title=f"over {len({p['seed'] for p in report.seeds})} seeds",
                      caption="compare what-ifs by their means, against this spread")
        for col in ("run", "time to all: mean", "min", "max", "x chunked: mean", "min", "max", "finished"):
            seeds.add_column(col, justify="left" if col == "run" else "right")
        for run, st in spread.items():
            seeds.add_row(
                run, _secs(st.get("time_to_all_mean")), _secs(st.get("time_to_all_min")),
                _secs(st.get("time_to_all_max")), _ratio(st.get("ratio_chunked_mean")),
                _ratio(st.get("ratio_chunked_min")), _ratio(st.get("ratio_chunked_max")),
                f"{int(st['finished'])}/{int(st['seeds'])}",
            )
        console.print(seeds)


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=1, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def write_plots(report: Report, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    out.mkdir(parents=True, exist_ok=True)
    name = report.scenario.name
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in report.runs:
        if r.completion_times:
            n = r.nodes
            ys = [(i + 1) / n for i in range(len(r.completion_times))]
            ax.step(r.completion_times, ys, where="post", label=r.run, color=COLOURS.get(r.run))
    ax.axvline(report.bounds["chunked"], color="grey", linestyle="--", label="chunked bound")
    ax.set(xlabel="seconds since the first node started", ylabel="fraction of nodes with the image",
           title=f"{name}: completion CDF", ylim=(0, 1.02))
    ends = [r.completion_times[-1] for r in report.runs if r.completion_times]
    if ends and max(ends) > 20 * max(min(ends), 1e-9):
        ax.set_xscale("log")  # baselines can be 100x slower: a log axis keeps everyone readable
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{name}-cdf.png"))

    fig, (rate_ax, total_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    p2p_end = max((r.completion_times[-1] for r in report.runs if r.run == "p2pdist" and r.completion_times),
                  default=None)
    size = report.bounds["image_bytes"]
    for r in report.runs:
        if not r.origin_rate:
            continue
        xs = [i * r.bin_seconds for i in range(len(r.origin_rate))]
        rate_ax.plot(xs, [v * 8 / 1e9 for v in r.origin_rate], label=r.run, color=COLOURS.get(r.run))
        total, cumulative = 0.0, []
        for v in r.origin_rate:
            total += v * r.bin_seconds
            cumulative.append(total / size)
        total_ax.plot([x + r.bin_seconds for x in xs], cumulative, label=r.run, color=COLOURS.get(r.run))
    if p2p_end:
        rate_ax.set_xlim(0, 1.5 * p2p_end)  # the P2P runs' window; origin-only goes on far longer
    rate_ax.set(xlabel="seconds", ylabel="origin egress (Gbit/s)", title=f"{name}: origin egress rate")
    total_ax.set(xlabel="seconds", ylabel="origin egress (image copies)", title="origin egress, cumulative",
                 xscale="log", yscale="log")
    for ax in (rate_ax, total_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{name}-origin.png"))

    # How fast the swarm moved against what every uplink together could carry, and the capacity that
    # went unused so far, in seconds of all uplinks: in a flash crowd on equal links the time to all
    # is the fluid bound plus where that curve ends, and it shows when the seconds were lost.
    ceiling = report.bounds["uplinks"]
    window = 1.2 * p2p_end if p2p_end else math.inf
    shown = 0.0  # the largest loss of the runs done within the window (a baseline's runs off the top)
    fig, (rate_ax, lost_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in report.runs:
        if not r.delivered_rate:
            continue
        ends = [(i + 1) * r.bin_seconds for i in range(len(r.delivered_rate))]
        # Bytes count when their piece is stored, so a bin can show a wave of pieces that travelled
        # over the bins before it: three bins averaged keep the line readable.
        rates = r.delivered_rate
        smooth = [sum(rates[max(0, i - 1):i + 2]) / len(rates[max(0, i - 1):i + 2]) for i in range(len(rates))]
        rate_ax.plot([x - r.bin_seconds / 2 for x in ends], [v * 8 / 1e9 for v in smooth], label=r.run,
                     color=COLOURS.get(r.run))
        stored, lost = 0.0, []
        for x, v in zip(ends, rates, strict=True):
            stored += v * r.bin_seconds
            lost.append(x - stored / ceiling)
        if r.completion_times and r.completion_times[-1] <= window:
            shown = max(shown, *lost)
        lost_ax.plot(ends, lost, label=r.run, color=COLOURS.get(r.run))
    rate_ax.axhline(ceiling * 8 / 1e9, color="grey", linestyle="--", label="every uplink at once")
    if p2p_end:
        for ax in (rate_ax, lost_ax):
            ax.set_xlim(0, window)
        lost_ax.set_ylim(0, 1.1 * shown or 1.0)
    rate_ax.set(xlabel="seconds", ylabel="bytes stored at the nodes (Gbit/s)",
                title=f"{name}: swarm throughput (peers and origin)")
    lost_ax.set(xlabel="seconds", ylabel="seconds of every uplink unused",
                title="capacity lost so far (elapsed - stored / every uplink)")
    for ax in (rate_ax, lost_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{name}-uplinks.png"))

    points = report.sweep or [
        {"nodes": report.scenario.nodes - report.scenario.seeds, "run": r.run, "time_to_all": r.time_to_all,
         "ratio_chunked": r.ratio_chunked, "chunked": report.bounds["chunked"]} for r in report.runs]
    runs = list(dict.fromkeys(p["run"] for p in points))
    for key, ylabel, title, suffix in (
        ("time_to_all", "time until all nodes have the image (s)", "time to all vs N", "vs-n"),
        ("ratio_chunked", "time to all / chunked bound", "ratio to the chunked bound vs N", "ratio"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for run in runs:
            pts = sorted((p["nodes"], p[key]) for p in points if p["run"] == run and p[key] is not None)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=run, color=COLOURS.get(run))
        if key == "time_to_all":
            bound = sorted({(p["nodes"], p["chunked"]) for p in points})
            ax.plot([x for x, _ in bound], [y for _, y in bound], "k--", label="chunked bound")
            ax.set_yscale("log")
        else:
            ax.axhline(1.10, color="grey", linestyle=":", label="1.10 x bound")
            ax.set_yscale("log")
        ax.set_xscale("log")
        # Plain numbers (1.05, 20, 300), not 1.05 x 10^0: log axes spanning less than a decade label
        # their minor ticks, and the ratios of the P2P runs sit just above 1.
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(LogFormatter())
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set(xlabel="nodes (N)", ylabel=ylabel, title=f"{name}: {title}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / f"{name}-{suffix}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
