"""Tracker state in Redis: several stateless tracker replicas behind one Service share it.

The announce logic is the in-memory tracker's own (``service.handle_announce``, unchanged). A
replica answers a swarm's announces in turns: it takes the blob's lock, loads what the announce
logic needs (the blob's record, the askers' peer entries, random samples of the peers, the
standings it will ask about), runs the logic for each announce of the turn on that snapshot, and
writes back what changed in one atomic script that also checks the lock is still its own and
releases it. Four round trips per turn (lock, load, standings, save); announces of the swarm that
arrive meanwhile wait for the next turn and share it (group commit), so a hot blob costs round
trips per batch, not per announce.

Keys, under ``prefix``; ``K`` is ``digest:size``, a swarm as the in-memory state keys it:

- ``b:K``: the blob's record without its peers (layout, lease book, digest log, audits, withheld
  claims), msgpack. Bounded by the blob's pieces, never by its peers.
- ``p:K`` (hash node → peer info), ``t:K`` (zset node → last seen, for expiry), ``g:K:GROUP``
  (hash per zone and rack: the locality index, as ``state.near_keys`` names them).
- ``z:DIGEST``: the sizes a digest is tracked with. ``blobs``: zset K → last seen (counting,
  sweeping). ``leases``: hash K → origin leases out (the gauge).
- ``n:NODE``: a node's standing (proven, banned); ``banned``: zset node → ban end, the index a
  handout's check of sampled peers reads. ``epoch``: the digest-cursor epoch counter,
  drawn in batches. ``lock:DIGEST``: the blob's lock (a token, with an expiry).

Every per-blob key expires ``blob_ttl`` after the blob's last announce, so an abandoned blob needs
no sweeper to leave; standings expire a day after their last change, or when their ban ends.

What differs from one in-memory tracker: a handout ranks a random sample of the swarm drawn by
Redis (``HRANDFIELD``: the same sample sizes the in-memory policy draws for large swarms); and an
audit opened while the node's audit in *another* blob has not started yet does not move that one
(it would need the other blob's lock): the other runs too, one more piece from the origin.
Several keys per command and scripts that name keys in arguments: one Redis, not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from p2pdist.core.handout import NEAR_SAMPLE, SAMPLE, HandoutPolicy, PeerInfo
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import PieceManifest
from p2pdist.core.wire import Announce, AnnounceReply

from .config import TrackerConfig
from .errors import TrackerError
from .service import AnnounceError, Emit, handle_announce, lease_book
from .state import EPOCH_LIMIT, MAX_SIZES_PER_BLOB, Audit, BlobRecord, Standing, StateFull, near_keys

EPOCH_BATCH = 256  # epochs a replica draws at once (one INCRBY per 256 new or reset blobs)
LOCK_TTL_MS = 5_000  # a replica that dies holding a blob's lock holds it this long at most
LOCK_WAIT = 2.0  # seconds an announce waits for its blob's lock before the tracker answers 503
EXPIRED_PER_ANNOUNCE = 256  # peers an announce expires at most (the rest go with the next ones)
MAX_BATCH = 64  # announces of one swarm answered in one turn (one load, one save)
# A batch draws up to this many handouts' worth of candidates, so its handouts differ (each is a
# random draw from the sample); decoding them is much of a turn's cost, so no more than that.
SAMPLE_SPREAD = 2
STANDING_TTL = 86_400  # seconds a standing is kept after its last change (a ban: at least its end)

# Applies a save: checks the lock is still this replica's (it may have expired while the replica
# stalled, and another replica may hold it now), runs the writes, releases the lock. Atomic.
SAVE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ops = cmsgpack.unpack(ARGV[2])
for _, op in ipairs(ops) do redis.call(unpack(op)) end
redis.call('DEL', KEYS[1])
return 1
"""
UNLOCK_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass(slots=True)
class Waiting:
    """An announce waiting for its swarm's turn, and where its reply goes."""

    msg: Announce
    now: float
    future: asyncio.Future[AnnounceReply]
    loaded: bool = False  # this replica's pacer was spacing announces (service.handle_announce)


