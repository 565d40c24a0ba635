"""Tracker state behind a small interface: in memory here, shared in Redis in ``redis_state``.

Per blob the tracker keeps its size and piece size, the origin leases (a core ``LeaseBook``), the
append-only log of piece digests handed to agents page by page, and the live peers. Everything is
bounded: blobs by ``max_blobs``, peers by ``max_peers_per_blob``, pieces by the blob's layout.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Protocol

from p2pdist.core.handout import PeerInfo
from p2pdist.core.layout import PieceLayout
from p2pdist.core.leases import LeaseBook
from p2pdist.core.manifest import PieceManifest
from p2pdist.core.proofs import EPOCH_SHIFT, cursor_offset

from .errors import TrackerError

# A digest cursor is (epoch << EPOCH_SHIFT) | offset into the log (core.proofs): a cursor from an
# older log is answered with reset=True even when it happens to fall inside the new log.
EPOCH_LIMIT = 1 << 40  # keeps cursors well inside the wire's integer range


# Sizes one digest is tracked with at once (a swarm each): a wrong size makes a swarm of its own.
MAX_SIZES_PER_BLOB = 4


class StateFull(TrackerError):
    """No room for another blob: every tracked blob still has live peers."""


@dataclass(slots=True)
class Standing:
    """What the tracker has learned of one node's word (see service.py, "audits").

    ``proven``: another node fetched one of its reported pieces from the origin and got the same
    digest, so its digests are published at once. ``banned_until``: it lied (two nodes' origin
    copies contradicted it, or it contradicted a proven digest); its announces are refused until then.
    """

    proven: bool = False
    banned_until: float = float("-inf")
    audit: tuple[str, int, int] | None = None  # (blob, size, piece) of its open audit: one at a time
    audit_length: int = 0  # that piece's length (a smaller one takes its place until it starts)

    def banned(self, now: float) -> bool:
        return now < self.banned_until


@dataclass(slots=True)
class Audit:
    """A reported piece digest under check: other nodes fetch the piece from the origin and say
    what they got. The claim stands with one agreeing opinion; two agreeing against it refute it."""

    index: int
    reporter: str
    claim: bytes | None  # None until the reporter reports (an audit opened with its lease)
    auditor: str | None = None  # the node fetching the piece for it now
    expires: float = 0.0  # when that assignment goes to another node
    opened: float = 0.0  # when the audit was opened (a proven node takes it only after a while)
    opinions: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class PeerRecord:
    info: PeerInfo
    last_seen: float


@dataclass(slots=True)
class BlobRecord:
    """Everything the tracker knows about one blob."""

    digest: str
    epoch: int
    last_seen: float
    max_peers: int
    size: int | None = None
    piece_size: int | None = None
    book: LeaseBook | None = None
    manifest: PieceManifest | None = None  # dedupes the log: one digest per piece
    log: list[tuple[int, bytes]] = field(default_factory=list)
    # Digests from reporters not yet proven, per reporter: published once its audit agrees, dropped
    # (and their pieces leased again) if it lied. Bounded by the blob's pieces.
    withheld: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    held_back: set[int] = field(default_factory=set)  # the pieces of ``withheld``
    audits: dict[int, Audit] = field(default_factory=dict)  # open audits by piece
    probation: set[str] = field(default_factory=set)  # unproven nodes holding leases (or claims)
    takers: set[str] = field(default_factory=set)  # proven downloaders (they take leases first)
    # Nodes whose claims (origin pieces) this log holds, published or withheld: they keep the busy
    # interval (service._interval), so after a restart they re-report within the rejoin grace.
    reporters: set[str] = field(default_factory=set)
    corrupt_from: set[str] = field(default_factory=set)  # nodes whose "corrupt" reset the log (once each)
    wiped_epochs: list[int] = field(default_factory=list)  # the last logs a "corrupt" wiped (WIPED_KEPT)
    # Pieces leased again because downloaders named them orphans (no holder left), and when: once
    # per lease TTL each (service._orphans), so naming them cannot draw a piece from the origin
    # faster than a node pulling the blob itself would.
    orphaned: dict[int, float] = field(default_factory=dict)
    # The node whose origin copy (or seeder's claim) made each piece count as fetched, the last one,
    # and by when each such node is due to announce again, as its last reply said (-inf: it came
    # back with nothing): a piece named orphan is leased again only once its fetcher is gone
    # (service._orphans). Kept here because a Redis-backed record loads only the askers' peers.
    fetchers: dict[int, str] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    pieces: int = 0  # its layout's piece count (MemoryState's budget)
    rejoin_until: float = float("-inf")  # no new leases before this (service.py, after a restart)
    peers: dict[str, PeerRecord] = field(default_factory=dict)
    granted_upto: int = 0  # highest lease end ever granted: a lease below it is a reassignment
    downloaders: int = 0  # peers not complete yet: the origin lease cap is shared among them
    # (last_seen, seq, node) per refresh, oldest first, checked lazily against ``peers``: expiry
    # costs what expires, not a scan of every peer on every announce (10,000 peers on one blob).
    seen: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: int = 0
    # The peers' infos in a list (and each one's place in it), so a handout samples from it without
    # building a list of every peer on every announce.
    everyone: PeerGroup = field(default_factory=lambda: PeerGroup())
    # The same by zone and by rack (``near_keys``), so a handout draws near peers from their own
    # group instead of hoping a uniform sample of the whole swarm holds some.
    groups: dict[str, PeerGroup] = field(default_factory=dict)

    def set_layout(self, layout: PieceLayout, book: LeaseBook) -> None:
        assert book.piece_count == layout.count, "the lease book must cover the layout's pieces"
        self.size, self.piece_size = layout.blob_size, layout.piece_size
        self.book = book
        self.manifest = PieceManifest(layout)
        self.log = []
        self.withheld = {}
        self.held_back = set()
        self.audits = {}
        self.reporters = set()
        self.fetchers = {}
        self.due = {}
        self.granted_upto = 0

    def reset_digests(self, epoch: int) -> None:
        """Forget every digest and lease (the assembled blob failed its digest): start over."""
        if self.book is not None and self.manifest is not None:
            self.set_layout(self.manifest.layout, self.book.emptied())
        self.epoch = epoch

    @property
    def piece_count(self) -> int:
        return self.manifest.layout.count if self.manifest is not None else 0

    def cursor(self, offset: int) -> int:
        return (self.epoch << EPOCH_SHIFT) | offset

    def offset_of(self, cursor: int) -> int | None:
        """Offset into this log for a client's cursor, or None if it belongs to another log."""
        if cursor >> EPOCH_SHIFT != self.epoch:
            return None
        offset = cursor_offset(cursor)
        return offset if offset <= len(self.log) else None

    def put_peer(self, info: PeerInfo, now: float) -> bool:
        """Record or refresh a peer; False if it is new and the blob already has max_peers."""
        record = self.peers.get(info.node)
        if record is None and len(self.peers) >= self.max_peers:
            return False
        if record is not None and not record.info.complete:
            self.downloaders -= 1
        if not info.complete:
            self.downloaders += 1
        self.peers[info.node] = PeerRecord(info, now)
        old = self.everyone.put(info)
        if old is not None and (old.zone != info.zone or old.rack != info.rack):
            self._ungroup(old)
        for key in near_keys(info.zone, info.rack):
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = PeerGroup()
            group.put(info)
        self._seq += 1
        heapq.heappush(self.seen, (now, self._seq, info.node))
        if len(self.seen) > 64 + 4 * len(self.peers):
            # Refreshes outnumber peers (clocks that went back, or long TTLs): keep one entry per peer.
            self.seen = [(p.last_seen, 0, node) for node, p in self.peers.items()]
            heapq.heapify(self.seen)
        return True

    def peer_total(self) -> int:
        """Live peers of the blob (handed out, or not yet expired)."""
        return len(self.peers)

    def remove_peer(self, node: str) -> None:
        record = self.peers.pop(node, None)
        if record is not None and not record.info.complete:
            self.downloaders -= 1
        self._forget_peer(node)
        gone = self.everyone.remove(node)
        if gone is not None:
            self._ungroup(gone)

    def _forget_peer(self, node: str) -> None:
        """What a peer leaving means beyond the peer list: no lease, no place among the takers, and
        what it fetched is gone with it (service._gone)."""
        self.takers.discard(node)
        self.probation.discard(node)
        self.reporters.discard(node)
        self.due.pop(node, None)
        if self.book is not None:
            self.book.release(node)

    def expire_peers(self, now: float, ttl: float) -> list[str]:
        gone = []
        seen = self.seen
        while seen and now - seen[0][0] >= ttl:
            _, _, node = heapq.heappop(seen)
            record = self.peers.get(node)
            if record is not None and now - record.last_seen >= ttl:
                self.remove_peer(node)
                gone.append(node)
        return gone

    def live_peers(self) -> list[PeerInfo]:
        """Every live peer's info, in no particular order: the record's own list, not a copy."""
        return self.everyone.infos

    def near_peers(self, zone: str, rack: str) -> tuple[list[PeerInfo], list[PeerInfo]]:
        """The live peers in ``zone``'s ``rack`` and in ``zone`` (the records' own lists)."""
        keys = near_keys(zone, rack)
        found = [self.groups[k].infos if k in self.groups else [] for k in keys]
        zone_peers = found[0] if found else []
        rack_peers = found[1] if len(found) > 1 else []
        return rack_peers, zone_peers

    def _ungroup(self, info: PeerInfo) -> None:
        for key in near_keys(info.zone, info.rack):
            group = self.groups.get(key)
            if group is not None:
                group.remove(info.node)
                if not group.infos:
                    del self.groups[key]


