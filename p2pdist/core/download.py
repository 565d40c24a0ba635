"""One blob's download on one node, as a state machine without I/O.

In the way h11 is an HTTP connection without sockets, ``Download`` is the download without
sockets, threads or clocks: the driver feeds it events (a tracker reply, a neighbour's bitfield or
HAVE, a freed upload slot, a piece verified or failed, an origin run over, ``tick(now)``) and
carries out the commands it gives through the driver's ``Shell`` methods (fetch this piece from
that peer, start an origin run, announce, go direct, commit, abort). The agent's swarm
(p2pdist/agent/swarm.py) drives it over asyncio, the simulator (simulations/agent.py) over simulated
links; the scheduling, the leases, the digest reports, the stall clock and the request book live
here only, and so do their constants.

Per-piece state is one 32-bit cell (``AVAIL``: neighbours holding it, and the ``HAVE``, ``KNOWN``
digest, ``INFLIGHT`` and ``BLOCKED`` bits) in an array the driver hands in: the agent gives each
download its own, the simulator a slice of one array for all its nodes, which its HAVE fan-out
reads without visiting other nodes' objects. The fetchable pieces (held by a neighbour, digest
known, missing, not in flight) and the undigested ones are kept up to date piece by piece, so a
pass never scans the whole blob.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# Absolute: the simulator's compiled copy of this module has no proofs module beside it.
from p2pdist.core.proofs import cursor_epoch

# Relative imports: the simulator compiles this file, with these two, into its own package
# (simulations.machine, .leases, .selection: simulations/native.py), where they resolve to the
# compiled ones.
from . import selection
from .leases import SPARE_LEASES, missing_runs
from .selection import PieceSelector, RarestFirst, assign, inflight_budget, reader_cursor, usable

# --- constants (the agent and the simulator read them from here) ------------------------------

ANNOUNCE_SPACING = 0.05  # seconds between announces triggered by events (digests to send or learn)
FIRST_INTERVAL = 1.0  # the first wait after the "started" reply, unless the tracker is loaded
INTERVAL_JITTER = 0.3  # the tracker's interval is shortened by up to this share, at random
RETRY_INTERVAL = 0.5  # wait after a failed announce; doubled per failure in a row, up to MAX_RETRY
MAX_RETRY = 4.0
# Failed announces in a row before the driver hears the tracker is lost (it logs and counts it). The
# download goes on with the neighbours it has and keeps asking: a tracker restarted within the stall
# timeout is rejoined; giving up on it at once sent every agent to the origin for the rest (a 5 s
# tracker outage: 4.3 to 5.5x origin egress). No progress at all ends in the stall fallback.
TRACKER_FAILURES = 2
LOOP_TIMEOUT = 1.0  # a blocked download looks again at least this often (a back-off ends, a slot frees)
MAX_WANT_LEASES = 16
# The machine keeps its spare leases queued behind its origin streams (_schedule_origin): the
# drivers' announces say so (wire.Announce.spares), and only then does a tracker grant spares.
QUEUES_SPARES = True
MAX_REPORT = 8192  # digests per announce (core.wire.MAX_LIST)
# Seconds without progress (see ``last_progress``) after which the pieces no neighbour holds are
# named to the tracker as orphans (``orphans``): their only holder may be gone (killed before
# anyone copied them), and the tracker would never lease them again. Well under the stall timeout,
# which takes every missing piece from the origin; in a moving swarm HAVEs come far more often.
ORPHAN_AFTER = 3.0
MAX_ORPHANS = 64  # pieces named per announce (core.wire)
DIRECT_RUN_PIECES = 8  # pieces per origin Range request when fetching without a tracker
# Seconds a reader of a direct download may wait for origin pieces, in all, per origin stream open,
# before one more opens (see Download.follow).
PACE_WAIT = 0.1
ORIGIN_RETRIES = 3  # attempts per origin run before the download fails, for answers a retry won't change
# An origin that is unreachable, times out, or answers 5xx, 408 or 429 (a registry restarting, a
# load balancer between pods) is asked again after ORIGIN_RETRY_DELAY, doubled per failure up to
# ORIGIN_MAX_DELAY (or its Retry-After), for ``limits.origin_patience`` from the first failure of a
# run without progress. Three tries in 0.6 s failed every pull whose lease holder was mid-run when
# the registry restarted (a 2 s restart: 2 of 4 pulls failed, the other two stalled, 1.66x egress).
ORIGIN_RETRY_DELAY = 0.2
ORIGIN_MAX_DELAY = 4.0


def backoff(failures: int, first: float = RETRY_INTERVAL, most: float = MAX_RETRY) -> float:
    """The wait after the ``failures``-th failure in a row (1, 2, ...): ``first``, doubled per
    failure, at most ``most``. The announcer's, and the drivers' for the tracker and the origin."""
    return min(most, first * 2 ** (failures - 1))


BUSY_BACKOFF = 0.5  # a peer that answered 503 is not asked again for this long
SCORE_GAIN = 0.1  # a piece delivered
SCORE_MAX = 1.0
FAILURE_PENALTY = 1.0  # a request that failed or timed out
BAD_PIECE_PENALTY = 2.0  # a piece that failed verification
BAN_AFTER_BAD_PIECES = 2  # one bad piece can be bad luck on a flaky disk; two is a pattern
# Failures of any other kind in a row (timeouts, 404 for a piece it advertised, transfer errors)
# before a peer is banned: a silent or lying peer costs a bounded number of requests, not the pull.
BAN_AFTER_FAILURES = 4
# A request's deadline follows the pieces that arrived (Kraken's piece request timeout is fixed; a
# fixed 30 s let a silent peer hold pieces for 62 s of a 5 s pull): this many times the moving
# average of a piece's time, at least MIN_PIECE_TIMEOUT, at most the configured piece_timeout.
TIMEOUT_FACTOR = 8.0
MIN_PIECE_TIMEOUT = 1.0
PIECE_TIME_WEIGHT = 0.2  # of a new sample in the moving average

# --- per-piece cells -------------------------------------------------------------------------

AVAIL = 0xFFFF
HAVE = 1 << 16
KNOWN = 1 << 17
INFLIGHT = 1 << 18
BLOCKED = 1 << 19
# The digest came with the tracker's proof (core.proofs), in our cursor's epoch: our HAVE of the
# piece hands the digest on, so neighbours take it without asking the tracker.
PROVED = 1 << 20
# Offered from its first checked block while its request is open (cut-through, ``piece_arriving``),
# and whether that HAVE carried the tracker's proof: what ``piece_stored`` still has to send, and
# what a failed request takes back (``Shell.unoffer``).
OFFERED = 1 << 21
OFFER_PROVED = 1 << 22
CELL = 0xFFFFFFFF  # every bit of a cell: bits are cleared with CELL ^ BIT (a cell is unsigned)

# What the neighbours still need to hear of a piece just stored (``Shell.stored``).
TELL_NOTHING = 0  # it was offered with its proof: they have heard all of it
TELL_PROOF = 1  # it was offered without the proof, which has come since: the proof alone
TELL_HAVE = 2  # a HAVE, with the proof if ``proved``

# Request outcomes (Request.status).
SENT = "sent"
DONE = "done"
BAD = "bad"  # the bytes did not match the piece digest
BUSY = "busy"  # the peer had no free upload slot (503)
FAILED = "failed"  # transfer error, or the peer left
LACKS = "lacks"  # a 404: the peer does not hold the piece it advertised (it stopped arriving there)
TIMEOUT = "timeout"  # no piece by the request's deadline (``Download.deadline``)
CANCELLED = "cancelled"  # we stopped it (the download ended, or our digest went away): nobody's fault

# Why a download stopped using the tracker (Shell.went_direct).
STALL = "stall"

_IDLE, _SENT, _SPACING, _WAITING = 0, 1, 2, 3  # the announcer's states


class Neighbour(selection.Neighbour, Protocol):
    """What the machine reads and writes on a neighbour: the peer chooser's fields, and more.

    ``inflight`` counts this node's requests to the peer over all its downloads: the machine adds
    one per request it places and takes it back when the request ends.
    """

    busy_until: float  # no request before this (a 503's back-off)
    bad_pieces: int
    failures: int  # requests in a row that failed or timed out (a delivered piece resets it)


class Holders(Protocol):
    """The neighbours a pass may send requests to now, as the driver sees them."""

    def __call__(self, index: int) -> Sequence[Neighbour]:
        """The usable neighbours holding piece ``index``, the same objects on every call of a pass."""
        ...

    def reachable(self, pieces: Iterable[int]) -> list[int]:
        """Those of ``pieces`` some usable neighbour holds."""
        ...


class Shell(Protocol):
    """The commands, carried out by the driver. None of them may call back into the machine."""

    def wake(self) -> None:
        """A pass may place requests now: call ``schedule(now)`` soon (once is enough)."""

    def timer(self, at: float) -> None:
        """Call ``tick(now)`` at ``at`` (an earlier or extra tick is harmless)."""

    def holders(self, now: float) -> Holders | None:
        """The usable neighbours for this pass, or None if there is none."""

    def fetch_piece(self, request: Request) -> None:
        """Fetch ``request.index`` from ``request.peer``; answer with ``request_done``."""

    def start_origin(self, runs: list[tuple[int, int]]) -> None:
        """Fetch the piece runs from the origin, in order; answer with ``piece_stored`` per piece and
        ``origin_done`` (or ``origin_failed``) once."""

    def announce(self) -> None:
        """Send a progress announce built with ``announce_fields()``; answer with ``on_reply`` or
        ``announce_failed``."""

    def stored(self, index: int, from_origin: bool, tell: int) -> None:
        """Piece ``index`` is verified here: count it, tell the readers, and tell the neighbours
        what ``tell`` says (``TELL_HAVE``, ``TELL_PROOF`` or ``TELL_NOTHING``: an offered piece was
        heard of already)."""

    def offer(self, index: int) -> None:
        """Piece ``index`` is arriving from a peer and its first block checked out: tell the
        neighbours they may ask for it now (a HAVE, with the proof if ``proved``), and send askers
        its blocks as they check out. ``stored`` follows when it is all here, or ``unoffer`` if the
        request fails."""

    def unoffer(self, index: int) -> None:
        """Piece ``index``, offered, will not arrive by the request that offered it: askers streaming
        it are cut off, and later askers get a 404 until it is offered or stored again."""

    def complete(self) -> None:
        """Every piece is verified here: check the whole blob and commit it."""

    def went_direct(self, reason: str) -> None:
        """The rest comes from the origin without the tracker (``STALL``)."""

    def tracker_lost(self) -> None:
        """``TRACKER_FAILURES`` announces in a row failed; the download goes on and keeps asking."""

    def tracker_back(self) -> None:
        """An announce was answered after the tracker had been lost."""

    def proved(self, index: int) -> None:
        """Piece ``index``, held here, got the tracker's proof after our HAVE of it went out (one of
        our origin pieces): send the neighbours its digest and proof."""

    def lacks(self, peer: Neighbour, index: int) -> bool:
        """``peer`` answered that it does not hold piece ``index`` (a 404), as a LOST of that one
        piece would say: it is not to be asked for it until it advertises it again. True if it was
        counted as a holder of the piece (not if its bitfield went, or a LOST came, meanwhile)."""

    def ban(self, peer: Neighbour, reason: str) -> None:
        """``peer`` sent ``BAN_AFTER_BAD_PIECES`` bad pieces, or failed ``BAN_AFTER_FAILURES``
        requests in a row: stop trading with it."""

    def abort(self, reason: str) -> None:
        """The download cannot finish (the origin failed for good)."""

    def blocking(self, on: bool) -> None:
        """Whether pieces wait for a busy neighbour's free slot (a ROOM message should wake us)."""


