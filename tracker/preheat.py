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
                  "failed": self.failed.get(ref, {}), "failed_count": len(self.failed.get(ref, {}))}
                 for ref, size in self.blobs]
        finished = all(b["done"] + b["failed_count"] >= len(self.nodes) for b in blobs)
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


# One report of a node on one blob of a job, counted once, and only from a node the job picked:
# KEYS job, picked, reported, counts, failed, failed counts; ARGV node, ref, why ('' = done), ttl.
REPORT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[3], ARGV[2] .. '\\0' .. ARGV[1], ARGV[3]) == 0 then return 0 end
if ARGV[3] == '' then
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
else
  redis.call('HSET', KEYS[5], ARGV[2] .. '\\0' .. ARGV[1], ARGV[3])
  redis.call('HINCRBY', KEYS[6], ARGV[2], 1)
end
for i = 3, 6 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""
MAX_FAILURES_SHOWN = 100  # per job in a progress answer (with 10,000 nodes, not all of them)


class RedisPreheat:
    """The same, shared by tracker replicas through Redis (keys under ``prefix`` + ``pre:``).

    A job's progress costs what its blobs count, not its nodes: reports are counted per blob as
    they come (REPORT_SCRIPT), and a progress answer shows at most MAX_FAILURES_SHOWN failures."""

    def __init__(self, client: aioredis.Redis, prefix: str = "p2pdist:", poll: float = 15.0,
                 rng: random.Random | None = None) -> None:
        self.live_window = LIVE_POLLS * poll
        self.redis = client
        self.p = prefix + "pre:"
        self.rng = rng or random.Random()
        self._report = client.register_script(REPORT_SCRIPT)

    def _keys(self, job: str) -> list[str]:
        p = self.p
        return [f"{p}job:{job}", f"{p}picked:{job}", f"{p}reported:{job}", f"{p}counts:{job}", f"{p}failed:{job}",
                f"{p}fcounts:{job}"]

    async def poll(self, node: str, now: float, done: list[tuple[str, str]],
                   failed: list[tuple[str, str, str]]) -> list[Order]:
        p = self.p
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(f"{p}live", {node: now})
        pipe.zremrangebyscore(f"{p}live", "-inf", now - self.live_window)
        pipe.lrange(f"{p}o:{node}", 0, PER_POLL - 1)
        pipe.ltrim(f"{p}o:{node}", PER_POLL, -1)
        res = await pipe.execute()
        handed = [Order(**json.loads(raw)) for raw in res[2]]
        reports = [(job, ref, "") for job, ref in done]
        reports += [(job, ref, why[:300] or "failed") for job, ref, why in failed]
        for job, ref, why in reports:
            await self._report(keys=self._keys(job), args=[node, ref, why, JOB_TTL])
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
        keys = self._keys(job.id)
        lengths = await asyncio.gather(*(self.redis.llen(f"{p}o:{node}") for node in chosen))
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys[0], json.dumps({"blobs": blobs, "nodes": chosen}), ex=JOB_TTL)
        pipe.sadd(keys[1], *chosen)
        pipe.expire(keys[1], JOB_TTL)
        orders = [json.dumps(Order(job.id, ref, size).to_json()) for ref, size in blobs]
        full = []
        for node, queued in zip(chosen, lengths, strict=True):
            if queued + len(blobs) > MAX_ORDERS:  # never dropped silently (see MemoryPreheat.create)
                full.append((node, queued))
                continue
            pipe.rpush(f"{p}o:{node}", *orders)
            pipe.expire(f"{p}o:{node}", JOB_TTL)
        await pipe.execute()
        for node, queued in full:
            for ref, _size in blobs:
                why = f"the node has {queued} orders queued already"
                job.failed.setdefault(ref, {})[node] = why
                await self._report(keys=keys, args=[node, ref, why, JOB_TTL])
        return job.progress()

    async def progress(self, job: str) -> dict[str, Any] | None:
        keys = self._keys(job)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys[0])
        pipe.hgetall(keys[3])
        pipe.hgetall(keys[5])
        pipe.hscan(keys[4], 0, count=MAX_FAILURES_SHOWN)
        raw, counts, failed_counts, (_cursor, shown) = await pipe.execute()
        if raw is None:
            return None
        doc = json.loads(raw)
        fails: dict[str, dict[str, str]] = {}
        for key, why in list(shown.items())[:MAX_FAILURES_SHOWN]:
            ref, _, node = key.decode().partition("\0")
            fails.setdefault(ref, {})[node] = why.decode()
        done = {k.decode(): int(v) for k, v in counts.items()}
        failed_n = {k.decode(): int(v) for k, v in failed_counts.items()}
        nodes = doc["nodes"]
        blobs = [{"ref": ref, "size": size, "done": done.get(ref, 0), "failed": fails.get(ref, {}),
                  "failed_count": failed_n.get(ref, 0)} for ref, size in doc["blobs"]]
        finished = all(b["done"] + b["failed_count"] >= len(nodes) for b in blobs)
        return {"job": job, "nodes": nodes, "blobs": blobs, "finished": finished}