@functools.lru_cache(maxsize=4096)  # a cluster has a few zones and racks; made per announce otherwise
def near_keys(zone: str, rack: str) -> tuple[str, ...]:
    """The groups a peer is in: its zone's, and its rack's (within the zone). Empty labels: none."""
    if not zone:
        return ()
    return (f"z\0{zone}", f"r\0{zone}\0{rack}") if rack else (f"z\0{zone}",)


@dataclass(slots=True)
class PeerGroup:
    """Peer infos in a list, each one's place kept: O(1) to put, replace and remove, and a list to
    sample from."""

    infos: list[PeerInfo] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)

    def put(self, info: PeerInfo) -> PeerInfo | None:
        """Add or replace the node's info; the one it replaced, if any."""
        slot = self.slots.get(info.node)
        if slot is None:
            self.slots[info.node] = len(self.infos)
            self.infos.append(info)
            return None
        old = self.infos[slot]
        self.infos[slot] = info
        return old

    def remove(self, node: str) -> PeerInfo | None:
        """Drop the node's info (the last one takes its place); the one dropped, if any."""
        slot = self.slots.pop(node, None)
        if slot is None:
            return None
        gone = self.infos[slot]
        last = self.infos.pop()
        if slot < len(self.infos):
            self.infos[slot] = last
            self.slots[last.node] = slot
        return gone


