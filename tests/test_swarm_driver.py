"""The agent's swarm as the machine's driver: which neighbours a pass may ask, and what they hold.

Real objects (an Agent over a real store on disk, its Neighbourhood); nothing here talks to the network.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from p2pdist.agent import Agent
from p2pdist.agent import swarm as swarm_module
from p2pdist.agent.identity import NodeIdentity
from p2pdist.agent.neighbours import MAX_HELD_PROOFS, Neighbour
from p2pdist.agent.peer_client import PeerLacks
from p2pdist.agent.swarm import Swarm
from p2pdist.config import AgentConfig
from p2pdist.core import wire
from p2pdist.core.bitfield import Bitfield
from p2pdist.core.digest import Digest
from p2pdist.core.download import AVAIL, LACKS, Request
from p2pdist.core.identity import NodeCredential
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import piece_digest

BLOB = Digest.parse("sha256:" + "d" * 64)
PIECE = 1 << 20


def agent_and_swarm(tmp_path: Path, session: aiohttp.ClientSession) -> tuple[Agent, Swarm]:
    """An agent over a real store, and its swarm for BLOB (8 pieces), not started."""
    agent = Agent(AgentConfig(data_dir=tmp_path), "me", session)
    swarm = Swarm(agent, BLOB, "docker.io", "library/app")
    swarm.layout = PieceLayout(8 * PIECE, PIECE)
    return agent, swarm


async def test_a_pass_asks_only_free_neighbours_with_the_room_they_advertised(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        agent, swarm = agent_and_swarm(tmp_path, session)
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


def test_a_neighbour_holds_the_proofs_nothing_could_check_yet_of_one_epoch_within_a_bound() -> None:
    nb = Neighbour("n", "n:1")

    def proof(i: int) -> tuple[int, bytes, bytes]:
        return i, i.to_bytes(32, "big"), bytes(64)

    nb.hold_proofs("a", 5, [proof(0), proof(1)])
    nb.hold_proofs("a", 5, [proof(2)])  # a HAVE's proof after the bitfield's
    assert nb.unchecked["a"] == (5, [proof(0), proof(1), proof(2)])
    nb.hold_proofs("a", 6, [proof(3)])  # another digest log: the older proofs are void there
    assert nb.unchecked["a"] == (6, [proof(3)])
    nb.hold_proofs("b", 1, [proof(i) for i in range(MAX_HELD_PROOFS + 10)])
    held = nb.unchecked["b"][1]
    assert len(held) == MAX_HELD_PROOFS - 1 and held[-1] == proof(MAX_HELD_PROOFS + 9)  # the newest, within the bound
    nb.hold_proofs("c", 1, [proof(0)])
    assert "c" not in nb.unchecked  # no room left for another blob
    assert nb.held == MAX_HELD_PROOFS
    assert nb.take_proofs("a") == (6, [proof(3)]) and nb.held == MAX_HELD_PROOFS - 1
    nb.hold_proofs("c", 1, [proof(0)])
    assert nb.unchecked["c"] == (1, [proof(0)]) and nb.held == MAX_HELD_PROOFS  # the room "a" left


async def test_a_banned_neighbour_leaves_the_downloads_at_once(tmp_path: Path) -> None:
    """Not when its sockets have closed: a pass meanwhile would still find it holding pieces."""
    async with aiohttp.ClientSession() as session:
        agent, swarm = agent_and_swarm(tmp_path, session)
        blob = str(BLOB)
        liar = Neighbour("liar", "liar:1", limit=2, advertised=2)
        liar.bitfields[blob] = Bitfield(8, range(8))
        agent.neighbours.peers["liar"] = liar
        now = time.monotonic()
        assert swarm.holders(now) is not None
        assert agent.neighbours.ban(liar, "forged proof of piece 0")
        assert "liar" not in agent.neighbours.peers and swarm.holders(now) is None
        assert not agent.neighbours.ban(liar, "again")  # banned once
        # What it still sends while its socket closes is not taken.
        other = "sha256:" + "e" * 64
        agent.neighbours._handle(liar, wire.BitfieldMsg(other, 8, Bitfield(8, range(8)).to_bytes(), 0, []))
        assert other not in liar.bitfields


async def test_a_peer_that_lacks_a_piece_it_advertised_is_not_asked_for_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 404 is the peer's word that it lacks the piece (it dropped the blob, its LOST on the way): the
    piece leaves its bitfield here, so the next request for it goes to another holder. Asked again, a
    node that had just dropped a blob whose digest failed answered 404 four times in 4 ms and was
    banned, and the asker, its holders all banned, took the whole blob from the origin."""
    async with aiohttp.ClientSession() as session:
        agent, swarm = agent_and_swarm(tmp_path, session)
        blob = str(BLOB)
        dl = swarm.machine = swarm._new_machine()
        gone = Neighbour("gone", "gone:1", limit=2, advertised=2)
        gone.bitfields[blob] = Bitfield(8, range(8))
        agent.neighbours.peers["gone"] = gone
        for i in range(8):
            dl.add_holder(i)

        async def lacks(*args: object, **kwargs: object) -> bytes:
            raise PeerLacks("peer gone:1 answered 404")

        monkeypatch.setattr(swarm_module, "fetch_piece", lacks)
        req = Request(3, gone, PIECE, time.monotonic())
        dl.requests.add(req)  # as a pass places it: counted on the peer and in the byte budget
        gone.inflight += 1
        dl.inflight_bytes += PIECE
        await swarm._peer_piece(dl, req)
        assert 3 not in gone.bitfields[blob] and len(gone.bitfields[blob]) == 7
        assert dl.cells[dl.base + 3] & AVAIL == 0  # nobody holds piece 3 now, as far as we know
        assert dl.cells[dl.base + 4] & AVAIL == 1
        assert not agent.neighbours.banned and gone.failures == 1 and req.status == LACKS


async def test_proofs_wait_for_a_pull_only_of_a_blob_not_held_already(tmp_path: Path) -> None:
    """A seeder pulls its blobs no more: the proof in every HAVE of every downloader would only
    fill its neighbours' holds. A blob it lacks keeps them for the pull that checks them."""
    async with aiohttp.ClientSession() as session:
        identity = NodeIdentity(NodeCredential.issue("cluster-secret", "me", int(time.time()) + 3600))
        agent = Agent(AgentConfig(data_dir=tmp_path), "me", session, identity=identity)
        data = bytes(range(256)) * 64
        held = Digest.of(data)
        partial = agent.store.open_partial(held, PieceLayout(len(data), 4096))
        try:
            for i in range(partial.layout.count):
                piece = data[i * 4096:(i + 1) * 4096]
                partial.write_piece(i, piece, piece_digest(piece))
            partial.commit()
        finally:
            partial.close()
        nb = Neighbour("n", "n:1")
        proof = (0, bytes(32), bytes(64))
        assert agent.on_proofs(nb, str(held), 7, [proof])
        assert agent.on_proofs(nb, str(BLOB), 7, [proof])
        assert nb.unchecked == {str(BLOB): (7, [proof])}
