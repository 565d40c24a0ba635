"""The data plane: carrying the agents' fetch decisions out as transfers on the simulated links.

Peer pieces (with the peer's upload slots, 503 back-off, piece timeout and failures when a peer
leaves) and origin Range streams, plus the paths bytes take through racks and zones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cython

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
    """Mixin of Cluster: transfers."""

    # --- transfers --------------------------------------------------------------------------

    @cython.locals(src=Node, dst=Node, links=list)
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

    @cython.locals(t=Transfer, receiver=Node, sender=Node)
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

    @cython.locals(t=Transfer, receiver=Node, sender=Node)
    def _untrack(self, t: Transfer) -> object:
        if not self.tracking:
            return t.data
        data, tid, receiver, sender = t.data
        receiver.transfers.pop(tid, None)
        if sender is not None:
            sender.transfers.pop(tid, None)
        return data

    def _cancel(self, t: Transfer) -> None:
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

    @cython.locals(peer=Node, sw=Swarm)
    def _next_upload(self, peer: Node) -> None:
        while peer.queue and self.uploads[peer.idx] < self.profile.upload_slots:
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

    @cython.locals(sw=Swarm, edge=Neighbour, peer=Node)
    def fetch_from_peer(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        peer = edge.node
        edge.changed()  # the machine counted the request on the edge
        busy = self.uploads[peer.idx] >= self.profile.upload_slots
        if not peer.alive or (busy and not self.profile.upload_queue):
            self.sim.after(self.rtt, self._busy, (sw, req))
            return
        if busy:
            peer.queue.append((sw, req))
            return
        self._upload(sw, req)

    @cython.locals(sw=Swarm, edge=Neighbour, peer=Node, t=Transfer)
    def _upload(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        peer = edge.node
        self.uploads[peer.idx] += 1
        t = self.net.transfer(req.length, self.path(peer, sw.node), self._peer_done, (sw, req))
        self.track(t, sw.node, peer)
        self._timeouts.append((self.sim.now + self.profile.piece_timeout, t))
        if not self._timeout_armed:
            self._timeout_armed = True
            self.sim.at(self._timeouts[0][0], self._check_timeouts)

    @cython.locals(peer=Node, watcher=Node, sw=Swarm, n=cython.long, k=cython.long, j=cython.long, widx=cython.long,
                   b=cython.long, blocking=list, flags=bytearray)
    def _room(self, peer: Node) -> None:
        """The peer has a free upload slot again (its ROOM message): neighbours that could not place a
        piece look again. They hear it in no fixed order; the first to ask gets the slot."""
        n = len(peer.w_idx)
        # A random starting point, not a full shuffle: this runs once per finished upload.
        k = int(self.room_rng.random() * n) if n > 1 else 0  # random() is C; randrange is Python code
        nodes = self.board.nodes
        blocking = self.board.blocking
        for j in range(n):
            widx = peer.w_idx[(k + j) % n]
            for b in range(len(blocking)):
                flags = blocking[b]
                if flags[widx]:  # the Board says it has blocked pieces: only then visit the swarm
                    watcher = nodes[widx]
                    sw = watcher.swarms[b]
                    if not sw.dirty:
                        sw.wake()

    @cython.locals(sw=Swarm, edge=Neighbour)
    def _busy(self, args: tuple[Swarm, Request]) -> None:
        sw, req = args
        self.busy_replies += 1
        edge = req.peer
        sw.dl.request_done(req, machine.BUSY, self.sim.now)
        edge.changed()

    @cython.locals(t=Transfer, sw=Swarm, edge=Neighbour, peer=Node)
    def _peer_done(self, t: Transfer) -> None:
        sw, req = self._untrack(t)  # type: ignore[misc]
        edge = req.peer
        peer = edge.node
        self.uploads[peer.idx] -= 1
        self._next_upload(peer)
        if self.profile.load_aware and self.uploads[peer.idx] == self.profile.upload_slots - 1:
            self._room(peer)
        if sw.generation != sw.node.generation:
            edge.add_request(-1)
            return
        sw.dl.request_done(req, machine.DONE, self.sim.now)
        edge.changed()

    @cython.locals(sw=Swarm, edge=Neighbour)
    def _peer_failed(self, sw: Swarm, req: Request) -> None:
        edge = req.peer
        if sw.generation != sw.node.generation:
            edge.add_request(-1)
            return
        sw.dl.request_done(req, machine.FAILED, self.sim.now)
        edge.changed()

    def _check_timeouts(self, _: object = None) -> None:
        now = self.sim.now
        queue = self._timeouts
        while queue and (queue[0][1].pending == 0 or queue[0][1].cancelled or queue[0][0] <= now):
            _, t = queue.popleft()
            if t.pending and not t.cancelled:
                self.timeouts += 1
                self._cancel(t)
        if queue:
            self.sim.at(queue[0][0], self._check_timeouts)
        else:
            self._timeout_armed = False