@dataclass(frozen=True)
class Settings:
    """The numbers and policies one download runs with: the agent's ``Limits`` (their defaults live
    there, not here), or a simulated profile's. The policy switches default to the agent's ways."""

    inflight_bytes: int  # piece bytes in flight from peers at once, at least (inflight_budget)
    upload_slots: int  # this node's upload slots: never fewer pieces in flight than these
    origin_concurrency: int  # origin Range streams at once
    stall_timeout: float  # seconds without progress before the rest comes from the origin
    piece_timeout: float = 30.0  # the longest a piece request may take (deadlines adapt below it)
    stall_fallback: bool = True  # no progress for stall_timeout: the rest from the origin
    leases: bool = True  # ask the tracker for origin leases (off: peers only, or direct)
    report_digests: bool = True  # report origin pieces' digests to the tracker
    announce_direct: bool = False  # keep announcing in direct mode (Dragonfly's back-to-source peer)
    # Pass a piece on from its first checked block, before all of it is here (offer): a piece spreads a
    # hop per block-time, not per piece-time (simulated, 10,000 nodes: 1.037 x the chunked bound, not 1.087).
    cut_through: bool = True
    direct_run_pieces: int = DIRECT_RUN_PIECES
    announce_spacing: float = ANNOUNCE_SPACING
    interval_jitter: float = INTERVAL_JITTER
    selector: PieceSelector = field(default_factory=RarestFirst)


