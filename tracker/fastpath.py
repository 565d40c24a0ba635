"""Announces answered on the tracker's port without aiohttp's objects per request; the rest by aiohttp.

Why: per announce, aiohttp's request and response machinery cost more CPU than the announce itself.
Measured with benchmarks/bench_tracker.py (10,000 nodes, one core): 0.20 ms per announce through
aiohttp, 0.135 ms here; one core saturated at ~4,500 announces/s, and now answers 5,000/s at p99
under 10 ms. A cluster's agents announce every second while they pull, so this is the tracker's
capacity.

How: each connection is parsed by httptools (llhttp, the parser uvicorn runs on). A complete
``POST /v1/announce`` is answered by the same steps as aiohttp's handler (``app.admit``, then
``app.respond``): same checks, same replies, same metrics. At the first request of any other
kind the connection is **relayed**: an aiohttp RequestHandler of the tracker's own application takes
it, and that request and every later one on the connection are passed to it as parsed (re-framed),
so aiohttp answers them, in order. Agents poll for orders on connections of their own
(agent/tracker_client.py), so their announce connections stay here.

**Reports first.** One event-loop turn reads every connection with data, so under a flood it admits
hundreds of announces, and answered as read, a lease holder's digest report waited behind all of
them: its next origin lease and every node's digests with it (the simulator, 10,000 nodes on one
core: the origin idled for 1.5 s at the start; ``tracker_queue`` in simulations/README.md). Now
an announce that reports digests is answered as soon as it is read; the others are answered at
once only while few come in a turn (``PROMPT``), and past that wait their turn, ``PER_TURN`` a
turn, in order, behind every report read meanwhile (``ReportsFirst``). A connection's answers
stay in its requests' order: what follows a held-back announce on its connection waits for it.

Limits, as aiohttp's (p2pdist/serving.py): a connection that has not completed a request within
``idle_timeout`` of the last one is closed; at most ``max_connections`` at once, the oldest one
waiting for a request making room for a new one; request heads of at most 8 KiB; announce bodies
of at most the wire's frame limit (413 past it, before reading it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools
from aiohttp.web_protocol import RequestHandler

from p2pdist.core.wire import MAX_FRAME, Announce
from p2pdist.serving import make_room, note_refused, waiting

from .app import ANNOUNCE_PATH, Answer, Tracker, admit, respond
from .errors import TrackerError
from .service import served_first

MAX_HEAD = 8190  # bytes of request line and headers, as aiohttp's max_line_size
# After a refusal, what the client still sends is read and dropped for this long, or this much, before
# the connection closes (a lingering close): closed at once, the client's kernel met a reset while its
# request was still going out, and the reset threw away the refusal before the client read it (a 413
# to a chunked body too large came back as "connection reset by peer" now and then).
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * MAX_FRAME
_ANNOUNCE = ANNOUNCE_PATH.encode()
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 409: "Conflict",
            413: "Payload Too Large", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\nContent-Length: "


class Stop(TrackerError):
    """Raised in a parser callback: this connection is being closed, parse no further."""


# Announces answered as they are read in one event-loop turn before the rest wait behind the
# reports. At a steady 5,000 announces/s a turn reads a handful, answered as before (with 4 or 16
# here, benchmarks/bench_tracker.py's p99 at 5,000/s varied more than the tracker's before it, on a
# noisy machine); a flash crowd's flood reads hundreds, and a report waits for at most 64 of them.
PROMPT = 64
# Held-back announces answered per turn: a report read in the next turn waits for at most these
# (64 x 0.15 ms); fewer per turn means more turns, each with a poll of every connection.
PER_TURN = 64
# Announces a connection may have held back before it is read no further: an agent sends one at a
# time, so pausing (two system calls) is only for a client that pipelines.
HELD_PER_CONNECTION = 4


class Held:
    """An admitted announce whose answer waits its turn (ReportsFirst)."""

    __slots__ = ("conn", "done", "keep_alive", "msg")

    def __init__(self, conn: FastPath, msg: Announce, keep_alive: bool) -> None:
        self.conn = conn
        self.msg = msg
        self.keep_alive = keep_alive
        self.done = False  # answered (its connection needed it sooner, or its turn came)


class ReportsFirst:
    """The order announces are answered in under load (see the module's note): reports at once,
    the others at once while few, else in order, ``PER_TURN`` an event-loop turn."""

    def __init__(self) -> None:
        self.held: deque[Held] = deque()
        self._turn = 0  # announces answered at once in this turn
        self._armed = False  # a _next_turn is scheduled

    def answer_now(self, msg: Announce) -> bool:
        """Whether ``msg`` (on a connection with nothing held back) is answered as it is read."""
        if served_first(msg) or (not self.held and self._turn < PROMPT):
            self._turn += 1
            self._arm()
            return True
        return False

    def hold(self, held: Held) -> None:
        self.held.append(held)
        self._arm()

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._armed = False
        self._turn = 0
        served = 0
        while self.held and served < PER_TURN:
            held = self.held.popleft()
            if not held.done:
                held.conn.answer_held()
                served += 1
        if self.held:
            self._arm()


class Connections:
    """The fast path's open connections, oldest first: the cap and its evictions; and the order
    their announces are answered in (``reports_first``)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open: dict[FastPath, None] = {}
        self.refused = 0  # connections turned away (every open one was serving a request)
        self.reports_first = ReportsFirst()

    def admit(self, conn: FastPath) -> bool:
        if (self.max_connections and len(self.open) >= self.max_connections
                and not make_room(self.open, FastPath.waiting, self._evict)):
            self.refused += 1
            note_refused(self.refused, len(self.open))
            return False
        self.open[conn] = None
        return True

    def _evict(self, conn: FastPath) -> None:
        # Out of the book now, not at its connection_lost: a burst of new connections must each
        # evict another one, not all pick this one while it closes.
        del self.open[conn]
        conn.close()


class FastPath(asyncio.Protocol):
    """One tracker connection (see the module's note)."""

    def __init__(self, tracker: Tracker, aiohttp_handler: Callable[[], RequestHandler], book: Connections,
                 idle_timeout: float) -> None:
        self._tracker = tracker
        self._make_handler = aiohttp_handler
        self._book = book
        self._idle = idle_timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._relay: RequestHandler | None = None
        self._remote: str | None = None
        self._last = time.monotonic()  # the connection's start, then its last answered request
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # nothing more is read from this connection
        self._raw = False  # relayed as bytes, no longer parsed (after an upgrade request)
        self._linger = 0  # bytes still to drop after a refusal, while our side is closed already
        self._held: deque[Held] = deque()  # this connection's announces waiting their turn, in order
        self._writes_paused = False  # the transport's buffer is full (pause_writing)
        self._new_message()

    def _new_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._authorization: str | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._fast = False
        self._chunked = False  # the body came chunked (httptools hands it over decoded)
        self._length = b""
        self._expect = False

    # --- the connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TLS connection on uvloop is uvloop's own transport class, not an asyncio.Transport.
        self._transport = transport = cast(asyncio.Transport, transport)
        if not self._book.admit(self):
            transport.abort()  # every open connection is serving a request
            return
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._timer = asyncio.get_running_loop().call_later(self._idle, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._book.open.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
        if self._relay is not None:
            self._relay.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writes_paused = True
        if self._relay is not None:
            self._relay.pause_writing()
        elif self._transport is not None:
            # A client that sends requests without reading the answers: read no more of them until
            # it has, or the answers would pile up here without bound.
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writes_paused = False
        if self._relay is not None:
            self._relay.resume_writing()
        elif (self._transport is not None and not self._transport.is_closing()
              and len(self._held) < HELD_PER_CONNECTION):
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._raw:
            assert self._relay is not None
            self._relay.data_received(data)
            return
        if self._done:
            if self._linger > 0:
                self._linger -= len(data)
                if self._linger <= 0 and self._transport is not None:
                    self._transport.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, Stop):
                raise
            self._done = True
        except httptools.HttpParserUpgrade as e:
            # An upgrade request (never an announce: it is relayed at its head): what follows it is
            # not HTTP to parse here, so from now on the bytes go to aiohttp as they come.
            if self._relay is None:
                self._done = True
                self._refuse(400, "protocol upgrades are not served here")
                return
            self._raw = True
            offset = e.args[0] if e.args and isinstance(e.args[0], int) else len(data)
            if offset < len(data):
                self._relay.data_received(data[offset:])
        except httptools.HttpParserError as e:
            self._done = True
            self._refuse(400, f"malformed HTTP request: {e}")

    def waiting(self) -> bool:
        """Not serving a request: idle, or still receiving one (evictable). One with an announce
        held back (ReportsFirst) is being served."""
        return (self._relay is None and not self._held) or (self._relay is not None and waiting(self._relay))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _check_idle(self) -> None:
        if self._relay is not None:
            return  # aiohttp's keep-alive timer has the connection now
        left = self._last + self._idle - time.monotonic()
        if left <= 0:
            self.close()  # no complete request for idle_timeout: idle, or a request sent too slowly
        else:
            self._timer = asyncio.get_running_loop().call_later(left, self._check_idle)

    def _write(self, answer: Answer, close: bool = False, linger: bool = False) -> None:
        self._answer_held()  # what this connection asked before goes out first
        self._send(answer, close, linger)

    def _send(self, answer: Answer, close: bool = False, linger: bool = False) -> None:
        transport = self._transport
        assert transport is not None
        if answer.status == 200 and not answer.headers and not close:
            transport.write(b"".join((_OK_HEAD, str(len(answer.body)).encode(), b"\r\n\r\n", answer.body)))
            return
        head = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Error')}",
                f"Content-Type: {answer.content_type}", f"Content-Length: {len(answer.body)}"]
        head += [f"{k}: {v}" for k, v in answer.headers]
        if close:
            head.append("Connection: close")
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
        if close and linger and transport.can_write_eof():
            # Our side ends after the answer (FIN); theirs is read and dropped until it ends too
            # (eof_received), LINGER_BYTES have come, or LINGER_SECONDS have passed.
            self._done = True
            self._linger = LINGER_BYTES
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
        elif close:
            transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer and close: the rest of what this connection sends cannot be read as requests."""
        self._tracker.metrics.errors.labels("http").inc()
        if self._transport is not None and not self._transport.is_closing():
            self._write(Answer(status, json.dumps({"error": message}).encode(), "application/json"), close=True,
                        linger=True)

    # --- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._new_message()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._too_long()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._too_long()
        self._headers.append((name, value))
        # The few headers that matter here, told apart by length before any lowering.
        size = len(name)
        if size == 13 and name.lower() == b"authorization":
            self._authorization = value.decode("latin-1")
        elif size == 14 and name.lower() == b"content-length":
            self._length = value
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._chunked = True
        elif size == 6 and name.lower() == b"expect":
            self._expect = True

    def _too_long(self) -> None:
        self._refuse(431, f"request line and headers exceed {MAX_HEAD} bytes")
        raise Stop()

    def on_headers_complete(self) -> None:
        if (self._relay is None and self._url == _ANNOUNCE and not self._expect
                and self._parser.get_method() == b"POST"):
            self._fast = True
            length = self._length.strip()
            if length.isdigit() and int(length) > MAX_FRAME:
                self._refuse(413, f"frame of {int(length)} bytes exceeds the {MAX_FRAME}-byte limit")
                raise Stop()
            return
        self._relay_head()

    def on_body(self, body: bytes) -> None:
        if self._fast:
            self._body_size += len(body)
            if self._body_size > MAX_FRAME:
                self._refuse(413, f"frame exceeds the {MAX_FRAME}-byte limit")
                raise Stop()
            self._body.append(body)
        elif self._relay is not None:
            self._relay.data_received(b"%x\r\n%b\r\n" % (len(body), body) if self._chunked else body)

    def on_message_complete(self) -> None:
        if not self._fast:
            if self._relay is not None and self._chunked:
                self._relay.data_received(b"0\r\n\r\n")
            return
        transport = self._transport
        assert transport is not None
        gone = transport.is_closing()
        admitted = admit(self._tracker, self._authorization, ANNOUNCE_PATH, b"".join(self._body), self._remote,
                         gone)
        self._last = time.monotonic()
        keep_alive = self._parser.should_keep_alive()
        if isinstance(admitted, Answer):
            if not gone:
                self._write(admitted, close=not keep_alive)
            return
        if not self._held and self._book.reports_first.answer_now(admitted):
            self._send(respond(self._tracker, admitted), close=not keep_alive)
            return
        # Its turn comes after the reports (ReportsFirst); what follows it on this connection waits
        # behind it (its answers stay in order), and a client that pipelines is read no further.
        held = Held(self, admitted, keep_alive)
        self._held.append(held)
        if len(self._held) >= HELD_PER_CONNECTION:
            transport.pause_reading()
        self._tracker.metrics.deferred.inc()
        self._book.reports_first.hold(held)

    def answer_held(self) -> None:
        """The oldest held-back announce's turn (ReportsFirst)."""
        held = self._held.popleft()
        held.done = True
        transport = self._transport
        if transport is None or transport.is_closing():
            self._tracker.metrics.dropped.labels("gone").inc()  # its agent gave up and hung up
        else:
            self._send(respond(self._tracker, held.msg), close=not held.keep_alive)
        if (len(self._held) == HELD_PER_CONNECTION - 1 and transport is not None and not transport.is_closing()
                and not self._writes_paused):
            transport.resume_reading()

    def _answer_held(self) -> None:
        """Every held-back announce of this connection, now: something else must go out after them."""
        while self._held:
            self.answer_held()

    # --- relaying to aiohttp --------------------------------------------------------------------

    def _relay_head(self) -> None:
        """Pass this request's head to aiohttp (the connection is aiohttp's from here on). A chunked
        body arrives here decoded and is chunked again; every other header goes as it came."""
        self._answer_held()  # aiohttp writes its answers itself: ours first
        if self._relay is None:
            assert self._transport is not None
            self._relay = self._make_handler()
            self._relay.connection_made(self._transport)
            self._tracker.metrics.relayed.inc()
            if self._timer is not None:
                self._timer.cancel()
        parser = self._parser
        lines = [b"%b %b HTTP/%b" % (parser.get_method(), self._url, parser.get_http_version().encode())]
        lines += [name + b": " + value for name, value in self._headers
                  if not (len(name) == 17 and name.lower() == b"transfer-encoding")]  # re-framed below
        if self._chunked:
            lines.append(b"Transfer-Encoding: chunked")
        self._relay.data_received(b"\r\n".join(lines) + b"\r\n\r\n")


def fast_path_factory(tracker: Tracker, aiohttp_handler: Callable[[], RequestHandler], book: Connections,
                      idle_timeout: float) -> Callable[[], FastPath]:
    return lambda: FastPath(tracker, aiohttp_handler, book, idle_timeout)
