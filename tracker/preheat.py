"""Preheat: spread an image's blobs to some of the cluster's nodes before anyone pulls it.

An operator (``p2pdist preheat``, with the cluster secret) posts a job: the blobs, and how many
nodes (or what share of them) should hold them. The tracker picks that many among the nodes that
polled it lately and queues an order for each. Every agent polls ``/v1/orders`` every
``preheat_poll`` seconds (15; 10,000 nodes: ~670 polls/s; the poll is also how the tracker knows
it is alive), fetches what it is
ordered to through the usual swarm (peers first, the origin under leases), and reports each order
done or failed at its next poll, which it sends at once when an order ends. The job's progress
counts those reports.

Bounded: jobs (the oldest finished goes first), blobs per job, orders queued per node. In memory
for one tracker; in Redis (``RedisPreheat``) for replicas, which share jobs, orders and the list of
live nodes.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from .errors import TrackerError

LIVE_POLLS = 3  # a node that polled within this many poll intervals is alive and may be picked
MAX_JOBS = 256
MAX_BLOBS = 256  # per job: an image has tens of layers
MAX_ORDERS = 1024  # queued per node (a job that would go past it is refused for that node: see create)
PER_POLL = 64  # orders handed out per poll; the reply asks the agent back at once while more wait
JOB_TTL = 86_400  # seconds a job's progress is kept (Redis)


class PreheatError(TrackerError):
    """A preheat job the tracker refuses (bad request, or no live nodes to send it to)."""


@dataclass(frozen=True, slots=True)
class Order:
    job: str
    ref: str  # REGISTRY/REPO@DIGEST
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "ref": self.ref, "size": self.size}


@dataclass
class Job:
    id: str
    blobs: list[tuple[str, int]]
    nodes: list[str]
    done: dict[str, set[str]] = field(default_factory=dict)  # ref -> nodes that hold it
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # ref -> node -> why
    picked: set[str] = field(default_factory=set)  # ``nodes`` as a set (reports are checked against it)

    def __post_init__(self) -> None:
        self.picked = set(self.nodes)

    def progress(self) -> dict[str, Any]:
        blobs = [{"ref": ref, "size": size, "done": len(self.done.get(ref, ())),
                  "failed": self.failed.get(ref, {})} for ref, size in self.blobs]
        finished = all(b["done"] + len(b["failed"]) >= len(self.nodes) for b in blobs)
        return {"job": self.id, "nodes": self.nodes, "blobs": blobs, "finished": finished}


def how_many(live: int, count: int | None, share: float | None) -> int:
    if count is not None:
        return min(count, live)
    assert share is not None
    return min(live, max(1, math.ceil(share * live)))


def check_job(blobs: list[tuple[str, int]], count: int | None, share: float | None) -> None:
    if not blobs or len(blobs) > MAX_BLOBS:
        raise PreheatError(f"a job names 1 to {MAX_BLOBS} blobs, got {len(blobs)}")
    if (count is None) == (share is None):
        raise PreheatError("give either nodes (a number) or share (a fraction of the live nodes)")
    if count is not None and count < 1:
        raise PreheatError("nodes must be at least 1")
    if share is not None and not 0 < share <= 1:
        raise PreheatError("share must be in (0, 1]")


class PreheatDesk(Protocol):
    async def poll(self, node: str, now: float, done: list[tuple[str, str]],
                   failed: list[tuple[str, str, str]]) -> list[Order]: ...

    async def create(self, blobs: list[tuple[str, int]], count: int | None, share: float | None,
                     now: float) -> dict[str, Any]: ...

    async def progress(self, job: str) -> dict[str, Any] | None: ...

    async def waiting(self, node: str) -> int:
        """Orders queued for ``node`` beyond those handed out."""
        ...


class MemoryPreheat:
    def __init__(self, poll: float = 15.0, max_nodes: int = 1 << 16, rng: random.Random | None = None) -> None:
        self.live_window = LIVE_POLLS * poll
        self.max_nodes = max_nodes
        self.rng = rng or random.Random()
        self._live: OrderedDict[str, float] = OrderedDict()  # node -> last poll, oldest first
        self._orders: dict[str, list[Order]] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    async def poll(self, node: str, now: float, done: list[tuple[str, str]],
                   failed: list[tuple[str, str, str]]) -> list[Order]:
        self._live.pop(node, None)
        self._live[node] = now
        if len(self._live) > self.max_nodes:
            gone, _ = self._live.popitem(last=False)
            self._orders.pop(gone, None)
        for job_id, ref in done:
            job = self._jobs.get(job_id)
            if job is not None and node in job.picked:
                job.done.setdefault(ref, set()).add(node)
        for job_id, ref, why in failed:
            job = self._jobs.get(job_id)
            if job is not None and node in job.picked:
                job.failed.setdefault(ref, {})[node] = why[:300]
        queue = self._orders.get(node)
        if not queue:
            return []
        handed, rest = queue[:PER_POLL], queue[PER_POLL:]
        if rest:
            self._orders[node] = rest
        else:
            del self._orders[node]
        return handed

    async def waiting(self, node: str) -> int:
        return len(self._orders.get(node, ()))

    async def create(self, blobs: list[tuple[str, int]], count: int | None, share: float | None,
                     now: float) -> dict[str, Any]:
        check_job(blobs, count, share)
        live = [n for n, seen in self._live.items() if now - seen <= self.live_window]
        if not live:
            raise PreheatError("no agent has polled this tracker lately: are agents running with this tracker?")
        chosen = self.rng.sample(live, how_many(len(live), count, share))
        job = Job(secrets.token_hex(8), blobs, chosen)
        if len(self._jobs) >= MAX_JOBS:
            self._jobs.popitem(last=False)
        self._jobs[job.id] = job
        for node in chosen:
            queue = self._orders.setdefault(node, [])
            if len(queue) + len(blobs) > MAX_ORDERS:
                # Never dropped silently: the node fails these orders, and the job says so.
                for ref, _size in blobs:
                    job.failed.setdefault(ref, {})[node] = f"the node has {len(queue)} orders queued already"
                continue
            queue.extend(Order(job.id, ref, size) for ref, size in blobs)
        return job.progress()

    async def progress(self, job: str) -> dict[str, Any] | None:
        found = self._jobs.get(job)
        return found.progress() if found is not None else None


class RedisPreheat:
    """The same, shared by tracker replicas through Redis (keys under ``prefix`` + ``pre:``)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "p2pdist:", poll: float = 15.0,
                 rng: random.Random | None = None) -> None:
        self.live_window = LIVE_POLLS * poll
        self.redis = client
        self.p = prefix + "pre:"
        self.rng = rng or random.Random()

    async def poll(self, node: str, now: float, done: list[tuple[str, str]],
                   failed: list[tuple[str, str, str]]) -> list[Order]:
        p = self.p
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(f"{p}live", {node: now})
        pipe.zremrangebyscore(f"{p}live", "-inf", now - self.live_window)
        jobs = sorted({job for job, _ in done} | {job for job, _, _ in failed})
        pipe.lrange(f"{p}o:{node}", 0, PER_POLL - 1)
        pipe.ltrim(f"{p}o:{node}", PER_POLL, -1)
        for job in jobs:
            pipe.exists(f"{p}job:{job}")
        res = await pipe.execute()
        handed = [Order(**json.loads(raw)) for raw in res[2]]
        known = {job for job, exists in zip(jobs, res[4:], strict=True) if exists}
        if known:  # reports on jobs that exist only: a node cannot make keys for made-up jobs
            pipe = self.redis.pipeline(transaction=False)
            for job, ref in done:
                if job in known:
                    pipe.hset(f"{p}done:{job}", f"{ref}\0{node}", "")
                    pipe.expire(f"{p}done:{job}", JOB_TTL)
            for job, ref, why in failed:
                if job in known:
                    pipe.hset(f"{p}failed:{job}", f"{ref}\0{node}", why[:300])
                    pipe.expire(f"{p}failed:{job}", JOB_TTL)
            await pipe.execute()
        return handed

    async def waiting(self, node: str) -> int:
        return await self.redis.llen(f"{self.p}o:{node}")

    async def create(self, blobs: list[tuple[str, int]], count: int | None, share: float | None,
                     now: float) -> dict[str, Any]:
        check_job(blobs, count, share)
        p = self.p
        live = [n.decode() for n in await self.redis.zrangebyscore(f"{p}live", now - self.live_window, "+inf")]
        if not live:
            raise PreheatError("no agent has polled the trackers lately: are agents running with these trackers?")
        chosen = self.rng.sample(live, how_many(len(live), count, share))
        job = Job(secrets.token_hex(8), blobs, chosen)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{p}job:{job.id}", json.dumps({"blobs": blobs, "nodes": chosen}), ex=JOB_TTL)
        orders = [json.dumps(Order(job.id, ref, size).to_json()) for ref, size in blobs]
        lengths = await asyncio.gather(*(self.redis.llen(f"{p}o:{node}") for node in chosen)) if chosen else []
        failed_map: dict[str, str] = {}
        for node, queued in zip(chosen, lengths, strict=True):
            if queued + len(blobs) > MAX_ORDERS:  # never dropped silently (see MemoryPreheat.create)
                for ref, _size in blobs:
                    job.failed.setdefault(ref, {})[node] = f"the node has {queued} orders queued already"
                    failed_map[f"{ref}\0{node}"] = job.failed[ref][node]
                continue
            pipe.rpush(f"{p}o:{node}", *orders)
            pipe.expire(f"{p}o:{node}", JOB_TTL)
        if failed_map:
            pipe.hset(f"{p}failed:{job.id}", mapping=failed_map)
            pipe.expire(f"{p}failed:{job.id}", JOB_TTL)
        await pipe.execute()
        return job.progress()

    async def progress(self, job: str) -> dict[str, Any] | None:
        p = self.p
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(f"{p}job:{job}")
        pipe.hgetall(f"{p}done:{job}")
        pipe.hgetall(f"{p}failed:{job}")
        raw, done, failed = await pipe.execute()
        if raw is None:
            return None
        doc = json.loads(raw)
        found = Job(job, [(ref, size) for ref, size in doc["blobs"]], doc["nodes"])
        picked = set(found.nodes)  # a report from a node the job did not pick does not count
        for key in done:
            ref, _, node = key.decode().partition("\0")
            if node in picked:
                found.done.setdefault(ref, set()).add(node)
        for key, why in failed.items():
            ref, _, node = key.decode().partition("\0")
            if node in picked:
                found.failed.setdefault(ref, {})[node] = why.decode()
        return found.progress()
