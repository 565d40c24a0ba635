"""The simulated tracker: the announce logic of tracker/service.py over the same core policies.

It keeps the real tracker's semantics announce for announce (tests/test_sim_tracker.py replays
random announce sequences through both and compares the replies): the core ``LeaseBook`` grants,
renews, expires and releases origin leases; digests are accepted only from lease holders or
seeders and paged out of an append-only log; the configured handout policy picks peers; the reply
interval is ``busy_interval`` while leases are out and digests missing.

Two things differ, for speed, neither visible in the replies: peers expire through a heap instead
of a scan of every peer per announce, and a handout is computed only when the asking agent has
room for another neighbour (``wants_peers``), because an agent with a full neighbourhood ignores it.
Piece digests are piece indices here: the simulation has no bytes to hash.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from p2pdist.core.handout import HandoutPolicy, PeerInfo
from p2pdist.core.leases import LeaseBook
from tracker.config import TrackerConfig
from tracker.service import lease_book


@dataclass(slots=True)
class Announce:
    node: str
    zone: str = ""
    rack: str = ""
    have: int = 0
    complete: bool = False
    load: int = 0
    event: str = "progress"  # started | progress | completed | stopped
    want_leases: int = 0
    digests: list[int] = field(default_factory=list)
    digest_pos: int = 0
    wants_peers: bool = True
    streaming: bool = False


@dataclass(slots=True)
class Reply:
    interval: float
    peers: list[PeerInfo] = field(default_factory=list)
    digests: list[int] = field(default_factory=list)
    digest_pos: int = 0
    leases: list[tuple[int, int, float]] = field(default_factory=list)


@dataclass(slots=True)
class _Peer:
    info: PeerInfo
    last_seen: float


class BlobTrack:
    """What the tracker knows about one blob (tracker/state.py BlobRecord)."""

    def __init__(self, piece_count: int, config: TrackerConfig) -> None:
        self.piece_count = piece_count
        self.book: LeaseBook = lease_book(piece_count, config)  # the tracker's own, as it is configured
        self.downloaders = 0  # peers not complete (tracker/state.py BlobRecord.downloaders)
        self.logged = bytearray(piece_count)
        self.log: list[int] = []
        self.peers: dict[str, _Peer] = {}
        self.expiry: list[tuple[float, int, str]] = []  # (last_seen + peer_ttl, seq, node), lazily checked
        self.granted_upto = 0


class SimTracker:
    def __init__(self, config: TrackerConfig, policy: HandoutPolicy, rng: random.Random) -> None:
        self.config = config
        self.policy = policy
        self.rng = rng
        self.blobs: dict[int, BlobTrack] = {}
        self.announces = 0
        self.handouts = 0
        self.leases_granted = 0
        self.leases_reassigned = 0
        self.leases_expired = 0
        self.digests_rejected = 0
        self._seq = 0

    def blob(self, blob: int, piece_count: int) -> BlobTrack:
        track = self.blobs.get(blob)
        if track is None:
            track = self.blobs[blob] = BlobTrack(piece_count, self.config)
        return track

    def announce(self, track: BlobTrack, msg: Announce, now: float) -> Reply:
        self.announces += 1
        cfg = self.config
        self._expire(track, now)
        if not track.peers:
            # Every holder left: the digests stay facts, but the bytes must leave the origin again.
            track.book.reopen()
        self._take_digests(track, msg, now)
        if msg.streaming:
            track.book.progress(msg.node, now)
        if msg.event == "stopped":
            self._remove_peer(track, msg.node)
            return Reply(interval=cfg.announce_interval, digest_pos=msg.digest_pos)
        asker = PeerInfo(msg.node, msg.node, msg.zone, msg.rack, msg.have, msg.complete, msg.load)
        record = track.peers.get(msg.node)
        if record is not None or len(track.peers) < cfg.max_peers_per_blob:
            if record is not None and not record.info.complete:
                track.downloaders -= 1
            if not asker.complete:
                track.downloaders += 1
            track.peers[msg.node] = _Peer(asker, now)
        if msg.node in track.peers:
            self._seq += 1
            heapq.heappush(track.expiry, (now + cfg.peer_ttl, self._seq, msg.node))
        offset = msg.digest_pos if 0 <= msg.digest_pos <= len(track.log) else 0
        page = [] if msg.complete else track.log[offset : offset + cfg.digests_per_reply]
        leases = self._leases(track, msg, now)
        peers: list[PeerInfo] = []
        if msg.wants_peers:
            self.handouts += 1
            live = [p.info for p in track.peers.values()]
            peers = self.policy.handout(asker, live, cfg.handout_size, self.rng)
        busy = bool(track.book.leases) and len(track.log) < track.piece_count
        return Reply(
            interval=cfg.busy_interval if busy else cfg.announce_interval, peers=peers, digests=page,
            digest_pos=offset + len(page), leases=leases,
        )

    def _expire(self, track: BlobTrack, now: float) -> None:
        ttl = self.config.peer_ttl
        heap = track.expiry
        while heap and heap[0][0] <= now:
            _, _, node = heapq.heappop(heap)
            record = track.peers.get(node)
            if record is not None and now - record.last_seen >= ttl:
                self._remove_peer(track, node)
        self.leases_expired += len(track.book.expire(now))

    def _remove_peer(self, track: BlobTrack, node: str) -> None:
        record = track.peers.pop(node, None)
        if record is not None and not record.info.complete:
            track.downloaders -= 1
        track.book.release(node)

    def _take_digests(self, track: BlobTrack, msg: Announce, now: float) -> None:
        book, logged, log = track.book, track.logged, track.log
        for index in msg.digests:
            if not 0 <= index < track.piece_count:
                continue
            if logged[index]:
                book.record(msg.node, index, now)  # a resend, or a re-fetch after a reopen: lease progress
                continue
            if book.record(msg.node, index, now):
                pass
            elif msg.complete:
                book.mark_digested(index)  # a seeder verified the whole blob: its digests are facts
            else:
                self.digests_rejected += 1  # e.g. a holder whose lease expired and went to another node
                continue
            logged[index] = 1
            log.append(index)

    def _leases(self, track: BlobTrack, msg: Announce, now: float) -> list[tuple[int, int, float]]:
        book = track.book
        if msg.complete:
            book.release(msg.node)
            return []
        if msg.want_leases > 0:
            for lease in book.grant(msg.node, now, msg.want_leases, track.downloaders):
                self.leases_granted += 1
                if lease.start < track.granted_upto:
                    self.leases_reassigned += 1
                track.granted_upto = max(track.granted_upto, lease.end)
        return [(lease.start, lease.end, lease.expires - now) for lease in book.held_by(msg.node)]
