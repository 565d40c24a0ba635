"""A simulated node and its swarms: p2pdist/swarm.py's decisions, carried out on simulated links.

Each ``Swarm`` mirrors one ``p2pdist.swarm.Swarm``: the same announce loop (kick, 50 ms spacing,
the tracker's interval), the same origin scheduling (leases popped into Range runs, at most
``origin_concurrency`` at once), the same peer scheduling (an inflight byte budget, the core
selector over fetchable pieces, ``choose_peer`` over the holders with per-peer concurrency), the
same stall fallback. Decisions are the core's; this file only keeps the state they read.

For speed the state is kept incrementally instead of recomputed per pass: the fetchable
``candidates`` (available, digest known, not had, not in flight) and ``waiting`` (available but no
digest yet) sets change only when a HAVE, a digest, a start or an end touches a piece. A pass runs
only when its outcome can differ from the last one: a new fetchable piece, a free-slot holder for a
piece the last pass chose but could not place (``blocked``), freed budget or slots, and the agent's
1 s loop timer while blocked. The agent's loop also runs on every other HAVE; with rarest-first
such a pass picks the same pieces (the HAVE only made a piece commoner) up to random tie-breaks.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import deque
from typing import TYPE_CHECKING

import cython

from p2pdist.core.leases import missing_runs
from p2pdist.core.selection import assign, inflight_budget, reader_cursor

from .profiles import BACK_TO_SOURCE, DIRECT, LEASES, SPARE_LEASES

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .cluster import Blob, Cluster

MAX_LIST = 8192  # p2pdist.core.wire.MAX_LIST: digests per announce
BUSY_BACKOFF = 0.5  # swarm._peer_piece: a peer that answered 503 is skipped this long
LOOP_TIMEOUT = 1.0  # swarm._download: the loop runs at least this often


# A swarm's per-piece state as the HAVE fan-out reads it, one 32-bit cell per node and piece (Board.cells):
# how many neighbours hold the piece, and mirrors of have / known / in flight / blocked.
AVAIL = 0xFFFF
HAVE = 1 << 16
KNOWN = 1 << 17
INFLIGHT = 1 << 18
BLOCKED = 1 << 19


class Board:
    """What passes and HAVEs read about other nodes, in flat arrays indexed by node.

    At 10,000 nodes the objects are spread over 1.5 GB, and visiting a neighbour's objects was a
    cache miss per object (perf: most of a pass's and a HAVE's time). Here a pass scans its ~40
    neighbours, and a stored piece updates its ~40 watchers, in a few contiguous arrays:
    ``uploads`` (upload slots in use), ``have[b]`` (the pieces each node holds, ``words[b]`` 64-bit
    words per node), ``cells[b]`` (each swarm's per-piece cell, ``count`` per node), ``live[b]`` (the
    node runs a swarm for b) and ``blocking[b]`` (that swarm has blocked pieces: ROOM wakes it).
    """

    def __init__(self, nodes: int, counts: list[int]) -> None:
        self.nodes: list[Node] = []  # filled by the cluster, the origin peer last
        self.uploads = array("i", bytes(4 * nodes))
        self.words = [(count + 63) >> 6 for count in counts]
        self.have = [array("Q", bytes(8 * nodes * w)) for w in self.words]
        self.cells = [array("I", bytes(4 * nodes * count)) for count in counts]
        self.live = [bytearray(nodes) for _ in counts]
        self.blocking = [bytearray(nodes) for _ in counts]

    def drop(self, node: int) -> None:
        """``node`` left: it runs no swarm any more."""
        for b in range(len(self.live)):
            self.live[b][node] = 0
            self.blocking[b][node] = 0

    def fill(self, node: int, b: int, count: int) -> None:
        """Every piece of blob ``b`` at ``node``."""
        w = self.words[b]
        have = self.have[b]
        for k in range(w):
            bits = min(64, count - 64 * k)
            have[node * w + k] = (1 << bits) - 1


class Edge:
    """This node's view of one neighbour: the fields of ``p2pdist.core.selection.PeerSlot`` that
    choose_peer reads (the same names, so the core's functions take it), plus the neighbour."""

    __slots__ = ("busy_until", "inflight", "limit", "node", "owner", "peer", "pidx", "pos", "room", "score")

    def __init__(self, node: Node, limit: int, owner: Node) -> None:
        self.peer = node.name
        self.pidx = node.idx
        self.owner = owner
        self.pos = -1  # index in owner.edge_list, -1 once disconnected
        self.inflight = 0
        self.limit = limit
        self.score = 0.0
        self.room = 1 << 30  # PeerSlot's default: unlimited until the peer says
        self.node = node
        self.busy_until = 0.0

    def ready_at(self) -> float:
        """From when a pass may send this peer a request (a free request slot, no busy back-off)."""
        return self.busy_until if self.inflight < self.limit else math.inf

    def changed(self) -> None:
        """``inflight`` or ``busy_until`` changed: the owner's scan array follows."""
        if self.pos >= 0:
            self.owner.e_ready[self.pos] = self.ready_at()

    def add_request(self, delta: int) -> None:
        """A request to this peer was sent (+1) or is over (-1)."""
        self.inflight += delta
        self.changed()


class Node:
    __slots__ = (
        "alive",
        "arrived",
        "bits",
        "board",
        "dialing",
        "done_at",
        "down",
        "e_peer",
        "e_ready",
        "edge_list",
        "edges",
        "from_origin",
        "from_peers",
        "generation",
        "have_n",
        "idx",
        "is_origin",
        "layers_done",
        "left_at",
        "name",
        "next_layer",
        "queue",
        "rack",
        "rack_idx",
        "seed",
        "swarms",
        "transfers",
        "up",
        "w_idx",
        "watchers",
        "zone",
        "zone_idx",
    )

    def __init__(self, idx: int, name: str, blobs: list[Blob], board: Board) -> None:
        self.idx = idx
        self.name = name
        self.board = board
        self.zone = self.rack = ""
        self.rack_idx = self.zone_idx = 0
        self.up = self.down = None
        self.edges: dict[int, Edge] = {}  # neighbours we may fetch from, by node index
        self.edge_list: list[Edge] = []
        # For the pass's scan, without visiting the edges: edge_list's neighbours by index, and from
        # when each edge is ready (Edge.ready_at).
        self.e_peer = array("i")
        self.e_ready = array("d")
        self.watchers: dict[int, Node] = {}  # neighbours our HAVEs go to
        self.w_idx = array("i")  # the same, by index in the dict's order, for the fan-out over the Board
        self.dialing: set[int] = set()
        self.bits = [bytearray(b.count) for b in blobs]  # verified pieces per blob, what bitfields carry
        self.have_n = [0] * len(blobs)
        self.swarms: list[Swarm | None] = [None] * len(blobs)
        self.alive = False
        self.arrived = -1.0
        self.done_at = -1.0
        self.layers_done = 0
        self.next_layer = 0
        self.transfers: dict[int, object] = {}  # transfer id -> Transfer, ours up and down (churn cancels them)
        self.from_origin = 0
        self.from_peers = 0
        self.is_origin = False
        self.seed = False
        self.left_at = -1.0
        self.generation = 0  # bumps when the agent restarts, so stale timers of the old process do nothing
        self.queue: deque[tuple[Swarm, int, Edge, int]] = deque()  # uploads waiting for a slot (upload_queue)

    def complete(self, blob: int) -> bool:
        return self.have_n[blob] == len(self.bits[blob])

    def fill(self, blob: int) -> None:
        """Every piece of ``blob`` verified here (a seed, the origin)."""
        count = len(self.bits[blob])
        self.bits[blob][:] = b"\x01" * count
        self.have_n[blob] = count
        self.board.fill(self.idx, blob, count)

    def set_edges(self) -> None:
        """``edges`` changed: the list a pass scans, in the dict's order, and its neighbours' indices."""
        for e in self.edge_list:
            e.pos = -1
        self.edge_list = list(self.edges.values())
        self.e_peer = array("i", [e.pidx for e in self.edge_list])
        self.e_ready = array("d", [e.ready_at() for e in self.edge_list])
        for k, e in enumerate(self.edge_list):
            e.pos = k

    def add_watcher(self, node: Node) -> None:
        """``node`` hears our HAVEs from now on."""
        self.watchers[node.idx] = node
        self.w_idx = array("i", self.watchers)

    def drop_watcher(self, idx: int) -> None:
        if self.watchers.pop(idx, None) is not None:
            self.w_idx = array("i", self.watchers)


class Avail:
    """A swarm's availability counts (neighbours holding each piece) as the core's selectors read them."""

    __slots__ = ("base", "cells", "count")

    def __init__(self, cells: array, base: int, count: int) -> None:
        self.cells = cells
        self.base = base
        self.count = count

    def __len__(self) -> int:
        return self.count

    @cython.locals(i=cython.long)
    def __getitem__(self, index: int) -> int:
        i = index
        if i < 0 or i >= self.count:
            raise IndexError(index)
        return self.cells[self.base + i] & AVAIL


class Holders:
    """``holders(i)`` for assign(): the neighbours with a free slot whose bitfield has piece i."""

    __slots__ = ("free", "have", "words")

    def __init__(self, free: list[Edge], have: array, words: int) -> None:
        self.free = free
        self.have = have
        self.words = words

    @cython.locals(e=Edge, i=cython.long, w=cython.long, shift=cython.long, out=list, k=cython.Py_ssize_t)
    def __call__(self, index: int) -> list[Edge]:
        i = index
        w = i >> 6
        shift = i & 63
        have = self.have
        words = self.words
        out = []
        for e in self.free:
            k = e.pidx * words + w
            if have[k] >> shift & 1:
                out.append(e)
        return out


class Swarm:
    """One blob's download on one node."""

    def __init__(self, cluster: Cluster, node: Node, blob: Blob) -> None:
        self.cluster = cluster
        self.profile = cluster.profile
        self.sim = cluster.sim
        # The numbers every pass reads, held here (compiled, as C fields: agent.pxd).
        self.piece_size = blob.piece_size
        self.max_inflight = inflight_budget(self.profile.inflight_bytes, self.profile.upload_slots, blob.piece_size)
        self.upload_slots = self.profile.upload_slots
        self.load_aware = self.profile.load_aware
        board = node.board
        self.uploads = board.uploads
        self.board_have = board.have[blob.idx]
        self.words = board.words[blob.idx]
        self.reach = array("Q", bytes(8 * self.words))
        self.node = node
        self.blob = blob
        self.b = blob.idx
        count = blob.count
        self.count = count
        self.have = node.bits[blob.idx]
        self.known = bytearray(b"\x01" * count) if self.profile.digests_known else bytearray(count)
        self.cells = board.cells[blob.idx]
        self.base = node.idx * count
        self.avail = Avail(self.cells, self.base, count)
        self.blocking = board.blocking[blob.idx]
        self.board_live = board.live[blob.idx]
        self.board_nodes = board.nodes
        self.inflight = bytearray(count)
        self.inflight_bytes = 0
        self.candidates: set[int] = set()
        self.blocked: set[int] = set()  # chosen by the last pass but no holder had a free slot
        self.blocked_is_candidates = False  # blocked == candidates for sure (both unchanged since)
        self.waiting: set[int] = set()
        self.leases: list[tuple[int, int]] = []
        self.origin_active = 0
        self.direct = self.profile.origin == DIRECT
        # Dragonfly's back-to-source peer keeps reporting to its scheduler; p2pdist's direct mode does not.
        self.reports_direct = self.profile.origin == BACK_TO_SOURCE
        self.report: list[int] = []
        self.reported: set[int] = set()  # swarm.reported: digests queued for the tracker once
        self.digest_pos = 0
        self.cursor: int | None = 0 if self.profile.streaming else None
        self.rng = random.Random(f"{cluster.seed}/{node.name}/{blob.idx}/{node.generation}")
        self.dirty = False
        self.done = False
        self.last_progress = cluster.sim.now
        self.generation = node.generation
        # announcer (swarm._announcer)
        self.kicked = False
        self.waiting_for_kick = False
        self.timer = 0  # version of the pending announce timeout
        self.loop_timer = False  # a LOOP_TIMEOUT wake is pending
        self._init_cells()
        self._advance_cursor()

    # --- piece state ------------------------------------------------------------------------

    def _init_cells(self) -> None:
        """This swarm's cells on the Board, fresh: only have and known (its count starts from zero)."""
        for i in range(self.count):
            if self.have[i]:
                self.known[i] = 1  # resumed pieces were verified, so their digests are known
            pos = self.base + i
            self.cells[pos] = (HAVE if self.have[i] else 0) | (KNOWN if self.known[i] else 0)
        self.blocking[self.node.idx] = 0
        self.board_live[self.node.idx] = 1

    def add_holder(self, i: int, edge: Edge | None) -> None:
        """A neighbour now has piece i (HAVE or bitfield); ``edge`` is our connection to it."""
        if self.have[i]:
            return
        pos = self.base + i
        self.cells[pos] += 1
        if self.cells[pos] & AVAIL == 1:
            if self.known[i]:
                if not self.inflight[i]:
                    self._add_candidate(i)
                    self.wake()
            else:
                self.waiting.add(i)
                self.wake()
        elif i in self.blocked and edge is not None and edge.inflight < edge.limit:
            self.wake()  # a holder with a free request slot for a piece the last pass could not place

    def drop_holder(self, i: int) -> None:
        if self.have[i]:
            return
        pos = self.base + i
        if self.cells[pos] & AVAIL:
            self.cells[pos] -= 1
        if not self.cells[pos] & AVAIL:
            self._drop_candidate(i)
            self.waiting.discard(i)

    def learn_digest(self, i: int) -> bool:
        if self.known[i]:
            return False
        self.known[i] = 1
        self.cells[self.base + i] |= KNOWN
        if self.cells[self.base + i] & AVAIL and not self.have[i]:
            self.waiting.discard(i)
            if not self.inflight[i]:
                self._add_candidate(i)
        return True

    def _release(self, i: int) -> None:
        """Piece i is no longer in flight (and not had): fetchable again if someone has it."""
        self.set_inflight(i, False)
        if not self.have[i] and self.cells[self.base + i] & AVAIL and self.known[i]:
            self._add_candidate(i)

    def _add_candidate(self, i: int) -> None:
        self.candidates.add(i)
        self.blocked_is_candidates = False

    def _drop_candidate(self, i: int) -> None:
        self.candidates.discard(i)
        self.blocked_is_candidates = False

    def set_inflight(self, i: int, on: bool) -> None:
        self.inflight[i] = on
        if on:
            self.cells[self.base + i] |= INFLIGHT
        else:
            self.cells[self.base + i] &= ~INFLIGHT

    def _block_all(self) -> None:
        """No piece can be placed: every candidate is blocked (often already so), and the loop's timer runs."""
        if not self.blocked_is_candidates:
            self._unblock()
            self._block(self.candidates)
            self.blocked_is_candidates = True
        self._loop_timer()

    def _unblock(self) -> None:
        """Empty ``blocked`` (and its cell bits)."""
        cells = self.cells
        base = self.base
        for i in self.blocked:
            cells[base + i] &= ~BLOCKED
        self.blocked.clear()
        self.blocked_is_candidates = False
        self.blocking[self.node.idx] = 0

    def _block(self, pieces: Iterable[int]) -> None:
        cells = self.cells
        base = self.base
        for i in pieces:
            self.blocked.add(i)
            cells[base + i] |= BLOCKED
        if self.blocked:
            self.blocking[self.node.idx] = 1

    def _advance_cursor(self) -> None:
        if self.cursor is None:
            return
        c, have, n = self.cursor, self.have, len(self.have)
        while c < n and have[c]:
            c += 1
        self.cursor = c if c < n else None

    def wake(self) -> None:
        if not self.dirty and not self.done:
            self.dirty = True
            self.cluster.dirty.append(self)

    # --- the loop body (swarm._download's while loop) ---------------------------------------

    def run_pass(self) -> None:
        if self.done or not self.node.alive or self.generation != self.node.generation:
            return
        self.schedule_origin()
        self.schedule_peers()

    def schedule_origin(self) -> None:
        if not self.leases:
            return
        limit = self.profile.origin_concurrency
        while self.leases and self.origin_active < limit:
            start, end = self.leases.pop(0)
            self._report_had(start, end)
            runs = self._missing_runs(start, end)
            if not runs:
                continue
            for s, e in runs:
                for i in range(s, e):
                    self.set_inflight(i, True)
                    self._drop_candidate(i)
            self.origin_active += 1
            self.cluster.origin_stream(self, runs)

    def _report_had(self, start: int, end: int) -> None:
        """swarm._report_had: pieces of a lease we already hold are reported, closing them."""
        if self.direct:
            return
        reported = self.reported
        for i in range(start, min(end, len(self.have))):
            if self.have[i] and self.known[i] and i not in reported:
                self.report.append(i)
                reported.add(i)
                self.kick()

    def _missing_runs(self, start: int, end: int) -> list[tuple[int, int]]:
        have, inflight = self.have, self.inflight
        return missing_runs(start, min(end, len(have)), lambda i: bool(have[i] or inflight[i]))

    def origin_stream_done(self, runs: list[tuple[int, int]]) -> None:
        self.origin_active -= 1
        for s, e in runs:
            for i in range(s, e):
                if self.inflight[i]:
                    self._release(i)
        self.kick()
        self.wake()

    def schedule_peers(self) -> None:
        piece_size = self.piece_size
        budget = self.max_inflight - self.inflight_bytes
        if budget < piece_size and self.inflight_bytes:
            return
        if self.waiting:
            self.kick()  # peers have pieces whose digests we lack: ask the tracker
        candidates = self.candidates
        if not candidates:
            return
        now = self.sim.now
        node = self.node
        edges = node.edge_list
        words = self.words
        # The arrays are read through their owners (self.uploads[...], node.e_ready[...]): compiled, a
        # typed local copy of an array view costs two atomic operations per pass.
        # choose_peer only ever returns a peer with a free request slot that is not backing off and,
        # load-aware, with a free upload slot, so holders are looked for among those ("free"); with
        # none, no selection can lead anywhere. The scan reads only the Board and the node's arrays:
        # the edges themselves are visited only when some free holder has a piece we can fetch.
        for w in range(words):
            self.reach[w] = 0
        nfree = 0
        n = len(edges)
        for k in range(n):
            if self._room_at(k, now) > 0:
                nfree += 1
                base = node.e_peer[k] * words
                for w in range(words):
                    self.reach[w] |= self.board_have[base + w]
        if not nfree:
            # Every holder is full or busy: a freed slot there (ROOM, HAVE) must wake us, as the
            # agent's on_room wakes every swarm; our own freed request slots wake us anyway.
            self._block_all()
            return
        # What assign() would work out with holders() per candidate, from the neighbours' bits.
        reachable = []
        for i in candidates:
            if self.reach[i >> 6] >> (i & 63) & 1:
                reachable.append(i)
        if not reachable:
            self._block_all()
            return
        free = []
        for k in range(n):
            room = self._room_at(k, now)
            if room > 0:
                e = edges[k]
                if self.load_aware:
                    e.room = room
                free.append(e)
        count = max(1, budget // piece_size)
        self._unblock()

        # The agent's own assign(): pieces and peers chosen together (p2pdist.core.selection).
        inflight = self.inflight
        profile = self.profile
        cursor = reader_cursor(profile.selector, self.cursor, len(inflight), inflight.__getitem__)
        holders = Holders(free, self.board_have, words)
        assigned = assign(profile.selector, candidates, self.avail, count, holders, self.rng, cursor, reachable)
        for index, slot in assigned:
            slot.inflight -= 1  # assign() counted it; fetch_from_peer counts the real request
            self.cluster.fetch_from_peer(self, index, slot)
        if len(assigned) < count and len(assigned) < len(candidates):
            taken = {i for i, _ in assigned}
            self._block([i for i in candidates if i not in taken])  # any of them may unblock us
        if self.blocked:
            self._loop_timer()

    def _room_at(self, k: int, now: float) -> int:
        """Whether the pass may send a request on edge k now: 0 if not, else the peer's free upload
        slots (load-aware; ROOM messages take rtt/2, read directly), or 1 if slots are not counted."""
        node = self.node
        if node.e_ready[k] > now:
            return 0
        if not self.load_aware:
            return 1
        return max(0, self.upload_slots - self.uploads[node.e_peer[k]])

    def _loop_timer(self) -> None:
        # The agent's loop wakes at least every second: a peer's busy back-off ends, a slot frees.
        if not self.loop_timer:
            self.loop_timer = True
            self.sim.after(LOOP_TIMEOUT, self._loop_tick, self.generation)

    def _loop_tick(self, generation: int) -> None:
        self.loop_timer = False
        if generation == self.node.generation and not self.done and self.candidates:
            self.wake()

    # --- storing ----------------------------------------------------------------------------

    def store(self, i: int, from_origin: bool) -> None:
        """A verified piece: have it, tell the neighbours, report an origin piece's digest."""
        if self.have[i]:
            return
        node = self.node
        self.have[i] = 1
        node.have_n[self.b] += 1
        one = 1  # a C unsigned long long in the compiled core: the shift stays in 64 bits
        self.board_have[node.idx * self.words + (i >> 6)] |= one << (i & 63)
        self.known[i] = 1
        self._drop_candidate(i)
        self.waiting.discard(i)
        self.last_progress = self.sim.now
        length = self.blob.length(i)
        if from_origin:
            node.from_origin += length
            if not self.direct and self.profile.upstream_digests:
                self.report.append(i)
                self.reported.add(i)
                self.kick()
        else:
            node.from_peers += length
        if self.cursor == i:
            self._advance_cursor()
        b = self.b
        idx = node.idx
        count = self.count
        self.cells[self.base + i] |= HAVE | KNOWN
        nodes = self.board_nodes
        # add_holder inlined over the Board: this loop runs once per neighbour per stored piece, the
        # hottest path. It reads only the watcher's cell, and visits its objects when the HAVE wakes it.
        for k in range(len(node.w_idx)):
            widx = node.w_idx[k]
            if not self.board_live[widx]:
                continue
            pos = widx * count + i
            c = self.cells[pos]
            if c & HAVE:
                continue
            self.cells[pos] = c + 1
            if not c & AVAIL:
                watcher = nodes[widx]
                sw = watcher.swarms[b]
                if not c & KNOWN:
                    sw.waiting.add(i)
                elif c & INFLIGHT:
                    continue
                else:
                    sw._add_candidate(i)
                if not sw.dirty:
                    sw.wake()
            elif c & BLOCKED:
                watcher = nodes[widx]
                sw = watcher.swarms[b]
                edge = watcher.edges.get(idx)
                if edge is not None and edge.inflight < edge.limit and not sw.dirty:
                    sw.wake()
        self.wake()
        if node.have_n[b] == self.blob.count:
            self.cluster.swarm_complete(self)

    # --- the announcer (swarm._announcer) ---------------------------------------------------

    def kick(self) -> None:
        if self.done or (self.direct and not self.reports_direct):
            return
        self.kicked = True
        if self.waiting_for_kick:
            self.announce()

    def announce(self) -> None:
        self.waiting_for_kick = False
        self.kicked = False
        self.timer += 1
        self.cluster.send_announce(self, "progress")

    def announce_timeout(self, version: int) -> None:
        if version == self.timer and self.waiting_for_kick and not self.done:
            self.announce()

    def wait_for_kick(self, interval: float) -> None:
        """After a reply and ANNOUNCE_SPACING: announce on the next kick, or after ``interval``."""
        if self.done or (self.direct and not self.reports_direct) or self.generation != self.node.generation:
            return
        if self.kicked:
            self.announce()
            return
        self.waiting_for_kick = True
        self.timer += 1
        self.cluster.sim.after(interval, self.announce_timeout, self.timer)

    def stop_announcing(self) -> None:
        self.waiting_for_kick = False
        self.timer += 1

    def want_leases(self) -> int:
        if self.done or self.direct or self.profile.origin != LEASES:
            return 0
        slots = self.profile.origin_concurrency + SPARE_LEASES
        return min(max(0, slots - self.origin_active - len(self.leases)), 16)

    def apply_leases(self, leases: list[tuple[int, int, float]]) -> None:
        """swarm._take_leases: queued leases the tracker no longer lists are dropped, new ones queued.
        In direct mode the queue is our own runs of every missing piece, and replies leave it alone."""
        if self.direct:
            return
        held = {(start, end) for start, end, _ttl in leases}
        self.leases = [lease for lease in self.leases if lease in held]
        queued = set(self.leases)
        for start, end, _ttl in leases:
            if (start, end) not in queued and end <= self.blob.count:
                self.leases.append((start, end))

    def lease_everything(self) -> None:
        """swarm._lease_everything: without a tracker every missing piece is ours, in Range runs."""
        count = self.blob.count
        streams = self.profile.origin_concurrency
        per = max(1, min(self.profile.direct_run_pieces, -(-count // streams)))
        queued = {i for s, e in self.leases for i in range(s, e)}
        have = self.have
        for start in range(0, count, per):
            end = min(start + per, count)
            if any(not have[i] and i not in queued for i in range(start, end)):
                self.leases.append((start, end))

    def check_stall(self, generation: int) -> None:
        """swarm._check_stall: no progress for stall_timeout and no origin stream: take the rest direct."""
        if self.done or generation != self.node.generation or self.direct:
            return
        now = self.cluster.sim.now
        due = self.last_progress + self.profile.stall_timeout
        if now < due:
            self.cluster.sim.at(due, self.check_stall, generation)
            return
        if self.origin_active:
            self.cluster.sim.after(LOOP_TIMEOUT, self.check_stall, generation)
            return
        self.cluster.stalls += 1
        self.go_direct()

    def go_direct(self) -> None:
        self.direct = True
        if not self.reports_direct:
            self.stop_announcing()
        self.lease_everything()
        self.wake()