class TrackerState(Protocol):
    """What the announce logic needs from a store. A shared store would load and save BlobRecords."""

    def get(self, blob: str, size: int | None = None) -> BlobRecord | None:
        """The record of ``blob`` at ``size``; with size None, the blob's only record if it has one."""
        ...

    def sizes(self, blob: str) -> int:
        """How many sizes ``blob`` is tracked with (one swarm each)."""
        ...

    def create(self, blob: str, size: int, now: float, pieces: int = 1) -> BlobRecord:
        """A new, empty record for ``blob`` at ``size`` (``pieces`` in its layout); raises StateFull
        when there is no room."""
        ...

    def standing(self, node: str) -> Standing:
        """The node's standing (created on first use; bounded, oldest forgotten first)."""
        ...

    def is_banned(self, node: str, now: float) -> bool:
        """Whether ``node`` is banned now (without making it a standing: handouts ask this of
        every peer they hand out)."""
        ...

    def new_epoch(self) -> int: ...

    def sweep(self, now: float) -> list[str]:
        """Drop blobs whose peers are all gone for longer than the blob TTL; returns their digests."""
        ...

    def blob_count(self) -> int: ...

    def peer_count(self) -> int: ...

    def lease_count(self) -> int:
        """Origin leases out over all blobs: origin streams the cluster may be running now."""
        ...


