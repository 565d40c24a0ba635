"""The flash crowd: every node asks its agent for every blob of the image at the same moment.

Each (node, blob) is one POST /v1/fetch to that node's local API; the NDJSON progress lines update
the shared :class:`~p2pdist.cli.demo.results.BlobFetch` records a display can poll while this runs.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from p2pdist.cli.demo.image import Image
from p2pdist.cli.demo.results import BlobFetch, NodeRun

MAX_LINE = 64 * 1024  # one progress line; anything longer is not from our API
STALL_TIMEOUT = 30.0  # seconds without a byte of progress on any node before the demo gives up


def plan(nodes: list[tuple[str, str]], image: Image) -> list[NodeRun]:
    """One NodeRun per (name, API base URL), each with a record per blob of the image."""
    return [NodeRun(name, api, [BlobFetch(b.digest, b.size) for b in image.blobs]) for name, api in nodes]


async def _fetch(session: aiohttp.ClientSession, api: str, ref: str, record: BlobFetch, started: float) -> None:
    try:
        async with session.post(f"{api}/v1/fetch", json={"ref": ref}) as response:
            if response.status != 200:
                body = (await response.content.read(2000)).decode(errors="replace")
                record.error = f"the agent refused the fetch: {response.status} {body.strip()}"
                return
            while line := await response.content.readline():
                if len(line) > MAX_LINE:
                    record.error = "the agent sent an oversized progress line"
                    return
                event = json.loads(line)
                if "error" in event:
                    record.error = str(event["error"])
                    return
                record.have = int(event.get("have", record.have))
                record.from_peers = int(event.get("from_peers", record.from_peers))
                record.from_origin = int(event.get("from_origin", record.from_origin))
                if event.get("done"):
                    record.seconds = time.monotonic() - started
                    record.cached = bool(event.get("cached", False))
                    record.path = str(event["path"])
                    record.have = record.size
                    record.done = True
                    return
        record.error = "the agent closed the connection before the blob was done"
    except (aiohttp.ClientError, ValueError, KeyError) as e:
        record.error = f"fetch through {api} failed: {e}"


async def _watch(runs: list[NodeRun], tasks: list[asyncio.Task], timeout: float, stall: float) -> str | None:
    """Wait for the tasks; the reason to give up (``--timeout``, or no progress anywhere for ``stall``)."""
    started = last_change = time.monotonic()
    last: tuple[int, int] | None = None
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=min(1.0, timeout))
        now = time.monotonic()
        state = (sum(run.have for run in runs), sum(b.done for run in runs for b in run.blobs))
        if state != last:
            last, last_change = state, now
        if pending and now - started >= timeout:
            return f"not done after {timeout:g}s (--timeout)"
        if pending and now - last_change >= stall:
            return f"stuck: no progress on any node for {stall:g}s"
    return None


async def fetch_everywhere(runs: list[NodeRun], registry: str, repository: str, timeout: float,
                           stall: float = STALL_TIMEOUT) -> None:
    """Fetch every blob on every node at once; records errors instead of raising.

    Gives up on what is still running after ``timeout``, or as soon as nothing moved for ``stall``
    seconds: a healthy swarm always makes progress, so a stuck fetch is reported, not waited out.
    """
    connector = aiohttp.TCPConnector(limit=0)  # one connection per (node, blob): the crowd starts together
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        started = time.monotonic()
        tasks = [asyncio.create_task(_fetch(session, run.api, f"{registry}/{repository}@{blob.digest}", blob, started))
                 for run in runs for blob in run.blobs]
        try:
            reason = await _watch(runs, tasks, timeout, stall)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if reason is not None:
        for run in runs:
            for blob in run.blobs:
                if not blob.done and blob.error is None:
                    blob.error = f"{reason} (had {blob.have} of {blob.size} bytes)"
