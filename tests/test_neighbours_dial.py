"""Dialling peers from tracker handouts: a peer that cannot be reached is not dialled at every reply."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from p2pdist.agent import neighbours as nbmod
from p2pdist.agent.neighbours import Neighbourhood
from p2pdist.core import wire
from tests.support.procs import free_port


class Host:
    node, addr, ssl = "me", "127.0.0.1:1", False

    def local_bitfield(self, blob):
        return None


class Identity:
    def can_dial(self) -> bool:
        return True

    def peer_authorization(self, method: str, path: str, node: str) -> str:
        return "Bearer test"


async def test_a_peer_that_cannot_be_dialled_is_tried_again_only_after_a_growing_pause():
    # The tracker hands out a killed node until its peer TTL, with every reply; each reply dialled
    # it again (20 times a second while pieces were being reported).
    now = [100.0]
    dead = wire.PeerInfo("dead", f"127.0.0.1:{free_port()}")  # nothing listens: refused at once
    async with aiohttp.ClientSession() as session:
        real = session.ws_connect
        dials: list[float] = []

        def counted(*args, **kwargs):
            dials.append(now[0])
            return real(*args, **kwargs)

        session.ws_connect = counted  # type: ignore[method-assign]
        hood = Neighbourhood(Host(), session, Identity(), limit=8, clock=lambda: now[0])

        async def handouts(until: float) -> None:
            while now[0] < until:  # a reply every 0.05 s, each handing the dead node out
                hood.connect([dead], "sha256:" + "a" * 64)
                await asyncio.gather(*hood._tasks)
                now[0] = round(now[0] + 0.05, 2)

        await handouts(110.0)
        assert [round(t - 100.0, 2) for t in dials] == [0.0, 1.0, 3.0, 7.0]  # 1, 2, 4 s apart
        assert not hood.peers
        await handouts(200.0)
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(dials)]
        assert max(gaps) == nbmod.DIAL_BACKOFF_MAX and len(dials) < 10
