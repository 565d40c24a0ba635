"""The demo's own check: hash every file a node reported and compare it with the blob's digest.

The agent already verifies before it commits; this is the demo showing, independently, that what
each node holds is the image it was asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from p2pdist.cli.demo.results import BlobFetch, NodeRun

CHUNK = 1 << 20
PARALLEL = max(1, min(4, os.cpu_count() or 1))  # sha256 releases the GIL: one thread per core


def _hash_file(path: str, algorithm: str) -> tuple[str, int]:
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"{algorithm}:{h.hexdigest()}", size


async def _verify(blob: BlobFetch, gate: asyncio.Semaphore) -> None:
    if not blob.done or blob.path is None:
        return
    async with gate:
        try:
            digest, size = await asyncio.to_thread(_hash_file, blob.path, blob.digest.partition(":")[0])
        except OSError as e:
            blob.error = f"cannot read the reported file {blob.path}: {e}"
            return
    if digest != blob.digest or size != blob.size:
        blob.error = f"{blob.path} holds {size} bytes hashing to {digest}, expected {blob.size} bytes of {blob.digest}"
        return
    blob.verified = True


async def verify_all(runs: list[NodeRun]) -> None:
    """Set ``verified`` (or ``error``) on every done blob of every node."""
    gate = asyncio.Semaphore(PARALLEL)
    await asyncio.gather(*(_verify(blob, gate) for run in runs for blob in run.blobs))
