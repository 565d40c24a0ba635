"""A rogue node for hostile tests: it holds a valid node credential and speaks the real protocol
(``p2pdist.core.wire`` announces to the real tracker, the peer port's WebSocket control channel
and range GETs), and lies in one of these ways (``MODES``):

- ``forged-lease``: takes origin leases, never fetches them, reports digests of garbage for them and
  serves that garbage, consistent with its digests (the worst case: bytes that verify);
- ``forged-seeder``: says it holds the whole blob, with digests of garbage for every piece, and
  serves that garbage;
- ``forged-size``: announces the blob first, with a size one byte short;
- ``wrong-bytes``: says it holds the whole blob (a seeder) and serves garbage;
- ``silent``: says it holds the whole blob, accepts piece requests and never answers them;
- ``not-found``: says it holds the whole blob and answers 404 to every piece request;
- ``new-id``: like ``wrong-bytes``, under a new node id on every announce (to escape bans), signed
  with the one credential it holds;
- ``forged-proof``: like ``wrong-bytes``, and its bitfield carries digests of its garbage with made-up
  tracker proofs (``core.proofs``), in the tracker's current digest epoch.

It runs on its own event loop in a thread of the test process; ``stop()`` closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from typing import Any

import aiohttp
from aiohttp import web

from p2pdist.agent.neighbours import CONTROL_MESSAGES
from p2pdist.core import blocks as blocks_wire
from p2pdist.core import wire
from p2pdist.core.bitfield import Bitfield
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import block_digests, piece_digest
from p2pdist.core.proofs import cursor_epoch
from tests.support.identity import Caller
from tests.support.registry import free_port

MODES = ("forged-lease", "forged-seeder", "forged-size", "wrong-bytes", "silent", "not-found", "new-id",
         "forged-proof")
SEEDING = ("forged-seeder", "wrong-bytes", "silent", "not-found", "new-id", "forged-proof")


def garbage(index: int, length: int) -> bytes:
    """The rogue's stand-in for piece ``index``: the right length, the wrong bytes."""
    return random.Random(f"rogue/{index}").randbytes(length)


