"""The announce logic: one Announce in, one AnnounceReply out, time and randomness passed in.

No I/O here, so it is tested with a fake clock and reused by anything that wants tracker behaviour.
Per announce the work is bounded by the blob's peers and leases and the digests the message carries
or the reply pages out, never by the blob's piece count.

Trust. The blob digest is the only root of trust; piece digests are claims by the nodes that
fetched the pieces from the origin (lease holders) or say they hold the whole blob (seeders). A
node that lies about them would make every other node take bad pieces. So a node's claims are
withheld until it is **proven**: one of its pieces is audited, i.e. leased once more to another
node, which fetches it from the origin and reports the digest it got. Agreement proves both nodes;
a disagreement goes to a third node, and the side two origin copies contradict is **banned**: its
withheld claims are dropped, their pieces leased again, its leases revoked, and its announces
refused for ``ban_seconds``. Proof lasts as long as the tracker knows the node, so the cost is one
piece leaving the origin twice per pair of new reporters, once. A swarm is keyed by digest and
size: a node announcing a wrong size only makes a swarm of its own.
"""

from __future__ import annotations

import math
import random
from typing import Any, Protocol

from p2pdist.core.handout import HANDOUTS, HandoutPolicy, PeerInfo
from p2pdist.core.layout import LayoutError, PieceLayout, decide_layout
from p2pdist.core.leases import LeaseBook
from p2pdist.core.proofs import MAX_OFFSET, cursor_epoch
from p2pdist.core.wire import Announce, AnnounceReply

from .config import TrackerConfig
from .errors import TrackerError
from .pacer import MAX_SPACING
from .state import Audit, BlobRecord, MemoryState, StateFull, TrackerState

DEFAULT_CONFIG = TrackerConfig()
REJOIN_GRACE = 2.0  # busy intervals without new leases after a restart, while agents re-report
WIPED_KEPT = 8  # wiped digest logs a blob remembers, to tell their agents to start over


class Emit(Protocol):
    """Receives notable events (for logs and metrics): ``emit("lease_expired", blob=..., ...)``."""

    def __call__(self, event: str, **fields: Any) -> None: ...


def _ignore(event: str, **fields: Any) -> None:
    pass


class AnnounceError(TrackerError):
    """An announce the tracker refuses; ``kind`` is one of KINDS and picks the HTTP status."""

    KINDS = ("size-conflict", "size-invalid", "capacity", "banned", "busy")

    def __init__(self, kind: str, message: str) -> None:
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind


