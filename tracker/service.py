"""The announce logic: one Announce in, one AnnounceReply out, time and randomness passed in.

No I/O here, so it is tested with a fake clock and reused by anything that wants tracker behaviour.
Per announce the work is bounded by the blob's peers and leases and the digests the message carries
or the reply pages out, never by the blob's piece count.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from p2pdist.core.handout import HANDOUTS, HandoutPolicy, PeerInfo
from p2pdist.core.layout import LayoutError, PieceLayout, decide_layout
from p2pdist.core.leases import LeaseBook
from p2pdist.core.wire import Announce, AnnounceReply

from .config import TrackerConfig
from .errors import TrackerError
from .state import BlobRecord, MemoryState, StateFull, TrackerState

DEFAULT_CONFIG = TrackerConfig()


class Emit(Protocol):
    """Receives notable events (for logs and metrics): ``emit("lease_expired", blob=..., ...)``."""

    def __call__(self, event: str, **fields: Any) -> None: ...


def _ignore(event: str, **fields: Any) -> None:
    pass


class AnnounceError(TrackerError):
    """An announce the tracker refuses; ``kind`` is one of KINDS and picks the HTTP status."""

    KINDS = ("size-conflict", "size-invalid", "capacity")

    def __init__(self, kind: str, message: str) -> None:
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind


def memory_state(config: TrackerConfig, epoch_seed: int | None = None) -> MemoryState:
    return MemoryState(
        max_blobs=config.max_blobs, max_peers_per_blob=config.max_peers_per_blob,
        peer_ttl=config.peer_ttl, blob_ttl=config.blob_ttl, sweep_every=min(5.0, config.peer_ttl),
        epoch_seed=epoch_seed,
    )


def lease_book(piece_count: int, config: TrackerConfig) -> LeaseBook:
    """The origin lease book for a blob of ``piece_count`` pieces, as this tracker is configured."""
    return LeaseBook(piece_count, config.lease_pieces, config.lease_ttl, config.leases_per_node,
                     config.origin_streams, config.origin_slow_start, config.solo_lease_pieces)


def layout_for(size: int | None, config: TrackerConfig) -> PieceLayout | None:
    """The layout the tracker fixes for a blob of ``size`` bytes (None if the size is not given)."""
    if size is None:
        return None
    if size > config.max_blob_size:
        raise AnnounceError("size-invalid", f"blob size {size} exceeds this tracker's max_blob_size "
                                            f"of {config.max_blob_size} bytes")
    try:
        return decide_layout(size, rule=config.piece_rule)
    except LayoutError as e:
        raise AnnounceError("size-invalid", f"blob size {size}: {e}") from None


def handle_announce(
    state: TrackerState,
    msg: Announce,
    now: float,
    rng: random.Random,
    config: TrackerConfig = DEFAULT_CONFIG,
    emit: Emit = _ignore,
    policy: HandoutPolicy | None = None,
) -> AnnounceReply:
    """Apply one announce to ``state`` and build the reply. Raises AnnounceError if refused.

    ``policy`` overrides the configured handout policy (the simulator's baselines bring their own).
    The tracker's aiohttp shell (tracker/app.py) and the simulator (simulations/control.py) both
    answer announces with this function.
    """
    for digest in state.sweep(now):
        emit("blob_dropped", blob=digest)
    blob = state.get(msg.blob)
    # Before creating anything, so a bad size leaves no trace; once per blob, not per announce.
    known = blob is not None and blob.size is not None and msg.size == blob.size
    layout = None if known else layout_for(msg.size, config)
    if blob is None:
        if msg.event == "stopped":
            return AnnounceReply(interval=config.announce_interval, digest_pos=msg.digest_pos)
        try:
            blob = state.create(msg.blob, now)
        except StateFull as e:
            raise AnnounceError("capacity", str(e)) from None
    _expire(blob, now, config, emit)
    if layout is not None:
        if blob.size is None:
            blob.set_layout(layout, lease_book(layout.count, config))
        elif blob.size != layout.blob_size:
            raise AnnounceError(
                "size-conflict",
                f"blob {msg.blob} is known as {blob.size} bytes but this announce says {layout.blob_size}; "
                "the agent has a wrong size for this digest",
            )
    blob.last_seen = now
    if blob.book is not None and not blob.peers:
        # Every holder left (stopped or expired): the digests stay facts, but the bytes must come
        # from the origin again, under lease.
        blob.book.reopen()

    if msg.event == "corrupt":
        emit("corrupt_reset", blob=msg.blob, node=msg.node, discarded=len(blob.log))
        blob.reset_digests(state.new_epoch())
        if msg.digests:  # digests from a node whose assembled blob failed are not evidence
            emit("digests_rejected", blob=msg.blob, node=msg.node, count=len(msg.digests), reason="corrupt")
    else:
        _take_digests(blob, msg, now, emit)
        if msg.streaming and blob.book is not None and blob.book.progress(msg.node, now):
            emit("leases_renewed", blob=msg.blob, node=msg.node)

    if msg.event == "stopped":
        blob.remove_peer(msg.node)
        emit("peer_stopped", blob=msg.blob, node=msg.node)
        return AnnounceReply(interval=config.announce_interval, size=blob.size, piece_size=blob.piece_size,
                             digest_pos=msg.digest_pos)

    asker = PeerInfo(msg.node, msg.addr, msg.zone, msg.rack, msg.have, msg.complete, msg.load)
    if not blob.put_peer(asker, now):
        emit("peer_rejected", blob=msg.blob, node=msg.node, reason=f"blob has {config.max_peers_per_blob} peers")

    offset = blob.offset_of(msg.digest_pos)
    reset = False
    if offset is None:
        reset = msg.digest_pos != 0  # a fresh agent (cursor 0) has nothing to forget
        offset = 0
    # A seeder verified the whole blob: it needs no digests, and sending them would make the cost of
    # every seeding announce grow with the piece count.
    page = [] if msg.complete else blob.log[offset : offset + config.digests_per_reply]

    leases = _leases(blob, msg, now, emit)  # before the interval: a fresh grant makes the blob busy
    handed: list[PeerInfo] = []
    if msg.wants_peers:  # an agent with a full neighbourhood would ignore them: no scan of the peers
        policy = policy or HANDOUTS[config.handout_policy]()
        handed = policy.handout(asker, blob.live_peers(), config.handout_size, rng)
    return AnnounceReply(
        interval=_interval(blob, config),
        size=blob.size,
        piece_size=blob.piece_size,
        peers=handed,
        digests=page,
        digest_pos=blob.cursor(offset + len(page)),
        leases=leases,
        reset=reset,
    )


def _expire(blob: BlobRecord, now: float, config: TrackerConfig, emit: Emit) -> None:
    for node in blob.expire_peers(now, config.peer_ttl):
        emit("peer_expired", blob=blob.digest, node=node)
    if blob.book is not None:
        for lease in blob.book.expire(now):
            emit("lease_expired", blob=blob.digest, node=lease.node, start=lease.start, end=lease.end)


def _take_digests(blob: BlobRecord, msg: Announce, now: float, emit: Emit) -> None:
    """Append the announce's acceptable digests to the log: lease holders', or a seeder's for new pieces."""
    if not msg.digests:
        return
    book, manifest = blob.book, blob.manifest
    if book is None or manifest is None:
        emit("digests_rejected", blob=msg.blob, node=msg.node, count=len(msg.digests), reason="size-unknown")
        return
    accepted = 0
    rejected: dict[str, int] = {}
    for index, digest in msg.digests:
        if index >= manifest.layout.count:
            reason = "out-of-range"
        elif (known := manifest.get(index)) is not None:
            if known == digest:
                # A resend after a lost reply, or a re-fetch after the swarm emptied: still progress
                # on the sender's lease.
                book.record(msg.node, index, now)
                continue
            reason = "conflict"
        elif book.record(msg.node, index, now):
            reason = ""
        elif msg.complete:
            # A seeder verified the whole blob against its digest, so its piece digests are facts.
            book.mark_digested(index)
            reason = ""
        else:
            reason = "not-lease-holder"
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        manifest.set(index, digest)
        blob.log.append((index, digest))
        accepted += 1
    if accepted:
        emit("digests_accepted", blob=msg.blob, node=msg.node, count=accepted, seeder=msg.complete)
    for reason, count in rejected.items():
        emit("digests_rejected", blob=msg.blob, node=msg.node, count=count, reason=reason)


def _leases(blob: BlobRecord, msg: Announce, now: float, emit: Emit) -> list[tuple[int, int, float]]:
    """New leases if wanted, plus the ones the node still holds (a lost reply must not strand them)."""
    book = blob.book
    if book is None:
        return []
    if msg.complete:
        book.release(msg.node)  # a seeder has every piece: its remaining leases go back to the pool
        return []
    if msg.want_leases > 0:
        for lease in book.grant(msg.node, now, msg.want_leases, blob.downloaders):
            emit("lease_granted", blob=blob.digest, node=msg.node, start=lease.start, end=lease.end,
                 reassigned=lease.start < blob.granted_upto)
            blob.granted_upto = max(blob.granted_upto, lease.end)
    return [(lease.start, lease.end, lease.expires - now) for lease in book.held_by(msg.node)]


def _interval(blob: BlobRecord, config: TrackerConfig) -> float:
    # While pieces are being fetched under lease, fresh digests are what other agents wait for.
    busy = blob.book is not None and bool(blob.book.leases) and len(blob.log) < blob.piece_count
    return config.busy_interval if busy else config.announce_interval

