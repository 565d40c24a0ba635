"""One way to run an HTTP server here (peer port, agent API, mirror, tracker), with its limits.

aiohttp closes a connection that has not completed a request only at ``keepalive_timeout``, which
defaults to an hour, and it takes every connection it is offered: 6,000 connections sending half a
request each stayed open, and at the process's 1,024 descriptors the API and the mirror stopped
answering. Here every server closes a connection idle, or still sending its request, after
``idle_timeout`` (aiohttp's keep-alive timer covers both: it runs from the connection's start and
after each response, and fires only while no handler runs, so a long download or a WebSocket is
never cut). Past ``max_connections`` at once, a new connection takes the place of the oldest one
that is waiting for a request (idle, or sending it slowly), and is refused only when every open
connection is busy serving one: a client holding many idle connections loses them, not the client
arriving now.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("p2pdist.serving")
T = TypeVar("T")


def waiting(handler: RequestHandler) -> bool:
    """Whether an aiohttp connection is waiting for a request (idle, or still sending one) and not
    closing: aiohttp's own flags (no handler running; a WebSocket's runs as long as it is open)."""
    return not handler._request_in_progress and not handler._force_close


def make_room(conns: Iterable[T], is_waiting: Callable[[T], bool], close: Callable[[T], None]) -> bool:
    """Close the oldest of ``conns`` (oldest first) that is waiting for a request: a client holding
    many of those loses them first, not the client arriving now. False if every one is serving."""
    for conn in conns:
        if is_waiting(conn):
            close(conn)
            return True
    return False


def note_refused(refused: int, open_now: int) -> None:
    """Log a connection turned away at the cap (the first, then one in a thousand)."""
    if refused == 1 or refused % 1000 == 0:
        log.warning("connection refused: too many open, all busy", extra={"open": open_now, "refused": refused})


class CappedServer(web.Server):
    """An aiohttp Server that aborts connections past ``max_connections`` (set by ServerRunner)."""

    max_connections = 0  # 0: no cap
    refused = 0  # connections turned away (every open one was serving a request)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        full = (self.max_connections and len(self._connections) >= self.max_connections
                and not make_room(self._connections, waiting, RequestHandler.force_close))
        super().connection_made(handler, transport)
        if full:
            self.refused += 1
            note_refused(self.refused, len(self._connections))
            # Its handler closes it before reading a byte (aborting the transport here races
            # aiohttp's own start of the handler).
            handler.force_close()


class ServerRunner(web.AppRunner):
    """An AppRunner with the idle timeout and the connection cap; ``server_class`` a CappedServer."""

    def __init__(self, app: web.Application, *, idle_timeout: float, max_connections: int,
                 server_class: type[CappedServer] = CappedServer, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout, **kwargs)
        self._server_class = server_class
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no hook for the server class: the same object, with our methods.
        server.__class__ = self._server_class
        assert isinstance(server, CappedServer)
        server.max_connections = self._max_connections
        return server

    @property
    def refused(self) -> int:
        server = self.server
        return server.refused if isinstance(server, CappedServer) else 0


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (at most the hard limit): the
    servers' caps need that many descriptors and more. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft
