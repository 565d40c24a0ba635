"""The agent's swarm as the machine's driver: which neighbours a pass may ask, and what they hold.

Real objects (an Agent over a real store on disk, its Neighbourhood); nothing here talks to the network.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from p2pdist.agent import Agent
from p2pdist.agent.neighbours import Neighbour
from p2pdist.agent.swarm import Swarm
from p2pdist.config import AgentConfig
from p2pdist.core.bitfield import Bitfield
from p2pdist.core.digest import Digest
from p2pdist.core.layout import PieceLayout

BLOB = Digest.parse("sha256:" + "d" * 64)
PIECE = 1 << 20


async def test_a_pass_asks_only_free_neighbours_with_the_room_they_advertised(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        agent = Agent(AgentConfig(data_dir=tmp_path), "me", session)
        swarm = Swarm(agent, BLOB, "docker.io", "library/app")
        swarm.layout = PieceLayout(8 * PIECE, PIECE)
        blob = str(BLOB)
        now = time.monotonic()

        def neighbour(name: str, pieces: list[int], **fields) -> Neighbour:
            nb = Neighbour(name, f"{name}:1", limit=2, **fields)
            nb.bitfields[blob] = Bitfield(8, pieces)
            agent.neighbours.peers[name] = nb
            return nb

        # A previous pass counted its requests down to 0, but the peer said it has 2 slots free.
        free = neighbour("free", [0, 1], advertised=2, room=0)
        neighbour("backing-off", [2], advertised=2, busy_until=now + 10)
        neighbour("full", [3], advertised=0)
        neighbour("at-limit", [4], advertised=2, inflight=2)
        neighbour("scored-out", [5], advertised=2, score=-5.0)

        view = swarm.holders(now)
        assert view is not None
        assert view.free == [free] and free.room == 2  # the count-down did not outlive its pass
        assert view.reachable(range(8)) == [0, 1]
        assert view(0) == [free] and view(5) == []

        # Nobody usable: no view at all, so the machine blocks instead of ranking pieces.
        free.busy_until = now + 10
        assert swarm.holders(now) is None
