"""One simulated cluster under one profile: nodes, links, tracker, arrivals, churn, and the glue
that carries the agents' decisions out on the network (transfers, announces, connections)."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass

from p2pdist.core.layout import PieceLayout, decide_layout
from p2pdist.core.manifest import PIECE_DIGEST_SIZE
from tracker.pacer import Pacer, budget_of
from tracker.service import memory_state

from .agent import Board, Node, Swarm
from .control import ControlPlane, TrackerTally
from .dataplane import DataPlane
from .engine import Link, Meter, Network, Simulator, Transfer
from .profiles import DIRECT, ORIGIN_PEER, Profile
from .scenario import Scenario


class Blob:
    """One layer: its layout, as the tracker fixes it."""

    __slots__ = ("count", "idx", "last", "piece_size", "size")

    def __init__(self, idx: int, size: int, piece_size: int) -> None:
        layout = PieceLayout(size, piece_size)
        self.idx = idx
        self.size = size
        self.piece_size = piece_size
        self.count = layout.count
        self.last = layout.length(layout.count - 1)

    def length(self, i: int) -> int:
        return self.last if i == self.count - 1 else self.piece_size


def make_blobs(scenario: Scenario, profile: Profile) -> list[Blob]:
    """The image's layers as the tracker lays them out (piece sizes from its config)."""
    rule = profile.tracker.piece_rule
    return [Blob(i, size, decide_layout(size, rule=rule).piece_size) for i, size in enumerate(scenario.image.layers)]


@dataclass
class Population:
    """Who the nodes are: drawn once per scenario and seed, the same for every profile of a run."""

    seeds: set[int]
    churners: list[int]
    up: list[float]  # link capacities, bytes/s (stragglers' already scaled)
    down: list[float]


def draw_population(scenario: Scenario, rng: random.Random) -> Population:
    """Seeds, stragglers, churners and link capacities, drawn from ``rng`` in a fixed order (the
    cluster goes on drawing arrivals from the same ``rng``)."""
    sc = scenario
    n = sc.nodes
    order = list(range(n))
    rng.shuffle(order)
    seeds = set(order[: sc.seeds])
    rest = order[sc.seeds:]
    stragglers = set(rest[: round(sc.stragglers.fraction * len(rest))])
    rng.shuffle(rest)
    churners = rest[: round(sc.churn.fraction * len(rest))]
    ups: list[float] = []
    downs: list[float] = []
    for i in range(n):
        up = sc.network.upload.sample(rng)
        down = sc.network.download.sample(rng)
        if i in stragglers:
            up *= sc.stragglers.factor
            down *= sc.stragglers.factor
        ups.append(up)
        downs.append(down)
    return Population(seeds, churners, ups, downs)


def population_rng(scenario: Scenario) -> random.Random:
    return random.Random(f"{scenario.seed}/population")


@dataclass
class Outcome:
    """What one run produced (raw; results.py turns it into the report)."""

    profile: Profile
    nodes: int
    arrived: list[float]
    done: list[float]  # -1 for nodes that never finished
    seeds: list[bool]
    left: list[bool]  # departed for good before finishing
    origin_bytes: float
    origin_bins: list[float]
    bin_seconds: float
    delivered_bins: list[float]  # bytes stored at downloaders per bin, from peers and the origin
    from_peers: int
    from_origin: int
    announces: int
    handouts: int
    leases_granted: int
    leases_reassigned: int
    leases_expired: int
    digests_rejected: int
    audits: int
    stalls: int
    busy_replies: int
    timeouts: int
    events: int
    wall_seconds: float
    sim_seconds: float
    cut_off: bool


