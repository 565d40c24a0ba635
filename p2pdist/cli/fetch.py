"""`p2pdist fetch`: asks the local daemon for a blob and shows its progress."""

from __future__ import annotations

import contextlib
import json
import sys

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


async def run_fetch(ref: str, api: str, as_json: bool) -> int:
    err = Console(stderr=True)
    try:
        async with aiohttp.ClientSession() as session, session.post(
            f"http://{api}/v1/fetch", json={"ref": ref}, timeout=aiohttp.ClientTimeout(total=None)
        ) as resp:
            if resp.status != 200:
                body = await resp.text()
                with contextlib.suppress(ValueError, KeyError):
                    body = json.loads(body)["error"]
                err.print(f"[red]p2pdist fetch: {body}")
                return 2
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                          disable=as_json or not err.is_terminal) as progress:
                task = progress.add_task(ref.rsplit("@", 1)[-1][:19], total=None)
                async for raw in resp.content:
                    event = json.loads(raw)
                    if "error" in event:
                        err.print(f"[red]p2pdist fetch: {event['error']}")
                        return 1
                    if event.get("size"):
                        progress.update(task, total=event["size"], completed=event.get("have", event["size"]))
                    if event.get("done"):
                        progress.update(task, completed=event["size"])
                        _report(event, as_json)
                        return 0
    except aiohttp.ClientConnectorError:
        err.print(f"[red]p2pdist fetch: no daemon answers at {api}; start one with `p2pdist daemon`")
        return 1
    err.print("[red]p2pdist fetch: the daemon closed the connection before finishing")
    return 1


def _report(event: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(event))
        return
    mib = event["size"] / (1 << 20)
    print(f"{event['path']}  {mib:.1f} MiB in {event['seconds']:.2f}s  "
          f"(peers {event['from_peers'] / (1 << 20):.1f} MiB, origin {event['from_origin'] / (1 << 20):.1f} MiB)"
          + ("  [already cached]" if event.get("cached") else ""))
    sys.stdout.flush()
