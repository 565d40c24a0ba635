"""Announces to the tracker (msgpack over HTTP)."""

from __future__ import annotations

import aiohttp

from p2pdist.core import wire

from ..errors import P2pdistError


class TrackerUnavailable(P2pdistError):
    """The tracker could not be reached or refused the announce; callers fall back to the origin."""


class SizeConflict(TrackerUnavailable):
    """The tracker knows this blob with another size than the announce gave (HTTP 409)."""


class TrackerClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str = "", timeout: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/v1/announce"
        self._session = session
        self._headers = {"Content-Type": "application/msgpack"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def announce(self, msg: wire.Announce) -> wire.AnnounceReply:
        try:
            async with self._session.post(
                self.url, data=wire.encode(msg), headers=self._headers, timeout=self._timeout
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    why = f"tracker answered {resp.status}: {body[:200].decode(errors='replace')}"
                    raise SizeConflict(why) if resp.status == 409 else TrackerUnavailable(why)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TrackerUnavailable(f"tracker {self.url} unreachable: {e or type(e).__name__}") from None
        try:
            reply = wire.decode(body, expect=(wire.AnnounceReply,))
        except wire.WireError as e:
            raise TrackerUnavailable(f"tracker sent an invalid reply: {e}") from None
        assert isinstance(reply, wire.AnnounceReply)
        return reply
