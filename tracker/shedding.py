"""Overload shedding: an announce whose agent gave up waiting is dropped before any work is done.

An overloaded tracker that still answers requests nobody waits for falls further behind with
every one (measured before this: past ~4,000/s offered, answered announces fell to 450-600/s while
the CPU went to replies that found a closed connection). Two signs that the asker is gone:

- its connection is closed already (the agent's timeout fired and aiohttp saw the close);
- its signature is older than ``give_up_after`` (the agents' announce timeout). The signature
  carries the agent's clock, which may be off: a node's age is trusted only once one of its
  announces arrived promptly (younger than half of it), so a node with a skewed clock is never
  dropped for its clock, only answered as before.
"""

from __future__ import annotations

from collections import OrderedDict


class Shedder:
    def __init__(self, give_up_after: float, max_nodes: int) -> None:
        self.give_up_after = give_up_after
        self.max_nodes = max_nodes
        self._prompt: OrderedDict[str, None] = OrderedDict()  # nodes whose clocks showed sane; bounded

    def late(self, node: str, signed_us: int, now: float) -> bool:
        """Whether the announce ``node`` signed at ``signed_us`` (µs, Unix) is past its agent's
        patience at ``now`` (Unix seconds)."""
        age = now - signed_us / 1e6
        if age <= self.give_up_after / 2:
            if node not in self._prompt:
                self._prompt[node] = None
                if len(self._prompt) > self.max_nodes:
                    self._prompt.popitem(last=False)
            return False
        return age > self.give_up_after and node in self._prompt
