"""The control plane: announces to the simulated tracker, seeding, and neighbour connections."""

from __future__ import annotations

from p2pdist.core.handout import PeerInfo

from .agent import MAX_LIST, Edge, Node, Swarm
from .profiles import BACK_TO_SOURCE
from .tracker import Announce, Reply


class ControlPlane:
    """Mixin of Cluster: tracker round trips and the neighbourhood."""

    # --- tracker ----------------------------------------------------------------------------

    def _wants_peers(self, node: Node) -> bool:
        if self.profile.parents_only:
            return True
        return len(node.edges) + len(node.dialing) < self.profile.neighbours

    def send_announce(self, sw: Swarm, event: str, with_size: bool = True) -> None:
        node = sw.node
        b = sw.b
        complete = event == "completed"
        digests = list(range(sw.blob.count)) if complete else sw.report[:MAX_LIST]
        msg = Announce(
            node=node.name, zone=node.zone, rack=node.rack, have=node.have_n[b], complete=complete,
            load=self.uploads[node.idx], event=event, want_leases=sw.want_leases(), digests=digests,
            digest_pos=sw.digest_pos, wants_peers=not complete and self._wants_peers(node),
            # swarm._announce_msg: bytes arrived on an origin stream since the last announce. A
            # simulated stream moves bytes whenever it is open (the gaps are one origin RTT).
            streaming=not complete and not sw.direct and sw.origin_active > 0,
        )
        self._to_tracker(self._tracker_handles, (sw, msg, len(digests), with_size))

    def _to_tracker(self, handler, args) -> None:
        # The tracker serves announces one at a time: a FIFO server with a fixed cost per announce.
        arrive = self.sim.now + self.rtt / 2
        start = max(arrive, self.tracker_free)
        self.tracker_free = start + self.scenario.tracker_service_time
        self.sim.at(self.tracker_free, handler, args)

    def _tracker_handles(self, args: tuple[Swarm, Announce, int, bool]) -> None:
        sw, msg, sent, with_size = args
        if not with_size and sw.b not in self.tracker.blobs:
            # The tracker has never seen this blob: the agent asks the origin for the size first.
            self.sim.after(self.rtt / 2 + self.origin_rtt, self._resend_with_size, sw)
            return
        track = self.tracker.blob(sw.b, sw.blob.count)
        reply = self.tracker.announce(track, msg, self.sim.now)
        if self.origin_node is not None and not msg.complete:
            # Kraken's tracker adds the origin cluster to every handout, complete peers first.
            origin = PeerInfo("origin", "origin", have=sw.blob.count, complete=True)
            reply.peers = [origin, *reply.peers[: max(0, self.profile.tracker.handout_size - 1)]]
        self.sim.after(self.rtt / 2, self._reply, (sw, msg, sent, reply))

    def _resend_with_size(self, sw: Swarm) -> None:
        if sw.generation == sw.node.generation and sw.node.alive:
            self.send_announce(sw, "started")

    def _reply(self, args: tuple[Swarm, Announce, int, Reply]) -> None:
        sw, msg, sent, reply = args
        node = sw.node
        if sw.generation != node.generation or not node.alive:
            return
        if msg.complete:
            self.sim.after(reply.interval, self._seed_announce, (node, sw.b, node.generation, False))
            return
        del sw.report[:sent]
        learned = False
        for i in reply.digests:
            learned |= sw.learn_digest(i)
        if learned or reply.leases:
            sw.last_progress = self.sim.now  # the swarm is moving, even if not through us yet
        sw.digest_pos = reply.digest_pos
        sw.apply_leases(reply.leases)
        if self.profile.parents_only:
            self._set_parents(node, reply.peers, sw.b)
        else:
            self._connect(node, reply.peers)
        if msg.event == "started":
            if (self.profile.origin == BACK_TO_SOURCE and not reply.peers and not sw.done
                    and self.back_to_source[sw.b] < self.profile.back_to_source):
                self.back_to_source[sw.b] += 1
                sw.go_direct()
                return
            if self.profile.stall_fallback:
                self.sim.at(sw.last_progress + self.profile.stall_timeout, sw.check_stall, sw.generation)
            sw.wake()
            sw.wait_for_kick(1.0)  # the announcer's first wait (swarm._announcer starts at 1 s)
            return
        sw.wake()
        self.sim.after(self.profile.announce_spacing, self._spaced, (sw, reply.interval))

    def _spaced(self, args: tuple[Swarm, float]) -> None:
        sw, interval = args
        sw.wait_for_kick(interval)

    def _seed_announce(self, args: tuple[Node, int, int, bool]) -> None:
        node, b, generation, first = args
        if generation != node.generation or not node.alive:
            return
        msg = Announce(
            node=node.name, zone=node.zone, rack=node.rack, have=node.have_n[b], complete=True,
            load=self.uploads[node.idx], event="completed", digests=list(range(self.blobs[b].count)) if first else [],
            wants_peers=False,
        )
        self._to_tracker(self._seed_handled, (node, b, generation, msg))

    def _seed_handled(self, args: tuple[Node, int, int, Announce]) -> None:
        node, b, generation, msg = args
        reply = self.tracker.announce(self.tracker.blob(b, self.blobs[b].count), msg, self.sim.now)
        self.sim.after(self.rtt / 2 + reply.interval, self._seed_announce, (node, b, generation, False))

    # --- neighbours -------------------------------------------------------------------------

    def _connect(self, node: Node, peers: list[PeerInfo]) -> None:
        """Neighbourhood.connect: dial handed-out peers until the neighbour limit (inbound not counted)."""
        limit = self.profile.neighbours
        for info in peers:
            peer = self.by_name.get(info.node)
            if peer is None or peer is node or peer.idx in node.edges or peer.idx in node.dialing:
                continue
            if len(node.edges) + len(node.dialing) >= limit:
                break
            node.dialing.add(peer.idx)
            self.sim.after(self.rtt, self._dialed, (node, peer, node.generation))

    def _dialed(self, args: tuple[Node, Node, int]) -> None:
        node, peer, generation = args
        if generation != node.generation:
            return
        node.dialing.discard(peer.idx)
        if not node.alive or not peer.alive or peer.idx in node.edges:
            return
        self._attach(node, peer, both=not peer.is_origin)

    def _attach(self, a: Node, b: Node, both: bool) -> None:
        self._link(a, b)
        if both and a.idx not in b.edges:
            self._link(b, a)

    def _link(self, a: Node, b: Node) -> None:
        """a may fetch from b from now on: an edge, a watcher for b's HAVEs, and b's bitfields."""
        a.edges[b.idx] = Edge(b, self.profile.peer_concurrency, a)
        a.set_edges()
        b.add_watcher(a)
        for blob in range(len(self.blobs)):
            sw = a.swarms[blob]
            if sw is not None and not sw.done:
                self._add_bitfield(sw, b)

    def _add_bitfield(self, sw: Swarm, peer: Node) -> None:
        if not peer.have_n[sw.b]:
            return
        bits = peer.bits[sw.b]
        edge = sw.node.edges.get(peer.idx)
        for i in range(len(bits)):
            if bits[i]:
                sw.add_holder(i, edge)

    def _drop_bitfield(self, sw: Swarm, peer: Node) -> None:
        """The connection to ``peer`` is gone: its pieces no longer count for ``sw``."""
        if not peer.have_n[sw.b]:
            return
        bits = peer.bits[sw.b]
        for i in range(len(bits)):
            if bits[i]:
                sw.drop_holder(i)

    def _set_parents(self, node: Node, peers: list[PeerInfo], b: int) -> None:
        """Dragonfly: the scheduler's parents replace the old ones (transfers in flight finish)."""
        chosen = [self.by_name[p.node] for p in peers if p.node in self.by_name]
        wanted = {p.idx for p in chosen if p.alive and p is not node}
        for j in [j for j in node.edges if j not in wanted]:
            parent = self.by_index(j)
            del node.edges[j]
            parent.drop_watcher(node.idx)
            sw = node.swarms[b]
            if sw is not None and not sw.done:
                self._drop_bitfield(sw, parent)
        for parent in chosen:
            if parent.idx in wanted and parent.idx not in node.edges:
                self._attach(node, parent, both=False)
        node.set_edges()

