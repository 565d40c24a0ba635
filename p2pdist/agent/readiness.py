"""``/readyz``: whether this agent can do its work now, as probes and operators ask it.

Two checks: the store takes a write (a full or read-only disk fails it), and the tracker answers
its ``/healthz`` (without it pulls still work, from the origin alone: /healthz stays ok, /readyz
says why the cluster is not helping). The tracker's answer is kept for ``TRACKER_TTL`` seconds, so
probes never add up to load on it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

TRACKER_TTL = 5.0
TRACKER_TIMEOUT = 2.0


class Readiness:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._tracker: tuple[float, str | None] | None = None  # (checked at, why not or None)

    async def check(self) -> dict[str, str]:
        """Each check's verdict: "ok", or why not."""
        store = await asyncio.to_thread(self._store_writable)
        return {"store": store or "ok", "tracker": await self._tracker_reachable() or "ok"}

    def _store_writable(self) -> str | None:
        path = self.agent.store.root / f".readyz-{os.getpid()}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(path)
        except OSError as e:
            return f"the store at {self.agent.store.root} takes no writes: {e.strerror or e}"
        return None

    async def _tracker_reachable(self) -> str | None:
        client = self.agent.tracker
        if client is None:
            return None  # a node on its own: nothing to reach
        url = client.url.removesuffix("/v1/announce")  # the replica the agent announces to now
        now = time.monotonic()
        if self._tracker is not None and now - self._tracker[0] < TRACKER_TTL:
            return self._tracker[1]
        why = None
        try:
            async with self.agent.session.get(
                url.rstrip("/") + "/healthz", ssl=self.agent.ssl,
                timeout=aiohttp.ClientTimeout(total=TRACKER_TIMEOUT),
            ) as resp:
                if resp.status != 200:
                    why = f"tracker {url} answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            why = f"tracker {url} unreachable: {e or type(e).__name__}"
        self._tracker = (now, why)
        return why
