"""Announces to the tracker (msgpack over HTTP or HTTPS), each signed by this node's credential."""

from __future__ import annotations

import dataclasses
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from p2pdist.core import wire

from ..errors import P2pdistError

if TYPE_CHECKING:
    from p2pdist.agent.identity import NodeIdentity


class TrackerUnavailable(P2pdistError):
    """The tracker could not be reached or refused the announce; callers fall back to the origin."""


class SizeConflict(TrackerUnavailable):
    """The tracker knows this blob with another size than the announce gave (HTTP 409)."""


class TrackerClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, identity: NodeIdentity | None = None,
                 timeout: float = 5.0, ssl: ssl.SSLContext | bool = True) -> None:
        self.url = url.rstrip("/") + "/v1/announce"
        self._path = urlsplit(self.url).path
        self._session = session
        self._identity = identity
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def announce(self, msg: wire.Announce) -> wire.AnnounceReply:
        headers = {"Content-Type": "application/msgpack"}
        identity = self._identity
        if identity is not None and identity.wants_ticket():
            msg = dataclasses.replace(msg, peer_key=identity.peer_key)
        body = wire.encode(msg)
        if identity is not None:
            headers["Authorization"] = identity.tracker_authorization("POST", self._path, body)
        try:
            async with self._session.post(self.url, data=body, headers=headers, timeout=self._timeout,
                                          ssl=self._ssl) as resp:
                data = await resp.read()
                if resp.status != 200:
                    why = f"tracker answered {resp.status}: {data[:300].decode(errors='replace')}"
                    raise SizeConflict(why) if resp.status == 409 else TrackerUnavailable(why)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TrackerUnavailable(f"tracker {self.url} unreachable: {e or type(e).__name__}") from None
        try:
            reply = wire.decode(data, expect=(wire.AnnounceReply,))
        except wire.WireError as e:
            raise TrackerUnavailable(f"tracker sent an invalid reply: {e}") from None
        assert isinstance(reply, wire.AnnounceReply)
        if reply.ticket and identity is not None:
            identity.take_ticket(reply.ticket)
        return reply