class Rogue:
    def __init__(self, tracker: str, token: str, blob: str, size: int, mode: str, name: str = "rogue") -> None:
        assert mode in MODES, mode
        self.tracker, self.blob, self.size, self.mode = tracker, blob, size, mode
        self.name = name
        self.caller = Caller(token, name)  # its credential: for ``name`` only
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.layout: PieceLayout | None = None
        self.epoch = 0  # the tracker's digest epoch for the blob, from its replies
        self.held: set[int] = set()  # pieces it claims
        self.forged: dict[int, bytes] = {}  # piece -> the digest it reported
        self.announces = 0
        self.refused: list[int] = []  # HTTP statuses of announces the tracker refused
        self.piece_requests = 0
        self._ids = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rogue", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._main: Any = None
        self._dialled: list[asyncio.Task] = []  # control connections it opened itself (dial)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Rogue:
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        if not self._ready.wait(timeout):
            raise TimeoutError("the rogue never got a reply from the tracker")
        if self._main.done():
            self._main.result()  # raises what went wrong
        return self

    def dial(self, addr: str, node: str, answered_by: str, timeout: float = 20.0) -> None:
        """Dial the agent ``node`` at ``addr`` and send it the rogue's bitfield (with the mode's lies);
        returns once the agent has handled it. The agent answers nothing to a bitfield of a blob it is
        not pulling, so a second bitfield follows, of ``answered_by``, a blob the agent holds: its
        answer to that one comes after it handled the first (one connection, in order)."""
        future = asyncio.run_coroutine_threadsafe(self._dial(addr, node, answered_by), self._loop)
        future.result(timeout)

    async def _dial(self, addr: str, node: str, answered_by: str) -> None:
        assert self.layout is not None, "start() the rogue first: it learns the layout from the tracker"
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(f"http://{addr}/v1/control", max_msg_size=wire.MAX_FRAME,
                                          headers=self.caller.peer(node, "/v1/control"))
            await ws.send_bytes(wire.encode(wire.Hello(self.node, self.addr)))
            await ws.send_bytes(wire.encode(self._bitfield()))
            await ws.send_bytes(wire.encode(wire.BitfieldMsg(answered_by, 1, bytes(1), 0, [])))
            while True:
                msg = wire.decode((await ws.receive_bytes()), expect=CONTROL_MESSAGES)
                if isinstance(msg, wire.BitfieldMsg) and msg.blob == answered_by:
                    break
        except BaseException:
            await session.close()
            raise

        async def hold() -> None:  # the connection stays, as a neighbour's does, until stop()
            try:
                assert self._stopping is not None
                await self._stopping.wait()
            finally:
                await ws.close()
                await session.close()

        self._dialled.append(asyncio.ensure_future(hold()))

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._main is not None:
            with contextlib.suppress(Exception):
                self._main.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> Rogue:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the lies ---------------------------------------------------------------------------

    @property
    def node(self) -> str:
        return f"{self.name}-{self._ids}" if self.mode == "new-id" else self.name

    async def _run(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/control", self._control)
        app.router.add_get("/v1/blobs/{digest}", self._piece)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        try:
            async with aiohttp.ClientSession() as session:
                while not self._stopping.is_set():
                    await self._announce(session)
                    self._ready.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 0.2)
        finally:
            self._ready.set()
            self._stopping.set()  # also when the loop above ended with an error: the dialled ones close
            await asyncio.gather(*self._dialled, return_exceptions=True)
            await runner.cleanup()

    async def _announce(self, session: aiohttp.ClientSession) -> None:
        size = self.size - 1 if self.mode == "forged-size" else self.size
        complete = self.mode in SEEDING
        digests: list[tuple[int, bytes]] = []
        if self.layout is not None:
            if self.mode == "forged-seeder":
                digests = [(i, self._forge(i)) for i in range(self.layout.count)]
            elif self.mode == "forged-lease":
                digests = [(i, self._forge(i)) for i in sorted(self.held)]
        if self.mode == "new-id":
            self._ids += 1
        msg = wire.Announce(node=self.node, addr=self.addr, blob=self.blob, size=size, complete=complete,
                            have=self.layout.count if complete and self.layout else len(self.held),
                            event="completed" if complete else "progress",
                            want_leases=4 if self.mode in ("forged-lease", "forged-size") else 0,
                            digests=digests[: wire.MAX_LIST])
        self.announces += 1
        try:
            body = wire.encode(msg)
            headers = self.caller.tracker(body)
            async with session.post(f"{self.tracker}/v1/announce", data=body, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    self.refused.append(resp.status)
                    return
        except aiohttp.ClientError:
            return
        reply = wire.decode(body, expect=(wire.AnnounceReply,))
        assert isinstance(reply, wire.AnnounceReply)
        self.epoch = cursor_epoch(reply.digest_pos)
        if self.layout is None and reply.size and reply.piece_size:
            self.layout = PieceLayout(reply.size, reply.piece_size)
            if complete:
                self.held = set(range(self.layout.count))
        for start, end, _ttl in reply.leases:
            self.held.update(range(start, end))  # "fetched", in its own telling

    def _forge(self, index: int) -> bytes:
        if index not in self.forged:
            assert self.layout is not None
            self.forged[index] = piece_digest(garbage(index, self.layout.length(index)))
        return self.forged[index]

    # --- the peer port ----------------------------------------------------------------------

    async def _control(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=wire.MAX_FRAME)
        await ws.prepare(request)
        with contextlib.suppress(Exception):
            await ws.receive(timeout=10.0)  # their HELLO
            sent: set[int] = set()
            while not ws.closed and not self._stopping.is_set():
                if self.layout is not None and self.held != sent:
                    sent = set(self.held)
                    await ws.send_bytes(wire.encode(self._bitfield()))
                    await ws.send_bytes(wire.encode(wire.Room(8)))
                with contextlib.suppress(TimeoutError):
                    await ws.receive(timeout=0.2)
        return ws

    def _bitfield(self) -> wire.BitfieldMsg:
        """What it says it holds; in ``forged-proof`` mode with digests of its garbage under made-up proofs."""
        assert self.layout is not None
        bf = Bitfield(self.layout.count)
        for i in self.held:
            bf.add(i)
        made_up = random.Random("proofs")
        proofs = ([(i, self._forge(i), made_up.randbytes(64)) for i in sorted(self.held)]
                  if self.mode == "forged-proof" else [])
        return wire.BitfieldMsg(self.blob, bf.size, bf.to_bytes(), self.epoch, proofs[: wire.MAX_PROOFS])

    async def _piece(self, request: web.Request) -> web.StreamResponse:
        self.piece_requests += 1
        if self.mode == "silent":
            await self._stopping.wait()  # never answers while it runs
            raise web.HTTPServiceUnavailable()
        if self.mode == "not-found" or self.layout is None:
            raise web.HTTPNotFound(text="not here after all")
        first, last = (int(x) for x in request.headers["Range"].removeprefix("bytes=").split("-"))
        index = self.layout.piece_at(first)
        offset, length = self.layout.span(index)
        body = garbage(index, length)[first - offset : last + 1 - offset]
        # Its garbage's own block digests, as an honest peer sends its bytes' (core.blocks): they make
        # the forged digests it reported; against the true ones the asker finds the lie at once.
        return web.Response(body=body, status=206, headers={
            "Content-Range": f"bytes {first}-{last}/{self.layout.blob_size}",
            "Content-Type": "application/octet-stream",
            blocks_wire.HEADER: blocks_wire.encode(block_digests(body))})
