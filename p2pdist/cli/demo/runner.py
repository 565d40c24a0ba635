"""The demo from start to end: image, origin, cluster, flash crowd, checks, report, cleanup."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from p2pdist.cli.demo.cluster import Cluster, ClusterError
from p2pdist.cli.demo.crowd import fetch_everywhere, plan
from p2pdist.cli.demo.display import live_progress, mib, show
from p2pdist.cli.demo.image import build_image
from p2pdist.cli.demo.origin import Origin, OriginUnavailable, choose_origin
from p2pdist.cli.demo.results import DemoResult
from p2pdist.cli.demo.verify import verify_all
from p2pdist.config import ConfigError, parse_size

from ...errors import P2pdistError

REPOSITORY = "p2pdist/demo"
MIN_AGENTS = 2


class UsageError(P2pdistError, ValueError):
    """An option the demo cannot work with; exit status 2."""


@dataclass(frozen=True)
class Options:
    agents: int
    layers: list[int]
    origin: str
    workdir: Path | None
    keep: bool
    json: bool
    timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        if args.agents < MIN_AGENTS:
            raise UsageError(f"--agents must be at least {MIN_AGENTS} (peers need someone to share with)")
        try:
            layers = [parse_size(part) for part in str(args.layers).split(",") if part.strip()]
        except ConfigError as e:
            raise UsageError(f"--layers: {e}") from None
        if not layers or any(size <= 0 for size in layers):
            raise UsageError("--layers needs one or more positive sizes, e.g. 64MiB,32MiB")
        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        workdir = Path(args.workdir).expanduser().resolve() if args.workdir else None
        if workdir is not None and workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise UsageError(f"--workdir {workdir} must be a new or empty directory "
                             "(the demo writes an image, origin storage, agent stores and logs there)")
        return cls(args.agents, layers, args.origin, workdir, args.keep or workdir is not None, args.json,
                   args.timeout)


async def _run(opts: Options, err: Console) -> DemoResult:
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="p2pdist-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda _msg: None) if opts.json else (lambda msg: err.print(f"[dim]{msg}", highlight=False, soft_wrap=True))
    origin: Origin | None = None
    cluster: Cluster | None = None
    try:
        say(f"workdir {workdir}")
        say(f"generating an OCI image: {len(opts.layers)} tar layers of "
            + ", ".join(f"{mib(size)} MiB" for size in opts.layers) + " random bytes")
        image = await asyncio.to_thread(build_image, workdir / "image", opts.layers)
        origin = choose_origin(opts.origin, workdir, image, REPOSITORY)
        await origin.start()
        say(f"origin: {origin.kind} on {origin.host}" + (", pushing the image" if origin.kind == "registry" else ""))
        await origin.publish(image)
        say(f"starting a tracker and {opts.agents} agents on 127.0.0.1")
        # Held before start(): members already running when another fails to start are stopped too.
        cluster = Cluster(workdir, origin.host, opts.agents)
        await cluster.start()
        runs = plan([(node.name, node.url) for node in cluster.nodes], image)
        say(f"flash crowd: {opts.agents} nodes x {len(image.blobs)} blobs, all at once")
        async with live_progress(err, runs, enabled=not opts.json and err.is_terminal):
            await fetch_everywhere(runs, origin.host, REPOSITORY, opts.timeout)
        exited = cluster.exited()
        await verify_all(runs)
        egress = await origin.egress()
        audits = await cluster.tracker_audits()
        return DemoResult(origin.kind, f"{origin.host}/{REPOSITORY}:{image.tag}", image, runs, egress,
                          str(workdir) if opts.keep else None, exited, audits)
    finally:
        if cluster is not None:
            cluster.stop()
        if origin is not None:
            await origin.stop()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _main(opts: Options, err: Console) -> DemoResult:
    # SIGTERM ends the demo like Ctrl-C does: cancelled, children stopped by PID, workdir cleaned.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run(opts, err)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(args: argparse.Namespace) -> int:
    """Run the demo with parsed arguments; returns the exit status."""
    out, err = Console(), Console(stderr=True, soft_wrap=True)
    try:
        opts = Options.from_args(args)
    except UsageError as e:
        err.print(f"[red]p2pdist demo: {e}", highlight=False)
        return 2
    try:
        result = asyncio.run(_main(opts, err))
    except KeyboardInterrupt:
        err.print("[yellow]p2pdist demo: interrupted; stopped every process it started", highlight=False)
        return 130
    except asyncio.CancelledError:  # SIGTERM
        err.print("[yellow]p2pdist demo: terminated; stopped every process it started", highlight=False)
        return 143
    except (OriginUnavailable, ClusterError) as e:
        err.print(f"[red]p2pdist demo: {e}", highlight=False)
        return 2
    except OSError as e:
        err.print(f"[red]p2pdist demo: {e}", highlight=False)
        return 1
    if opts.json:
        print(json.dumps(result.as_dict(), indent=2))
        sys.stdout.flush()
    else:
        show(out, result)
    if not result.ok:
        failed = sum(not b.ok for n in result.nodes for b in n.blobs)
        total = len(result.nodes) * len(result.image.blobs)
        died = f"; {len(result.exited)} process(es) died" if result.exited else ""
        err.print(f"[red]p2pdist demo: {failed} of {total} blob fetches failed or did not match their digest{died}"
                  + ("" if opts.keep else " (rerun with --keep to read the agents' logs)"),
                  highlight=False, soft_wrap=True)
        return 1
    return 0