class RedisUnavailable(TrackerError):
    """Redis did not answer, or a replica's lock on a blob was lost: the announce is answered 503."""


def _pack_peer(info: PeerInfo) -> bytes:
    return msgpack.packb((info.node, info.addr, info.zone, info.rack, info.have, info.complete, info.load))


def _unpack_peer(data: bytes) -> PeerInfo:
    node, addr, zone, rack, have, complete, load = msgpack.unpackb(data)
    return PeerInfo(node, addr, zone, rack, have, complete, load)


def _pack_standing(st: Standing) -> bytes:
    return msgpack.packb((st.proven, st.banned_until if st.banned_until != float("-inf") else None,
                          list(st.audit) if st.audit else None, st.audit_length))


def _unpack_standing(data: bytes) -> Standing:
    proven, banned_until, audit, audit_length = msgpack.unpackb(data)
    return Standing(proven, float("-inf") if banned_until is None else banned_until,
                    tuple(audit) if audit else None, audit_length)


@dataclass(slots=True)
class PeerJournal:
    """A batch of announces' view of a blob's peers in Redis, and the changes they made to them."""

    count: int  # peers in Redis before the batch (then kept up to date)
    askers: dict[str, PeerInfo | None] = field(default_factory=dict)  # the askers' entries before it
    sample: list[PeerInfo] = field(default_factory=list)
    near: dict[tuple[str, str], tuple[list[PeerInfo], list[PeerInfo]]] = field(default_factory=dict)
    expired: dict[str, PeerInfo] = field(default_factory=dict)
    puts: dict[str, PeerInfo] = field(default_factory=dict)
    removes: dict[str, PeerInfo | None] = field(default_factory=dict)  # None: its entry is not loaded


@dataclass(slots=True)
class SharedBlobRecord(BlobRecord):
    """A blob's record whose peers live in Redis: the peer operations the announce logic uses act
    on the loaded sample and are journalled; everything else is the in-memory record's."""

    journal: PeerJournal = field(default_factory=lambda: PeerJournal(0))

    def peer_total(self) -> int:
        return self.journal.count

    def _entry(self, node: str) -> PeerInfo | None:
        j = self.journal
        if node in j.removes:
            return None
        return j.puts.get(node) or j.askers.get(node)

    def put_peer(self, info: PeerInfo, now: float) -> bool:
        j = self.journal
        old = self._entry(info.node)
        if old is None and j.count >= self.max_peers:
            return False
        if old is not None and not old.complete:
            self.downloaders -= 1
        if not info.complete:
            self.downloaders += 1
        if old is None:
            j.count += 1
        j.removes.pop(info.node, None)
        j.puts[info.node] = info
        return True

    def remove_peer(self, node: str) -> None:
        j = self.journal
        if node not in j.removes:
            old = j.puts.pop(node, None) or j.expired.get(node) or j.askers.get(node)
            j.removes[node] = old
            if old is not None:
                j.count -= 1
                if not old.complete:
                    self.downloaders -= 1
        self._forget_peer(node)

    def expire_peers(self, now: float, ttl: float) -> list[str]:
        j = self.journal
        gone = [node for node, info in j.expired.items() if node not in j.removes and node not in j.puts]
        j.expired = {}  # once per batch: what expired is gone for the announces after it too
        for node in gone:
            self.remove_peer(node)
        if gone:  # the samples were drawn before they expired
            j.sample = _live(j.sample, j.removes)
            j.near = {k: (_live(r, j.removes), _live(z, j.removes)) for k, (r, z) in j.near.items()}
        return gone

    def live_peers(self) -> list[PeerInfo]:
        return self.journal.sample

    def near_peers(self, zone: str, rack: str) -> tuple[list[PeerInfo], list[PeerInfo]]:
        return self.journal.near.get((zone, rack), ([], []))


