"""The pull-through cache baseline: every node pulls every layer from one cache in front of the origin.

The cache fetches each layer from the origin once, on the first request, as one stream. Each node
pulls its layers with one GET each (``pull_concurrency`` at a time), sharing the cache's uplink
with everyone else. A client is assumed to be slower than the cache's fill (it is, as soon as a few
nodes share the cache); when it is not, it completes no earlier than the fill. Churn and
stragglers' departures are not modelled here: the cache is a yardstick for load, not for faults.
"""

from __future__ import annotations

import time

from .cluster import Cluster, Outcome
from .engine import Link, Transfer
from .profiles import Profile
from .scenario import Scenario


class CacheRun(Cluster):
    def __init__(self, scenario: Scenario, profile: Profile) -> None:
        super().__init__(scenario, profile)
        rate = scenario.cache_upload or scenario.network.origin_upload
        self.cache_link = Link(self.sim, "cache", rate)
        self.fill_done: list[float] = [-1.0] * len(self.blobs)  # -1 = not started, inf = running
        self.waiting: list[list[tuple[int, int]]] = [[] for _ in self.blobs]  # (node, blob) done before fill

    def run(self) -> Outcome:
        wall = time.perf_counter()
        for node in self.nodes:
            if not node.seed:
                self.remaining += 1
                self.sim.at(self.arrivals[node.idx], self._pull, node.idx)
        self.sim.run(until=self.scenario.time_limit)
        return self._outcome(time.perf_counter() - wall)

    def _pull(self, i: int) -> None:
        node = self.nodes[i]
        node.alive = True
        node.arrived = self.sim.now
        for _ in range(self.scenario.image.pull_concurrency):
            self._next_layer(i)

    def _next_layer(self, i: int) -> None:
        node = self.nodes[i]
        if node.next_layer >= len(self.blobs):
            return
        b = node.next_layer
        node.next_layer += 1
        if self.fill_done[b] < 0:
            self.fill_done[b] = float("inf")
            self.net.transfer(self.blobs[b].size, [self.origin_link], self._filled, b)
        self.net.transfer(self.blobs[b].size, [self.cache_link, node.down], self._layer_done, (i, b))

    def _filled(self, t: Transfer) -> None:
        b = t.data
        self.fill_done[b] = self.sim.now
        for i, _ in self.waiting[b]:
            self._finish_layer(i, b)
        self.waiting[b].clear()

    def _layer_done(self, t: Transfer) -> None:
        i, b = t.data
        if self.fill_done[b] > self.sim.now:
            self.waiting[b].append((i, b))
            return
        self._finish_layer(i, b)

    def _finish_layer(self, i: int, b: int) -> None:
        node = self.nodes[i]
        node.layers_done += 1
        node.have_n[b] = self.blobs[b].count
        node.from_peers += self.blobs[b].size  # from the cache, not the origin
        self.delivered.count(self.sim.now, self.blobs[b].size)
        if node.layers_done == len(self.blobs):
            node.done_at = self.sim.now
            self.remaining -= 1
            if self.remaining <= 0:
                self.sim.stopped = True
        else:
            self._next_layer(i)


def run_cache(scenario: Scenario, profile: Profile) -> Outcome:
    return CacheRun(scenario, profile).run()
