"""A simulated node and its swarms: the agent's download machine, driven on simulated links.

Each ``Swarm`` is to ``p2pdist.core.download.Download`` what ``p2pdist.agent.swarm.Swarm`` is in the
agent: a driver. ``simulations.machine`` is that very module (p2pdist/core/download.py), compiled
with C types when the simulator's core is built (simulations/native.py). The machine decides (the
announcer, leases, origin runs, peer requests, the stall fallback); the swarm carries its commands
out as simulated announces, transfers and timers, and feeds it what happened. This file holds no
scheduling of its own (tests/test_one_machine.py checks).

The machine's per-piece cells live on the ``Board``, one array per blob for all nodes: a stored
piece updates its ~40 watchers' availability counts there without visiting their objects, and only
calls into a watcher's machine when the count says something may change for it (a first holder, or
a piece its last pass could not place).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import random
from array import array
from collections import deque
from typing import TYPE_CHECKING

import cython

from p2pdist.core import download as core_download

from . import machine, native
from .engine import Meter, grown
from .machine import Download, Reply, Request, Settings
from .profiles import BACK_TO_SOURCE, DIRECT, LEASES

# The cell bits, C constants in the compiled core (agent.pxd); the machine's own values.
AVAIL = core_download.AVAIL
BLOCKED = core_download.BLOCKED
HAVE = core_download.HAVE
INFLIGHT = core_download.INFLIGHT
KNOWN = core_download.KNOWN
OFFERED = core_download.OFFERED
OFFER_PROVED = core_download.OFFER_PROVED
CELL = core_download.CELL
PROVED = core_download.PROVED
# What the watchers still need to hear of a stored piece (Shell.stored).
TELL_HAVE = core_download.TELL_HAVE
TELL_PROOF = core_download.TELL_PROOF
# A node's byte in Board.blocking[b]: its swarm has blocked pieces (a ROOM may wake it), and it is
# queued for a pass with news of its own (dirty, not woken by ROOMs alone: a ROOM adds nothing).
BLOCKING = 1
NEWS = 2

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .cluster import Blob, Cluster


def huge_array(typecode: str, n: int) -> memoryview:
    """``n`` zeroed items of ``typecode``, in private memory advised for transparent huge pages: the
    cells of 10,000 nodes x 256 pieces are 10 MB, 2,500 pages of 4 KiB (more than the TLB holds) or
    5 of 2 MiB, which passes read a node's cells from 40 KB apart (Board: piece-major). Where the
    advice is not available or not wanted (native.huge_pages_allowed), the pages are the usual ones."""
    itemsize = array(typecode).itemsize
    if not hasattr(mmap, "MAP_PRIVATE") or not native.huge_pages_allowed():
        return memoryview(array(typecode, bytes(n * itemsize)))
    # Private, not the default shared mapping: shared anonymous memory follows shmem's huge-page
    # setting (usually off), private memory the "madvise" one.
    region = mmap.mmap(-1, max(itemsize, n * itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # a kernel without transparent huge pages
            region.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(region).cast(typecode)[:n]


class Board:
    """What passes and HAVEs read about other nodes, in flat arrays indexed by node.

    At 10,000 nodes the objects are spread over 1.5 GB, and visiting a neighbour's objects was a
    cache miss per object (perf: most of a pass's and a HAVE's time). Here a pass scans its ~40
    neighbours, and a stored piece updates its ~40 watchers, in a few contiguous arrays:
    ``uploads`` (upload slots in use), ``have[b]`` (the pieces each node holds, ``words[b]`` 64-bit
    words per node), ``cells[b]`` (each swarm's per-piece cell, piece-major: cell (node, i) at
    ``i * stride + node``, so a stored piece's fan-out reads one 40 KB row at 10,000 nodes, not
    cells 1 KiB apart over 10 MB: 4 % of the 10,000-node run), ``live[b]`` (the
    node runs a swarm for b), ``blocking[b]`` (that swarm has blocked pieces: ROOM wakes it) and
    ``swarms[b]`` (the node's swarm for b: a HAVE or ROOM that must reach a watcher's machine goes
    there at once, not through the node's object and its list, two cache misses more each).
    """

    def __init__(self, nodes: int, counts: list[int]) -> None:
        self.nodes: list[Node] = []  # filled by the cluster, the origin peer last
        self.stride = nodes  # cells are piece-major: cell (node, piece) at piece * nodes + node
        self.uploads = array("i", bytes(4 * nodes))
        self.words = [(count + 63) >> 6 for count in counts]
        self.have = [huge_array("Q", nodes * w) for w in self.words]
        self.cells = [huge_array("I", nodes * count) for count in counts]
        self.live = [bytearray(nodes) for _ in counts]
        self.blocking = [bytearray(nodes) for _ in counts]
        self.swarms: list[list[Swarm | None]] = [[None] * nodes for _ in counts]
        self.rows = [BlobRows(self.have[b], self.cells[b], self.blocking[b], self.words[b], counts[b], nodes)
                     for b in range(len(counts))]

    def drop(self, node: int) -> None:
        """``node`` left: it runs no swarm any more."""
        for b in range(len(self.live)):
            self.live[b][node] = 0
            self.blocking[b][node] = 0
            self.swarms[b][node] = None

    def fill(self, node: int, b: int, count: int) -> None:
        """Every piece of blob ``b`` at ``node``."""
        w = self.words[b]
        have = self.have[b]
        for k in range(w):
            bits = min(64, count - 64 * k)
            have[node * w + k] = (1 << bits) - 1


class BlobRows:
    """One blob's rows of the Board, for the data plane's ROOM: whether a watcher must hear of a freed
    upload slot is decided here, on the flat arrays, and only a watcher that must is visited (its
    ``Swarm`` object was a cache miss per blocked watcher, half of the ROOM fan-out's time)."""

    __slots__ = ("blocking", "cells", "count", "have", "stride", "words")

    def __init__(self, have: memoryview, cells: memoryview, blocking: bytearray, words: int, count: int,
                 stride: int) -> None:
        self.have = have
        self.cells = cells
        self.blocking = blocking
        self.words = words
        self.count = count
        self.stride = stride

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def room_wakes(self, node: int, peer: int) -> bool:
        """Whether a freed upload slot at ``peer`` must wake ``node``'s swarm: it has blocked pieces,
        is not queued for a pass with news of its own already (``NEWS``: that pass runs anyway),
        and ``peer`` holds one of the pieces its last pass could not place (a BLOCKED cell: the
        machine's ``Download.room_opened`` rule, which the agent calls with the neighbour's
        bitfield, evaluated on the Board: the peer's bits ``node`` lacks, then its cells)."""
        if self.blocking[node] != BLOCKING:
            return False
        words = self.words
        pb = peer * words
        wb = node * words
        base = node
        stride = self.stride
        one = 1  # a C unsigned long long in the compiled core
        for w in range(words):
            bits = self.have[pb + w] & ~self.have[wb + w]
            if not bits:
                continue
            for s in range(64):
                if bits >> s & one and self.cells[base + (w * 64 + s) * stride] & BLOCKED:
                    return True
        return False


class Neighbour:
    """This node's view of one neighbour: what the core reads and writes on one
    (``p2pdist.core.download.Neighbour``, as the agent's ``Neighbour`` has it), plus the peer node."""

    __slots__ = ("bad_pieces", "busy_until", "failures", "inflight", "limit", "node", "owner", "peer", "pidx", "pos",
                 "room", "room_pass", "score")

    def __init__(self, node: Node, limit: int, owner: Node) -> None:
        self.peer = node.name
        self.pidx = node.idx
        self.owner = owner
        self.pos = -1  # index in owner.edge_list, -1 once disconnected
        self.inflight = 0
        self.limit = limit
        self.score = 0.0
        self.room = 1 << 30  # unlimited until the peer says
        self.room_pass = -1  # the owner node's pass that last set room (Holders.__call__)
        self.node = node
        self.busy_until = 0.0
        self.bad_pieces = 0
        self.failures = 0

    def ready_at(self) -> float:
        """From when a pass may send this peer a request (a free request slot, no busy back-off)."""
        return self.busy_until if self.inflight < self.limit else math.inf

    def changed(self) -> None:
        """``inflight`` or ``busy_until`` changed (the machine changes them): the owner's scan array follows."""
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
        "passes",
        "queue",
        "rack",
        "rack_idx",
        "seed",
        "swarms",
        "transfers",
        "up",
        "w_edge",
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
        self.edges: dict[int, Neighbour] = {}  # neighbours we may fetch from, by node index
        self.edge_list: list[Neighbour] = []
        # For the pass's scan, without visiting the edges: edge_list's neighbours by index, and from
        # when each edge is ready (Neighbour.ready_at).
        self.e_peer = array("i")
        self.e_ready = array("d")
        self.passes = 0  # holders() scans of its swarms so far: which pass set a Neighbour's room
        self.watchers: dict[int, Node] = {}  # neighbours our HAVEs go to
        self.w_idx = array("i")  # the same, by index in the dict's order, for the fan-out over the Board
        self.w_edge: list[Neighbour | None] = []  # and each one's edge to us (its dict's entry, looked up once)
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
        self.queue: deque[tuple[Swarm, Request]] = deque()  # uploads waiting for a slot (upload_queue)

    def complete(self, blob: int) -> bool:
        return self.have_n[blob] == len(self.bits[blob])

    def fill(self, blob: int) -> None:
        """Every piece of ``blob`` verified here (a seed, the origin)."""
        count = len(self.bits[blob])
        self.bits[blob][:] = b"\x01" * count
        self.have_n[blob] = count
        self.board.fill(self.idx, blob, count)

    def set_edges(self) -> None:
        """``edges`` changed: the list a pass scans, in the dict's order, and its neighbours' indices
        (``edge_list`` holds the edges; ``e_peer`` and ``e_ready`` may be longer: add_edge's room)."""
        for e in self.edge_list:
            e.pos = -1
        self.edge_list = list(self.edges.values())
        self.e_peer = array("i", [e.pidx for e in self.edge_list])
        self.e_ready = array("d", [e.ready_at() for e in self.edge_list])
        for k, e in enumerate(self.edge_list):
            e.pos = k

    def add_edge(self, edge: Neighbour) -> None:
        """We may fetch from ``edge``'s node from now on (ControlPlane._link). A new neighbour is
        appended to the pass's arrays, which grow by doubling: rebuilding them per edge was quadratic
        in a node's edges, and in a flash crowd the first nodes are handed out to thousands."""
        known = edge.pidx in self.edges
        self.edges[edge.pidx] = edge
        if known:  # replaced in place: the dict keeps its order, the arrays are rebuilt
            self.set_edges()
            return
        k = len(self.edge_list)
        if k == len(self.e_peer):
            self.e_peer = grown(self.e_peer, k, "i")
            self.e_ready = grown(self.e_ready, k, "d")
        self.edge_list.append(edge)
        self.e_peer[k] = edge.pidx
        self.e_ready[k] = edge.ready_at()
        edge.pos = k

    def add_watcher(self, node: Node) -> None:
        """``node`` hears our HAVEs from now on (it has an edge to us: ControlPlane._link), appended
        to the fan-out's arrays as add_edge does."""
        known = node.idx in self.watchers
        self.watchers[node.idx] = node
        if known:
            self._set_watchers()
            return
        k = len(self.w_edge)
        if k == len(self.w_idx):
            self.w_idx = grown(self.w_idx, k, "i")
        self.w_idx[k] = node.idx
        self.w_edge.append(node.edges.get(self.idx))

    def drop_watcher(self, idx: int) -> None:
        if self.watchers.pop(idx, None) is not None:
            self._set_watchers()

    def _set_watchers(self) -> None:
        """``watchers`` changed: the fan-out's arrays follow. The cluster changes an edge and the
        watcher entry for it together (_link, _disconnect, _set_parents), so w_edge stays true.
        ``w_edge`` holds the watchers; ``w_idx`` may be longer (add_watcher's spare room)."""
        self.w_idx = array("i", self.watchers)
        self.w_edge = [w.edges.get(self.idx) for w in self.watchers.values()]


class Swarm:
    """One blob's download on one node: the machine's driver (``p2pdist.core.download.Shell``)."""

    def __init__(self, cluster: Cluster, node: Node, blob: Blob) -> None:
        self.cluster = cluster
        self.profile = profile = cluster.profile
        self.sim = cluster.sim
        board = node.board
        self.uploads = board.uploads
        self.board_have = board.have[blob.idx]
        self.words = board.words[blob.idx]
        self.reach = array("Q", bytes(8 * self.words))
        self.free_k = array("i")  # the edges the last holders() scan found free, nfree of them
        self.free_room = array("i")  # and their peers' free upload slots then
        self.nfree = 0
        self.holders_view = Holders(self)
        self.upload_slots = profile.upload_slots
        self.load_aware = profile.load_aware
        self.node = node
        self.blob = blob
        self.b = blob.idx
        self.count = count = blob.count
        self.have = node.bits[blob.idx]
        # Cut-through (Download.piece_arriving): the uploads of pieces offered from their first block
        # that ended before the piece was all here (dataplane). Which are offered is the machine's.
        self.waiters: dict[int, list] = {}
        self.cells = board.cells[blob.idx]
        # Piece-major: piece i of every node side by side (a HAVE's fan-out reads one row).
        self.base = node.idx
        self.stride = board.stride
        self.blocking_flags = board.blocking[blob.idx]
        self.board_live = board.live[blob.idx]
        self.board_swarms = board.swarms[blob.idx]
        self.nidx = node.idx
        self.dirty = False
        self.wakeups: list[Swarm] = cluster.dirty  # the cluster's queue of passes to run (one list object)
        self.delivered: Meter = cluster.delivered  # bytes stored over time, the cluster's
        # Woken by ROOMs alone since the last pass (wake_room), and from which nodes: the pass is
        # skipped if all of them are full again by its turn (run_pass).
        self.room_only = False
        self.room_peers: list[int] = []
        self.done = False
        self.generation = node.generation
        self.streaming = profile.streaming
        for i in range(count):
            self.cells[self.base + i * self.stride] = 0
        settings = Settings(
            inflight_bytes=profile.inflight_bytes, upload_slots=profile.upload_slots,
            origin_concurrency=profile.origin_concurrency, stall_timeout=profile.stall_timeout,
            piece_timeout=profile.piece_timeout,
            stall_fallback=profile.stall_fallback, leases=profile.origin == LEASES,
            report_digests=profile.upstream_digests,
            # Dragonfly's back-to-source peer keeps reporting to its scheduler; p2pdist's direct mode does not.
            announce_direct=profile.origin == BACK_TO_SOURCE,
            direct_run_pieces=profile.direct_run_pieces, announce_spacing=profile.announce_spacing,
            selector=profile.selector, cut_through=profile.cut_through,
        )
        rng = random.Random(f"{cluster.seed}/{node.name}/{blob.idx}/{node.generation}")
        self.dl = dl = Download(self, settings, blob.piece_size, blob.size, cluster.sim.now, rng,
                                cells=self.cells, base=self.base, direct=profile.origin == DIRECT,
                                stride=self.stride)
        for i in range(count):
            if self.have[i]:
                dl.mark_had(i)
            elif profile.digests_known:
                dl.mark_known(i)
        self.blocking_flags[node.idx] = 0
        self.board_live[node.idx] = 1
        self.board_swarms[node.idx] = self
        if self.streaming:
            self._follow_reader()

    def alive(self) -> bool:
        return not self.done and self.node.alive and self.generation == self.node.generation

    def _follow_reader(self) -> None:
        """A client streams the blob in order, reading each piece as it lands (the mirror's reader)."""
        c = self.dl.cursor if self.dl.cursor is not None else 0
        have = self.have
        n = self.count
        while c < n and have[c]:
            c += 1
        if c < n:
            self.dl.follow(0, c, self.sim.now)
        else:
            self.dl.unfollow(0)

    # --- events from the cluster ------------------------------------------------------------

    def add_holder(self, i: int, edge: Neighbour | None) -> None:
        """A neighbour now has piece i (HAVE or bitfield); ``edge`` is our connection to it."""
        self.dl.add_holder(i, edge is not None and edge.inflight < edge.limit)

    def drop_holder(self, i: int) -> None:
        self.dl.drop_holder(i)

    def run_pass(self) -> None:
        if self.room_only:
            self.room_only = False
            if self._rooms_taken():
                return
        if self.alive():
            self.dl.schedule(self.sim.now)

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def _rooms_taken(self) -> bool:
        """Whether every node whose ROOM woke this pass is full again: passes woken at one instant
        run one after another, and the first to ask takes a freed slot. Then this pass could only
        find what the last one found (the ROOMs were its only news), and it is not run: at 1,000
        nodes, 55 % of the passes ROOMs alone woke placed nothing."""
        k = 0
        while k < len(self.room_peers):  # a C loop compiled (all() over a generator is Python code)
            if self.uploads[self.room_peers[k]] < self.upload_slots:
                return False
            k += 1
        return True

    def tick(self, generation: int) -> None:
        if generation == self.node.generation and not self.done:
            self.dl.tick(self.sim.now)

    def reply(self, reply: Reply, started: bool) -> None:
        if started:
            self.dl.start(self.sim.now, reply)
        else:
            self.dl.on_reply(self.sim.now, reply)

    def announce_fields(self) -> tuple[list[int], int, int, bool]:
        # A simulated stream moves bytes whenever it is open (the gaps are one origin RTT).
        self.dl.streamed = self.dl.origin_active
        return self.dl.announce_fields()

    # --- the machine's commands (p2pdist.core.download.Shell) -------------------------------

    def wake(self) -> None:
        self.room_only = False  # news of our own: the pass runs
        if not self.dirty and not self.done:
            self.dirty = True
            self.wakeups.append(self)
        if self.dirty and self.board_swarms[self.nidx] is self:  # (not a swarm the node left behind)
            self.blocking_flags[self.nidx] |= NEWS  # ROOMs skip us until the pass: it runs anyway

    def clean(self) -> None:
        """The pass is about to run (DataPlane._flush): no longer queued."""
        self.dirty = False
        if self.board_swarms[self.nidx] is self:
            self.blocking_flags[self.nidx] &= BLOCKING

    def wake_room(self, peer: int) -> None:
        """Node ``peer``, which holds a piece our last pass could not place, has a free upload slot."""
        if self.done:
            return
        if not self.dirty:
            self.dirty = True
            self.room_only = True
            self.room_peers.clear()
            self.room_peers.append(peer)
            self.wakeups.append(self)
        elif self.room_only:
            self.room_peers.append(peer)

    def timer(self, at: float) -> None:
        self.sim.at(at, self.tick, self.generation)

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def holders(self, now: float) -> Holders | None:
        node = self.node
        words = self.words
        # The arrays are read through their owners (self.uploads[...], node.e_ready[...]): compiled, a
        # typed local copy of an array view costs two atomic operations per pass. The machine only
        # ever asks a peer with a free request slot, not backing off and, load-aware, with a free
        # upload slot (core.download.askable), so holders are looked for among those ("free"); with
        # none, no selection can lead anywhere.
        for w in range(words):
            self.reach[w] = 0
        nfree = 0
        node.passes += 1
        if len(self.free_k) < len(node.edge_list):
            self.free_k = array("i", bytes(4 * len(node.edge_list)))
            self.free_room = array("i", bytes(4 * len(node.edge_list)))
        for k in range(len(node.edge_list)):
            # Whether a request may go on edge k now: 0 if not, else the peer's free upload slots
            # (load-aware; ROOM messages take rtt/2, read directly), or 1 if slots are not counted.
            # Inline, not a method: a call per edge per pass took a reference to the node and
            # checked for an exception each time (compiled).
            if node.e_ready[k] > now:
                continue
            room = self.upload_slots - self.uploads[node.e_peer[k]] if self.load_aware else 1
            if room > 0:
                # For Holders, later in this pass: nothing they read changes meanwhile.
                self.free_k[nfree] = k
                self.free_room[nfree] = room
                nfree += 1
                base = node.e_peer[k] * words
                for w in range(words):
                    self.reach[w] |= self.board_have[base + w]
        self.nfree = nfree
        if not nfree:
            return None
        return self.holders_view  # one per swarm: a pass uses it before the next scan changes what it reads

    def fetch_piece(self, req: Request) -> None:
        self.cluster.fetch_from_peer(self, req)

    def start_origin(self, runs: list[tuple[int, int]]) -> None:
        self.cluster.origin_stream(self, runs)

    def announce(self) -> None:
        self.cluster.send_announce(self, "progress")

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def stored(self, i: int, from_origin: bool, tell: int) -> None:
        """A verified piece: have it, tell the neighbours (over the Board), count it."""
        node = self.node
        self.have[i] = 1
        node.have_n[self.b] += 1
        one = 1  # a C unsigned long long in the compiled core: the shift stays in 64 bits
        self.board_have[node.idx * self.words + (i >> 6)] |= one << (i & 63)
        length = self.dl.length(i)  # the machine's (a C call), the same as the Blob's
        if from_origin:
            node.from_origin += length
        else:
            node.from_peers += length
        self.delivered.count(self.sim.now, length)
        if self.streaming and self.dl.cursor == i:
            self._follow_reader()
        if tell == TELL_HAVE:
            self._have(i, True)
        else:
            # The watchers heard of it at its first block (offer); its proof too, unless it came
            # after: then the proof alone goes out now.
            if tell == TELL_PROOF:
                self._have(i, False)
            self.cluster.relay_stored(self, i)

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def offer(self, i: int) -> None:
        """Piece i arrives from a peer and its first block checked out: the watchers hear of it now,
        and may ask for it (the data plane ends their uploads one block after ours). Its proof goes
        out with the HAVE if the machine holds one."""
        one = 1  # a C unsigned long long in the compiled core: the shift stays in 64 bits
        self.board_have[self.node.idx * self.words + (i >> 6)] |= one << (i & 63)
        self._have(i, True)

    def withdraw(self) -> None:
        """The node left: the pieces it offered while they arrived will not arrive (those it holds
        stay). Its machine hears nothing more, and its uploads were cut off with its transfers."""
        for i in range(self.count):
            pos = self.base + i * self.stride
            if self.cells[pos] & OFFERED:
                self.cells[pos] &= CELL ^ (OFFERED | OFFER_PROVED)  # as the machine clears an offer
                self._unboard(i)
        self.waiters.clear()

    def unoffer(self, i: int) -> None:
        """Piece i, offered, will not arrive: nobody is to ask us for it (the agent answers a 404),
        and the uploads of it are cut off."""
        self._unboard(i)
        self.cluster.relay_failed(self, i)

    def _unboard(self, i: int) -> None:
        one = 1
        self.board_have[self.node.idx * self.words + (i >> 6)] &= ~(one << (i & 63))

    def proved(self, index: int) -> None:
        self._have(index, False)  # the proof alone: the watchers heard the HAVE before it

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def _have(self, i: int, have: bool) -> None:
        """The HAVE of piece i to every watcher, over the Board (``have``), and the digest with the
        tracker's proof to those that lack it when the machine holds one (``PROVED``): this loop
        runs once per neighbour per stored piece, the hottest path. A count that decides nothing
        (the piece already had holders and the watcher's last pass did not wait for it) is added in
        the cell; otherwise the watcher's machine hears it."""
        node = self.node
        words = self.words
        w = i >> 6
        shift = i & 63
        one = 1  # a C unsigned long long in the compiled core: the shift stays in 64 bits
        proved = self.cells[self.base + i * self.stride] & PROVED
        stride = self.stride
        for k in range(len(node.w_edge)):
            widx = node.w_idx[k]
            if not self.board_live[widx]:
                continue
            # A watcher that has the piece (its cell says HAVE) is skipped on its Board bit, 32
            # bytes a node, before its cell is read (about half the watchers of a piece have it).
            if self.board_have[widx * words + w] >> shift & one:
                continue
            pos = i * stride + widx
            c = self.cells[pos]
            if c & HAVE:
                continue
            if proved and not c & PROVED:
                sw = self.board_swarms[widx]
                if sw.dl.takes_proofs(self.dl.proof_epoch):
                    sw.dl.proofs_checked((i,), self.sim.now)
                    c = self.cells[pos]
            if not have:
                continue
            if c & AVAIL and not c & BLOCKED:
                self.cells[pos] = c + 1
                continue
            sw = self.board_swarms[widx]
            edge = node.w_edge[k]
            sw.dl.add_holder(i, edge is not None and edge.inflight < edge.limit)

    def complete(self) -> None:
        self.cluster.swarm_complete(self)

    def went_direct(self, reason: str) -> None:
        if reason == machine.STALL:
            self.cluster.stalls += 1

    def tracker_lost(self) -> None:
        pass  # the simulated tracker always answers

    def tracker_back(self) -> None:
        pass

    def lacks(self, peer: Neighbour, index: int) -> bool:
        # The Board shows what a node holds or offers: an offer withdrawn (``unoffer``) cleared its
        # bit there and left the watchers' counts as they were, so the asker's count still has it.
        return True

    def ban(self, peer: Neighbour, reason: str) -> None:
        pass  # simulated peers send no bad pieces and never go silent

    def abort(self, reason: str) -> None:
        raise AssertionError(f"a simulated download cannot fail: {reason}")

    def blocking(self, on: bool) -> None:
        # The NEWS bit stays: it is the pass queue's (wake, clean).
        self.blocking_flags[self.nidx] = (self.blocking_flags[self.nidx] & NEWS) | (BLOCKING if on else 0)


class Holders:
    """The neighbours a pass may ask (``p2pdist.core.download.Holders``), read from the Board:
    ``holders(i)`` are those with a free slot whose bitfield has piece i, from the owner's last
    ``Swarm.holders`` scan (``free_k``)."""

    __slots__ = ("owner",)

    def __init__(self, owner: Swarm) -> None:
        self.owner = owner  # its Board rows, its free edges and the union of their bitfields

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    @cython.locals(out=list, owner=Swarm, w=cython.long, i=cython.long, row=cython.long, base=cython.long,
                   bits=cython.ulonglong, one=cython.ulonglong, c=cython.uint)
    def reachable(self, pieces: Iterable[int]) -> list[int]:
        """The pieces of ``pieces`` (the machine's fetchable ones) some free neighbour holds, in
        index order, read off the Board instead of iterating the set (at N=10,000 that iteration
        was 3 % of the run): the union of the free neighbours' bitfields less our own, each piece
        taken if its cell says fetchable (held by a neighbour, digest known, missing, not in
        flight: ``Download.fetchable``'s invariant, checked against the set in tests)."""
        owner = self.owner
        row = owner.nidx * owner.words  # our node's bitfield on the Board
        base = owner.base
        one = 1  # a C unsigned long long in the compiled core
        out = []
        for w in range(owner.words):
            bits = owner.reach[w] & ~owner.board_have[row + w]
            i = w * 64
            while bits:
                if bits & one:
                    c = owner.cells[base + i * owner.stride]
                    if c & AVAIL and (c & (HAVE | INFLIGHT | KNOWN)) == KNOWN:
                        out.append(i)
                bits >>= 1
                i += 1
        return out

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    @cython.locals(e=Neighbour, i=cython.long, w=cython.long, shift=cython.long, out=list, j=cython.Py_ssize_t,
                   k=cython.Py_ssize_t, owner=Swarm, node=Node, edges=list, words=cython.long)
    def __call__(self, index: int) -> list[Neighbour]:
        i = index
        w = i >> 6
        shift = i & 63
        owner = self.owner
        node = owner.node
        edges = node.edge_list
        words = owner.words
        out = []
        for j in range(owner.nfree):
            k = owner.free_k[j]
            if owner.board_have[node.e_peer[k] * words + w] >> shift & 1:
                e = edges[k]
                # Load-aware, the peer's free upload slots are the room the chooser reads, set once
                # a pass (the assignment counts its requests down from there), and only on the
                # holders asked about: the other free edges are not visited.
                if owner.load_aware and e.room_pass != node.passes:
                    e.room = owner.free_room[j]
                    e.room_pass = node.passes
                out.append(e)
        return out
