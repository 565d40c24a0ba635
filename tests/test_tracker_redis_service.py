"""The tracker on Redis answers as the in-memory tracker does: the announce-logic tests of
tests/test_tracker_service.py run again with the state in a real redis-server (one Harness = one
key prefix). Left out are the tests that look inside ``MemoryState`` or advance the clock past the
blob TTL (in Redis, idle blobs leave by key expiry in real time: tested in test_tracker_replicas)."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.test_tracker_service as base
from p2pdist.core.wire import Announce, AnnounceReply
from tests.support.redis import RedisServer
from tracker.redis_state import RedisState, _unpack_record

# Tests that read MemoryState's own fields or counters (blob_count, sizes, _pieces, seen), or that
# depend on the sweep by blob_ttl.
MEMORY_ONLY = {
    "test_unknown_size_gives_no_layout_and_no_leases",
    "test_sizes_per_digest_are_bounded_and_a_crowded_swarm_is_kept",
    "test_too_large_size_is_refused_without_creating_the_blob",
    "test_refreshes_do_not_pile_up",
    "test_state_defaults_are_bounded",
}
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class RedisHarness(base.Harness):
    client: Redis
    loop: asyncio.AbstractEventLoop

    def __init__(self, config: Any = base.CONFIG, **state_args: Any) -> None:
        assert not state_args, "a test that brings its own state is memory-only"
        super().__init__(config)
        self.shared = RedisState(self.client, config, prefix=f"test{next(_prefixes)}:")
        self.loop.run_until_complete(self.shared.start())

    def announce(self, node: str, now: float, **fields: Any) -> AnnounceReply:
        fields.setdefault("blob", base.BLOB)
        fields.setdefault("size", self.sizes.get(fields["blob"], base.SIZE))
        if fields["size"] is not None:
            self.sizes.setdefault(fields["blob"], fields["size"])
        msg = Announce(node=node, addr=f"{node}.example:7001", **fields)
        return self.loop.run_until_complete(self.shared.announce(msg, now, self.rng, self.emit, loaded=self.loaded))


def _shared_tests() -> list[str]:
    names = [n for n in dir(base) if n.startswith("test_") and callable(getattr(base, n))]
    uses_state = {n for n in names if "t.state" in _source(getattr(base, n))}
    return sorted(set(names) - MEMORY_ONLY - uses_state)


def _source(fn: Any) -> str:
    return inspect.getsource(fn.hypothesis.inner_test if hasattr(fn, "hypothesis") else fn)


@pytest.mark.parametrize("name", _shared_tests())
def test_same_behaviour_on_redis(name: str, redis_server: RedisServer, loop: asyncio.AbstractEventLoop,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    RedisHarness.loop = loop
    RedisHarness.client = Redis.from_url(redis_server.url)
    monkeypatch.setattr(base, "Harness", RedisHarness)
    try:
        getattr(base, name)()
    finally:
        loop.run_until_complete(RedisHarness.client.aclose())


def test_most_of_the_service_tests_run_on_redis() -> None:
    """The control: the exclusions stay a small minority, so 'same behaviour' means something."""
    assert len(_shared_tests()) >= 30


# --- what only the shared state has -------------------------------------------------------------


def _msg(node: str, **fields: Any) -> Announce:
    fields.setdefault("blob", base.BLOB)
    fields.setdefault("size", base.SIZE)
    return Announce(node=node, addr=f"{node}.example:7001", **fields)


def test_replicas_announcing_at_once_lose_no_update(redis_server: RedisServer, loop: asyncio.AbstractEventLoop,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas (two RedisStates, two connection pools) answer 200 announces of one blob
    concurrently: every peer is recorded once, the downloader count is exact, no lease overlaps;
    and a replica answers the announces that queued up together, in few turns."""
    config = base.CONFIG
    turns = []
    real_turn = RedisState._turn

    async def counted(self: RedisState, batch: list, *args: Any) -> None:
        turns.append(len(batch))
        await real_turn(self, batch, *args)

    monkeypatch.setattr(RedisState, "_turn", counted)

    async def run() -> tuple[int, int, list[tuple[int, int]]]:
        prefix = f"race{next(_prefixes)}:"
        clients = [Redis.from_url(redis_server.url) for _ in range(2)]
        replicas = [RedisState(c, config, prefix=prefix) for c in clients]
        for r in replicas:
            await r.start()
        rng = base.random.Random(1)
        replies = await asyncio.gather(*(
            replicas[i % 2].announce(_msg(f"n{i}", want_leases=1, complete=i % 10 == 0), 1.0, rng, lambda *a, **k: None)
            for i in range(200)))
        key = f"{prefix}p:{base.BLOB}:{base.SIZE}"
        peers = await clients[0].hlen(key)
        record = await clients[0].get(f"{prefix}b:{base.BLOB}:{base.SIZE}")
        for c in clients:
            await c.aclose()
        downloaders = _unpack_record(base.BLOB, record, config).downloaders
        leases = [(s, e) for r in replies for s, e, _ in r.leases]
        return peers, downloaders, leases

    peers, downloaders, leases = loop.run_until_complete(run())
    assert peers == 200 and sum(turns) == 200
    assert len(turns) <= 20, f"{len(turns)} turns for 200 announces: they were not batched"
    assert downloaders == 180  # every tenth announced complete
    pieces = [i for s, e in leases for i in range(s, e)]
    assert pieces and len(pieces) == len(set(pieces)), "two replicas leased the same piece"


