"""The data plane: carrying the agents' fetch decisions out as transfers on the simulated links.

Peer pieces (with the peer's upload slots, 503 back-off, piece timeout and failures when a peer
leaves) and origin Range streams, plus the paths bytes take through racks and zones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cython

from p2pdist.core.manifest import BLOCK_SIZE

from . import machine
from .agent import Neighbour, Node, Swarm
from .engine import Link, Transfer
from .machine import Request

if TYPE_CHECKING:
    from .cluster import Cluster


class OriginStream:
    """One Range request stream of a lease (swarm._origin_lease): runs in order, piece by piece."""

    __slots__ = ("cluster", "generation", "i", "last", "r", "runs", "sw")

    def __init__(self, cluster: Cluster, sw: Swarm, runs: list[tuple[int, int]]) -> None:
        self.cluster = cluster
        self.sw = sw
        self.runs = runs
        self.r = 0
        self.i = self.last = 0
        self.generation = sw.node.generation

    def request(self, _: object = None) -> None:
        sw = self.sw
        if self.generation != sw.node.generation:
            return
        while self.r < len(self.runs):
            s, e = self.runs[self.r]
            todo = [i for i in range(s, e) if not sw.have[i]]
            if todo:
                self.i, self.last = todo[0], todo[-1]
                self.piece()
                return
            self.r += 1
        sw.dl.origin_done(self.runs, self.cluster.sim.now)

    def piece(self) -> None:
        c = self.cluster
        sw = self.sw
        node = sw.node
        t = c.net.transfer(sw.blob.length(self.i), c.origin_path(node), c.origin_piece_done, self)
        c.track(t, node, None)

    def advance(self) -> None:
        self.i += 1
        if self.i <= self.last:
            self.piece()
            return
        self.r += 1
        if self.r < len(self.runs):
            self.cluster.sim.after(self.cluster.origin_rtt, self.request)
        else:
            self.sw.dl.origin_done(self.runs, self.cluster.sim.now)



class DataPlane:
    """Mixin of Cluster: transfers. Compiled, it is the Cluster's extension base: the fields its
    hot paths read are C fields (dataplane.pxd), not entries of the Cluster's __dict__."""

    def _init_dataplane(self) -> None:
        """The profile's numbers read per piece, as fields (self.profile is a Python object), and
        the completion callback bound once (a bound method per upload otherwise)."""
        self.upload_slots = self.profile.upload_slots
        self.upload_queue = self.profile.upload_queue
        self.load_aware = self.profile.load_aware
        self.piece_timeout = self.profile.piece_timeout
        self.peer_done = self._peer_done
        # Cut-through: uploads of a piece that ended before their sender had all of it wait here for
        # it (Swarm.waiters). A block-time is block_bits / a downlink's capacity: one 256 KiB block at
        # half the link, which two pieces in flight share.
        self.deferred: set = set()
        self.arriving: list = []  # (swarm, request, transfer) of the uploads that started this instant
        self.block_bits = 2.0 * BLOCK_SIZE

    @cython.locals(sw=Swarm, batch=list, k=cython.long, n=cython.long, j=cython.long, pos=cython.long)
    def _flush(self) -> bool:
        """The simulator's idle hook: run the passes the machines asked for, in the order they asked,
        from a random place in that order. The list object stays (swarms hold it: Swarm.wakeups);
        passes run meanwhile queue the next batch.

        The first pass to run takes a slot a ROOM freed, and the order the passes asked in is that of
        events at one instant, which is the order of their nodes wherever nodes arrived together
        (equal links finish equal transfers at equal times). Always from the start, the last nodes of
        a rolling batch lost every freed slot: one of them was woken 5,975 times in 10 s and placed
        nothing, and went to the origin for a layer 93 of 100 nodes held (rolling.toml: 1.19x origin
        egress and 4 stalls; 1.01x and none from a random place). A real ROOM reaches its askers in
        no fixed order."""
        if self.arriving:
            self._offer_arriving()
        if not self.dirty:
            return False
        batch = self.dirty.copy()
        self.dirty.clear()
        n = len(batch)
        k = int(self.flush_rng.random() * n) if n > 1 else 0  # random() is C; a shuffle is Python code
        for j in range(n):
            pos = k + j  # (k + j) % n, without a division per pass
            if pos >= n:
                pos -= n
            sw = batch[pos]
            sw.clean()
            sw.run_pass()
        return True

    # --- transfers --------------------------------------------------------------------------

    def path(self, src: Node, dst: Node) -> list[Link]:
        if src.is_origin:
            return self.origin_path(dst)
        links = [src.up]
        if self.rack_up and src.rack_idx != dst.rack_idx:
            links.append(self.rack_up[src.rack_idx])
            if src.zone_idx != dst.zone_idx:
                links.append(self.zone_up[src.zone_idx])
                links.append(self.zone_down[dst.zone_idx])
            links.append(self.rack_down[dst.rack_idx])
            links = [link for link in links if link is not None]
        links.append(dst.down)
        return links

    def origin_path(self, dst: Node) -> list[Link]:
        # The origin sits outside the cluster: its bytes enter through the zone and the rack.
        if self.rack_up:
            links = [self.origin_link, self.zone_down[dst.zone_idx], self.rack_down[dst.rack_idx], dst.down]
            return [link for link in links if link is not None]
        return [self.origin_link, dst.down]

    def track(self, t: Transfer, receiver: Node, sender: Node | None) -> None:
        """Index the transfer under both nodes, so a node that leaves cancels its transfers. Only
        when some node leaves (churn): otherwise the index is two dict updates per piece for nothing."""
        if not self.tracking:
            return
        self._tid += 1
        tid = self._tid
        t.data = (t.data, tid, receiver, sender)
        receiver.transfers[tid] = t
        if sender is not None:
            sender.transfers[tid] = t

    def _untrack(self, t: Transfer) -> object:
        if not self.tracking:
            return t.data
        data, tid, receiver, sender = t.data
        receiver.transfers.pop(tid, None)
        if sender is not None:
            sender.transfers.pop(tid, None)
        return data

    def _cancel(self, t: Transfer) -> None:
        if t in self.deferred:
            # Its bytes are all here but its sender's piece is not: it ends with the sender.
            sw, req = self._peek(t)
            self.deferred.discard(t)
            up = req.peer.node.swarms[sw.b]
            if up is not None:
                waiting = up.waiters.get(req.index)
                if waiting is not None and t in waiting:
                    waiting.remove(t)
            self._end_upload(t, False)
            return
        if t.cancelled or t.pending == 0:
            return
        self.net.cancel(t)
        data = self._untrack(t)
        if isinstance(data, OriginStream):
            return  # the stream dies with the node that ran it
        sw, req = data
        edge = req.peer
        self.uploads[edge.pidx] = max(0, self.uploads[edge.pidx] - 1)
        self._peer_failed(sw, req)
        if edge.node.alive:
            self._next_upload(edge.node)

    def _next_upload(self, peer: Node) -> None:
        if not self.upload_queue:
            return  # nothing is ever queued (fetch_from_peer answers busy): no truth test of the deque
        while peer.queue and self.uploads[peer.idx] < self.upload_slots:
            sw, req = peer.queue.popleft()
            if sw.node.alive and sw.generation == sw.node.generation:
                self._upload(sw, req)
            else:
                self._peer_failed(sw, req)

    def origin_stream(self, sw: Swarm, runs: list[tuple[int, int]]) -> None:
        stream = OriginStream(self, sw, runs)
        self.sim.after(self.origin_rtt, stream.request)

    @cython.locals(t=Transfer, sw=Swarm)
    def origin_piece_done(self, t: Transfer) -> None:
        stream: OriginStream = self._untrack(t)  # type: ignore[assignment]
        sw = stream.sw
        if stream.generation != sw.node.generation:
            return
        sw.dl.piece_stored(stream.i, True, self.sim.now)
        stream.advance()

    @cython.locals(sw=Swarm, req=Request, edge=Neighbour, peer=Node, i=cython.long)
    def fetch_from_peer(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        peer = edge.node
        edge.changed()  # the machine counted the request on the edge
        i = req.index
        if not sw.board_have[peer.idx * sw.words + (i >> 6)] >> (i & 63) & 1:
            # Not held there, nor arriving (Swarm.offer): it was offered and its arrival failed
            # since. The agent answers 404, and the asker drops the peer as a holder of the piece.
            self.sim.after(self.rtt, self._lacks, (sw, req))
            return
        busy = self.uploads[peer.idx] >= self.upload_slots
        if not peer.alive or (busy and not self.upload_queue):
            self.sim.after(self.rtt, self._busy, (sw, req))
            return
        if busy:
            peer.queue.append((sw, req))
            return
        self._upload(sw, req)

    def _upload(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        peer = edge.node
        self.uploads[peer.idx] += 1
        t = self.net.transfer(req.length, self.path(peer, sw.node), self.peer_done, (sw, req))
        self.track(t, sw.node, peer)
        have = peer.bits[sw.b]
        if not have[req.index]:
            # The peer passes on a piece it is still receiving: this upload ends with that transfer.
            up = peer.swarms[sw.b]
            if up is not None:
                waiting = up.waiters.get(req.index)  # not setdefault: a list made per upload
                if waiting is None:
                    up.waiters[req.index] = [t]
                else:
                    waiting.append(t)
        if sw.dl.cut_through:
            # Its first block checks out: the machine may offer the piece (Download.piece_arriving),
            # at the end of this instant (_flush; an event a block later cost 8 % of the run).
            self.arriving.append((sw, req, t))
        self._timeouts.append(t)  # due at t.started + piece_timeout: the queue is in start order
        if not self._timeout_armed:
            self._timeout_armed = True
            self.sim.at(self._timeouts[0].started + self.piece_timeout, self._check_timeouts)

    @cython.boundscheck(False)  # compiled: indices here are never negative or out of range
    @cython.wraparound(False)
    def _room(self, peer: Node) -> None:
        """The peer has a free upload slot again (its ROOM message): neighbours that could not place a
        piece it holds look again. They hear it in no fixed order; the first to ask gets the slot.
        A neighbour whose blocked pieces the peer does not hold is not woken: its pass could only
        find what its last one found (N=1,000: two thirds of the passes a ROOM woke placed nothing)."""
        n = len(peer.w_edge)  # w_idx may have spare room (Node.add_watcher)
        # A random starting point, not a full shuffle: this runs once per finished upload.
        k = int(self.room_rng.random() * n) if n > 1 else 0  # random() is C; randrange is Python code
        swarms = self.board.swarms
        rows = self.board.rows
        for j in range(n):
            pos = k + j  # (k + j) % n, without a division per watcher (0 <= k < n)
            if pos >= n:
                pos -= n
            widx = peer.w_idx[pos]
            for b in range(len(rows)):
                row = rows[b]
                if row.room_wakes(widx, peer.idx):  # read on the Board: only then is the swarm visited
                    sw = swarms[b][widx]
                    sw.wake_room(peer.idx)

    @cython.locals(sw=Swarm, req=Request, edge=Neighbour)
    def _busy(self, args: tuple[Swarm, Request]) -> None:
        sw, req = args
        self.busy_replies += 1
        edge = req.peer
        sw.dl.request_done(req, machine.BUSY, self.sim.now)
        edge.changed()

    @cython.locals(sw=Swarm, req=Request, t=Transfer)
    def _offer_arriving(self) -> None:
        batch = self.arriving
        self.arriving = []
        for sw, req, t in batch:
            if not t.cancelled and t.pending != 0 and sw.generation == sw.node.generation:
                sw.dl.piece_arriving(req)

    @cython.locals(sw=Swarm, req=Request)
    def _lacks(self, args: tuple[Swarm, Request]) -> None:
        sw, req = args
        if sw.generation != sw.node.generation:
            req.peer.add_request(-1)
            return
        sw.dl.request_done(req, machine.LACKS, self.sim.now)
        req.peer.changed()

    @cython.locals(t=Transfer, sw=Swarm)
    def relay_stored(self, up: Swarm, i: int) -> None:
        """``up`` stored piece i, which it passed on while it arrived: the uploads of it that were
        waiting for its last bytes end one block-time after them (those still sending end as usual)."""
        waiting = up.waiters.pop(i, None)
        if not waiting:
            return
        for t in waiting:
            if t in self.deferred:
                sw = self._peek(t)[0]
                self.sim.after(self.block_bits / sw.node.down.capacity, self.peer_done, t)

    def _peek(self, t: Transfer) -> tuple[Swarm, Request]:
        return t.data[0] if self.tracking else t.data  # type: ignore[return-value]

    @cython.locals(t=Transfer)
    def relay_failed(self, up: Swarm, i: int) -> None:
        """``up``'s request of piece i, which it offered, ended without the piece (its machine's
        ``unoffer``): its uploads of it are cut off at once, as the agent's are (relay.py). Not
        later: two nodes whose upstreams failed could then take the piece from each other, each
        waiting for the other's end."""
        for t in up.waiters.pop(i, []):
            if t in self.deferred:
                self.deferred.discard(t)
                self._end_upload(t, False)
            else:
                self._cancel(t)  # a failed request of its asker, which may pass the failure on

    @cython.locals(t=Transfer, sw=Swarm, req=Request, peer=Node, up=Swarm, have=bytearray)
    def _peer_done(self, t: Transfer) -> None:
        sw, req = t.data[0] if self.tracking else t.data  # (_untrack, in _end_upload, unwraps it)
        peer = req.peer.node
        have = peer.bits[sw.b]
        if not have[req.index]:
            # Its sender passes the piece on as it arrives there (cut-through): the last bytes come
            # one block after the sender's own, or never if its transfer fails.
            up = peer.swarms[sw.b]
            if up is not None and up.dl.offering(req.index):
                if t not in self.deferred:
                    self.deferred.add(t)  # in up.waiters since it started (_upload)
                    return
            else:
                self.deferred.discard(t)
                self._end_upload(t, False)
                return
        self.deferred.discard(t)
        self._end_upload(t, True)

    @cython.locals(t=Transfer, sw=Swarm, req=Request, edge=Neighbour, peer=Node, head=Transfer)
    def _end_upload(self, t: Transfer, delivered: bool) -> None:
        sw, req = self._untrack(t)  # type: ignore[misc]
        # Finished transfers leave the head of the timeout queue now, not at the next check
        # (piece_timeout, 30 s, is longer than a whole flash run): otherwise every transfer of the
        # run, with its request, stayed alive to the end (N=10,000: 2.56 million, most of the
        # 1.5 GB RSS), and every new one took fresh, cold memory. The checks run at the same times.
        queue = self._timeouts
        while queue:
            head = queue[0]  # a Transfer (typed: its field read in C, not looked up by name)
            if head.pending != 0:
                break
            queue.popleft()
        edge = req.peer
        peer = edge.node
        self.uploads[peer.idx] -= 1
        self._next_upload(peer)
        if self.load_aware and self.uploads[peer.idx] == self.upload_slots - 1:
            self._room(peer)
        if sw.generation != sw.node.generation:
            edge.add_request(-1)
            return
        if not delivered:
            self._request_failed(sw, req)
            return
        sw.dl.request_done(req, machine.DONE, self.sim.now)
        edge.changed()

    def _peer_failed(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        if sw.generation != sw.node.generation:
            edge.add_request(-1)
            return
        self._request_failed(sw, req)

    @cython.locals(edge=Neighbour)
    def _request_failed(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        sw.dl.request_done(req, machine.FAILED, self.sim.now)  # an offered piece: its unoffer cuts its uploads
        edge.changed()

    def _check_timeouts(self, _: object = None) -> None:
        now = self.sim.now
        queue = self._timeouts
        while queue and (queue[0].pending == 0 or queue[0].cancelled or queue[0].started + self.piece_timeout <= now):
            t = queue.popleft()
            if t.pending and not t.cancelled:
                self.timeouts += 1
                self._cancel(t)
        if queue:
            self.sim.at(queue[0].started + self.piece_timeout, self._check_timeouts)
        else:
            self._timeout_armed = False

