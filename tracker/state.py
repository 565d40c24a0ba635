"""Tracker state behind a small interface: in memory now, a shared store (Redis) later.

Per blob the tracker keeps its size and piece size, the origin leases (a core ``LeaseBook``), the
append-only log of piece digests handed to agents page by page, and the live peers. Everything is
bounded: blobs by ``max_blobs``, peers by ``max_peers_per_blob``, pieces by the blob's layout.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Protocol

from p2pdist.core.handout import PeerInfo
from p2pdist.core.layout import PieceLayout
from p2pdist.core.leases import LeaseBook
from p2pdist.core.manifest import PieceManifest

from .errors import TrackerError

# A digest cursor is (epoch << EPOCH_SHIFT) | offset into the log. The epoch changes whenever the
# log is forgotten (corrupt reset, blob dropped, tracker restarted), so a cursor from an older log is
# recognised and answered with reset=True even when it happens to fall inside the new log.
EPOCH_SHIFT = 21  # > log2(MAX_PIECES): an offset never spills into the epoch bits
EPOCH_LIMIT = 1 << 40  # keeps cursors well inside the wire's integer range


class StateFull(TrackerError):
    """No room for another blob: every tracked blob still has live peers."""


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
    peers: dict[str, PeerRecord] = field(default_factory=dict)
    granted_upto: int = 0  # highest lease end ever granted: a lease below it is a reassignment
    downloaders: int = 0  # peers not complete yet: the origin lease cap is shared among them
    # (last_seen, seq, node) per refresh, oldest first, checked lazily against ``peers``: expiry
    # costs what expires, not a scan of every peer on every announce (10,000 peers on one blob).
    seen: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: int = 0
    # The peers' infos in a list (and each one's place in it), so a handout samples from it without
    # building a list of every peer on every announce.
    infos: list[PeerInfo] = field(default_factory=list)
    _slot: dict[str, int] = field(default_factory=dict)

    def set_layout(self, layout: PieceLayout, book: LeaseBook) -> None:
        assert book.piece_count == layout.count, "the lease book must cover the layout's pieces"
        self.size, self.piece_size = layout.blob_size, layout.piece_size
        self.book = book
        self.manifest = PieceManifest(layout)
        self.log = []
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
        offset = cursor & ((1 << EPOCH_SHIFT) - 1)
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
        slot = self._slot.get(info.node)
        if slot is None:
            self._slot[info.node] = len(self.infos)
            self.infos.append(info)
        else:
            self.infos[slot] = info
        self._seq += 1
        heapq.heappush(self.seen, (now, self._seq, info.node))
        if len(self.seen) > 64 + 4 * len(self.peers):
            # Refreshes outnumber peers (clocks that went back, or long TTLs): keep one entry per peer.
            self.seen = [(p.last_seen, 0, node) for node, p in self.peers.items()]
            heapq.heapify(self.seen)
        return True

    def remove_peer(self, node: str) -> None:
        record = self.peers.pop(node, None)
        if record is not None and not record.info.complete:
            self.downloaders -= 1
        slot = self._slot.pop(node, None)
        if slot is not None:
            last = self.infos.pop()
            if slot < len(self.infos):
                self.infos[slot] = last
                self._slot[last.node] = slot
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
        return self.infos


class TrackerState(Protocol):
    """What the announce logic needs from a store. A shared store would load and save BlobRecords."""

    def get(self, blob: str) -> BlobRecord | None: ...

    def create(self, blob: str, now: float) -> BlobRecord:
        """A new, empty record for ``blob``; raises StateFull when there is no room."""
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
        self._blobs: dict[str, BlobRecord] = {}
        self._next_sweep = float("-inf")
        # A random start keeps cursors from before a tracker restart from matching the new logs.
        self._epoch = random.SystemRandom().randrange(1, EPOCH_LIMIT) if epoch_seed is None else epoch_seed

    def get(self, blob: str) -> BlobRecord | None:
        return self._blobs.get(blob)

    def new_epoch(self) -> int:
        self._epoch = self._epoch % (EPOCH_LIMIT - 1) + 1  # 1..EPOCH_LIMIT-1: cursor 0 never matches
        return self._epoch

    def create(self, blob: str, now: float) -> BlobRecord:
        if len(self._blobs) >= self.max_blobs:
            self._sweep(now)
        if len(self._blobs) >= self.max_blobs:
            self._evict_idle(now)
        if len(self._blobs) >= self.max_blobs:
            raise StateFull(f"tracking the maximum of {self.max_blobs} blobs, all with live peers")
        record = BlobRecord(blob, self.new_epoch(), now, self.max_peers_per_blob)
        self._blobs[blob] = record
        return record

    def _evict_idle(self, now: float) -> None:
        # Under pressure, the blob idle longest goes before its TTL is up, if none of its peers is live.
        idle = min(self._blobs.values(), key=lambda b: b.last_seen, default=None)
        if idle is not None and (not idle.peers or now - idle.last_seen >= self.peer_ttl):
            del self._blobs[idle.digest]

    def sweep(self, now: float) -> list[str]:
        # Amortised: a full pass over all blobs at most every sweep_every seconds, not per announce.
        if now < self._next_sweep:
            return []
        return self._sweep(now)

    def _sweep(self, now: float) -> list[str]:
        self._next_sweep = now + self.sweep_every
        gone = [d for d, b in self._blobs.items() if now - b.last_seen >= self.blob_ttl]
        for digest in gone:
            del self._blobs[digest]
        return gone

    def blob_count(self) -> int:
        return len(self._blobs)

    def peer_count(self) -> int:
        return sum(len(b.peers) for b in self._blobs.values())

    def lease_count(self) -> int:
        return sum(len(b.book.leases) for b in self._blobs.values() if b.book is not None)
