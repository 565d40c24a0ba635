"""Origin Range bodies read in a worker thread, straight into piece buffers.

The event loop's thread was the bottleneck of an origin download: it received every byte through
aiohttp, copied it into a piece buffer and, for a mirror client, copied it out again. Here a worker
thread sends the Range GET with http.client, ``readinto``s each piece's buffer (one kernel copy, no
Python-level copy, the GIL released), and hands it on to ``on_piece`` in the same thread (hash and
pwrite, which release the GIL too). The loop hears of each stored piece only.

Only the plain case goes this way: a request the async client has already authorised (a cached
token, the client's own credentials, basic, or none needed) answered with 206. Anything else (a 401
challenge, a redirect, no Range support) raises :class:`NeedsAsyncClient`, and the caller uses the
async client, which handles all of that, for this run.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable

from p2pdist import USER_AGENT
from p2pdist.agent.origin import OriginError, StallWatch, retry_after_seconds, transient_status
from p2pdist.agent.origin_target import RangeTarget

from ..errors import P2pdistError

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class NeedsAsyncClient(P2pdistError):
    """This request needs what only the async origin client does (auth challenge, redirect, no Range)."""


class Stopped(P2pdistError):
    """The download was cancelled while the thread was reading."""


class RunControl:
    """Stops a read from another thread: at its next step, or at once by shutting its socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._sock: socket.socket | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self._stopped and sock is not None:
                _shutdown(sock)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._sock is not None:
                _shutdown(self._sock)  # a recv blocked on a silent origin returns now


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def read_range(target: RangeTarget, start: int, lengths: list[int], on_piece: Callable[[int, memoryview], None],
               buffer_for: Callable[[int], bytearray], control: RunControl,
               on_bytes: Callable[[int], None]) -> None:
    """GET bytes [start, start + sum(lengths)) and call ``on_piece(k, piece)`` for each piece in order.

    ``buffer_for(length)`` lends a buffer that ``on_piece`` is done with when it returns.
    """
    end = start + sum(lengths)
    if target.scheme == "https":
        context = ssl.create_default_context()
        if not target.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            target.host, target.port, timeout=target.timeout, context=context)
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=target.timeout)
    try:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity",
                   "User-Agent": USER_AGENT}
        if target.authorization:
            headers["Authorization"] = target.authorization
        try:
            conn.connect()
            control.attach(conn.sock)
            conn.request("GET", target.path, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if control.stopped:
                raise Stopped() from None
            raise OriginError(f"cannot reach origin {target.host}:{target.port}: {e}") from e
        if response.status != 206:
            if transient_status(response.status):
                # A 5xx or 429 the async client would only get again at once: the back-off is the caller's.
                raise OriginError(f"origin {target.host} answered {response.status} to Range bytes={start}-{end - 1}",
                                  status=response.status,
                                  retry_after=retry_after_seconds(response.getheader("Retry-After")))
            raise NeedsAsyncClient(f"origin answered {response.status}")
        match = _CONTENT_RANGE.fullmatch((response.getheader("Content-Range") or "").strip())
        if match is None or (int(match[1]), int(match[2])) != (start, end - 1):
            raise OriginError(f"origin answered Range bytes={start}-{end - 1} with Content-Range "
                              f"{response.getheader('Content-Range')!r}")
        # The body: each read takes what has arrived (one recv, straight into the piece buffer), so
        # StallWatch sees a trickle as it trickles; HTTPResponse.readinto waits to fill the buffer.
        # A chunked body (no Content-Length, which no registry sends for a Range) reads as before.
        body = response if response.chunked else response.fp
        read = body.readinto if response.chunked else body.readinto1  # type: ignore[union-attr]
        assert conn.sock is not None
        conn.sock.settimeout(target.stall)  # the headers had target.timeout; a silent body has this
        watch = StallWatch(target.stall, target.host)
        for k, length in enumerate(lengths):
            buf = buffer_for(length)
            view = memoryview(buf)[:length]
            filled = 0
            while filled < length:
                if control.stopped:
                    raise Stopped()
                began = time.monotonic()
                try:
                    n = read(view[filled:])
                except TimeoutError:
                    if control.stopped:
                        raise Stopped() from None
                    raise watch.silent() from None
                except (OSError, http.client.HTTPException) as e:
                    if control.stopped:
                        raise Stopped() from None
                    raise OriginError(f"transfer from origin {target.host} failed: {e}") from e
                watch.read(time.monotonic() - began, n)
                if not n:
                    if control.stopped:
                        raise Stopped()
                    raise OriginError(f"origin {target.host} ended the body {length - filled} bytes early "
                                      f"in piece {k} of the run")
                filled += n
                on_bytes(n)
            on_piece(k, view)
    finally:
        control.attach(None)
        conn.close()
