"""Terminal output of the shaped-link benchmark: progress while it runs, rich tables at the end."""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from benchmarks.bench_shaped import BenchResult, RunResult


def mbit(bytes_per_second: float) -> str:
    return f"{bytes_per_second * 8 / 1e6:.1f} Mbit/s"


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def ratio(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


class ConsoleReporter:
    """Steps as log lines; during a run, one bar of bytes received across all nodes."""

    def __init__(self, console: Console | None = None) -> None:
        # A pipe or a log file gets wide tables rather than 80 columns of wrapped cells.
        self.console = console or Console(width=None if sys.stdout.isatty() else 140, log_path=False)
        self._lock = threading.Lock()  # node() is called from every fetch thread
        self._have: dict[str, int] = {}
        self._size = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def step(self, message: str) -> None:
        self.console.log(message)

    @contextlib.contextmanager
    def run(self, name: str, nodes: int, size: int) -> Iterator[None]:
        self._have, self._size = {}, size
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[done]}/{task.fields[nodes]} nodes done"), TimeElapsedColumn())
        with Progress(*columns, console=self.console) as progress:
            self._task = progress.add_task(name, total=nodes * size, done=0, nodes=nodes)
            self._progress = progress
            try:
                yield
            finally:
                self._progress = None

    def node(self, label: str, have: int) -> None:
        with self._lock:
            self._have[label] = have
            total = sum(self._have.values())
            done = sum(1 for v in self._have.values() if v >= self._size)
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, completed=total, done=done)


def print_results(result: BenchResult, console: Console, runs: bool = True) -> None:
    if runs:
        console.print(runs_table(result))
    if result.simulation is not None:
        console.print(simulation_table(result))


def runs_table(result: BenchResult) -> Table:
    cfg = result.config
    link = f"u = {mbit(result.u)} ({result.u_source}"
    link += f", nominal {cfg.rate})" if result.u_source == "measured" else ")"
    table = Table(title=f"{cfg.nodes} nodes, {cfg.size / (1 << 20):.0f} MiB blob in {result.pieces} pieces, "
                        f"every link shaped at {cfg.rate}",
                  caption=f"chunked bound (F/u)(1 + floor(log2 N)/M) = {result.bound:.1f} s with {link}")
    for name in ("run", "nodes ok", "time to all", "p50", "p99", "origin egress", "bound", "x bound",
                 "from peers", "busy replies", "loaded rtt", "links busy", "agents CPU", "machine busy"):
        table.add_column(name, justify="left" if name == "run" else "right", no_wrap=name == "links busy")
    for run in result.runs:
        table.add_row(*_run_row(run, cfg.rate_bytes))
    if any(run.links for run in result.runs):
        table.caption += ("\nlinks busy: the nodes' downloads / their uploads / the origin's upload, "
                          "bytes on the wire over the run as shares of the shaped rate")
    return table


def _run_row(run: RunResult, rate: float) -> list[str]:
    ok = sum(1 for n in run.nodes if n.ok)
    peers = sum(n.from_peers for n in run.nodes)
    got = sum(n.from_peers + n.from_origin for n in run.nodes)
    errors = {n.error for n in run.nodes if not n.ok}
    status = f"{ok}/{len(run.nodes)}" + (f" [red]({'; '.join(sorted(errors))[:80]})" if errors else "")
    return [f"{run.mode} #{run.repeat + 1}", status, seconds(run.time_to_all), seconds(run.percentile(0.5)),
            seconds(run.percentile(0.99)), f"{run.egress_ratio:.2f} x blob", seconds(run.bound), ratio(run.ratio),
            f"{peers / got:.0%}" if got else "—", _count(run.counters.get("busy_replies")),
            "—" if run.loaded_rtt is None else f"{run.loaded_rtt * 1000:.0f} ms", _links_busy(run.link_use(rate)),
            f"{run.cpu_seconds:.0f} s", f"{run.cpu_busy:.0%}"]


def _links_busy(use: dict[str, float]) -> str:
    if not use:
        return "—"
    return f"{use['nodes down'] * 100:.0f}/{use['nodes up'] * 100:.0f}/{use['origin up'] * 100:.0f}%"


def _count(value: float | None) -> str:
    """A summed agent counter; — for results saved before the benchmark scraped them."""
    return "—" if value is None else f"{value:.0f}"


def measured_time_to_all(result: BenchResult, mode: str) -> float | None:
    """Median over the repeats of one setup (None if any repeat failed)."""
    times = [r.time_to_all for r in result.runs if r.mode == mode]
    if not times or any(t is None for t in times):
        return None
    return statistics.median(t for t in times if t is not None)


def simulation_table(result: BenchResult) -> Table:
    sim = result.simulation
    assert sim is not None
    note = "overrides: " + ", ".join(sim["overridden"]) if sim["overridden"] else "the scenario as written"
    table = Table(title="simulated vs measured time to all",
                  caption=f"{sim['scenario']}: {note}; "
                          "target: sim/real within 0.85-1.15")
    table.add_column("run")
    table.add_column("measured", justify="right")
    for label, at in sim["at"].items():
        table.add_column(f"sim @ {mbit(at['u_Bps'])} ({label})", justify="right")
        table.add_column("sim/real", justify="right")
    for mode in result.config.only:
        real = measured_time_to_all(result, mode)
        row = [mode, seconds(real)]
        for at in sim["at"].values():
            t = at["runs"].get(mode, {}).get("time_to_all_s")
            row += [seconds(t), ratio(t / real if t is not None and real else None)]
        table.add_row(*row)
    return table