class Cluster(DataPlane, ControlPlane):
    """The whole cluster: construction, arrivals, churn and the outcome; the planes are mixins."""

    def __init__(self, scenario: Scenario, profile: Profile) -> None:
        self.scenario = scenario
        self.profile = profile
        self.seed = scenario.seed
        self.sim = Simulator()
        self.net = Network(self.sim)
        net = scenario.network
        self.rtt = net.rtt
        self.origin_rtt = net.origin_rtt
        cfg = profile.tracker
        self.blobs = make_blobs(scenario, profile)
        # A bin per ~1/200 of the ideal time keeps the egress plot smooth at any scale.
        ideal = scenario.image.size / net.origin_upload
        self.meter = Meter(max(1e-3, ideal / 100))
        # Bytes stored at the downloaders, from peers and the origin alike (Swarm.stored), in the same
        # bins: against every uplink's capacity, how fast the swarm moved at each moment.
        self.delivered = Meter(self.meter.bin)
        self.origin_link = Link(self.sim, "origin", net.origin_upload, self.meter)
        self._build_topology()
        # Every node, and the origin peer after them (index N).
        self.board = Board(scenario.nodes + 1, [blob.count for blob in self.blobs])
        self.uploads = self.board.uploads
        self._build_nodes()
        self.board.nodes.extend(self.nodes)
        self.tracking = bool(self.departures)  # DataPlane.track
        self.by_name = {n.name: n for n in self.nodes}
        # The tracker's own state and announce logic (control.py); the epoch is seeded: runs repeat.
        self.tracker_state = memory_state(cfg, epoch_seed=1)
        self.tracker_rng = random.Random(f"{self.seed}/tracker/{profile.name}")
        self.tally = TrackerTally()
        self.piece_digests = [i.to_bytes(PIECE_DIGEST_SIZE, "big") for i in range(max(b.count for b in self.blobs))]
        self.tracker_free = 0.0
        # Announces waiting for a reports-first tracker (ControlPlane._to_tracker): reports, others.
        self.tracker_lanes: tuple[deque, deque] = (deque(), deque())
        self.tracker_busy = False
        # The tracker's pacer as the real tracker runs it (tracker/app.py): above its announce budget,
        # replies ask agents for more room between announces. Only for a tracker the scenario gives
        # a cost (tracker_service_time): one that costs nothing has no budget to keep to.
        self.pacer = Pacer(budget_of(cfg, on_redis=False) if self.scenario.tracker_service_time > 0 else 0)
        self.origin_node: Node | None = None
        if profile.origin == ORIGIN_PEER:
            self.origin_node = self._origin_peer()
            self.board.nodes.append(self.origin_node)
        self.dirty: list[Swarm] = []
        self.remaining = 0
        self.back_to_source = [0] * len(self.blobs)
        self.stalls = self.busy_replies = self.timeouts = 0
        self._timeouts: deque[tuple[float, Transfer]] = deque()
        self._timeout_armed = False
        self._tid = 0
        self.room_rng = random.Random(f"{self.seed}/room")
        self.flush_rng = random.Random(f"{self.seed}/flush")
        self._init_dataplane()

    # --- construction -----------------------------------------------------------------------

    def _build_topology(self) -> None:
        topo = self.scenario.network.topology
        self.rack_up: list[Link | None] = []
        self.rack_down: list[Link | None] = []
        self.zone_up: list[Link | None] = []
        self.zone_down: list[Link | None] = []
        if topo is None:
            return
        for r in range(topo.racks):
            finite = math.isfinite(topo.rack_uplink)
            self.rack_up.append(Link(self.sim, f"rack{r}.up", topo.rack_uplink) if finite else None)
            self.rack_down.append(Link(self.sim, f"rack{r}.down", topo.rack_uplink) if finite else None)
        for z in range(topo.zones):
            finite = math.isfinite(topo.zone_uplink)
            self.zone_up.append(Link(self.sim, f"zone{z}.up", topo.zone_uplink) if finite else None)
            self.zone_down.append(Link(self.sim, f"zone{z}.down", topo.zone_uplink) if finite else None)

    def _build_nodes(self) -> None:
        sc = self.scenario
        rng = population_rng(sc)  # the same cluster for every profile of a run
        n = sc.nodes
        pop = draw_population(sc, rng)
        seeds = pop.seeds
        churners = pop.churners
        topo = sc.network.topology
        self.nodes: list[Node] = []
        for i in range(n):
            node = Node(i, f"n{i:05d}", self.blobs, self.board)
            node.up = Link(self.sim, f"{node.name}.up", pop.up[i])
            node.down = Link(self.sim, f"{node.name}.down", pop.down[i])
            if topo is not None:
                node.rack_idx = i % topo.racks
                node.zone_idx = node.rack_idx // topo.racks_per_zone
                node.zone = f"z{node.zone_idx}"
                node.rack = f"z{node.zone_idx}-r{node.rack_idx}"
            node.seed = i in seeds
            self.nodes.append(node)
        self.arrivals = self._arrival_times(rng, [i for i in range(n) if i not in seeds])
        self.departures: dict[int, float] = {}
        for i in churners:
            self.departures[i] = self.arrivals[i] + rng.uniform(sc.churn.start, sc.churn.end)

    def _arrival_times(self, rng: random.Random, downloaders: list[int]) -> dict[int, float]:
        a = self.scenario.arrival
        times: dict[int, float] = {}
        t = 0.0
        for k, i in enumerate(downloaders):
            if a.pattern == "flash":
                times[i] = rng.uniform(0.0, a.spread) if a.spread else 0.0
            elif a.pattern == "batches":
                times[i] = (k // a.batch_size) * a.interval
            else:
                times[i] = t
                t += rng.expovariate(a.rate)
        return times

    def _origin_peer(self) -> Node:
        origin = Node(len(self.nodes), "origin", self.blobs, self.board)
        origin.is_origin = origin.alive = True
        origin.up = self.origin_link
        for b in range(len(self.blobs)):
            origin.fill(b)
        self.by_name[origin.name] = origin
        return origin

    # --- running ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        wall = time.perf_counter()
        sim = self.sim
        for node in self.nodes:
            if node.seed:
                sim.at(0.0, self._arrive, node)
            else:
                self.remaining += 1
                sim.at(self.arrivals[node.idx], self._arrive, node)
        for i, when in self.departures.items():
            sim.at(when, self._leave, self.nodes[i])
        sim.run(until=self.scenario.time_limit, idle=self._flush)
        return self._outcome(time.perf_counter() - wall)

    def _arrive(self, node: Node) -> None:
        node.alive = True
        if node.arrived < 0:
            node.arrived = self.sim.now
        if node.seed:
            for b in range(len(self.blobs)):
                node.fill(b)
            if self.profile.origin != DIRECT:
                for b in range(len(self.blobs)):
                    self._seed_announce((node, b, node.generation, True))
            return
        node.layers_done = sum(1 for b in range(len(self.blobs)) if node.complete(b))
        node.next_layer = 0
        for _ in range(self.scenario.image.pull_concurrency):
            self._start_next_layer(node)
        if node.layers_done == len(self.blobs):
            self._node_done(node)

    def _start_next_layer(self, node: Node) -> None:
        while node.next_layer < len(self.blobs) and node.complete(node.next_layer):
            node.next_layer += 1
        if node.next_layer >= len(self.blobs):
            return
        b = node.next_layer
        node.next_layer += 1
        sw = Swarm(self, node, self.blobs[b])
        node.swarms[b] = sw
        for e in node.edge_list:
            self._add_bitfield(sw, e.node)
        if sw.dl.direct:
            sw.dl.start(self.sim.now)
            return
        # With the blob's size, as the agent's first announce: the size comes from the mirror client's
        # descriptor, or from a HEAD to the origin before the agent announces (agent/swarm.py). (Sent
        # without it, the whole flash crowd announced twice: the tracker answers a blob it has no
        # size for with none, and every node asked again.)
        self.send_announce(sw, "started")

    def _node_done(self, node: Node) -> None:
        if node.done_at < 0:
            node.done_at = self.sim.now
            self.remaining -= 1
            if self.remaining <= 0:
                self.sim.stopped = True

    def swarm_complete(self, sw: Swarm) -> None:
        node = sw.node
        sw.done = True
        node.layers_done += 1
        if self.profile.origin != DIRECT:
            self.send_announce(sw, "completed")
        if node.layers_done == len(self.blobs):
            self._node_done(node)
        else:
            self._start_next_layer(node)

    # --- churn ------------------------------------------------------------------------------

    def _leave(self, node: Node) -> None:
        if not node.alive:
            return
        node.alive = False
        node.left_at = self.sim.now
        node.generation += 1
        for t in list(node.transfers.values()):
            self._cancel(t)
        for sw in node.swarms:
            if sw is not None:
                sw.withdraw()
        for j in list(node.edges) + [j for j in node.watchers if j not in node.edges]:
            self._disconnect(node, self.by_index(j))
        node.dialing.clear()
        self.uploads[node.idx] = 0
        while node.queue:
            sw, req = node.queue.popleft()
            self._peer_failed(sw, req)
        node.swarms = [None] * len(self.blobs)
        self.board.drop(node.idx)
        rejoin = self.scenario.churn.rejoin_after
        if rejoin >= 0:
            self.sim.after(rejoin, self._arrive, node)
        elif node.done_at < 0:
            self.remaining -= 1
            if self.remaining <= 0:
                self.sim.stopped = True

    def by_index(self, j: int) -> Node:
        return self.nodes[j] if j < len(self.nodes) else self.origin_node  # type: ignore[return-value]

    def _disconnect(self, a: Node, b: Node) -> None:
        """The connection between a and b is gone: both forget the other's pieces."""
        for x, y in ((a, b), (b, a)):
            if x.edges.pop(y.idx, None) is not None:
                x.set_edges()
                for sw in x.swarms:
                    if sw is not None and not sw.done:
                        self._drop_bitfield(sw, y)
            x.drop_watcher(y.idx)

    # --- results ----------------------------------------------------------------------------

    def _outcome(self, wall: float) -> Outcome:
        nodes = self.nodes
        return Outcome(
            profile=self.profile, nodes=len(nodes),
            arrived=[n.arrived for n in nodes], done=[n.done_at for n in nodes], seeds=[n.seed for n in nodes],
            left=[n.left_at >= 0 and n.done_at < 0 for n in nodes],
            origin_bytes=self.meter.total, origin_bins=list(self.meter.bins), bin_seconds=self.meter.bin,
            delivered_bins=list(self.delivered.bins),
            from_peers=sum(n.from_peers for n in nodes), from_origin=sum(n.from_origin for n in nodes),
            announces=self.tally.announces, handouts=self.tally.handouts,
            leases_granted=self.tally.leases_granted, leases_reassigned=self.tally.leases_reassigned,
            leases_expired=self.tally.leases_expired, digests_rejected=self.tally.digests_rejected,
            audits=self.tally.audits, stalls=self.stalls, busy_replies=self.busy_replies, timeouts=self.timeouts,
            events=self.sim.events, wall_seconds=wall, sim_seconds=self.sim.now,
            cut_off=self.remaining > 0,
        )
