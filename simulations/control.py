"""The control plane: announces to the tracker, seeding, and neighbour connections.

The tracker is the real one's announce logic (``tracker.service.handle_announce`` over a
``MemoryState``), called in simulated time: a FIFO server with a fixed cost per announce, one
network half round trip each way. Piece digests are 32-byte stand-ins derived from the index.
"""

from __future__ import annotations

from p2pdist.core.proofs import tracker_lacks_digests
from p2pdist.core.wire import Announce, AnnounceReply, PeerInfo
from tracker.service import AnnounceError, handle_announce, served_first

from . import machine
from .agent import Neighbour, Node, Swarm
from .profiles import BACK_TO_SOURCE, LEASES
from .scenario import REPORTS_FIRST

_DIGESTS: list[str] = []  # blob_digest's names, by blob index


def blob_digest(b: int) -> str:
    """The name blob ``b`` goes by at the tracker (made once per blob: every announce names it)."""
    while len(_DIGESTS) <= b:
        _DIGESTS.append(f"sha256:{len(_DIGESTS):064x}")
    return _DIGESTS[b]


class TrackerTally:
    """What the simulated tracker did, counted from the events the announce logic emits."""

    def __init__(self) -> None:
        self.announces = 0
        self.handouts = 0
        self.leases_granted = 0
        self.leases_reassigned = 0
        self.leases_expired = 0
        self.digests_rejected = 0
        self.audits = 0  # audit fetches handed out: pieces that leave the origin a second time

    def __call__(self, event: str, **fields: object) -> None:
        if event == "lease_granted":
            self.leases_granted += 1
            self.leases_reassigned += bool(fields.get("reassigned"))
        elif event == "lease_expired":
            self.leases_expired += 1
        elif event == "audit_assigned":
            self.audits += 1
        elif event == "digests_rejected":
            self.digests_rejected += fields["count"]  # type: ignore[operator]


