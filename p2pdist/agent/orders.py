"""Preheat orders: the agent polls the tracker for blobs it was picked to fetch ahead of any pull
(tracker/preheat.py), fetches them through its usual swarm, and reports each one done or failed.

A poll every ``interval`` seconds (the tracker says how often: 15 s by default) is also how the
tracker knows this node is alive to be picked. An order's fetch is the same as a pull's: peers
first, the origin under leases, with this node's configured upstream credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from p2pdist.agent.tracker_client import TrackerUnavailable
from p2pdist.core.names import InvalidName
from p2pdist.core.reference import parse_reference
from p2pdist.logs import log_event

if TYPE_CHECKING:
    from p2pdist.agent.node import Agent

log = logging.getLogger("p2pdist.orders")

DEFAULT_INTERVAL = 15.0
MAX_AT_ONCE = 4  # orders fetched at once; the rest wait (a preheat must not starve pulls)


class OrderTaker:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._done: list[tuple[str, str]] = []
        self._failed: list[tuple[str, str, str]] = []
        self._ended = asyncio.Event()  # an order ended: report it now, not at the next poll
        self._slots = asyncio.Semaphore(MAX_AT_ONCE)
        self._running: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        tracker = self.agent.tracker
        assert tracker is not None
        while True:
            done, failed = self._done, self._failed
            self._done, self._failed = [], []
            interval = DEFAULT_INTERVAL
            self._ended.clear()  # before the poll: an order ending meanwhile wakes the next one
            try:
                reply = await tracker.orders({"node": self.agent.node, "done": done, "failed": failed})
                interval = min(3600.0, max(0.2, float(reply.get("interval") or DEFAULT_INTERVAL)))
                for order in reply["fetch"]:  # the tracker hands out a bounded number per poll
                    if isinstance(order, dict):
                        self._start(order)
            except TrackerUnavailable as e:
                self._done, self._failed = done + self._done, failed + self._failed  # said next time
                log_event(log, logging.DEBUG, "orders_unavailable", why=str(e))
            except (TypeError, ValueError) as e:  # a reply this agent cannot read: poll again later
                log_event(log, logging.WARNING, "orders_unreadable", why=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), interval)

    def _start(self, order: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._fetch(str(order.get("job", "")), str(order.get("ref", ""))))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _fetch(self, job: str, ref: str) -> None:
        try:
            parsed = parse_reference(ref)
            if parsed.digest is None:
                raise InvalidName(f"{ref!r} names no digest")
            async with self._slots:
                # The job's size is not passed on: the origin's word decides how much room to make,
                # never a number in a job (a huge one would empty the cache on its way to failing).
                _swarm, done = self.agent.fetch(parsed.registry, parsed.repository, parsed.digest)
                await done
            self._done.append((job, ref))
            log_event(log, logging.INFO, "preheated", blob=str(parsed.digest), ref=ref, job=job)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure (a bad ref, the origin, the disk) is the operator's to read
            self._failed.append((job, ref, f"{type(e).__name__}: {e}"))
            log_event(log, logging.WARNING, "preheat_failed", ref=ref, job=job, why=str(e))
        self._ended.set()

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