def memory_state(config: TrackerConfig, epoch_seed: int | None = None) -> MemoryState:
    return MemoryState(
        max_blobs=config.max_blobs, max_peers_per_blob=config.max_peers_per_blob, max_nodes=config.max_nodes,
        max_pieces=config.max_tracked_pieces,
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


def served_first(msg: Announce) -> bool:
    """Whether a loaded tracker answers ``msg`` before the announces waiting with it: it reports
    digests (origin pieces fetched), which the reporter's next lease and every node's fetch of those
    pieces wait for. The one rule of the fast path's ``ReportsFirst`` and of the simulator's tracker."""
    return bool(msg.digests)


def handle_announce(
    state: TrackerState,
    msg: Announce,
    now: float,
    rng: random.Random,
    config: TrackerConfig = DEFAULT_CONFIG,
    emit: Emit = _ignore,
    policy: HandoutPolicy | None = None,
    loaded: bool = False,
) -> AnnounceReply:
    """Apply one announce to ``state`` and build the reply. Raises AnnounceError if refused.

    ``policy`` overrides the configured handout policy (the simulator's baselines bring their own).
    ``loaded``: the tracker's pacer is spacing announces (tracker/pacer.py); only then are the nodes
    without origin work sent to the steady interval (``_interval``).
    The tracker's aiohttp shell (tracker/app.py) and the simulator (simulations/control.py) both
    answer announces with this function.
    """
    for digest in state.sweep(now):
        emit("blob_dropped", blob=digest)
    standing = state.standing(msg.node)
    if standing.banned(now):
        raise AnnounceError("banned", f"node {msg.node!r} reported piece digests that the origin contradicts; "
                                      f"it is refused for {standing.banned_until - now:.0f} s more")
    blob = state.get(msg.blob, msg.size)
    if blob is None:
        if msg.size is None:
            if state.sizes(msg.blob) > 1:
                raise AnnounceError("size-conflict", f"blob {msg.blob} is tracked with several sizes: "
                                                     "announce it with the size the registry gave")
            return AnnounceReply(interval=config.announce_interval, digest_pos=msg.digest_pos)
        if msg.event == "stopped":
            return AnnounceReply(interval=config.announce_interval, digest_pos=msg.digest_pos)
        layout = layout_for(msg.size, config)  # before creating anything: a bad size leaves no trace
        try:
            blob = state.create(msg.blob, msg.size, now, pieces=layout.count)
        except StateFull as e:
            raise AnnounceError("capacity", str(e)) from None
        blob.set_layout(layout, lease_book(layout.count, config))
        if msg.digest_pos != 0:
            # Its first announcer knew an earlier log of this blob: this tracker restarted (or
            # forgot the blob). Agents re-report the pieces they fetched under the old leases in
            # their next announce; leasing those pieces before that would fetch them twice (a
            # tracker killed mid-distribution: 1.2 to 1.3x origin egress, 1.06 to 1.1x with this).
            blob.rejoin_until = now + REJOIN_GRACE * config.busy_interval
    _expire(blob, now, config, emit)
    _settle(blob, state, now, emit)
    blob.last_seen = now
    if blob.book is not None and not blob.peer_total():
        # Every holder left (stopped or expired): the digests stay facts, but the bytes must come
        # from the origin again, under lease.
        blob.book.reopen()

    if msg.event == "corrupt" and msg.node in blob.corrupt_from:
        emit("corrupt_ignored", blob=msg.blob, node=msg.node)  # once per node: no wiping the log at will
    elif msg.event == "corrupt" and cursor_epoch(msg.digest_pos) not in (0, blob.epoch):
        # Its download began on a log another report has wiped already: the fault it found is being
        # mended (a byte flipped in one origin response failed every node of the swarm, and each
        # report wiped the log again, the nodes already fetching anew included).
        emit("corrupt_stale", blob=msg.blob, node=msg.node)
    elif msg.event == "corrupt":
        blob.corrupt_from.add(msg.node)
        emit("corrupt_reset", blob=msg.blob, node=msg.node, discarded=len(blob.log))
        blob.wiped_epochs = [*blob.wiped_epochs[-(WIPED_KEPT - 1):], blob.epoch]
        blob.reset_digests(state.new_epoch())
        if msg.digests:  # digests from a node whose assembled blob failed are not evidence
            emit("digests_rejected", blob=msg.blob, node=msg.node, count=len(msg.digests), reason="corrupt")
    else:
        _take_digests(blob, msg, state, now, config, emit)
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
    elif standing.proven and not msg.complete:
        blob.takers.add(msg.node)  # a proven downloader: leases may go to it, not to unproven nodes

    offset = blob.offset_of(msg.digest_pos)
    reset = wiped = False
    if offset is None:
        reset = msg.digest_pos != 0  # a fresh agent (cursor 0) has nothing to forget
        # Its log was wiped by a "corrupt" report, not forgotten by a restart: what it holds was
        # checked against a wrong digest, and re-reporting it (as after a restart) put the digest
        # that failed into the new log, where every node failed again (3 nodes: 4.4x, 16 s).
        wiped = reset and not msg.complete and cursor_epoch(msg.digest_pos) in blob.wiped_epochs
        offset = 0
    # A seeder verified the whole blob: it needs no digests, and sending them would make the cost of
    # every seeding announce grow with the piece count.
    page = [] if msg.complete else blob.log[offset : offset + config.digests_per_reply]

    if msg.orphans and not msg.complete:
        _orphans(blob, msg, now, config, emit, loaded)
    leases = _leases(blob, msg, state, now, config, emit)  # before the interval: a fresh grant makes the blob busy
    handed: list[PeerInfo] = []
    if msg.wants_peers:  # an agent with a full neighbourhood would ignore them: no scan of the peers
        policy = policy or HANDOUTS[config.handout_policy]()
        near = blob.near_peers(asker.zone, asker.rack) if asker.zone else None
        handed = policy.handout(asker, blob.live_peers(), config.handout_size, rng, near)
        banned = state.is_banned
        for p in handed:
            if banned(p.node, now):  # rare: a ban since the peer's last announce
                handed = [p for p in handed if not banned(p.node, now)]
                break
    interval = _interval(blob, msg, bool(leases), loaded, config)
    _expect(blob, msg, now, interval)
    return AnnounceReply(
        interval=interval,
        size=blob.size,
        piece_size=blob.piece_size,
        peers=handed,
        digests=page,
        digest_pos=_cursor(blob, msg, offset + len(page)),
        leases=leases,
        reset=reset,
        wiped=wiped,
    )


def _cursor(blob: BlobRecord, msg: Announce, offset: int) -> int:
    """The reply's digest cursor: where the asker's next page starts. A seeder's counts the pieces
    whose digests the tracker has, published or held back for an audit: when that is all of them,
    the seeder need not send its own (agent.swarm, agent.node seeding). Every completing node sent
    all its digests: 10,000 nodes x 256 pieces at the end of a flash crowd."""
    if msg.complete:
        return blob.cursor(min(len(blob.log) + len(blob.held_back), MAX_OFFSET))
    return blob.cursor(offset)


def _expire(blob: BlobRecord, now: float, config: TrackerConfig, emit: Emit) -> None:
    for node in blob.expire_peers(now, config.peer_ttl):
        emit("peer_expired", blob=blob.digest, node=node)
    if blob.book is not None:
        for lease in blob.book.expire(now):
            emit("lease_expired", blob=blob.digest, node=lease.node, start=lease.start, end=lease.end)


def _take_digests(blob: BlobRecord, msg: Announce, state: TrackerState, now: float, config: TrackerConfig,
                  emit: Emit) -> None:
    """Take the announce's digests: audit opinions, lease holders' claims, a seeder's for new pieces."""
    if not msg.digests:
        return
    book, manifest = blob.book, blob.manifest
    if book is None or manifest is None:
        emit("digests_rejected", blob=msg.blob, node=msg.node, count=len(msg.digests), reason="size-unknown")
        return
    accepted = withheld = repeated = 0
    rejected: dict[str, int] = {}
    for index, digest in msg.digests:
        if index >= manifest.layout.count:
            rejected["out-of-range"] = rejected.get("out-of-range", 0) + 1
            continue
        audit = blob.audits.get(index)
        if audit is not None and msg.node in audit.opinions:
            # An auditor's copy sent again (its "completed" announce left before the reply to the
            # one that carried it came back): still its opinion. Taken as its own claim, the piece
            # was held back for it, the reporter's claim then dropped as a resend, and the audit
            # waited for a third copy (10 s in the demo).
            repeated += 1
            continue
        if audit is not None and msg.node != audit.reporter:
            audit.opinions[msg.node] = digest
            # An origin copy under the sender's own lease (the piece was leased again after every
            # holder left, while another's claim on it waited for this audit) closes that lease
            # too: the sender reports it once, and a lease left open held the blob's other pieces
            # back behind slow start for good (the third node of a rollout never finished).
            if book.record(msg.node, index, now):
                _fetched(blob, index, msg.node, now)
            _resolve(blob, audit, state, now, config, emit)
            continue
        if audit is not None and msg.node == audit.reporter and audit.claim is None:
            audit.claim = digest  # the claim the opinions (maybe in already) are checked against
        if (known := manifest.get(index)) is not None:
            if known == digest:
                # A resend after a lost reply, or a re-fetch after the swarm emptied: still progress
                # on the sender's lease.
                if book.record(msg.node, index, now):
                    _fetched(blob, index, msg.node, now)
                repeated += 1
                continue
            # Our published digest against the sender's: one of them lied. The agents resolve it
            # against the origin themselves (their own origin copy wins, and the whole-blob digest
            # decides); here it is counted.
            rejected["conflict"] = rejected.get("conflict", 0) + 1
            continue
        if book.record(msg.node, index, now):
            pass
        elif index in blob.held_back:
            continue  # a resend of a claim waiting for its audit (or another's claim): nothing new
        elif msg.complete or book.holder(index) is None:
            # A seeder, or a node that fetched the piece under a lease this tracker forgot (it
            # restarted): a claim like a lease holder's, published at once only if its reporter is
            # proven. Leasing the piece again would take it from the origin twice.
            book.mark_digested(index)
        else:
            rejected["not-lease-holder"] = rejected.get("not-lease-holder", 0) + 1
            continue
        blob.reporters.add(msg.node)
        _fetched(blob, index, msg.node, now)
        if not config.audits or state.standing(msg.node).proven:
            _publish(blob, index, digest)
            accepted += 1
            continue
        blob.withheld.setdefault(msg.node, []).append((index, digest))
        blob.held_back.add(index)
        if audit is not None and audit.reporter == msg.node:
            _resolve(blob, audit, state, now, config, emit)  # its auditors may have answered first
        else:
            _open_audit(state, blob, msg.node, index, digest, now, emit)
        withheld += 1
    if withheld:
        emit("digests_withheld", blob=msg.blob, node=msg.node, count=withheld)
    if repeated:
        emit("digests_repeated", blob=msg.blob, node=msg.node, count=repeated)
    if accepted:
        emit("digests_accepted", blob=msg.blob, node=msg.node, count=accepted, seeder=msg.complete)
    for reason, count in rejected.items():
        emit("digests_rejected", blob=msg.blob, node=msg.node, count=count, reason=reason)


def _fetched(blob: BlobRecord, index: int, node: str, now: float) -> None:
    blob.fetchers[index] = node
    blob.due.setdefault(node, now)  # until the end of this announce, which says by when (_expect)


def _publish(blob: BlobRecord, index: int, digest: bytes) -> None:
    assert blob.manifest is not None
    if blob.manifest.get(index) is None:
        blob.manifest.set(index, digest)
        blob.log.append((index, digest))


def _open_audit(state: TrackerState, blob: BlobRecord, node: str, index: int, claim: bytes | None,
                now: float, emit: Emit, move_unstarted: bool = False) -> None:
    """Audit ``node`` on piece ``index`` of ``blob``, unless it is audited already.

    One audit per node, over all blobs: its claims everywhere wait for it. Until an auditor has
    it, it moves to a smaller piece, or (``move_unstarted``) to a blob a node wants origin work
    in, so it costs the origin as little as it can and never waits on a blob nobody fetches: an image's
    config blob is a few hundred bytes, a layer's piece megabytes (two nodes pulling a 3-layer
    image through the mirror: one audit per blob took every 1 MiB layer from the origin twice).
    A node that tells the truth on small pieces and lies on large ones once proven is the case
    the whole-blob digest catches (README, "Nodes that lie").
    """
    standing = state.standing(node)
    layout = blob.manifest.layout if blob.manifest is not None else None
    if layout is None:
        return
    other_reporter = blob.audits.get(index)
    if other_reporter is not None and other_reporter.reporter != node:
        # Another node's claim on this piece is audited already: ``node``'s copy is an opinion
        # there, which proves it too if it agrees. Replacing that audit lost the other's (its
        # auditor's copy then counted for nobody).
        return
    length = layout.length(index)
    own = _own_audit(state, node)
    if own is not None:
        other, current = own
        started = current.auditor is not None or current.opinions
        if other is blob or started:
            return
        if current.claim is not None and length >= standing.audit_length and not move_unstarted:
            return
        del other.audits[current.index]  # a smaller piece (or a claim, at last): the audit moves there
    blob.audits[index] = Audit(index, node, claim, opened=now)
    standing.audit, standing.audit_length = (blob.digest, layout.blob_size, index), length
    emit("audit_opened", blob=blob.digest, node=node, piece=index)


def _resolve(blob: BlobRecord, audit: Audit, state: TrackerState, now: float, config: TrackerConfig,
             emit: Emit) -> None:
    """Decide an audit once the opinions allow: one agreeing copy proves the reporter (and those who
    agreed) and refutes those who did not; two agreeing against the claim refute the reporter."""
    if audit.claim is None or not audit.opinions:
        return  # waiting for the reporter's claim, or for an auditor's copy
    agree = [n for n, d in audit.opinions.items() if d == audit.claim]
    if agree:
        state.standing(audit.reporter).audit = None
        state.standing(audit.reporter).proven = True
        for node in agree:
            _prove(state, node)
        for node, digest in audit.opinions.items():
            if digest != audit.claim:
                _ban(state, blob, node, now, config, emit,
                     f"contradicted piece {audit.index}, which two nodes agree on")
        del blob.audits[audit.index]
        emit("audit_passed", blob=blob.digest, node=audit.reporter, piece=audit.index, auditors=agree)
        _settle(blob, state, now, emit)
        return
    counts: dict[bytes, list[str]] = {}
    for node, digest in audit.opinions.items():
        counts.setdefault(digest, []).append(node)
    truth, witnesses = max(counts.items(), key=lambda kv: len(kv[1]))
    if len(witnesses) >= 2:
        state.standing(audit.reporter).audit = None
        for node in witnesses:
            _prove(state, node)
        del blob.audits[audit.index]
        emit("audit_failed", blob=blob.digest, node=audit.reporter, piece=audit.index, auditors=witnesses)
        _ban(state, blob, audit.reporter, now, config, emit, f"piece {audit.index}: two origin copies disagree")
        _settle(blob, state, now, emit)
        if blob.manifest is not None and blob.manifest.get(audit.index) is None:
            _publish(blob, audit.index, truth)
            if blob.book is not None:
                blob.book.mark_digested(audit.index)
        return
    audit.auditor = None  # one dissent: a third node decides


def _prove(state: TrackerState, node: str) -> None:
    """``node``'s origin copy agreed with another's: it is proven, and an audit of its own claim
    that nobody fetches yet is dropped (it would only cost the origin a piece to prove it again)."""
    standing = state.standing(node)
    standing.proven = True
    own = _own_audit(state, node)
    if own is not None and own[1].auditor is None and not own[1].opinions:
        del own[0].audits[own[1].index]
        standing.audit = None


def _own_audit(state: TrackerState, node: str) -> tuple[BlobRecord, Audit] | None:
    """The open audit of ``node``'s own claim that its standing points at, and that audit's blob
    (None also when the blob is not loaded: on Redis only the turn's blob is)."""
    pointer = state.standing(node).audit
    if pointer is None:
        return None
    digest, size, at = pointer
    blob = state.get(digest, size)
    audit = blob.audits.get(at) if blob is not None else None
    return (blob, audit) if blob is not None and audit is not None and audit.reporter == node else None


def _ban(state: TrackerState, blob: BlobRecord, node: str, now: float, config: TrackerConfig, emit: Emit,
         why: str) -> None:
    """Refuse ``node`` for ``ban_seconds`` and take it out of this swarm (in others its announces are
    refused, and it expires; handouts skip it meanwhile)."""
    blob.remove_peer(node)
    standing = state.standing(node)
    standing.proven = False
    standing.banned_until = now + config.ban_seconds
    emit("node_banned", node=node, reason=why, seconds=config.ban_seconds)


def _settle(blob: BlobRecord, state: TrackerState, now: float, emit: Emit) -> None:
    """Publish the withheld claims of reporters proven since, and drop those of banned ones (their
    pieces are leased again). Cheap when nothing is withheld: per announce it costs the open audits."""
    if blob.withheld:
        for node in list(blob.withheld):
            standing = state.standing(node)
            if standing.proven:
                for index, digest in blob.withheld.pop(node):
                    blob.held_back.discard(index)
                    _publish(blob, index, digest)
            elif standing.banned(now):
                for index, _digest in blob.withheld.pop(node):
                    blob.held_back.discard(index)
                    if blob.book is not None and index not in blob.audits:
                        blob.book.undigest(index)
                emit("digests_dropped", blob=blob.digest, node=node)
    for index, audit in list(blob.audits.items()):
        if state.standing(audit.reporter).banned(now) and audit.reporter not in blob.withheld:
            # A refuted reporter's open audits end; its claims are gone already.
            del blob.audits[index]
            if blob.book is not None and blob.manifest is not None and blob.manifest.get(index) is None:
                blob.book.undigest(index)
        elif audit.auditor is not None and (audit.expires <= now or state.standing(audit.auditor).banned(now)):
            audit.auditor = None


def _leases(blob: BlobRecord, msg: Announce, state: TrackerState, now: float, config: TrackerConfig,
            emit: Emit) -> list[tuple[int, int, float]]:
    """New leases if wanted, plus the ones the node still holds (a lost reply must not strand them),
    plus the audits it fetches (one-piece leases of a piece already claimed)."""
    book = blob.book
    if book is None:
        return []
    if msg.complete:
        book.release(msg.node)  # a seeder has every piece: its remaining leases go back to the pool
        blob.takers.discard(msg.node)
        return []
    audits = _audits_for(blob, msg, state, now, config, emit)
    downloaders = blob.downloaders
    if config.audits and msg.want_leases > 0:
        downloaders = _lease_takers(blob, msg.node, state, config)
    want = msg.want_leases
    if want > 0 and config.audits and msg.node in blob.takers and book.held_by(msg.node) \
            and _wants_newcomers(blob, config):
        want = 0  # its leases are not topped up: the next go to a newcomer (_wants_newcomers)
    if want > 0 and downloaders and now >= blob.rejoin_until:
        for lease in book.grant(msg.node, now, want, downloaders, spares=msg.spares):
            emit("lease_granted", blob=blob.digest, node=msg.node, start=lease.start, end=lease.end,
                 reassigned=lease.start < blob.granted_upto)
            blob.granted_upto = max(blob.granted_upto, lease.end)
            if msg.node in blob.probation and state.standing(msg.node).audit is None:
                # Audit the first piece while it is fetched, not after it is reported: its digest
                # is then published as soon as both copies are in (waiting for the audit to start
                # after the report held back the first pieces of a flash crowd: 1,000 nodes 1.11x
                # the bound, against 1.07x without audits).
                _open_audit(state, blob, msg.node, lease.start, None, now, emit)
    return [(lease.start, lease.end, lease.expires - now) for lease in book.held_by(msg.node)] + audits


# Busy intervals without progress after which a lease on a piece named orphan is taken back: a
# holder that streams renews its leases at every announce (each busy interval).
ORPHAN_LEASE_IDLE = 3
# Busy intervals by which a fetcher may miss its next announce before it counts as gone: an agent on a
# loaded host announces late now and then, and each false "gone" sends a piece through the origin again.
FETCHER_LATE = 2


def _orphans(blob: BlobRecord, msg: Announce, now: float, config: TrackerConfig, emit: Emit,
             loaded: bool) -> None:
    """Pieces a downloader lacks and none of its neighbours holds, after a while without progress
    (core.download.Download.orphans). Those the book counts as fetched, nobody holds a lease on,
    and whose fetcher is gone (``_gone``) are leased again: their holder may be gone before anyone
    copied them (killed: it never said "stopped", and its peer entry lives until its TTL).
    Otherwise no lease ever came for them, and every downloader waited for its stall fallback,
    which took all it lacked from the origin. A lease on one whose holder is gone and has shown no
    progress for ``ORPHAN_LEASE_IDLE`` busy intervals goes back too, with the holder's others
    (renewed together, they are as stale): a killed holder's leases otherwise held their pieces
    for the whole lease TTL. Each piece at most once per lease TTL, so a node that lies about its
    neighbours draws a piece from the origin no faster than a node pulling the blob itself."""
    book = blob.book
    if book is None:
        return
    if len(blob.orphaned) > book.piece_count // 2:  # bounded: forget the old ones
        blob.orphaned = {i: t for i, t in blob.orphaned.items() if now - t < config.lease_ttl}
    released = []
    for i in msg.orphans:
        if not 0 <= i < book.piece_count or now - blob.orphaned.get(i, -math.inf) < config.lease_ttl:
            continue
        idle = book.idle_holder(i, now, ORPHAN_LEASE_IDLE * config.busy_interval)
        if idle is not None and idle != msg.node and _gone(blob, idle, now, config, loaded):
            book.release(idle)
            emit("leases_abandoned", blob=blob.digest, node=idle, named_by=msg.node)
        if book.digested[i] and book.holder(i) is None and _gone(blob, blob.fetchers.get(i), now, config, loaded):
            book.undigest(i)
            blob.orphaned[i] = now
            released.append(i)
    if released:
        emit("pieces_orphaned", blob=blob.digest, node=msg.node, count=len(released), first=released[0])


def _expect(blob: BlobRecord, msg: Announce, now: float, interval: float) -> None:
    """A fetcher's announce: by when the next is due. One that comes back with nothing (a fresh
    data dir) holds none of what it fetched."""
    if msg.node in blob.due:
        blob.due[msg.node] = now + interval if msg.have or msg.complete else -math.inf


def _gone(blob: BlobRecord, node: str | None, now: float, config: TrackerConfig, loaded: bool) -> bool:
    """Whether ``node`` no longer holds what it fetched, as far as this tracker can tell: it left
    (stopped, or expired), missed its next announce by two busy intervals (killed: a killed node says
    nothing, and its entry lives until the peer TTL), or came back with nothing. None (a fetcher
    this tracker never saw: it restarted) counts as gone. Agents announce by the interval we give
    (their jitter only shortens it), after the pacer's spacing when it spaces them.

    A downloader names as orphans the pieces none of *its* neighbours holds. In a swarm larger than
    a neighbourhood that is often only a piece still spreading: leasing those again sent them
    through the origin's uplink twice and took leases from the streams that had them (simulated
    100 nodes x 1 GiB at 50 Mbit/s: 484 pieces of 256 named, 1.58x the bound against 1.06x).
    """
    due = blob.due.get(node) if node is not None else None
    late = FETCHER_LATE * config.busy_interval + (MAX_SPACING if loaded else 0.0)
    return due is None or now > due + late


def _lease_takers(blob: BlobRecord, node: str, state: TrackerState, config: TrackerConfig) -> int:
    """With audits on, origin leases go to proven nodes, and to at most ``probation_nodes`` unproven
    ones at a time (each costs an audit: a piece fetched twice). Returns how many nodes share the
    blob's origin streams (the lease book's ``downloaders``), or 0 if ``node`` may take none now.

    Without the bound, leases spread over every downloader and each new reporter cost an audit:
    simulated 1,000 nodes x 1 GiB, 1.06x origin egress and 1.10x the bound; with it, a fresh
    tracker proves a few nodes per blob and later blobs lease to them.
    """
    book = blob.book
    assert book is not None
    proven = state.standing(node).proven
    # Probation ends with the node's work (no lease held and no claim waiting for its audit), or
    # with its proof: then it is a taker, whether it has announced since or not (left on probation
    # until it did, it held the place a newcomer could take).
    for n in [n for n in blob.probation if state.standing(n).proven]:
        blob.takers.add(n)
    blob.probation = {n for n in blob.probation
                      if not state.standing(n).proven and (n in blob.withheld or book.held_by(n))}
    if proven:
        blob.probation.discard(node)
        blob.takers.add(node)
    elif node in blob.probation or (len(blob.probation) < config.probation_nodes
                                    and len(blob.takers) < _takers_wanted(blob, config)):
        # Until the blob has the proven takers it wants. Each audit proves two nodes (the reporter,
        # and the auditor that agreed), and each costs a piece of the origin's uplink, which bounds
        # a flash crowd: simulated 1,000 nodes x 1 GiB on equal links, 1.067x the bound without
        # audits; with them 1.157x for 2 proven takers (fresh pieces on too few uplinks), 1.088x
        # for 4 (3 audits), 1.089x for 8 (5 audits); one node on probation at a time (counting it
        # as two), 1.104x for 2 audits.
        blob.probation.add(node)
    else:
        return 0
    return max(1, len(blob.takers) + len(blob.probation))


def _wants_newcomers(blob: BlobRecord, config: TrackerConfig) -> bool:
    """Whether the blob wants more lease takers and has a place on probation for one of its other
    downloaders. Meanwhile a proven taker that holds leases gets no more (it asks again once they are
    done, so the origin is never left idle), and the next go to a newcomer.

    A newcomer's audit then starts while the origin carries few streams. Topped up to four streams
    each first, the first two proven takers filled the origin's uplink, and the next takers' audit
    pieces crawled through it among ~12 streams, their own pieces withheld meanwhile: simulated, 16
    nodes on 50 Mbit/s links (bench-16.toml, seed 1), the second pair was proven at 5.7 s, and at
    2.1 s with this rule. Mean of seeds 1-8 1.372 -> 1.364 x the chunked bound; 100 nodes x 1 GiB at
    1 Gbit/s (seeds 1-6) 1.0569 -> 1.0543; 1,000 nodes (seeds 1-4) 1.0761 -> 1.0723. Holding each to
    one lease at a time instead (before proven nodes left probation at once): 1.356, 1.0573, 1.0728.
    """
    return (len(blob.takers) < _takers_wanted(blob, config)
            and len(blob.probation) < config.probation_nodes
            and blob.downloaders > len(blob.takers) + len(blob.probation))


def _takers_wanted(blob: BlobRecord, config: TrackerConfig) -> int:
    """Proven lease takers a blob wants before it leases to no more unproven nodes: one per two
    origin streams, and no more than half its downloaders (a small swarm needs few, and each
    costs an audit: 4 agents pulling 15 MB took 1.21x origin egress with 4 wanted, 1.07x with 2)."""
    return max(2, min(config.origin_streams // 2, blob.downloaders // 2))


def _audits_for(blob: BlobRecord, msg: Announce, state: TrackerState, now: float, config: TrackerConfig,
                emit: Emit) -> list[tuple[int, int, float]]:
    """The audits ``msg.node`` fetches: those it holds, and one more if it wants origin work."""
    held = [(a.index, a.index + 1, a.expires - now) for a in blob.audits.values() if a.auditor == msg.node]
    if held or msg.want_leases <= 0:
        return held
    for reporter, claims in blob.withheld.items():
        if reporter != msg.node and not any(a.reporter == reporter for a in blob.audits.values()):
            # Its claims here wait for an audit in another blob, which nobody may be fetching now
            # (a client pulls an image's blobs in its own order): it comes here unless started.
            free = [c for c in claims if c[0] not in blob.audits]  # one audit per piece
            if free:
                index, claim = min(free, key=lambda c: blob.manifest.layout.length(c[0]))
                _open_audit(state, blob, reporter, index, claim, now, emit, move_unstarted=True)
    proven = state.standing(msg.node).proven
    for audit in blob.audits.values():
        if audit.auditor is None and msg.node != audit.reporter and msg.node not in audit.opinions:
            if proven and now < audit.opened + config.busy_interval:
                # An unproven auditor that agrees is proven too: one audit, two nodes. A proven one
                # takes it only if none came meanwhile (4 agents pulling an image: 4 audits, not 2).
                continue
            audit.auditor, audit.expires = msg.node, now + config.lease_ttl
            emit("audit_assigned", blob=blob.digest, node=msg.node, piece=audit.index, reporter=audit.reporter)
            return [(audit.index, audit.index + 1, config.lease_ttl)]
    return []


def _interval(blob: BlobRecord, msg: Announce, leased: bool, loaded: bool, config: TrackerConfig) -> float:
    """``busy_interval`` while a blob's pieces are fetched under lease, else ``announce_interval``;
    on a ``loaded`` tracker, the busy interval only for the nodes that fetch them.

    While pieces are fetched under lease, fresh digests are what the others wait for: the nodes
    fetching them (holding leases or audits, proven lease takers, or with claims of theirs in the
    log, which a restarted tracker needs again within its rejoin grace) report often. The others
    learn digests from their neighbours' HAVEs, with the tracker's proof, and a neighbour's piece
    they cannot verify yet makes them announce at once (core.download: undigested pieces kick). On
    a loaded tracker their announces every busy interval were the queue the lease holders' reports
    waited in. But a small swarm needs them: the tracker hands leases and audits to whoever
    announces, and with the rule always on the 4-node demo took 3.6-4.0 s instead of 1.8-2.0 s.
    So only while the pacer spaces announces, which a small or quiet cluster never makes it do.
    """
    busy = blob.book is not None and bool(blob.book.leases) and len(blob.log) < blob.piece_count
    if not busy or msg.complete:
        return config.announce_interval
    if not loaded:
        return config.busy_interval
    node = msg.node
    # Not ``probation``: an unproven announcer joins it before its lease is granted, or not.
    fetching = leased or node in blob.reporters or node in blob.takers
    return config.busy_interval if fetching else config.announce_interval

