"""The agent's swarm reports each origin digest to the tracker once, and again after a tracker reset.

Real objects throughout (an Agent over a real store on disk); nothing here talks to the network.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import aiohttp

from p2pdist.agent import Agent
from p2pdist.config import AgentConfig
from p2pdist.core import wire
from p2pdist.core.digest import Digest
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import piece_digest
from p2pdist.swarm import Swarm

PIECE = 1 << 20


async def test_held_digests_are_reported_once_and_again_after_a_reset(tmp_path: Path) -> None:
    data = os.urandom(4 * PIECE)
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    async with aiohttp.ClientSession() as session:
        agent = Agent(AgentConfig(data_dir=tmp_path), "n1", session)
        swarm = Swarm(agent, digest, "docker.io", "library/app")  # the default upstream
        swarm.layout = PieceLayout(len(data), PIECE)
        swarm.partial = agent.store.open_partial(digest, swarm.layout)
        for i in (0, 1):  # pieces we hold, e.g. resumed from disk
            piece = data[i * PIECE:(i + 1) * PIECE]
            swarm.partial.write_piece(i, piece, piece_digest(piece))
            swarm.partial.manifest.set(i, piece_digest(piece))
        try:
            swarm._report_had(0, 4)
            assert [i for i, _ in swarm.report] == [0, 1]
            swarm.report.clear()  # a reply took them
            # Every reply lists the lease again (it is still ours), so it is popped again.
            swarm._report_had(0, 4)
            assert swarm.report == []
            # The tracker forgot them: the next pop must report them again.
            swarm._apply(wire.AnnounceReply(interval=1.0, reset=True))
            swarm._report_had(0, 4)
            assert [i for i, _ in swarm.report] == [0, 1]
        finally:
            swarm.partial.close()
