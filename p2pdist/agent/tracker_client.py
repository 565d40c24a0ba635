"""Announces to the tracker (msgpack over HTTP or HTTPS), each signed by this node's credential."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import ssl
import time
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from p2pdist.core import wire
from p2pdist.logs import log_event

from ..errors import P2pdistError

if TYPE_CHECKING:
    from p2pdist.agent.identity import NodeIdentity


log = logging.getLogger("p2pdist.tracker")


class TrackerUnavailable(P2pdistError):
    """The tracker could not be reached or refused the announce; callers fall back to the origin."""


class SizeConflict(TrackerUnavailable):
    """The tracker knows this blob with another size than the announce gave (HTTP 409)."""


class TrackerDown(TrackerUnavailable):
    """No replica answered (unreachable, timed out, or a 5xx): asking again later may do better, unlike
    a refusal (4xx)."""


class TrackerClient:
    """Announces to one tracker of ``url`` (several comma-separated: replicas sharing one Redis).

    The client keeps to one replica while it answers, and moves to the next when it does not
    (unreachable, or a 5xx), trying each once per announce: a replica that went away costs one
    failed connection, not an announce interval without a tracker. Agents start at different
    replicas (by node id), so the load spreads without a load balancer.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, identity: NodeIdentity | None = None,
                 timeout: float = 5.0, ssl: ssl.SSLContext | bool = True, start: str = "") -> None:
        bases = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not bases:
            raise ValueError("no tracker URL")
        self.urls = [base + "/v1/announce" for base in bases]
        self.bases = bases
        # Where to begin: a stable pick per node, so a fleet spreads over the replicas.
        self._current = zlib.crc32(start.encode()) % len(bases) if start else 0
        self._session = session
        self._identity = identity
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # When the first of the requests failing in a row failed (None: the last one answered). From
        # its failure, not its sending: a request that timed out on a tracker busy with the start of
        # a rollout leaves the retries their whole patience (agent.swarm).
        self._failing_since: float | None = None
        self._answered = -math.inf  # when an answer last came

    def down_for(self, now: float) -> float:
        """Seconds since the first of the requests failing in a row failed (0: the last one answered)."""
        return 0.0 if self._failing_since is None else now - self._failing_since

    @property
    def url(self) -> str:
        """The announce URL in use now."""
        return self.urls[self._current]

    async def announce(self, msg: wire.Announce) -> wire.AnnounceReply:
        identity = self._identity
        if identity is not None and identity.wants_ticket():
            msg = dataclasses.replace(msg, peer_key=identity.peer_key)
        data = await self._send("/v1/announce", wire.encode(msg), "application/msgpack")
        try:
            reply = wire.decode(data, expect=(wire.AnnounceReply,))
        except wire.WireError as e:
            raise TrackerUnavailable(f"tracker sent an invalid reply: {e}") from None
        assert isinstance(reply, wire.AnnounceReply)
        if reply.ticket and identity is not None:
            identity.take_ticket(reply.ticket)
        return reply

    async def orders(self, report: dict[str, Any]) -> dict[str, Any]:
        """Poll for preheat orders (tracker/preheat.py), reporting the ones that ended."""
        # On a connection of its own, closed after the poll: a tracker keeps the connections that
        # carry only announces on its fast path (tracker/fastpath.py); one that carried an orders poll
        # would be served by aiohttp from then on. One poll in 15 s costs a connection, not more.
        data = await self._send("/v1/orders", json.dumps(report).encode(), "application/json", close=True)
        try:
            doc = json.loads(data)
            assert isinstance(doc, dict) and isinstance(doc.get("fetch"), list)
            return doc
        except (ValueError, AssertionError):
            raise TrackerUnavailable("tracker sent an invalid orders reply") from None

    async def _send(self, path: str, body: bytes, content_type: str, close: bool = False) -> bytes:
        """POST to the replica in use, moving on to the next while replicas fail."""
        failures = []
        sent = time.monotonic()
        for _ in range(len(self.urls)):
            try:
                data = await self._post(self.bases[self._current] + path, body, content_type, close)
            except _ReplicaDown as e:
                failures.append(str(e))
                if len(self.urls) > 1:
                    self._current = (self._current + 1) % len(self.urls)
                    log_event(log, logging.WARNING, "tracker_failover", why=str(e), next=self.bases[self._current])
            else:
                return data
        if self._failing_since is None and self._answered < sent:  # one answered since: no run of failures
            self._failing_since = time.monotonic()
        raise TrackerDown("; ".join(failures))

    async def _post(self, url: str, body: bytes, content_type: str, close: bool = False) -> bytes:
        headers = {"Content-Type": content_type}
        if close:
            headers["Connection"] = "close"  # aiohttp's client does not put this connection back in its pool
        if self._identity is not None:  # signed per attempt: each carries its own nonce
            headers["Authorization"] = self._identity.tracker_authorization("POST", urlsplit(url).path, body)
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=self._timeout,
                                          ssl=self._ssl) as resp:
                data = await resp.read()
                if resp.status == 200:
                    self._failing_since, self._answered = None, time.monotonic()
                    return data
                why = f"tracker {url} answered {resp.status}: {data[:300].decode(errors='replace')}"
                if resp.status >= 500 and _kind(data) not in LASTING:
                    raise _ReplicaDown(why)  # another replica may do better (its Redis, its load)
                self._failing_since, self._answered = None, time.monotonic()  # a refusal is an answer
                if resp.status == 409:
                    raise SizeConflict(why)
                raise TrackerUnavailable(why)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _ReplicaDown(f"tracker {url} unreachable: {e or type(e).__name__}") from None


# Refusals of a tracker that will not change soon, whatever their status: its table of blobs is full.
LASTING = frozenset({"capacity"})


def _kind(body: bytes) -> str | None:
    """The ``kind`` of a tracker's error body, if it says one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("kind") if isinstance(doc, dict) else None


class _ReplicaDown(TrackerDown):
    """This replica did not answer, or failed: the next one is tried."""