def _pack_record(r: SharedBlobRecord) -> bytes:
    book = r.book.snapshot() if r.book is not None else None
    audits = [(a.index, a.reporter, a.claim, a.auditor, a.expires, a.opened, a.opinions) for a in r.audits.values()]
    return msgpack.packb({
        "epoch": r.epoch, "last_seen": r.last_seen, "size": r.size, "piece_size": r.piece_size,
        "book": book, "log": r.log, "withheld": r.withheld, "audits": audits,
        "probation": list(r.probation), "takers": list(r.takers), "reporters": list(r.reporters),
        "corrupt_from": list(r.corrupt_from), "wiped_epochs": r.wiped_epochs, "orphaned": r.orphaned,
        "fetchers": r.fetchers, "due": r.due,
        "pieces": r.pieces, "granted_upto": r.granted_upto, "downloaders": r.downloaders,
        "rejoin_until": None if r.rejoin_until == float("-inf") else r.rejoin_until,
    }, use_bin_type=True)


def _unpack_record(digest: str, data: bytes, config: TrackerConfig) -> SharedBlobRecord:
    d = msgpack.unpackb(data, raw=False, strict_map_key=False)
    r = SharedBlobRecord(digest, d["epoch"], d["last_seen"], config.max_peers_per_blob)
    if d["size"] is not None and d["piece_size"] is not None:
        layout = PieceLayout(d["size"], d["piece_size"])
        book = lease_book(layout.count, config)
        if d["book"] is not None:
            book.restore(*d["book"])
        r.set_layout(layout, book)
        r.log = [(index, digest_) for index, digest_ in d["log"]]
        r.manifest = PieceManifest(layout, r.log)
    r.withheld = {node: [(i, dg) for i, dg in claims] for node, claims in d["withheld"].items()}
    r.held_back = {i for claims in r.withheld.values() for i, _ in claims}
    r.audits = {a[0]: Audit(a[0], a[1], a[2], a[3], a[4], a[5], dict(a[6])) for a in d["audits"]}
    r.probation, r.takers, r.corrupt_from = set(d["probation"]), set(d["takers"]), set(d["corrupt_from"])
    r.wiped_epochs = list(d.get("wiped_epochs", ()))  # records written before the field have none
    r.reporters = set(d.get("reporters", ()))  # absent in records an older tracker wrote
    r.orphaned = dict(d.get("orphaned", {}))  # the same
    r.fetchers = dict(d.get("fetchers", {}))  # the same
    r.due = dict(d.get("due", {}))  # the same
    r.pieces, r.granted_upto, r.downloaders = d["pieces"], d["granted_upto"], d["downloaders"]
    r.rejoin_until = float("-inf") if d["rejoin_until"] is None else d["rejoin_until"]
    return r