class ControlPlane:
    """Mixin of Cluster: tracker round trips and the neighbourhood."""

    # --- tracker ----------------------------------------------------------------------------

    def _wants_peers(self, node: Node) -> bool:
        if self.profile.parents_only:
            return True
        return len(node.edges) + len(node.dialing) < self.profile.neighbours

    def _digests(self, pieces) -> list[tuple[int, bytes]]:
        stand_in = self.piece_digests
        return [(i, stand_in[i]) for i in pieces]

    def send_announce(self, sw: Swarm, event: str) -> None:
        node = sw.node
        b = sw.b
        complete = event == "completed"
        if complete:
            # Only the digests still to report, as a progress announce would: the reply says whether
            # the log lacks others (agent.swarm).
            pieces, digest_pos, _, _ = sw.announce_fields()
            want, streaming = 0, False
        elif event == "started":
            want = machine.first_want(self.profile.origin_concurrency) if self.profile.origin == LEASES else 0
            pieces, digest_pos, streaming = [], 0, False
        else:
            pieces, digest_pos, want, streaming = sw.announce_fields()
        orphans = sw.dl.orphans(self.sim.now) if event == "progress" else []
        msg = Announce(
            node=node.name, addr=node.name, blob=blob_digest(b), zone=node.zone, rack=node.rack,
            size=sw.blob.size, have=node.have_n[b], complete=complete,
            load=self.uploads[node.idx], event=event, want_leases=want, digests=self._digests(pieces),
            digest_pos=digest_pos, wants_peers=not complete and self._wants_peers(node), streaming=streaming,
            spares=machine.QUEUES_SPARES,
            orphans=orphans,
        )
        self._to_tracker(self._tracker_handles, (sw, msg), msg)

    def _to_tracker(self, handler, args, msg: Announce) -> None:
        # The tracker serves announces one at a time, with a fixed cost per announce: reports first, as
        # the real one (Scenario.tracker_queue), or first come first served (a what-if).
        arrive = self.sim.now + self.rtt / 2
        if self.scenario.tracker_queue == REPORTS_FIRST and self.scenario.tracker_service_time > 0:
            self.sim.at(arrive, self._tracker_takes, (handler, args, msg))
            return
        start = max(arrive, self.tracker_free)
        self.tracker_free = start + self.scenario.tracker_service_time
        self.sim.at(self.tracker_free, handler, args)

    def _tracker_takes(self, job: tuple) -> None:
        """An announce reaches the reports-first tracker: into the reports' lane if the tracker
        serves it first (``served_first``), else the others', and served now if the tracker is idle."""
        handler, args, msg = job
        self.tracker_lanes[0 if served_first(msg) else 1].append((handler, args))
        if not self.tracker_busy:
            self._tracker_next()

    def _tracker_next(self) -> None:
        lane = self.tracker_lanes[0] or self.tracker_lanes[1]
        self.tracker_busy = bool(lane)
        if lane:
            self.sim.after(self.scenario.tracker_service_time, self._tracker_serves, lane.popleft())

    def _tracker_serves(self, job: tuple) -> None:
        handler, args = job
        handler(args)
        self._tracker_next()

    def _announce(self, msg: Announce) -> AnnounceReply:
        self.tally.announces += 1
        self.tally.handouts += msg.wants_peers and msg.event != "stopped"
        try:
            return handle_announce(self.tracker_state, msg, self.sim.now, self.tracker_rng, self.profile.tracker,
                                   self.tally, self.profile.handout, loaded=self.pacer.loaded)
        except AnnounceError as e:  # a scenario the tracker's limits refuse: say so, do not simulate around it
            raise RuntimeError(f"the tracker refused an announce: {e}") from None

    def _tracker_handles(self, args: tuple[Swarm, Announce]) -> None:
        sw, msg = args
        reply = self._announce(msg)
        peers = reply.peers
        if self.origin_node is not None and not msg.complete:
            # Kraken's tracker adds the origin cluster to every handout, complete peers first.
            origin = PeerInfo("origin", "origin", have=sw.blob.count, complete=True)
            peers = [origin, *peers[: max(0, self.profile.tracker.handout_size - 1)]]
        spacing = self.pacer.announced(self.sim.now, reply)
        self.sim.after(self.rtt / 2, self._reply, (sw, msg, reply, peers, spacing))

    def _reply(self, args: tuple[Swarm, Announce, AnnounceReply, list[PeerInfo], float]) -> None:
        sw, msg, reply, peers, spacing = args
        node = sw.node
        if sw.generation != node.generation or not node.alive:
            return
        if msg.complete:
            # A log without every digest (the tracker forgot them): the seeder sends its own at once.
            lacking = tracker_lacks_digests(reply.digest_pos, sw.blob.count)
            self.sim.after(0.0 if lacking else reply.interval, self._seed_announce,
                           (node, sw.b, node.generation, lacking))
            return
        if self.profile.parents_only:
            self._set_parents(node, peers, sw.b)
        else:
            self._connect(node, peers)
        started = msg.event == "started"
        if (started and self.profile.origin == BACK_TO_SOURCE and not peers and not sw.done
                and self.back_to_source[sw.b] < self.profile.back_to_source):
            # Dragonfly's scheduler: a node with no parent fetches the whole blob itself.
            self.back_to_source[sw.b] += 1
            sw.dl.go_direct("back-to-source")
        learned = [i for i, _ in reply.digests]
        sw.reply(machine.Reply(interval=reply.interval, learned=learned,
                               proved=learned if self.profile.digest_proofs else (),
                               digest_pos=reply.digest_pos, leases=reply.leases, reset=reply.reset,
                               spacing=spacing), started)

    def _seed_announce(self, args: tuple[Node, int, int, bool]) -> None:
        node, b, generation, first = args
        if generation != node.generation or not node.alive:
            return
        blob = self.blobs[b]
        msg = Announce(
            node=node.name, addr=node.name, blob=blob_digest(b), zone=node.zone, rack=node.rack, size=blob.size,
            have=node.have_n[b], complete=True, load=self.uploads[node.idx], event="completed",
            digests=self._digests(range(blob.count)) if first else [], wants_peers=False,
        )
        self._to_tracker(self._seed_handled, (node, b, generation, msg), msg)

    def _seed_handled(self, args: tuple[Node, int, int, Announce]) -> None:
        node, b, generation, msg = args
        reply = self._announce(msg)
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
        a.add_edge(Neighbour(b, self.profile.peer_concurrency, a))
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