def askable(peer: Neighbour, now: float) -> bool:
    """Whether a pass may send ``peer`` a request now: not backing off after a 503, a free request
    slot, room it advertised, not scored out (what ``Shell.holders`` offers)."""
    return peer.busy_until <= now and usable(peer)  # type: ignore[arg-type]


class Request:
    """One piece asked of one peer, and what became of it."""

    __slots__ = ("index", "length", "peer", "sent", "status")

    def __init__(self, index: int, peer: Neighbour, length: int, sent: float) -> None:
        self.index = index
        self.peer = peer
        self.length = length
        self.sent = sent
        self.status = SENT


class RequestBook:
    """The open requests of one download, in the order they were sent.

    A list, scanned by identity: a download has a few requests open at once (its byte budget over
    the piece size), and a dict of dicts per neighbour allocated and freed an inner dict for most
    requests (simulator, 10,000 nodes: 3 % of the run in those lookups and allocations)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[Request] = []

    def add(self, req: Request) -> None:
        self.pending.append(req)

    def close(self, req: Request, status: str) -> bool:
        """Close ``req`` with ``status``; False if it was not open (closed twice)."""
        pending = self.pending
        for k in range(len(pending)):
            if pending[k] is req:
                del pending[k]
                req.status = status
                return True
        return False

    def to(self, peer: Neighbour) -> list[Request]:
        """The open requests to ``peer``."""
        return [req for req in self.pending if req.peer is peer]


class Avail:
    """The availability counts of a download's pieces, as the core's selectors read them."""

    __slots__ = ("base", "cells", "count", "stride")

    def __init__(self, cells: array, base: int, count: int, stride: int = 1) -> None:
        self.cells = cells
        self.base = base
        self.count = count
        self.stride = stride

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        if index < 0 or index >= self.count:
            raise IndexError(index)
        return self.cells[self.base + index * self.stride] & AVAIL


class Download:
    """One blob's download: piece state, leases, digest reports, the announcer, the stall clock."""

    def __init__(
        self,
        shell: Shell,
        settings: Settings,
        piece_size: int,
        blob_size: int,
        now: float,
        rng: random.Random,
        cells: array | None = None,
        base: int = 0,
        direct: bool = False,
        stride: int = 1,
    ) -> None:
        self.shell = shell
        self.settings = settings
        self.piece_size = piece_size
        self.count = max(1, -(-blob_size // piece_size)) if blob_size else 1
        self.last_length = blob_size - (self.count - 1) * piece_size if blob_size else 0
        self.max_inflight = inflight_budget(settings.inflight_bytes, settings.upload_slots, piece_size)
        # The settings read on every pass or piece, as fields (C fields in the simulator's build).
        self.selector = settings.selector
        self.origin_concurrency = settings.origin_concurrency
        self.report_digests = settings.report_digests
        self.announce_direct = settings.announce_direct
        self.cut_through = settings.cut_through
        self.cells = cells if cells is not None else array("I", bytes(4 * self.count))
        # Piece i's cell is cells[base + i * stride]: the agent's own array (0, 1), or the
        # simulator's Board, where piece i of every node sits side by side (node, nodes).
        self.base = base
        self.stride = stride
        self.avail = Avail(self.cells, base, self.count, stride)
        self.rng = rng
        self.have_n = 0
        self.fetchable: set[int] = set()
        self.undigested: set[int] = set()
        self.blocked: set[int] = set()  # chosen by the last pass, but no holder had a free slot
        self.blocked_is_fetchable = False  # blocked == fetchable for sure (both unchanged since)
        self.inflight_bytes = 0
        self.inflight_pieces = 0
        self.requests = RequestBook()
        self.piece_timeout = settings.piece_timeout
        self.piece_time = 0.0  # moving average of a peer piece's time, seconds (0: none arrived yet)
        self.leases: list[tuple[int, int]] = []  # granted to us (or our own runs when direct), not started
        self.origin_active = 0
        self.streamed = 0  # origin bytes since the last announce (they renew our leases); the driver adds
        self.direct = direct
        self.report: list[int] = []  # pieces whose digests the tracker has not had from us
        # Pieces whose digests went into ``report`` once. Every reply lists the leases we hold,
        # including one being streamed, so it is queued and popped again: without this, its held
        # pieces were reported after every reply until the lease closed.
        self.reported: set[int] = set()
        self.from_peers_for_lease: set[int] = set()  # leased pieces left to the peers (_not_for_origin)
        self.orphaned: set[int] = set()  # pieces no neighbour held when nothing moved (``orphans``)
        self.digest_pos = 0
        self.proof_epoch = 0  # the digest epoch of our cursor: proofs of another one are void
        self.cursor: int | None = None  # a streaming reader's next piece
        self.readers: dict[int, int] = {}
        self.waiting: dict[int, float] = {}  # reader -> since when it waits for its next piece
        self.reader_wait = 0.0  # seconds readers waited for pieces, in all (it sets ``paced``)
        self.last_progress = now
        self.dirty = False
        self.done = False  # completed or aborted: no more commands
        # The announcer.
        self._state = _IDLE
        self._kicked = False
        self._sent = 0  # report entries the announce in flight carries
        self._failures = 0
        self._announce_at = math.inf
        self._spacing_until = math.inf
        self._stall_at = math.inf
        self._loop_at = math.inf
        self._armed = math.inf
        for i in range(self.count):
            c = self.cells[base + i * stride]
            self.cells[base + i * stride] = c & (HAVE | KNOWN)
            if c & HAVE:
                self.have_n += 1

    # --- piece state ---------------------------------------------------------------------

    def length(self, i: int) -> int:
        return self.last_length if i == self.count - 1 else self.piece_size

    def has(self, i: int) -> bool:
        return bool(self.cells[self.base + i * self.stride] & HAVE)

    def _inflight(self, i: int) -> bool:
        return bool(self.cells[self.base + i * self.stride] & INFLIGHT)

    def _had_or_inflight(self, i: int) -> bool:
        return bool(self.cells[self.base + i * self.stride] & (HAVE | INFLIGHT))

    def _not_for_origin(self, i: int) -> bool:
        """Whether an origin run may skip leased piece i: had, in flight, or ours for the asking
        from a neighbour with a digest we know (after a tracker restart the tracker leases pieces
        the swarm holds: they come from peers, are reported, and close the lease; fetched from
        the origin they cost up to 1.29x egress on a tracker killed mid-distribution)."""
        c = self.cells[self.base + i * self.stride]
        if c & (HAVE | INFLIGHT):
            return True
        if not self.direct and c & KNOWN and c & AVAIL:
            self.from_peers_for_lease.add(i)
            return True
        return False

    def mark_had(self, i: int) -> None:
        """Before ``start``: piece i was verified earlier (resumed from disk); its digest is known."""
        pos = self.base + i * self.stride
        if not self.cells[pos] & HAVE:
            self.have_n += 1
        self.cells[pos] |= HAVE | KNOWN

    def mark_known(self, i: int) -> None:
        """Before ``start``: piece i's digest is known (it came with the metainfo)."""
        self.cells[self.base + i * self.stride] |= KNOWN

    @property
    def is_complete(self) -> bool:
        return self.have_n == self.count

    def add_holder(self, i: int, free: bool = True, now: float = -1.0) -> None:
        """A neighbour now holds piece i (HAVE or bitfield); ``free``: it has a request slot for us.
        ``now`` (a HAVE heard as it happens) counts as progress for the stall clock."""
        pos = self.base + i * self.stride
        c = self.cells[pos]
        if now >= 0:
            self.last_progress = now
        if c & HAVE:
            return
        self.cells[pos] = c + 1
        if not c & AVAIL:
            if not c & KNOWN:
                self.undigested.add(i)
                self.wake()
            elif not c & INFLIGHT:
                self._add_fetchable(i)
                self.wake()
        elif c & BLOCKED and free:
            self.wake()  # a holder with a free slot for a piece the last pass could not place

    def room_opened(self, holds: Callable[[int], bool]) -> None:
        """A neighbour has a free upload slot again (ROOM). Look again only if it holds a piece the
        last pass could not place: else the pass could only find what the last one found (simulator,
        N=1,000: two thirds of the passes a ROOM woke placed nothing)."""
        if any(holds(i) for i in self.blocked):
            self.wake()

    def drop_holder(self, i: int) -> None:
        pos = self.base + i * self.stride
        c = self.cells[pos]
        if c & HAVE or not c & AVAIL:
            return
        self.cells[pos] = c - 1
        if (c & AVAIL) == 1:
            self._drop_fetchable(i)
            self.undigested.discard(i)

    def learn_digest(self, i: int) -> bool:
        """Piece i's digest is known now (from the tracker); False if it already was."""
        pos = self.base + i * self.stride
        c = self.cells[pos]
        if c & KNOWN:
            return False
        self.cells[pos] = c | KNOWN
        if c & AVAIL and not c & HAVE:
            self.undigested.discard(i)
            if not c & INFLIGHT:
                self._add_fetchable(i)
        return True

    def takes_proofs(self, epoch: int) -> bool:
        """Whether a neighbour's proofs of ``epoch`` hold here: only those of our cursor's epoch (none
        before the tracker's first reply; another one is a log the tracker forgot, or we have not
        heard of yet)."""
        return epoch != 0 and epoch == self.proof_epoch

    def proofs_checked(self, indices: Iterable[int], now: float) -> None:
        """Digests a neighbour passed on with the tracker's proof (core.proofs), checked by the driver
        against the tracker's key, in an epoch we take (``takes_proofs``): those pieces are fetchable
        at once, without the tracker's next reply, and our HAVEs of them hand the proofs on."""
        learned = False
        for i in indices:
            if 0 <= i < self.count:
                learned = self.learn_digest(i) or learned
                self._prove(i)
        if learned:
            self.last_progress = now
            self.wake()

    def proved(self, i: int) -> bool:
        """Whether piece i's digest came with the tracker's proof (our HAVE of it carries it)."""
        return bool(self.cells[self.base + i * self.stride] & PROVED)

    def _prove(self, i: int) -> None:
        pos = self.base + i * self.stride
        c = self.cells[pos]
        if not c & PROVED:
            self.cells[pos] = c | PROVED
            if c & HAVE:
                self.shell.proved(i)

    def _proofs_from(self, reply: Reply) -> None:
        epoch = cursor_epoch(reply.digest_pos)
        if epoch != self.proof_epoch:
            # Another digest log (a corrupt reset, a tracker restart): the proofs we hold are void
            # there, and so is one an offer's HAVE carried (the piece's new proof goes out when it
            # is stored). Before the first reply there are none.
            if self.proof_epoch:
                cells, base, stride = self.cells, self.base, self.stride
                for i in range(self.count):
                    if cells[base + i * stride] & (PROVED | OFFER_PROVED):
                        cells[base + i * stride] = cells[base + i * stride] & (CELL ^ (PROVED | OFFER_PROVED))
            self.proof_epoch = epoch
        for i in reply.proved:
            if 0 <= i < self.count:
                self._prove(i)

    def _add_fetchable(self, i: int) -> None:
        self.fetchable.add(i)
        self.blocked_is_fetchable = False

    def _drop_fetchable(self, i: int) -> None:
        self.fetchable.discard(i)
        self.blocked_is_fetchable = False

    def _start(self, i: int) -> None:
        self.cells[self.base + i * self.stride] |= INFLIGHT
        self.inflight_pieces += 1
        self._drop_fetchable(i)

    def _settle(self, i: int) -> None:
        """Piece i is no longer in flight: fetchable again if it is still missing and someone has it."""
        pos = self.base + i * self.stride
        c = self.cells[pos]
        if not c & INFLIGHT:
            return
        self.cells[pos] = c & (CELL ^ INFLIGHT)
        self.inflight_pieces -= 1
        if not c & HAVE and c & AVAIL and c & KNOWN:
            self._add_fetchable(i)

    def wake(self) -> None:
        if not self.dirty and not self.done:
            self.dirty = True
            self.shell.wake()

    # --- start ---------------------------------------------------------------------------

    def start(self, now: float, reply: Reply | None = None) -> None:
        """The layout is known and the pieces held are marked: go. ``reply`` is the tracker's answer
        to the "started" announce (None: no tracker, or it is unreachable)."""
        if self.is_complete:
            self._complete()
            return
        if reply is None:
            self.direct = True
        if self.direct:
            self._lease_everything()
            if self.announce_direct and reply is not None:
                self._apply(reply, now)
                self._wait(now, FIRST_INTERVAL)
        else:
            self._apply(reply, now)
            # A loaded tracker (it spaces announces) asks back soon only the nodes that fetch from
            # the origin (tracker.service._interval): its interval from the first reply on, since a
            # fixed first second brought every other node of a flash crowd back together, a wave as
            # large as the "started" one. Otherwise the first second: a small swarm's leases and
            # audits go to whoever announces.
            first = reply.interval if reply.spacing > 0 else FIRST_INTERVAL
            self._wait(now, self._jittered(first))
        if self.settings.stall_fallback:
            self._stall_at = self.last_progress + self.settings.stall_timeout
        self.wake()
        self._arm(now)

    # --- the tracker ---------------------------------------------------------------------

    def want_leases(self) -> int:
        if self.done or self.direct or not self.settings.leases:
            return 0
        slots = self.origin_concurrency + SPARE_LEASES
        return min(max(0, slots - self.origin_active - len(self.leases)), MAX_WANT_LEASES)

    def announce_fields(self) -> tuple[list[int], int, int, bool]:
        """(pieces whose digests to report, digest cursor, leases wanted, streaming) for the
        announce being sent now. Bytes on an origin stream since the last announce keep our leases
        alive at the tracker while a piece is still on its way."""
        digests = self.report[:MAX_REPORT]
        self._sent = len(digests)
        streaming = self.streamed > 0 and not self.direct
        self.streamed = 0
        return digests, self.digest_pos, self.want_leases(), streaming

    def orphans(self, now: float) -> list[int]:
        """Pieces we lack that no neighbour holds and that we are not fetching, once nothing has
        moved for ``ORPHAN_AFTER`` seconds: for the announce, whose tracker leases again those of
        them it counted as fetched (a holder killed before anyone copied its pieces left the
        others waiting for their stall fallback, which then took everything from the origin).

        The pieces unheld at that moment are kept (``orphaned``) and named, ``MAX_ORPHANS`` per
        announce, until each is had, held by a neighbour or on its way: the first ones leased again
        are progress, and waiting ``ORPHAN_AFTER`` once more per 64 pieces of a large blob whose
        only holder was killed took a minute. Pieces that lose their holders later wait for the
        next quiet spell: in a moving swarm, a piece nobody near has yet is usually just fresh."""
        if self.done or self.direct or (not self.orphaned and now - self.last_progress < ORPHAN_AFTER):
            return []  # the common case, on every announce: nothing more to look at
        cells, base, stride = self.cells, self.base, self.stride
        queued = {i for s, e in self.leases for i in range(s, e)}
        if not self.orphaned:
            self.orphaned = {i for i in range(self.count)
                             if not cells[base + i * stride] & (HAVE | INFLIGHT | AVAIL) and i not in queued}
        out = []
        for i in sorted(self.orphaned):
            c = cells[base + i * stride]
            if c & (HAVE | AVAIL):
                self.orphaned.discard(i)  # settled: had here, or a neighbour holds it
            elif not c & INFLIGHT and i not in queued and len(out) < MAX_ORPHANS:
                out.append(i)
        return out

    def kick(self) -> None:
        """Something to tell or ask the tracker: announce as soon as the spacing allows."""
        if self.done or (self.direct and not self.announce_direct):
            return
        self._kicked = True
        if self._state == _WAITING:
            self._announce()
        elif self._state == _SPACING:
            self._arm(self._spacing_until)  # the announce goes when the spacing ends

    def _announce(self) -> None:
        self._state = _SENT
        self._kicked = False
        self._announce_at = math.inf
        self.shell.announce()

    def _wait(self, now: float, interval: float) -> None:
        """Announce on the next kick, or after ``interval``."""
        if self.done or (self.direct and not self.announce_direct):
            self._state = _IDLE
            return
        if self._kicked:
            self._announce()
            return
        self._state = _WAITING
        self._announce_at = now + interval

    def on_reply(self, now: float, reply: Reply) -> None:
        """The tracker answered our progress announce (back, after failures)."""
        if self._state != _SENT:
            return
        if self._failures >= TRACKER_FAILURES:
            self.shell.tracker_back()
        self._failures = 0
        del self.report[: self._sent]
        self._sent = 0
        self._apply(reply, now)
        # The next announce: on a kick once the spacing is over, else the interval after it. Only one
        # of the two needs a timer: the spacing's end once there is a kick (kick arms it).
        self._state = _SPACING
        # A loaded tracker asks for more room between announces (its pacer): never less than ours.
        self._spacing_until = now + max(self.settings.announce_spacing, reply.spacing)
        self._announce_at = self._spacing_until + self._jittered(reply.interval)
        self._arm(now)

    def _jittered(self, interval: float) -> float:
        """The tracker's interval, shortened by up to ``interval_jitter`` of it at random: a flash
        crowd that started together would otherwise come back together, every interval, as one
        wave that the tracker's queue holds the lease holders' reports behind. Never longer: the
        interval is what keeps a lease holder's streaming lease (``lease_ttl``) and a peer's entry
        alive at the tracker."""
        return interval * (1.0 - self.settings.interval_jitter * self.rng.random())

    def announce_failed(self, now: float) -> None:
        """The progress announce got no answer (tracker down or unreachable): ask again, less and
        less often, and go on trading with the neighbours meanwhile."""
        if self._state != _SENT:
            return
        self._sent = 0
        self._failures += 1
        if self._failures == TRACKER_FAILURES:
            self.shell.tracker_lost()
        if self.done or (self.direct and not self.announce_direct):
            self._state = _IDLE
            return
        # Kicks (a digest to report, one to learn) wait for the back-off too: each sent its announce
        # at once, 20 a second per agent through a 2 s restart of the trackers' Redis.
        self._state = _SPACING
        self._spacing_until = self._announce_at = now + backoff(self._failures)
        self._arm(now)

    def _apply(self, reply: Reply, now: float) -> None:
        if reply.reset:
            # The tracker forgot its digests (a restart, or a corrupt one discarded): what we sent
            # before is sent again now, before it leases those pieces to another node, which would
            # fetch them from the origin a second time.
            self.digest_pos = 0
            cells, base, stride = self.cells, self.base, self.stride
            self.report = [i for i in sorted(self.reported) if cells[base + i * stride] & HAVE]
            self._sent = 0
            if self.report:
                self.kick()
        learned = False
        for i in reply.learned:
            if 0 <= i < self.count and self.learn_digest(i):
                learned = True
        # Origin work for us is progress; a lease of pieces we hold already is not (a tracker that
        # kept listing one made a download wait forever instead of falling back at its stall).
        work = False if self.direct else self._take_leases(reply.leases)
        if learned or work:
            self.last_progress = now  # the swarm is moving, even if not through us yet
        self.digest_pos = reply.digest_pos
        self._proofs_from(reply)
        self.wake()

    def _take_leases(self, leases: Iterable[tuple[int, int, float]]) -> bool:
        """The reply lists every lease the tracker still gives us: a queued one missing from it
        expired and went to another node (fetching it too would take it from the origin twice).
        Returns whether one has a piece we lack."""
        held = {(start, end) for start, end, _ttl in leases}
        self.leases = [lease for lease in self.leases if lease in held]
        queued = set(self.leases)
        cells, base, stride = self.cells, self.base, self.stride
        work = False
        for start, end, _ttl in leases:
            if not 0 <= start < end <= self.count:
                continue
            if all(cells[base + i * stride] & HAVE for i in range(start, end)):
                self._report_again(start, end)
                continue
            work = True
            # A lease being streamed comes back too; its pieces are in flight, so it adds no request.
            if (start, end) not in queued:
                self.leases.append((start, end))
                queued.add((start, end))
        return work

    def _report_again(self, start: int, end: int) -> None:
        """A lease whose every piece we hold is listed again: the tracker has not taken our report
        of them (a report lost with its reply, or a tracker that did not count it), and the lease
        closes only with it. Each is reported unless it waits in our next announce already."""
        cells, base, stride = self.cells, self.base, self.stride
        pending = set(self.report)
        again = [i for i in range(start, end) if cells[base + i * stride] & KNOWN and i not in pending]
        if again:
            self.report.extend(again)
            self.reported.update(again)
            self.kick()

    def go_direct(self, reason: str) -> None:
        """Take every missing piece from the origin ourselves (no tracker, or no progress)."""
        if self.direct or self.done:
            return
        self.direct = True
        if not self.announce_direct:
            self._state = _IDLE
            self._announce_at = self._spacing_until = math.inf
        self.leases.clear()
        self._lease_everything()
        self.shell.went_direct(reason)
        self.wake()

    # --- the origin ----------------------------------------------------------------------

    def _lease_everything(self) -> None:
        """Without a tracker every missing piece is ours to fetch, in runs for parallel streams.
        Guided, like a lone node's leases (core.leases): a run covers at most 1/streams of the
        pieces left, so the streams end together and the whole-blob hash is not left a long tail."""
        count = self.count
        streams = max(1, self.origin_concurrency)
        queued = {i for s, e in self.leases for i in range(s, e)}
        cells, base, stride = self.cells, self.base, self.stride
        start = 0
        while start < count:
            per = max(1, min(self.settings.direct_run_pieces, -(-(count - start) // streams)))
            end = min(start + per, count)
            if any(not cells[base + i * stride] & HAVE and i not in queued for i in range(start, end)):
                self.leases.append((start, end))
            start = end

    def _schedule_origin(self) -> None:
        if self._failures >= TRACKER_FAILURES and not self.direct:
            # The tracker is lost: a restarted one knows nothing of our queued leases and gives
            # their pieces to others (its first reply drops them from the queue), so they wait.
            return
        limit = self.origin_concurrency
        if self.direct and self.readers:
            limit = min(limit, self.paced())
        while self.leases and self.origin_active < limit:
            if (not self.direct and self.origin_active
                    and (len(self.leases) <= SPARE_LEASES or self._queued_runs() <= SPARE_LEASES)):
                # The spares wait for a stream to end: queued, they keep it going across the
                # announce round trip that reports its piece (core.leases.SPARE_LEASES); fetched
                # beside it, they would share the origin's uplink with it and leave it idle then.
                break
            start, end = self.leases.pop(0)
            if limit < self.origin_concurrency:
                # A paced stream stands for the streams not open: it takes their runs too, in one
                # request (each costs the origin's latency, 2-4 ms for docker-registry on loopback).
                most = start + self.settings.direct_run_pieces * self.origin_concurrency // limit
                while self.leases and self.leases[0][0] == end and self.leases[0][1] <= most:
                    end = self.leases.pop(0)[1]
            self._report_had(start, end)
            runs = missing_runs(start, end, self._not_for_origin)
            if not runs:
                continue
            for s, e in runs:
                for i in range(s, e):
                    self._start(i)
            self.origin_active += 1
            self.shell.start_origin(runs)

    def _queued_runs(self) -> int:
        """Queued leases with pieces still to fetch from the origin (a reply lists the leases being
        streamed too, and those sit in the queue until a pass drops them)."""
        return sum(1 for start, end in self.leases if missing_runs(start, end, self._not_for_origin))

    def _report_had(self, start: int, end: int) -> None:
        """Pieces of a lease we already hold (resumed, or from peers) are reported, closing them."""
        if self.direct:
            return
        cells, base, stride = self.cells, self.base, self.stride
        for i in range(start, end):
            if cells[base + i * stride] & HAVE and cells[base + i * stride] & KNOWN and i not in self.reported:
                self.report.append(i)
                self.reported.add(i)
                self.kick()

    def origin_done(self, runs: list[tuple[int, int]], now: float) -> None:
        """An origin stream started with ``start_origin(runs)`` is over (every piece stored, or it
        stopped early: its missing pieces are released)."""
        self.origin_active -= 1
        for s, e in runs:
            for i in range(s, e):
                self._settle(i)
        self.kick()
        self.wake()

    def origin_failed(self, runs: list[tuple[int, int]], reason: str, now: float) -> None:
        """The origin failed for good on these runs (after ``ORIGIN_RETRIES``): the download fails."""
        self.origin_done(runs, now)
        if not self.done:
            self.done = True
            self.shell.abort(reason)

    # --- storing ---------------------------------------------------------------------------

    def piece_stored(self, i: int, from_origin: bool, now: float) -> bool:
        """Piece i is verified and written (an origin piece, or a peer's before ``request_done``).
        False if it was had already."""
        pos = self.base + i * self.stride
        c = self.cells[pos]
        if c & HAVE:
            return False
        self.cells[pos] = (c | HAVE | KNOWN) & (CELL ^ (OFFERED | OFFER_PROVED))
        if not c & OFFERED:
            tell = TELL_HAVE
        elif c & PROVED and not c & OFFER_PROVED:
            tell = TELL_PROOF  # the proof came after the offer's HAVE went out
        else:
            tell = TELL_NOTHING
        self.have_n += 1
        self._drop_fetchable(i)
        self.undigested.discard(i)
        self.last_progress = now
        leased = not from_origin and i in self.from_peers_for_lease
        if (from_origin or leased) and not self.direct and self.report_digests and i not in self.reported:
            self.report.append(i)
            self.reported.add(i)
            self.kick()
        if self.waiting:
            self._readers_served(i, now)
        self.shell.stored(i, from_origin, tell)
        self.wake()
        if self.have_n == self.count:
            self._complete()
        return True

    def _complete(self) -> None:
        if self.done:
            return  # said already, or aborted
        self.done = True
        self._state = _IDLE
        self.shell.complete()

    # --- peers -----------------------------------------------------------------------------

    def schedule(self, now: float) -> None:
        """The pass: origin runs for queued leases, then peer requests within the byte budget."""
        self.dirty = False
        if self.done:
            return
        if self.leases:
            self._schedule_origin()
        self._schedule_peers(now)

    def _schedule_peers(self, now: float) -> None:
        piece_size = self.piece_size
        budget = self.max_inflight - self.inflight_bytes
        if budget < piece_size and self.inflight_bytes:
            return
        if self.undigested:
            self.kick()  # peers have pieces whose digests we lack: ask the tracker
        fetchable = self.fetchable
        if not fetchable:
            return
        holders = self.shell.holders(now)
        if holders is None:
            # Every holder is full or busy: a freed slot there (ROOM, HAVE) must wake us; our own
            # freed request slots wake us anyway.
            self._block_all(now)
            return
        reachable = holders.reachable(fetchable)
        if not reachable:
            self._block_all(now)
            return
        count = max(1, budget // piece_size)
        cursor = reader_cursor(self.selector, self.cursor, self.count, self._inflight)
        # assign() counts each request on its peer (inflight, room): that count is the request's.
        assigned = assign(self.selector, fetchable, self.avail, count, holders, self.rng, cursor, reachable)
        for index, peer in assigned:
            length = self.length(index)
            self._start(index)
            self.inflight_bytes += length
            req = Request(index, peer, length, now)
            self.requests.add(req)
            self.shell.fetch_piece(req)
        if len(assigned) < count and len(assigned) < len(fetchable):
            self._block_fetchable()  # any of the unplaced pieces may unblock us
        else:
            self._unblock()
        if self.blocked:
            self._loop_timer(now)

    def piece_arriving(self, req: Request) -> None:
        """The first block of ``req``'s piece checked out (core.blocks): with ``cut_through`` the
        piece may be passed on while the rest arrives, and the neighbours hear of it (``offer``)."""
        if not self.cut_through or req.status != SENT:
            return
        pos = self.base + req.index * self.stride
        c = self.cells[pos]
        if c & (HAVE | OFFERED):
            return
        self.cells[pos] = c | OFFERED | (OFFER_PROVED if c & PROVED else 0)
        self.shell.offer(req.index)

    def offering(self, i: int) -> bool:
        """Whether piece i is offered while it arrives (askers may stream it from the relay)."""
        return bool(self.cells[self.base + i * self.stride] & OFFERED)

    def request_done(self, req: Request, status: str, now: float) -> None:
        """A piece request is over: ``DONE`` (verified and written: the piece is stored here),
        ``BAD`` (failed its digest), ``BUSY`` (503), ``LACKS`` (404), ``FAILED``, ``TIMEOUT`` or
        ``CANCELLED``."""
        if not self.requests.close(req, status):
            return
        if status != DONE:
            pos = self.base + req.index * self.stride
            c = self.cells[pos]
            if c & OFFERED:
                # Offered by this request (one request per piece is open): the neighbours heard of a
                # piece that is not coming. A copy stored meanwhile (an origin piece) cleared the bit.
                self.cells[pos] = c & (CELL ^ (OFFERED | OFFER_PROVED))
                self.shell.unoffer(req.index)
        peer = req.peer
        peer.inflight -= 1
        self.inflight_bytes -= req.length
        if status == DONE:
            peer.score = min(peer.score + SCORE_GAIN, SCORE_MAX)
            peer.failures = 0
            took = (now - req.sent) * self.piece_size / max(1, req.length)  # as for a whole piece
            self.piece_time = took if self.piece_time <= 0 else (
                self.piece_time + PIECE_TIME_WEIGHT * (took - self.piece_time))
            self.piece_stored(req.index, False, now)
        elif status == BUSY:
            peer.busy_until = now + BUSY_BACKOFF
        elif status == BAD:
            peer.bad_pieces += 1
            peer.score -= BAD_PIECE_PENALTY
            if peer.bad_pieces >= BAN_AFTER_BAD_PIECES:
                self.shell.ban(peer, "bad pieces")
        elif status in (FAILED, TIMEOUT, LACKS):
            # A 404: the next request for the piece goes to another holder. Asked again, a node that
            # had just dropped a blob whose digest failed (its LOST on the way) answered 404 four
            # times in 4 ms and was banned, and with both its holders banned the asker went to the
            # origin for the whole blob (3.0 x egress). Still a failure: a peer that 404s every
            # piece it advertises is banned like one whose transfers fail.
            if status == LACKS and self.shell.lacks(peer, req.index):
                self.drop_holder(req.index)
            peer.score -= FAILURE_PENALTY
            peer.failures += 1
            if peer.failures >= BAN_AFTER_FAILURES:
                self.shell.ban(peer, "timeouts" if status == TIMEOUT else "failed requests")
        self._settle(req.index)
        self.wake()

    def deadline(self, req: Request) -> float:
        """When ``req`` times out, as far as the pieces so far say (it moves as they arrive: the
        driver asks again while it waits). The driver ends it with ``request_done(req, TIMEOUT)``."""
        if self.piece_time <= 0:
            return req.sent + self.piece_timeout
        expected = self.piece_time * req.length / self.piece_size
        return req.sent + min(self.piece_timeout, max(MIN_PIECE_TIMEOUT, TIMEOUT_FACTOR * expected))

    def _block_all(self, now: float) -> None:
        """No piece can be placed: every fetchable piece is blocked, and the loop's timer runs."""
        if not self.blocked_is_fetchable:
            self._block_fetchable()
        self._loop_timer(now)

    def _unblock(self) -> None:
        if not self.blocked:
            return
        cells, base, stride = self.cells, self.base, self.stride
        for i in self.blocked:
            cells[base + i * stride] &= CELL ^ BLOCKED
        self.blocked.clear()
        self.blocked_is_fetchable = False
        self.shell.blocking(False)

    def _block_fetchable(self) -> None:
        """The blocked pieces become the fetchable ones: those no longer fetchable are unblocked, the
        new ones blocked, the set object kept. Emptying it and filling it again, as every pass that
        placed some of its pieces did, freed and allocated its table each time (simulator, 10,000
        nodes: 4 % of the run resizing these sets)."""
        cells, base, stride = self.cells, self.base, self.stride
        blocked, pieces = self.blocked, self.fetchable
        was = bool(blocked)
        if was:
            for i in [i for i in blocked if i not in pieces]:
                blocked.discard(i)
                cells[base + i * stride] &= CELL ^ BLOCKED
        for i in pieces:
            if i not in blocked:
                blocked.add(i)
                cells[base + i * stride] |= BLOCKED
        if blocked and not was:
            self.shell.blocking(True)
        elif was and not blocked:
            self.shell.blocking(False)
        self.blocked_is_fetchable = True

    def _loop_timer(self, now: float) -> None:
        if self._loop_at == math.inf:
            self._loop_at = now + LOOP_TIMEOUT
            self._arm(now)

    # --- streaming readers ---------------------------------------------------------------

    def follow(self, reader: int, index: int, now: float) -> None:
        """A reader streams the blob and next needs ``index``: the selection window sits there.

        A direct download that readers follow opens its origin streams as the readers need them:
        one, and one more (up to origin_concurrency) each time they have waited PACE_WAIT more for
        pieces in all; a stream takes the runs of the streams not open (_schedule_origin). A client
        on this host that hashes and writes what it reads (a container runtime) is slower than one
        origin stream on a fast link. Streams beyond its pace only took CPU it needed, and each of
        their short runs cost a request: a cold `skopeo copy` through the mirror on 2 cores took
        1.13x the direct time with four streams from the start, 1.05x with this (medians of 10 in
        two batches, side by side). Over a slow or distant link the readers wait, and the streams
        open within PACE_WAIT each. Without a reader (a fetch, or a swarm's leases) every stream
        starts at once.
        """
        previous = self.readers.get(reader)
        self.readers[reader] = index
        self.cursor = min(self.readers.values())
        if self.cells[self.base + index * self.stride] & HAVE or not self.direct:
            self.waiting.pop(reader, None)  # only a direct download's waits pace its streams
        elif previous != index or reader not in self.waiting:
            self.waiting[reader] = now  # asked again for the same piece: still the first wait
        self.wake()

    def unfollow(self, reader: int) -> None:
        self.readers.pop(reader, None)
        self.waiting.pop(reader, None)
        self.cursor = min(self.readers.values(), default=None)

    def paced(self) -> int:
        """Origin streams a direct download that readers follow may run: one, and one per PACE_WAIT
        they waited in all."""
        return min(self.origin_concurrency, 1 + int(self.reader_wait / PACE_WAIT))

    def _readers_served(self, i: int, now: float) -> None:
        """Piece ``i`` landed: readers waiting for it stop waiting (the pass piece_stored wakes
        opens the streams their waits allow)."""
        for reader, since in list(self.waiting.items()):
            if self.readers.get(reader) == i:
                del self.waiting[reader]
                self.reader_wait += now - since

    # --- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time passed: announce when due, fall back to the origin on a stall, look again when blocked."""
        if self._armed <= now:
            self._armed = math.inf
        if self.done:
            return
        if self._state == _SPACING and now >= self._spacing_until:
            self._spacing_until = math.inf
            if self._kicked or now >= self._announce_at:
                self._announce()
            else:
                self._state = _WAITING  # for a kick, or until _announce_at
        if self._state == _WAITING and now >= self._announce_at:
            self._announce()
        if now >= self._stall_at:
            self._check_stall(now)
        if now >= self._loop_at:
            self._loop_at = math.inf
            if self.fetchable:
                self.wake()
        self._arm(now)

    def _check_stall(self, now: float) -> None:
        """A pull never fails because of P2P: no progress (no piece verified here, no new digest, no
        HAVE) for stall_timeout and nothing on its way: the rest from the origin."""
        if self.direct or not self.settings.stall_fallback:
            self._stall_at = math.inf
            return
        due = self.last_progress + self.settings.stall_timeout
        if now < due:
            self._stall_at = due
            return
        if self.origin_active or self.inflight_pieces:
            self._stall_at = now + LOOP_TIMEOUT
            return
        self._stall_at = math.inf
        self.go_direct(STALL)

    def next_deadline(self) -> float:
        """When ``tick`` next has something to do (inf: nothing pending)."""
        due = self._loop_at if self._loop_at < self._stall_at else self._stall_at
        if self._state == _WAITING and self._announce_at < due:
            due = self._announce_at
        elif self._state == _SPACING:
            at = self._spacing_until if self._kicked else self._announce_at
            if at < due:
                due = at
        return due

    def _arm(self, now: float) -> None:
        due = self.next_deadline()
        if due < self._armed:
            self._armed = due
            self.shell.timer(due)


def first_want(origin_concurrency: int) -> int:
    """Leases the "started" announce asks for (the machine starts with its reply): one per origin
    stream and a spare."""
    return min(origin_concurrency + SPARE_LEASES, MAX_WANT_LEASES)


@dataclass
class Reply:
    """What a download takes from a tracker reply: the driver turns the wire's digests into piece
    indices it has stored (``learned``: new digests only, or all of them: learning twice is a no-op)."""

    interval: float = 1.0
    learned: Sequence[int] = ()
    digest_pos: int = 0
    leases: Sequence[tuple[int, int, float]] = ()
    reset: bool = False
    spacing: float = 0.0  # the tracker's least time between our announces (0: ours)
    proved: Sequence[int] = ()  # pieces whose digests the reply carried with the tracker's proof