class MemoryState:
    """In-process state: the embedded default for a single tracker."""

    def __init__(
        self,
        max_blobs: int = 4096,
        max_peers_per_blob: int = 2048,
        max_sizes_per_blob: int = MAX_SIZES_PER_BLOB,
        max_nodes: int = 1 << 16,
        max_pieces: int = 1 << 24,
        peer_ttl: float = 30.0,
        blob_ttl: float = 600.0,
        sweep_every: float = 5.0,
        epoch_seed: int | None = None,
    ) -> None:
        self.max_blobs = max_blobs
        self.max_peers_per_blob = max_peers_per_blob
        self.peer_ttl = peer_ttl
        self.blob_ttl = blob_ttl
        self.sweep_every = sweep_every
        self.max_sizes_per_blob = max_sizes_per_blob
        self.max_nodes = max_nodes
        # Piece tables cost about a byte a piece each (lease book, digest log): this bounds them
        # all, whatever sizes are announced.
        self.max_pieces = max_pieces
        self._pieces = 0
        # Keyed by (digest, size): the size is part of a swarm's identity, so a node announcing a
        # wrong size only makes a swarm of its own, and cannot turn anyone away from the real one.
        self._blobs: dict[tuple[str, int], BlobRecord] = {}
        self._sizes: dict[str, list[int]] = {}
        self._standing: dict[str, Standing] = {}
        self._next_sweep = float("-inf")
        # A random start keeps cursors from before a tracker restart from matching the new logs.
        self._epoch = random.SystemRandom().randrange(1, EPOCH_LIMIT) if epoch_seed is None else epoch_seed

    def get(self, blob: str, size: int | None = None) -> BlobRecord | None:
        if size is None:
            sizes = self._sizes.get(blob)
            if not sizes or len(sizes) > 1:
                return None
            size = sizes[0]
        return self._blobs.get((blob, size))

    def sizes(self, blob: str) -> int:
        return len(self._sizes.get(blob, ()))

    def standing(self, node: str) -> Standing:
        found = self._standing.get(node)
        if found is None:
            if len(self._standing) >= self.max_nodes:
                # The longest known goes (a bounded map), unless banned: a ban must not be forgotten
                # because others announced (a look at the first few; all banned, the first goes).
                oldest = list(itertools.islice(self._standing.items(), 64))
                victim = next((n for n, st in oldest if st.banned_until == float("-inf")), oldest[0][0])
                del self._standing[victim]
            found = self._standing[node] = Standing()
        return found

    def is_banned(self, node: str, now: float) -> bool:
        found = self._standing.get(node)
        return found is not None and now < found.banned_until

    def _forget(self, key: tuple[str, int]) -> None:
        self._pieces -= self._blobs.pop(key).pieces
        sizes = self._sizes.get(key[0])
        if sizes is not None:
            sizes.remove(key[1])
            if not sizes:
                del self._sizes[key[0]]

    def new_epoch(self) -> int:
        self._epoch = self._epoch % (EPOCH_LIMIT - 1) + 1  # 1..EPOCH_LIMIT-1: cursor 0 never matches
        return self._epoch

    def create(self, blob: str, size: int, now: float, pieces: int = 1) -> BlobRecord:
        sizes = self._sizes.get(blob, [])
        if len(sizes) >= self.max_sizes_per_blob:
            # Another size for a digest whose sizes are all taken: make room by the size with the
            # fewest peers if it has at most one (a lone node's wrong size), else refuse this one.
            key = min(((blob, s) for s in sizes), key=lambda k: len(self._blobs[k].peers))
            if len(self._blobs[key].peers) > 1:
                raise StateFull(f"blob {blob} is tracked with {len(sizes)} sizes already")
            self._forget(key)
        if pieces > self.max_pieces:
            raise StateFull(f"a blob of {pieces} pieces exceeds this tracker's max_tracked_pieces ({self.max_pieces})")
        if self._full(pieces):
            self._sweep(now)
        if self._full(pieces):
            self._evict_idle(now)
        while self._full(pieces) and self._evict_lonely(now):
            pass
        if self._full(pieces):
            raise StateFull(f"tracking {len(self._blobs)} blobs of {self._pieces} pieces (max {self.max_blobs} "
                            f"and {self.max_pieces}), every one with several live peers")
        record = BlobRecord(blob, self.new_epoch(), now, self.max_peers_per_blob)
        record.pieces = pieces
        self._blobs[(blob, size)] = record
        self._sizes.setdefault(blob, []).append(size)
        self._pieces += pieces
        return record

    def _full(self, pieces: int) -> bool:
        return len(self._blobs) >= self.max_blobs or self._pieces + pieces > self.max_pieces

    def _evict_lonely(self, now: float) -> bool:
        """Make room by the oldest blob that only one live node announces: a node announcing
        blobs nobody else pulls (thousands of forged 1 TiB blobs) loses its own records, and a blob
        many nodes share is never the one refused. A real lone downloader's next announce starts
        its record again (its cursor is reset)."""
        for key, record in self._blobs.items():  # oldest first
            if len(record.peers) <= 1:
                self._forget(key)
                return True
        return False

    def _evict_idle(self, now: float) -> None:
        # Under pressure, the blob idle longest goes before its TTL is up, if none of its peers is live.
        idle = min(self._blobs.values(), key=lambda b: b.last_seen, default=None)
        if idle is not None and (not idle.peers or now - idle.last_seen >= self.peer_ttl):
            self._forget((idle.digest, idle.size))

    def sweep(self, now: float) -> list[str]:
        # Amortised: a full pass over all blobs at most every sweep_every seconds, not per announce.
        if now < self._next_sweep:
            return []
        return self._sweep(now)

    def _sweep(self, now: float) -> list[str]:
        self._next_sweep = now + self.sweep_every
        gone = [key for key, b in self._blobs.items() if now - b.last_seen >= self.blob_ttl]
        for key in gone:
            self._forget(key)
        return [digest for digest, _size in gone]

    def blob_count(self) -> int:
        return len(self._blobs)

    def peer_count(self) -> int:
        return sum(len(b.peers) for b in self._blobs.values())

    def lease_count(self) -> int:
        return sum(len(b.book.leases) for b in self._blobs.values() if b.book is not None)
