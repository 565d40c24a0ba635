"""What the demo shows: live per-node progress while the crowd runs, then a table and a summary."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from p2pdist.cli.demo.results import DemoResult, NodeRun

MiB = 1 << 20
REFRESH = 0.1  # seconds between progress updates


def mib(n: int) -> str:
    return f"{n / MiB:.1f}"


@contextlib.asynccontextmanager
async def live_progress(console: Console, runs: list[NodeRun], enabled: bool) -> AsyncIterator[None]:
    """Per-node bars (bytes done, rate, peers vs origin) refreshed from the runs until the block ends."""
    progress = Progress(
        TextColumn("{task.description:>8}"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TextColumn("peers {task.fields[peers]:>7} MiB · origin {task.fields[origin]:>7} MiB"),
        TimeElapsedColumn(), console=console, disable=not enabled, transient=False,
    )
    tasks = {run.node: progress.add_task(run.node, total=run.size, peers="0.0", origin="0.0") for run in runs}

    def refresh() -> None:
        for run in runs:
            progress.update(tasks[run.node], completed=run.have, peers=mib(run.from_peers), origin=mib(run.from_origin))

    async def keep_refreshing() -> None:
        while True:
            refresh()
            await asyncio.sleep(REFRESH)

    with progress:
        updater = asyncio.create_task(keep_refreshing())
        try:
            yield
        finally:
            updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await updater
            refresh()


def table(result: DemoResult) -> Table:
    t = Table(title=f"flash crowd: {len(result.nodes)} nodes x {len(result.image.blobs)} blobs "
                    f"({mib(result.image_size)} MiB)")
    t.add_column("node")
    t.add_column("time (s)", justify="right")
    t.add_column("MiB from peers", justify="right")
    t.add_column("MiB from origin", justify="right")
    cached = any(n.from_cache for n in result.nodes)
    if cached:
        t.add_column("MiB cached", justify="right")
    t.add_column("status")
    for node in result.nodes:
        seconds = "-" if node.seconds is None else f"{node.seconds:.2f}"
        status = "[green]ok" if node.ok else f"[red]{len(node.errors)} failed"
        row = [node.node, seconds, mib(node.from_peers), mib(node.from_origin)]
        if cached:
            row.append(mib(node.from_cache))
        t.add_row(*row, status)
    return t


def summary(result: DemoResult) -> list[str]:
    origin = "docker-registry (CNCF distribution)" if result.origin_kind == "registry" else "embedded OCI origin"
    done = result.all_done_seconds
    lines = [
        f"image:            {result.reference} ({len(result.image.layers)} layers + config)",
        f"image size:       {mib(result.image_size)} MiB ({result.image_size} bytes)",
        f"origin egress:    {mib(result.egress)} MiB, counted at the origin: {origin}",
        f"egress / image:   {result.egress_ratio:.2f}  (every node pulling from the origin: {len(result.nodes)}.00)",
        f"audits:           {result.audits} piece(s) fetched twice: a fresh tracker checks a new node's first "
        "digests against a second origin copy before anyone trusts them",
        "all nodes done:   " + ("-" if done is None else f"{done:.2f} s after the crowd started"),
    ]
    return lines


def show(console: Console, result: DemoResult) -> None:
    console.print(table(result))
    for line in summary(result):
        console.print(line, highlight=False, soft_wrap=True)
    for error in result.errors:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
    if result.workdir:
        console.print(f"workdir kept: {result.workdir} (logs in {result.workdir}/logs)", highlight=False,
                      soft_wrap=True)
