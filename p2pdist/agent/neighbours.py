"""The control plane between peers: one WebSocket per neighbour, msgpack frames.

On connect each side says HELLO; for every blob both care about they swap a BITFIELD, then send
HAVE as pieces verify, and ROOM whenever the number of free upload slots changes (askers skip full
peers and prefer the emptiest, instead of learning it from 503s). The data itself moves over plain
HTTP range GETs (see peer_server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web

from p2pdist.core import wire
from p2pdist.core.bitfield import Bitfield, BitfieldError

if TYPE_CHECKING:
    from p2pdist.agent.identity import NodeIdentity

log = logging.getLogger("p2pdist.neighbours")
# The node the peer port's authentication found behind an inbound request (peer_server sets it).
PEER_NODE = web.RequestKey("peer_node", str)

UNKNOWN_ROOM = 1 << 16  # a neighbour that has not said how many upload slots it has free
# A peer we failed to dial is not dialled again for this long, doubling per failure in a row up to
# DIAL_BACKOFF_MAX: the tracker hands out a killed node until its peer TTL (30 s), and every
# announce's handout (one per piece reported) dialled it again, 20 times a second.
DIAL_BACKOFF = 1.0
DIAL_BACKOFF_MAX = 30.0
# What one neighbour's bitfields may hold: blobs, and bytes of bits over all of them. A neighbour
# offers a bitfield for a blob both of us are in, so hundreds at most; one that sent 2,000 frames
# for made-up blobs took an agent from 56 to 312 MB. Past either, the connection is closed.
MAX_BITFIELDS = 1024
MAX_BITFIELD_BYTES = 8 << 20
# Proofs one neighbour sent that nothing here could check yet, over all blobs (Neighbour.hold_proofs).
MAX_HELD_PROOFS = wire.MAX_PROOFS


class Host(Protocol):
    """What the neighbourhood needs from the agent."""

    node: str
    addr: str
    ssl: ssl.SSLContext | bool  # for aiohttp's ssl= (True: its default checks)

    def local_bitfield(self, blob: str) -> Bitfield | None: ...
    def on_bitfield(self, blob: str, old: Bitfield | None, new: Bitfield | None) -> None: ...
    def on_have(self, blob: str, index: int) -> None: ...
    def on_room(self, nb: Neighbour) -> None: ...
    def local_proofs(self, blob: str) -> tuple[int, list[tuple[int, bytes, bytes]]]: ...
    def on_proofs(self, nb: Neighbour, blob: str, epoch: int, proofs: list[tuple[int, bytes, bytes]]) -> bool: ...


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
CONTROL_MESSAGES = (wire.BitfieldMsg, wire.Have, wire.Lost, wire.Room)


@dataclass(eq=False)
class Neighbour:
    node: str
    addr: str
    sockets: list[WebSocket] = field(default_factory=list)
    bitfields: dict[str, Bitfield] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)  # blobs whose bitfield this neighbour has from us
    limit: int = 2  # our requests to it at once (Limits.peer_concurrency)
    inflight: int = 0  # our requests to it now, over all our downloads
    score: float = 0.0
    bad_pieces: int = 0
    failures: int = 0  # requests in a row that failed or timed out
    busy_until: float = 0.0
    advertised: int = UNKNOWN_ROOM  # its free upload slots, as it last said (ROOM)
    # What a pass may still use of them: reset to ``advertised`` at the start of each pass, then
    # counted down by the peer chooser as it places requests there (core.selection.assign).
    room: int = UNKNOWN_ROOM
    # blob -> (epoch, proofs) it sent before we could check them: no download of the blob yet, or
    # none that has heard from the tracker. The download checks them once it can (Swarm).
    unchecked: dict[str, tuple[int, list[tuple[int, bytes, bytes]]]] = field(default_factory=dict)
    held: int = 0  # proofs in ``unchecked``, over all blobs (kept by hold_proofs and take_proofs)

    @property
    def peer(self) -> str:
        """Its node id, under the name the core's peer choice reads (core.download.Peer)."""
        return self.node

    def hold_proofs(self, blob: str, epoch: int, proofs: list[tuple[int, bytes, bytes]]) -> None:
        """Keep proofs of ``blob`` for its download to check later, those of one epoch (the latest),
        at most ``MAX_HELD_PROOFS`` over all blobs (the newest)."""
        held = self.unchecked.get(blob)
        if held is None or held[0] != epoch:
            self.take_proofs(blob)  # another epoch's: void now
            held = self.unchecked[blob] = (epoch, [])
        kept = held[1]
        kept.extend(proofs)  # in place: a HAVE's one proof costs no copy of those held before it
        self.held += len(proofs)
        over = min(len(kept), self.held - MAX_HELD_PROOFS)  # a count, not a sum over blobs per HAVE
        if over > 0:
            del kept[:over]
            self.held -= over
        if not kept:
            del self.unchecked[blob]

    def take_proofs(self, blob: str) -> tuple[int, list[tuple[int, bytes, bytes]]] | None:
        """The (epoch, proofs) held for ``blob``, which are no longer held."""
        held = self.unchecked.pop(blob, None)
        if held is not None:
            self.held -= len(held[1])
        return held

    def lacks(self, blob: str, index: int) -> bool:
        """It said it lacks piece ``index`` of ``blob`` (a 404): the piece leaves its bitfield here, as
        a LOST of one piece would; True if it was in it."""
        bf = self.bitfields.get(blob)
        if bf is None or index >= bf.size or index not in bf:
            return False
        bf.discard(index)
        return True

    def has(self, blob: str, index: int) -> bool:
        bf = self.bitfields.get(blob)
        return bf is not None and index in bf

    async def send(self, msg: wire.Message) -> None:
        frame = wire.encode(msg)
        for ws in list(self.sockets):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_bytes(frame)
                    return