class AnnounceView:
    """The ``TrackerState`` a turn's announces see: one blob (at the sizes loaded), the standings
    loaded, and the changes to write back."""

    def __init__(self, store: RedisState, digest: str, sizes: set[int], size_peers: dict[int, int],
                 blob_total: int) -> None:
        self.store = store
        self.digest = digest
        self.sizes_known = sizes
        self.size_peers = size_peers  # peers per size (loaded only when a new size may evict one)
        self.blob_total = blob_total
        self.records: dict[int, SharedBlobRecord] = {}
        self.created: set[int] = set()
        self.forgotten: set[int] = set()
        self.standings: dict[str, Standing] = {}
        self.standing_seen: dict[str, bytes | None] = {}  # as loaded: only changed ones are written
        self.banned: dict[str, float] | None = None  # node -> ban end, of every banned node

    # --- TrackerState -------------------------------------------------------------------------
    def get(self, blob: str, size: int | None = None) -> BlobRecord | None:
        if blob != self.digest:
            return None  # another blob's record is not loaded (see the module's note on audits)
        if size is None:
            live = self.sizes_known - self.forgotten
            if len(live) != 1:
                return None
            (size,) = live
        return self.records.get(size)

    def sizes(self, blob: str) -> int:
        return len(self.sizes_known - self.forgotten) if blob == self.digest else 0

    def create(self, blob: str, size: int, now: float, pieces: int = 1) -> BlobRecord:
        config = self.store.config
        live = self.sizes_known - self.forgotten
        if len(live) >= MAX_SIZES_PER_BLOB:
            fewest = min(live, key=lambda s: self.size_peers.get(s, 0))
            if self.size_peers.get(fewest, 0) > 1:
                raise StateFull(f"blob {blob} is tracked with {len(live)} sizes already")
            self.forgotten.add(fewest)
        if pieces > config.max_tracked_pieces:
            raise StateFull(f"a blob of {pieces} pieces exceeds this tracker's max_tracked_pieces "
                            f"({config.max_tracked_pieces})")
        if self.blob_total >= config.max_blobs:
            raise StateFull(f"tracking {self.blob_total} blobs (max_blobs {config.max_blobs}); idle ones "
                            f"leave {config.blob_ttl:.0f} s after their last announce")
        record = SharedBlobRecord(blob, self.new_epoch(), now, config.max_peers_per_blob)
        record.pieces = pieces
        self.records[size] = record
        self.sizes_known.add(size)
        self.forgotten.discard(size)
        self.created.add(size)
        return record

    def standing(self, node: str) -> Standing:
        found = self.standings.get(node)
        if found is None:
            if node not in self.standing_seen and self.banned is not None:
                # A node whose standing was not loaded: a stand-in from the ban index, never written,
                # so it cannot overwrite the real one (the logic changes only the standings
                # _load_more loads; handouts ask is_banned).
                return Standing(banned_until=self.banned.get(node, float("-inf")))
            found = self.standings[node] = Standing()
            self.standing_seen.setdefault(node, None)
        return found

    def is_banned(self, node: str, now: float) -> bool:
        found = self.standings.get(node)
        if found is not None:
            return found.banned(now)
        return self.banned is not None and now < self.banned.get(node, float("-inf"))

    def new_epoch(self) -> int:
        return self.store.take_epoch()

    def sweep(self, now: float) -> list[str]:
        return []  # keys expire in Redis; RedisState.sweep keeps the blob index in step

    def blob_count(self) -> int:
        return self.store.blob_count()

    def peer_count(self) -> int:
        return self.store.peer_count()

    def lease_count(self) -> int:
        return self.store.lease_count()