def test_an_idle_blob_leaves_redis_by_itself(redis_server: RedisServer, loop: asyncio.AbstractEventLoop) -> None:
    """Every key of a blob expires blob_ttl after its last announce (no sweeper needed), and the
    sweep takes it out of the index and the counters."""
    config = base.replace(base.CONFIG, peer_ttl=0.2, blob_ttl=0.4)

    async def run() -> tuple[int, int, list[str], int]:
        client = Redis.from_url(redis_server.url)
        prefix = f"idle{next(_prefixes)}:"
        state = RedisState(client, config, prefix=prefix)
        await state.start()
        now = time.time()
        await state.announce(_msg("a", want_leases=1), now, base.random.Random(1), lambda *a, **k: None)
        await state.sweep(now)
        counted = state.blob_count(), state.peer_count()
        deadline = time.monotonic() + 10
        while await client.exists(f"{prefix}b:{base.BLOB}:{base.SIZE}") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling Redis' own expiry, bounded by the deadline
        left = [k.decode() for k in await client.keys(f"{prefix}*") if not k.endswith((b"epoch", b"blobs", b"leases"))]
        dropped = await state.sweep(time.time())
        await client.aclose()
        return counted, left, dropped, state.blob_count()

    counted, left, dropped, after = loop.run_until_complete(run())
    assert counted == (1, 1)
    assert [k for k in left if ":n:" not in k] == []  # standings outlive blobs (a ban must)
    assert dropped == [base.BLOB] and after == 0


def test_a_blob_locked_too_long_is_answered_busy(redis_server: RedisServer, loop: asyncio.AbstractEventLoop,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that died holding a blob's lock holds up that blob only (until the lock's expiry):
    its announces are answered busy (503) after LOCK_WAIT, other blobs' at once."""
    import tracker.redis_state as rs

    monkeypatch.setattr(rs, "LOCK_WAIT", 0.2)

    async def run() -> tuple[str, bool]:
        client = Redis.from_url(redis_server.url)
        prefix = f"lock{next(_prefixes)}:"
        state = RedisState(client, base.CONFIG, prefix=prefix)
        await state.start()
        await client.set(f"{prefix}lock:{base.BLOB}", "dead-replica", px=300)
        try:
            await state.announce(_msg("a"), 1.0, base.random.Random(1), lambda *a, **k: None)
            kind = "answered"
        except base.AnnounceError as e:
            kind = e.kind
        other = await state.announce(_msg("a", blob=base.OTHER), 1.0, base.random.Random(1), lambda *a, **k: None)
        await client.aclose()
        return kind, other.size == base.SIZE

    kind, other_blob_answered = loop.run_until_complete(run())
    assert kind == "busy" and other_blob_answered


def test_the_redis_setting_must_be_a_redis_url() -> None:
    from tracker.config import ConfigError, load

    with pytest.raises(ConfigError, match="redis://"):
        load(env={"P2PDIST_TRACKER_REDIS": "127.0.0.1:6379"})
    assert load(env={"P2PDIST_TRACKER_REDIS": "redis://r:6379/0"}).redis == "redis://r:6379/0"


def test_a_lost_redis_is_rebuilt_by_the_next_announces(redis_server: RedisServer,
                                                       loop: asyncio.AbstractEventLoop) -> None:
    """Redis state is soft: after a flush (a Redis restarted without persistence), an agent's next
    announce starts the blob again, tells it its cursor is stale, and leases wait for the others to
    re-report what they fetched (the restart grace), as after an in-memory tracker's restart."""
    config = base.replace(base.CONFIG, audits=False)

    async def run() -> tuple[AnnounceReply, AnnounceReply]:
        client = Redis.from_url(redis_server.url, db=1)
        state = RedisState(client, config, prefix="lost:")
        await state.start()
        rng = base.random.Random(1)
        first = await state.announce(_msg("a", want_leases=1), 1.0, rng, lambda *a, **k: None)
        (start, _end, _ttl), *_ = first.leases
        report = await state.announce(_msg("a", want_leases=1, digests=[(start, base.pd(start))]), 2.0, rng,
                                      lambda *a, **k: None)
        await client.flushdb()
        again = await state.announce(_msg("b", want_leases=1, digest_pos=report.digest_pos), 3.0, rng,
                                     lambda *a, **k: None)
        await client.aclose()
        return report, again

    report, again = loop.run_until_complete(run())
    assert report.digests  # the log had the reported piece
    assert again.reset and again.size == base.SIZE and again.piece_size == report.piece_size
    assert not again.leases  # the grace: agents re-report before anything is leased again