class Neighbourhood:
    def __init__(self, host: Host, session: aiohttp.ClientSession, identity: NodeIdentity | None, limit: int,
                 request_limit: int = 2, scheme: str = "http", clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.session = session
        self.limit = limit
        self.request_limit = request_limit
        self.peers: dict[str, Neighbour] = {}
        self.banned: set[str] = set()
        # Peers accept only requests signed under a tracker ticket. Without one we dial nobody: they
        # would refuse us, and our node secret is not for sending (see Agent.peer_secret).
        self.identity = identity
        self.scheme = scheme
        self._dialing: set[str] = set()
        # node -> (no dial before this monotonic time, failures in a row): see DIAL_BACKOFF.
        self._unreachable: dict[str, tuple[float, int]] = {}
        self._clock = clock
        self._tasks: set[asyncio.Task] = set()
        self.on_change: Callable[[], None] = lambda: None
        self._room = UNKNOWN_ROOM  # the free upload slots we last told everyone

    # --- membership -------------------------------------------------------------------------

    def wants_more(self) -> bool:
        """Whether a tracker handout could add a neighbour (we dial up to ``limit``)."""
        return self._can_dial() and len(self.peers) + len(self._dialing) < self.limit

    def _can_dial(self) -> bool:
        return self.identity is not None and self.identity.can_dial()

    def connect(self, entries: Iterable[wire.PeerInfo], blob: str) -> None:
        """Dial new peers from a tracker handout and offer our bitfield of ``blob`` to everyone."""
        for nb in list(self.peers.values()):
            self._offer(nb, blob)
        if not self._can_dial():
            return
        wanted = [e for e in entries if e.node != self.host.node and e.node not in self.banned]
        now = self._clock()
        for entry in wanted:
            if entry.node in self.peers or entry.node in self._dialing:
                continue
            backoff = self._unreachable.get(entry.node)
            if backoff is not None and now < backoff[0]:
                continue
            if len(self.peers) + len(self._dialing) >= self.limit:
                break
            self._dialing.add(entry.node)
            self._spawn(self._dial(entry, blob))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial(self, entry: wire.PeerInfo, blob: str) -> None:
        assert self.identity is not None
        headers = {"Authorization": self.identity.peer_authorization("GET", "/v1/control", entry.node)}
        try:
            ws = await self.session.ws_connect(
                f"{self.scheme}://{entry.addr}/v1/control", headers=headers, heartbeat=15.0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0), max_msg_size=wire.MAX_FRAME,
                ssl=self.host.ssl,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            failures = self._unreachable.get(entry.node, (0.0, 0))[1] + 1
            wait = min(DIAL_BACKOFF_MAX, DIAL_BACKOFF * 2 ** (failures - 1))
            self._note_unreachable(entry.node, self._clock() + wait, failures)
            log.info("dial failed", extra={"peer": entry.node, "addr": entry.addr, "error": str(e),
                                           "retry_in": wait})
            self._dialing.discard(entry.node)
            return
        self._unreachable.pop(entry.node, None)
        if entry.node in self.banned:  # banned while we dialled: a ban forgets the node at once (ban)
            self._dialing.discard(entry.node)
            await ws.close()
            return
        try:
            await ws.send_bytes(wire.encode(wire.Hello(self.host.node, self.host.addr)))
            nb = self._attach(entry.node, entry.addr, ws)
            self._dialing.discard(entry.node)
            self._offer(nb, blob)
            await self._read(nb, ws)
        finally:
            self._dialing.discard(entry.node)
            await ws.close()

    def _note_unreachable(self, node: str, until: float, failures: int) -> None:
        if len(self._unreachable) >= 4 * self.limit + 64:  # bounded: the expired ones go first
            now = self._clock()
            self._unreachable = {n: b for n, b in self._unreachable.items() if b[0] > now}
            if len(self._unreachable) >= 4 * self.limit + 64:
                self._unreachable.pop(next(iter(self._unreachable)))
        self._unreachable[node] = (until, failures)

    async def accept(self, request: web.Request) -> web.WebSocketResponse:
        """Inbound control connection (route of the peer server)."""
        ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=wire.MAX_FRAME)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=10.0)
            if first.type != aiohttp.WSMsgType.BINARY:
                await ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=b"expected a binary HELLO frame")
                return ws
            hello = wire.decode(first.data, expect=(wire.Hello,))
        except (wire.WireError, TimeoutError) as e:
            await ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=str(e)[:120].encode())
            return ws
        assert isinstance(hello, wire.Hello)
        signer = request.get(PEER_NODE)
        if signer is not None and hello.node != signer:
            # The ticket says who is calling: a node cannot join as another (bans stick to it).
            log.warning("peer said hello as another node", extra={"peer": signer, "hello": hello.node[:128]})
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"hello from another node")
            return ws
        if hello.node in self.banned or hello.node == self.host.node:
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"not accepted")
            return ws
        nb = self._attach(hello.node, hello.addr, ws)
        await self._read(nb, ws)
        return ws

    def _attach(self, node: str, addr: str, ws: WebSocket) -> Neighbour:
        nb = self.peers.get(node)
        if nb is None:
            nb = self.peers[node] = Neighbour(node, addr, limit=self.request_limit)
        nb.sockets.append(ws)
        if self._room != UNKNOWN_ROOM:
            self._spawn(nb.send(wire.Room(self._room)))
        self.on_change()
        return nb

    def _detach(self, nb: Neighbour, ws: WebSocket) -> None:
        if ws in nb.sockets:
            nb.sockets.remove(ws)
        if not nb.sockets:
            self._forget(nb)

    def _forget(self, nb: Neighbour) -> None:
        if self.peers.get(nb.node) is nb:
            del self.peers[nb.node]
            for blob, bf in nb.bitfields.items():
                self.host.on_bitfield(blob, bf, None)
            self.on_change()

    # --- messages ---------------------------------------------------------------------------

    async def _read(self, nb: Neighbour, ws: WebSocket) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        break
                    continue
                try:
                    self._handle(nb, wire.decode(msg.data, expect=CONTROL_MESSAGES))
                except (wire.WireError, BitfieldError) as e:
                    # A peer speaking nonsense is dropped, not trusted partially.
                    log.warning("bad control frame", extra={"peer": nb.node, "error": str(e)})
                    await ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=str(e)[:120].encode())
                    break
        finally:
            self._detach(nb, ws)

    def _handle(self, nb: Neighbour, msg: wire.Message) -> None:
        if nb.node in self.banned:
            return  # what it still sends while its socket closes is not taken (ban forgot it already)
        if isinstance(msg, wire.BitfieldMsg):
            new = Bitfield.from_bytes(msg.pieces, msg.bits)
            old = nb.bitfields.get(msg.blob)
            held = sum(bf.width // 8 for bf in nb.bitfields.values()) if old is None else 0
            if old is None and (len(nb.bitfields) >= MAX_BITFIELDS or held + len(msg.bits) > MAX_BITFIELD_BYTES):
                raise BitfieldError(f"bitfields for more than {MAX_BITFIELDS} blobs or {MAX_BITFIELD_BYTES} bytes "
                                    "from one neighbour")
            # Digests first: the pieces are then fetchable as soon as they are seen. A forged proof
            # bans the sender: nothing else it says is taken.
            if msg.proofs and not self.host.on_proofs(nb, msg.blob, msg.epoch, msg.proofs):
                return
            nb.bitfields[msg.blob] = new
            self.host.on_bitfield(msg.blob, old, new)
            self._offer(nb, msg.blob)
        elif isinstance(msg, wire.Have):
            bf = nb.bitfields.get(msg.blob)
            if bf is None or msg.index >= bf.size:
                return
            # Also on a piece seen before: a lease holder's proof comes after its HAVE.
            if msg.proof and not self.host.on_proofs(nb, msg.blob, msg.epoch, [(msg.index, msg.digest, msg.proof)]):
                return
            if bf.add(msg.index):
                self.host.on_have(msg.blob, msg.index)
        elif isinstance(msg, wire.Room):
            opened = msg.free > 0 and nb.advertised <= 0
            nb.advertised = nb.room = msg.free
            if opened:
                nb.busy_until = 0.0  # its word beats the back-off from an earlier 503
                self.host.on_room(nb)  # a swarm waiting for a free holder may go on now
        elif isinstance(msg, wire.Lost):
            old = nb.bitfields.pop(msg.blob, None)
            nb.take_proofs(msg.blob)
            nb.sent.discard(msg.blob)
            if old is not None:
                self.host.on_bitfield(msg.blob, old, None)

    def _offer(self, nb: Neighbour, blob: str) -> None:
        if blob in nb.sent:
            return
        bf = self.host.local_bitfield(blob)
        if bf is None:
            return
        nb.sent.add(blob)
        epoch, proofs = self.host.local_proofs(blob)
        self._spawn(nb.send(wire.BitfieldMsg(blob, bf.size, bf.to_bytes(), epoch, proofs)))

    def broadcast_have(self, blob: str, index: int, proved: tuple[bytes, bytes] | None = None,
                       epoch: int = 0) -> None:
        """HAVE ``index`` to every neighbour in the blob, with its digest and the tracker's proof
        when we have them (``proved``), so they can take it without asking the tracker."""
        msg = wire.Have(blob, index, proved[0], proved[1], epoch) if proved else wire.Have(blob, index)
        for nb in self.peers.values():
            if blob in nb.sent:
                self._spawn(nb.send(msg))
            elif blob in nb.bitfields:
                self._offer(nb, blob)

    def advertise_room(self, free: int) -> None:
        """Tell every neighbour how many upload slots we have free, when that number changed."""
        free = max(0, free)
        if free == self._room:
            return
        self._room = free
        msg = wire.Room(free)
        for nb in self.peers.values():
            self._spawn(nb.send(msg))

    def broadcast_lost(self, blob: str) -> None:
        for nb in self.peers.values():
            if blob in nb.sent:
                nb.sent.discard(blob)
                self._spawn(nb.send(wire.Lost(blob)))

    # --- peer quality -----------------------------------------------------------------------

    def ban(self, nb: Neighbour, reason: str) -> bool:
        """Stop trading with ``nb`` (core.download decided it); True if it was not banned before."""
        if nb.node in self.banned:
            return False
        self.banned.add(nb.node)
        log.warning("peer banned", extra={"peer": nb.node, "reason": reason, "bad_pieces": nb.bad_pieces,
                                          "failures": nb.failures})
        for ws in list(nb.sockets):
            self._spawn(ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=reason.encode()[:120]))
        # Gone from the downloads at once, not when its sockets have closed (up to the close
        # timeout): a pass meanwhile could still ask it for a piece it says it holds.
        self._forget(nb)
        return True

    async def close(self) -> None:
        for nb in list(self.peers.values()):
            for ws in list(nb.sockets):
                with contextlib.suppress(Exception):
                    await ws.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