class RedisState:
    """Tracker state shared through Redis (see the module's docstring). ``announce`` is the entry
    point; the ``TrackerState`` counters read figures refreshed by ``sweep``."""

    def __init__(self, client: aioredis.Redis, config: TrackerConfig, prefix: str = "p2pdist:") -> None:
        self.redis = client
        self.config = config
        self.prefix = prefix
        self._epochs: list[int] = []
        # Announces waiting for their swarm's next turn (announce): a replica's own announces of
        # one blob queue here, not on the Redis lock (spinning on it, past ~400/s on one blob,
        # turned announces into 503 busy).
        self._queues: dict[tuple[str, int | None], list[Waiting]] = {}
        self._draining: set[tuple[str, int | None]] = set()
        self._drains: set[asyncio.Future[None]] = set()
        self._counts = (0, 0, 0)  # blobs, peers, leases: refreshed by sweep()
        self._save = client.register_script(SAVE_SCRIPT)
        self._unlock = client.register_script(UNLOCK_SCRIPT)
        self.ttl_ms = int((config.blob_ttl + config.peer_ttl) * 1000)

    @classmethod
    def from_url(cls, url: str, config: TrackerConfig) -> RedisState:
        return cls(aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), config)

    async def start(self) -> None:
        """Check Redis answers, and seed the epoch counter at a random point (cursors of another
        tracker generation then never match)."""
        try:
            await self.redis.set(self.prefix + "epoch", random.SystemRandom().randrange(1, EPOCH_LIMIT // 2), nx=True)
            await self.sweep(0.0)
        except (RedisError, OSError) as e:
            raise RedisUnavailable(f"Redis at {self._where()} does not answer: {e}") from None

    async def close(self) -> None:
        await self.redis.aclose()

    def _where(self) -> str:
        kw = self.redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    # --- counters (TrackerState) ----------------------------------------------------------------
    def blob_count(self) -> int:
        return self._counts[0]

    def peer_count(self) -> int:
        return self._counts[1]

    def lease_count(self) -> int:
        return self._counts[2]

    def take_epoch(self) -> int:
        assert self._epochs, "epochs are drawn before each announce"
        return self._epochs.pop()

    # --- the announce ---------------------------------------------------------------------------
    async def announce(self, msg: Announce, now: float, rng: random.Random, emit: Emit,
                       policy: HandoutPolicy | None = None, loaded: bool = False) -> AnnounceReply:
        """Answer one announce. Announces of one swarm that arrive while its turn is under way wait
        and go together in the next turn (group commit): one lock, one load and one save for the
        batch, whose announces then run one after the other on the loaded record, as the in-memory
        tracker would run them. A hot blob then costs Redis round trips per batch, not per announce."""
        key = (msg.blob, msg.size)
        waiting = Waiting(msg, now, asyncio.get_running_loop().create_future(), loaded)
        queue = self._queues.setdefault(key, [])
        queue.append(waiting)
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.ensure_future(self._drain(key, rng, emit, policy))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        return await waiting.future

    async def _drain(self, key: tuple[str, int | None], rng: random.Random, emit: Emit,
                     policy: HandoutPolicy | None) -> None:
        try:
            while self._queues.get(key):
                queue = self._queues[key]
                # Without a size, one at a time: which swarm it joins depends on what Redis holds.
                cut = MAX_BATCH if key[1] is not None else 1
                batch, self._queues[key] = queue[:cut], queue[cut:]
                await self._turn(batch, rng, emit, policy)
        finally:
            self._draining.discard(key)
            if not self._queues.get(key):
                self._queues.pop(key, None)

    async def _turn(self, batch: list[Waiting], rng: random.Random, emit: Emit,
                    policy: HandoutPolicy | None) -> None:
        """One turn of a swarm: its Redis lock, load, the announce logic for each announce of the
        batch, save; then the replies (only once the save holds)."""
        lock = f"{self.prefix}lock:{batch[0].msg.blob}"
        token = secrets.token_hex(8)
        answers: list[tuple[Waiting, AnnounceReply | None, BaseException | None]] = []
        try:
            await self._lock(lock, token)
            try:
                view = await self._load(batch)
                for w in batch:
                    try:
                        reply = handle_announce(view, w.msg, w.now, rng, self.config, emit, policy,  # type: ignore[arg-type]
                                                loaded=w.loaded)
                        answers.append((w, reply, None))
                    except AnnounceError as e:
                        answers.append((w, None, e))
                ops = await self._writes(view, max(w.now for w in batch))
                if not await self._save(keys=[lock], args=[token, msgpack.packb(ops, use_bin_type=False)]):
                    raise RedisUnavailable("this tracker lost the blob's lock while answering (Redis or the "
                                           "tracker stalled): announce again")
                token = ""
            finally:
                if token:
                    await self._unlock(keys=[lock], args=[token])
        except (RedisError, OSError) as e:
            failure: BaseException = RedisUnavailable(f"Redis at {self._where()}: {e}")
            answers = [(w, None, failure) for w in batch]
        except (AnnounceError, RedisUnavailable) as e:  # busy, or the lock lost: the whole batch
            answers = [(w, None, e) for w in batch]
        except Exception as e:  # a bug: every waiter hears of it (as a 500), none hangs
            answers = [(w, None, e) for w in batch]
        for w, reply, error in answers:
            if w.future.done():
                continue
            if error is not None:
                w.future.set_exception(error)
            else:
                w.future.set_result(reply)

    async def _lock(self, lock: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        wait = 0.0005
        while not await self.redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
            if loop.time() >= deadline:
                raise AnnounceError("busy", "the blob's record is busy in the tracker's Redis: announce again")
            await asyncio.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, 0.02)

    async def _load(self, batch: list[Waiting]) -> AnnounceView:
        p, first = self.prefix, batch[0].msg
        digest, now = first.blob, max(w.now for w in batch)
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(f"{p}z:{digest}")
        pipe.zcard(f"{p}blobs")
        pipe.zrangebyscore(f"{p}banned", now, "+inf", withscores=True)
        refill = len(self._epochs) < 2 * len(batch)
        if refill:
            pipe.incrby(f"{p}epoch", EPOCH_BATCH)
        if first.size is not None:
            self._read_blob(pipe, digest, first.size, batch, now)
        res = await pipe.execute()
        sizes = {int(s) for s in res[0]}
        blob_total = res[1]
        banned = {node.decode(): until for node, until in res[2]}
        rest = res[3:]
        if refill:
            top = rest.pop(0)
            self._epochs += [(e - 1) % (EPOCH_LIMIT - 1) + 1 for e in range(top, top - EPOCH_BATCH, -1)]
        size = first.size
        size_peers: dict[int, int] = {}
        if size is None and sizes:
            # The agent's first announce of a blob it knows no size of (rare: the mirror knows it).
            pipe = self.redis.pipeline(transaction=False)
            for s in sizes:
                pipe.exists(self._k("b", digest, s))
            alive = {s for s, n in zip(sizes, await pipe.execute(), strict=True) if n}
            sizes = alive
            if len(alive) == 1:
                (size,) = alive
                pipe = self.redis.pipeline(transaction=False)
                self._read_blob(pipe, digest, size, batch, now)
                rest = await pipe.execute()
        view = AnnounceView(self, digest, sizes, size_peers, blob_total)
        record = self._take_blob(view, digest, size, batch, rest) if size is not None and rest else None
        if size is not None and record is None and size not in sizes:
            if len(sizes) >= MAX_SIZES_PER_BLOB:
                pipe = self.redis.pipeline(transaction=False)
                for s in sizes:
                    pipe.hlen(self._k("p", digest, s))
                size_peers.update(zip(sizes, await pipe.execute(), strict=True))
        elif size is not None and record is None:
            sizes.discard(size)  # listed, but its record expired
        await self._load_more(view, batch, record, size, banned)
        return view

    def _k(self, kind: str, digest: str, size: int) -> str:
        return f"{self.prefix}{kind}:{digest}:{size}"

    def _read_blob(self, pipe: Any, digest: str, size: int, batch: list[Waiting], now: float) -> None:
        """Queue the reads of one blob's record and of what the batch needs of its peers: the
        askers' entries, the peers past their TTL, and random samples of the swarm and of each
        asker's zone and rack, larger for larger batches so their handouts differ."""
        pipe.get(self._k("b", digest, size))
        pipe.hlen(self._k("p", digest, size))
        pipe.hmget(self._k("p", digest, size), [w.msg.node for w in batch])
        pipe.zrangebyscore(self._k("t", digest, size), "-inf", now - self.config.peer_ttl, start=0,
                           num=EXPIRED_PER_ANNOUNCE)
        wanting = [w.msg for w in batch if w.msg.wants_peers]
        if wanting:
            limit, spread = self.config.handout_size, min(len(wanting), SAMPLE_SPREAD)
            pipe.hrandfield(self._k("p", digest, size), limit * SAMPLE * spread + 2, withvalues=True)
            for zone, rack in sorted({(m.zone, m.rack) for m in wanting}):
                for key in near_keys(zone, rack):
                    pipe.hrandfield(f"{self._k('g', digest, size)}:{key}", limit * NEAR_SAMPLE * spread,
                                    withvalues=True)

    def _take_blob(self, view: AnnounceView, digest: str, size: int, batch: list[Waiting],
                   res: list[Any]) -> SharedBlobRecord | None:
        data, count, askers, expired = res[:4]
        if data is None:
            return None
        record = _unpack_record(digest, data, self.config)
        journal = PeerJournal(count)
        journal.askers = {w.msg.node: _unpack_peer(a) if a is not None else None
                          for w, a in zip(batch, askers, strict=True)}
        journal.expired = {n.decode(): PeerInfo(n.decode(), "") for n in expired}  # infos loaded next
        wanting = [w.msg for w in batch if w.msg.wants_peers]
        if wanting:
            journal.sample = _infos(res[4])
            at = 5
            for zone, rack in sorted({(m.zone, m.rack) for m in wanting}):
                groups = []
                for _key in near_keys(zone, rack):
                    groups.append(_infos(res[at]))
                    at += 1
                journal.near[(zone, rack)] = (groups[1] if len(groups) > 1 else [], groups[0] if groups else [])
        record.journal = journal
        view.records[size] = record
        return record

    async def _load_more(self, view: AnnounceView, batch: list[Waiting], record: SharedBlobRecord | None,
                         size: int | None, banned: dict[str, float]) -> None:
        """Second round trip: the standings the logic may change (the askers', those in the blob's
        audits and withheld claims), and the expiring peers' entries. Of the sampled peers the logic
        only asks whether they are banned: that comes from the ``banned`` index, loaded with the
        first round trip (a few nodes, not an MGET of every sampled peer), and is never written."""
        view.banned = banned
        nodes = {w.msg.node for w in batch}
        if record is not None:
            for audit in record.audits.values():
                nodes.add(audit.reporter)
                nodes.update(audit.opinions)
                if audit.auditor is not None:
                    nodes.add(audit.auditor)
            nodes.update(record.withheld)
        order = sorted(nodes)
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget([f"{self.prefix}n:{n}" for n in order])
        expired = list(record.journal.expired) if record is not None else []
        if expired and size is not None:
            pipe.hmget(self._k("p", view.digest, size), expired)
        res = await pipe.execute()
        for node, data in zip(order, res[0], strict=True):
            view.standing_seen[node] = data
            if data is not None:
                view.standings[node] = _unpack_standing(data)
        if expired and record is not None:
            record.journal.expired = {n: _unpack_peer(d) if d is not None else PeerInfo(n, "", complete=True)
                                      for n, d in zip(expired, res[1], strict=True)}

    async def _writes(self, view: AnnounceView, now: float) -> list[list[Any]]:
        """The commands that store what the announce changed (applied atomically by SAVE_SCRIPT; Redis'
        cmsgpack knows no bin type, so they are packed with bytes as raw strings)."""
        p, ops = self.prefix, []
        for size in view.forgotten - view.created:
            ops += self._forget_ops(view.digest, size)
        for size, record in view.records.items():
            if size in view.forgotten:
                continue
            await self._resolve_removed(view.digest, size, record)
            ops += self._record_ops(view.digest, size, record, now)
        for node, st in view.standings.items():
            packed = _pack_standing(st)
            if packed != view.standing_seen.get(node):
                ttl = max(STANDING_TTL, int(st.banned_until - now) + 60 if st.banned_until > now else 0)
                ops.append(["SET", f"{p}n:{node}", packed, "EX", ttl])
                if st.banned_until > now:
                    ops.append(["ZADD", f"{p}banned", st.banned_until, node])
        # Numbers as text: a Lua number passed to redis.call would be formatted with 14 digits.
        return [[a if isinstance(a, bytes | str) else repr(a) if isinstance(a, float) else str(a) for a in op]
                for op in ops]

    async def _resolve_removed(self, digest: str, size: int, record: SharedBlobRecord) -> None:
        """Peers removed whose entries were not loaded (a banned auditor): load them now, for their
        groups and the downloader count."""
        j = record.journal
        unknown = [n for n, info in j.removes.items() if info is None]
        if not unknown:
            return
        found = await self.redis.hmget(self._k("p", digest, size), unknown)
        for node, data in zip(unknown, found, strict=True):
            if data is None:
                del j.removes[node]  # not a peer (expired already)
                continue
            info = _unpack_peer(data)
            j.removes[node] = info
            j.count -= 1
            if not info.complete:
                record.downloaders -= 1

    def _record_ops(self, digest: str, size: int, record: SharedBlobRecord, now: float) -> list[list[Any]]:
        p, ttl, key = self.prefix, self.ttl_ms, f"{digest}:{size}"
        peers, seen, group = self._k("p", digest, size), self._k("t", digest, size), self._k("g", digest, size)
        j = record.journal
        ops: list[list[Any]] = [["SET", self._k("b", digest, size), _pack_record(record), "PX", ttl]]
        touched_groups: set[str] = set()
        for node, old in j.removes.items():
            ops += [["HDEL", peers, node], ["ZREM", seen, node]]
            if old is not None:
                ops += [["HDEL", f"{group}:{g}", node] for g in near_keys(old.zone, old.rack)]
        for node, info in j.puts.items():
            packed = _pack_peer(info)
            ops += [["HSET", peers, node, packed], ["ZADD", seen, now, node]]
            old = j.askers.get(node)
            new_groups = near_keys(info.zone, info.rack)
            if old is not None:
                ops += [["HDEL", f"{group}:{g}", node] for g in near_keys(old.zone, old.rack) if g not in new_groups]
            for g in new_groups:
                ops.append(["HSET", f"{group}:{g}", node, packed])
                touched_groups.add(g)
        for k in (peers, seen, *(f"{group}:{g}" for g in touched_groups)):
            ops.append(["PEXPIRE", k, ttl])
        leases = len(record.book.leases) if record.book is not None else 0
        ops += [["ZADD", f"{p}blobs", now, key], ["SADD", f"{p}z:{digest}", size],
                ["PEXPIRE", f"{p}z:{digest}", ttl], ["HSET", f"{p}leases", key, leases]]
        return ops

    def _forget_ops(self, digest: str, size: int) -> list[list[Any]]:
        p, key = self.prefix, f"{digest}:{size}"
        # Its group hashes expire on their own (their peers are gone from p: and t:).
        return [["DEL", self._k("b", digest, size), self._k("p", digest, size), self._k("t", digest, size)],
                ["SREM", f"{p}z:{digest}", size], ["ZREM", f"{p}blobs", key], ["HDEL", f"{p}leases", key]]

    # --- upkeep ----------------------------------------------------------------------------------
    async def sweep(self, now: float) -> list[str]:
        """Drop idle blobs from the index (their keys expire on their own) and refresh the counters
        the metrics read. Any replica may run it; it is idempotent."""
        p = self.prefix
        cutoff = now - self.config.blob_ttl
        gone = [k.decode() for k in await self.redis.zrangebyscore(f"{p}blobs", "-inf", cutoff, start=0, num=1000)]
        if gone:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(f"{p}blobs", *gone)
            pipe.hdel(f"{p}leases", *gone)
            await pipe.execute()
        await self.redis.zremrangebyscore(f"{p}banned", "-inf", now)  # bans that ended
        keys = [k.decode() for k in await self.redis.zrange(f"{p}blobs", 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            digest, _, size = key.rpartition(":")
            pipe.hlen(self._k("p", digest, int(size)))
        pipe.hvals(f"{p}leases")
        res = await pipe.execute()
        self._counts = (len(keys), sum(res[:-1]), sum(int(v) for v in res[-1]))
        return [k.rpartition(":")[0] for k in gone]


def _live(peers: list[PeerInfo], removed: dict[str, PeerInfo | None]) -> list[PeerInfo]:
    return [p for p in peers if p.node not in removed]


def _infos(pairs: Iterable[Any] | None) -> list[PeerInfo]:
    """HRANDFIELD ... WITHVALUES answers [field, value, field, value, ...]."""
    if not pairs:
        return []
    values = list(pairs)
    return [_unpack_peer(v) for v in values[1::2]]
