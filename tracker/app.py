"""The tracker's HTTP shell: decode the announce, run the service logic, encode the reply.

Endpoints: ``POST /v1/announce`` (msgpack Announce in, msgpack AnnounceReply out), ``POST
/v1/orders`` (an agent's poll for preheat orders, JSON), ``POST /v1/preheat`` and ``GET
/v1/preheat/{job}`` (an operator's preheat jobs, tracker/preheat.py), ``GET /healthz`` (no
authentication, for probes) and ``GET /metrics`` (Prometheus text). The state is in memory, or in
Redis for replicas (tracker/redis_state.py).
With a cluster secret every request of a node is signed by its node credential (``P2P-Node``,
checked here once, replays refused), and an announce or poll speaks only for the node that signed
it; /metrics also takes ``Bearer <cluster secret>`` for Prometheus, and preheat jobs take only that.
Every refusal is a JSON body ``{"error": "..."}`` with a message the agent's operator can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from p2pdist.core.bearer import bearer_refusal
from p2pdist.core.digest import DigestError
from p2pdist.core.identity import NODE_SCHEME, AuthError, ReplayGuard, RequestVerifier, Signed, ticket_signer
from p2pdist.core.names import InvalidName
from p2pdist.core.proofs import PieceNotary, cursor_epoch
from p2pdist.core.reference import parse_reference
from p2pdist.core.wire import MAX_FRAME, MAX_LIST, Announce, AnnounceReply, WireError, decode, encode
from p2pdist.logs import log_event

from .config import TrackerConfig
from .errors import TrackerError
from .gc_tuning import FREEZE_EVERY, Freezer
from .metrics import TrackerMetrics
from .pacer import Pacer, budget_of
from .preheat import PER_POLL, MemoryPreheat, PreheatDesk, PreheatError, RedisPreheat
from .redis_state import RedisState, RedisUnavailable
from .service import AnnounceError, handle_announce, memory_state
from .shedding import Shedder
from .state import TrackerState
from .tickets import TicketDesk

log = logging.getLogger("tracker")

MSGPACK = "application/msgpack"
PUBLIC_PATHS = frozenset({"/healthz"})  # probes must work without the cluster secret
ANNOUNCE_PATH = "/v1/announce"  # checked by admit(), as the fast path does
STATUS = {"size-conflict": 409, "size-invalid": 400, "capacity": 503, "banned": 403, "busy": 503}
# Service events worth a line at info or above; the rest are debug.
EVENT_LEVELS = {
    "lease_expired": logging.INFO, "corrupt_reset": logging.WARNING, "corrupt_stale": logging.INFO,
    "digests_rejected": logging.WARNING,
    "peer_rejected": logging.WARNING, "blob_dropped": logging.INFO, "peer_expired": logging.INFO,
    "audit_passed": logging.INFO, "audit_failed": logging.WARNING, "node_banned": logging.WARNING,
    "pieces_orphaned": logging.INFO, "leases_abandoned": logging.INFO,
}


@dataclass
class Tracker:
    """One tracker's state and collaborators, shared by the handlers."""

    config: TrackerConfig
    state: TrackerState
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    wall: Callable[[], float] = time.time  # signatures and tickets carry Unix time
    shared: RedisState | None = None  # the state in Redis (replicas); ``state`` is then the same object
    metrics: TrackerMetrics = field(init=False)
    guard: ReplayGuard = field(init=False)
    verifier: RequestVerifier = field(init=False)
    tickets: TicketDesk | None = field(init=False)
    notary: PieceNotary | None = field(init=False)
    pacer: Pacer = field(init=False)
    shedder: Shedder = field(init=False)
    preheat: PreheatDesk = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = TrackerMetrics(self.state)
        self.guard = ReplayGuard(nodes=self.config.max_nodes)
        self.verifier = RequestVerifier(self.config.cluster_token, nodes=self.config.max_nodes)
        secret = self.config.cluster_token
        self.tickets = TicketDesk(secret, self.config.ticket_ttl, self.config.max_nodes) if secret else None
        self.notary = PieceNotary(ticket_signer(secret), self.config.max_blobs) if secret else None
        self.pacer = Pacer(budget_of(self.config, self.shared is not None))
        self.shedder = Shedder(self.config.client_timeout, self.config.max_nodes)
        poll = self.config.preheat_poll
        self.preheat = (RedisPreheat(self.shared.redis, self.shared.prefix, poll, self.rng) if self.shared is not None
                        else MemoryPreheat(poll, self.config.max_nodes, self.rng))
        self.metrics.watch_pacer(self.pacer)

    def emit(self, event: str, **fields: Any) -> None:
        self.metrics.observe(event, fields)
        level = EVENT_LEVELS.get(event, logging.DEBUG)
        if event == "lease_granted" and fields.get("reassigned"):
            level = logging.INFO
        log_event(log, level, event, **fields)

    def refuse(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return refusal(self, status, kind, message, tuple((headers or {}).items())).response()


TRACKER = web.AppKey("tracker", Tracker)
REDIS_ERRORS = (RedisError,)
NODE = web.RequestKey("node", str)  # the node that signed the request (absent with authentication off)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Oversize(TrackerError):
    """A request body past the wire's frame limit (413)."""


async def _body(request: web.Request) -> bytes:
    # Same words as the core's WireError for an oversized frame; refused before buffering the body.
    length = request.content_length
    if length is not None and length > MAX_FRAME:
        raise Oversize(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked body without a length
        raise Oversize(f"frame exceeds the {MAX_FRAME}-byte limit") from None


@dataclass(frozen=True, slots=True)
class Answer:
    """A tracker answer, whichever server sends it: aiohttp's, or the fast path's
    (tracker/fastpath.py). Both run the same steps below, so both answer alike."""

    status: int
    body: bytes
    content_type: str = MSGPACK
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body,
                            headers={"Content-Type": self.content_type, **dict(self.headers)})


def refusal(tracker: Tracker, status: int, kind: str, message: str,
            headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    tracker.metrics.errors.labels(kind).inc()
    # The kind too: an agent asks again after a 503 of a moment ("busy", "redis"), not after one that
    # lasts ("capacity").
    return Answer(status, json.dumps({"error": message, "kind": kind}).encode(), "application/json", headers)


UNAUTHORIZED = (("WWW-Authenticate", f'{NODE_SCHEME} realm="p2pdist"'),)


def check_signed(tracker: Tracker, authorization: str | None, method: str, path: str, body: bytes) -> Signed:
    """The node that signed a request (its credential derives from the cluster secret), seen once;
    AuthError says why not. Every signed request passes here, whichever server took it: the one
    place where identity is decided (``authenticate`` for aiohttp's routes, ``admit`` for announces)."""
    signed = tracker.verifier.verify(authorization, method, path, body, tracker.wall())
    tracker.guard.check(signed)
    return signed


def unauthorized(tracker: Tracker, remote: str | None, path: str, e: AuthError) -> Answer:
    log_event(log, logging.INFO, "unauthorized", remote=remote, path=path, why=str(e))
    return refusal(tracker, 401, "unauthorized", str(e), UNAUTHORIZED)


async def authenticate(request: web.Request, tracker: Tracker) -> Signed | None:
    """The node that signed ``request``, or None for an operator's bearer secret; AuthError says
    why neither holds."""
    secret = tracker.config.cluster_token
    header = request.headers.get("Authorization")
    operator = request.path == "/metrics" or request.path.startswith("/v1/preheat")
    if operator and header is not None and not header.startswith(NODE_SCHEME):
        why = bearer_refusal(header, secret, "cluster secret")
        if why is not None:
            raise AuthError(why)
        return None
    if request.path.startswith("/v1/preheat"):
        raise AuthError("preheat jobs are an operator's: send 'Authorization: Bearer <cluster secret>'")
    return check_signed(tracker, header, request.method, request.rel_url.raw_path, await _body(request))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tracker = request.app[TRACKER]
    if request.path not in PUBLIC_PATHS and request.path != ANNOUNCE_PATH and tracker.config.cluster_token:
        try:
            signed = await authenticate(request, tracker)
            request[NODE] = signed.node if signed is not None else ""
        except Oversize as e:
            return tracker.refuse(413, "oversize", str(e))
        except AuthError as e:
            return unauthorized(tracker, request.remote, request.path, e).response()
    return await handler(request)


def _wire_kind(message: str) -> str:
    if message.startswith("unsupported protocol version"):
        return "version"
    if message.startswith("malformed msgpack"):
        return "malformed"
    return "invalid"



def admit(tracker: Tracker, authorization: str | None, path: str, body: bytes, remote: str | None,
          gone: bool) -> Announce | Answer:
    """An announce's checks before the logic: its signature, whether its agent still waits, its
    message, and that it speaks for the node that signed it. The Announce, or the refusal."""
    signed = None
    if tracker.config.cluster_token:
        try:
            signed = check_signed(tracker, authorization, "POST", path, body)
        except AuthError as e:
            return unauthorized(tracker, remote, path, e)
    if gone:
        tracker.metrics.dropped.labels("gone").inc()  # its agent gave up and hung up: nobody to answer
        return Answer(503, b"")
    if signed is not None and tracker.shedder.late(signed.node, signed.ts, tracker.wall()):
        tracker.metrics.dropped.labels("late").inc()  # its agent stopped waiting: no work for it
        return Answer(503, b'{"error": "this announce waited longer than agents wait; announce again"}',
                      "application/json")
    try:
        msg = decode(body, expect=(Announce,))
    except WireError as e:
        log_event(log, logging.INFO, "bad_announce", remote=remote, why=str(e))
        return refusal(tracker, 400, _wire_kind(str(e)), str(e))
    assert isinstance(msg, Announce)
    if signed is not None and msg.node != signed.node:
        # A credential speaks for its own node only: bans and audits stick to who really announced.
        log_event(log, logging.WARNING, "node_mismatch", remote=remote, node=msg.node, signer=signed.node)
        return refusal(tracker, 403, "node-mismatch",
                       f"this request is signed by node {signed.node!r} but announces node {msg.node[:128]!r}")
    tracker.metrics.announced(msg.event)
    return msg


def refused(tracker: Tracker, msg: Announce, e: AnnounceError) -> Answer:
    log_event(log, logging.WARNING, "announce_refused", blob=msg.blob, node=msg.node, kind=e.kind, why=str(e))
    return refusal(tracker, STATUS[e.kind], e.kind, str(e))


def conclude(tracker: Tracker, msg: Announce, reply: AnnounceReply) -> Answer:
    """The reply on the wire, with a ticket if the node asked for one, the proofs of its digests
    and the pacer's spacing."""
    changes: dict[str, Any] = {}
    if reply.digests and tracker.notary is not None and reply.size is not None and reply.piece_size is not None:
        changes["proofs"] = tracker.notary.proofs(msg.blob, reply.size, reply.piece_size,
                                                  cursor_epoch(reply.digest_pos), reply.digests)
    if msg.peer_key and tracker.tickets is not None and len(msg.peer_key) == 32:
        changes["ticket"] = tracker.tickets.ticket(msg.node, msg.peer_key, tracker.wall())
    spacing = tracker.pacer.announced(tracker.clock(), reply)
    if spacing:
        changes["spacing"] = spacing
    return Answer(200, encode(reply, **changes))


def answer_announce(tracker: Tracker, authorization: str | None, path: str, body: bytes, remote: str | None,
                    gone: bool) -> Answer:
    """An announce to a tracker with its state in memory, answered at once."""
    admitted = admit(tracker, authorization, path, body, remote, gone)
    if isinstance(admitted, Answer):
        return admitted
    return respond(tracker, admitted)


def respond(tracker: Tracker, msg: Announce) -> Answer:
    """An admitted announce's answer from a tracker with its state in memory: the logic, then the reply."""
    try:
        reply = handle_announce(tracker.state, msg, tracker.clock(), tracker.rng, tracker.config, tracker.emit,
                                loaded=tracker.pacer.loaded)
    except AnnounceError as e:
        return refused(tracker, msg, e)
    return conclude(tracker, msg, reply)


async def announce(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    try:
        body = await _body(request)
    except Oversize as e:
        return tracker.refuse(413, "oversize", str(e))
    transport = request.transport
    gone = transport is None or transport.is_closing()
    path, authorization = request.rel_url.raw_path, request.headers.get("Authorization")
    if tracker.shared is None:
        return answer_announce(tracker, authorization, path, body, request.remote, gone).response()
    admitted = admit(tracker, authorization, path, body, request.remote, gone)
    if isinstance(admitted, Answer):
        return admitted.response()
    try:
        reply = await tracker.shared.announce(admitted, tracker.clock(), tracker.rng, tracker.emit,
                                              loaded=tracker.pacer.loaded)
    except RedisUnavailable as e:
        log_event(log, logging.WARNING, "redis_unavailable", blob=admitted.blob, node=admitted.node, why=str(e))
        return tracker.refuse(503, "redis", str(e))
    except AnnounceError as e:
        return refused(tracker, admitted, e).response()
    return conclude(tracker, admitted, reply).response()


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        doc = json.loads(await _body(request))
    except (ValueError, UnicodeDecodeError) as e:
        raise PreheatError(f"the body must be a JSON object: {e}") from None
    if not isinstance(doc, dict):
        raise PreheatError("the body must be a JSON object")
    return doc


async def orders(request: web.Request) -> web.Response:
    """An agent's poll: its reports on finished orders in, its new orders out (tracker/preheat.py)."""
    tracker = request.app[TRACKER]
    try:
        doc = await _json(request)
        node = request.get(NODE) or str(doc.get("node", ""))
        if not node or (request.get(NODE) and doc.get("node", node) != node):
            raise PreheatError("the poll must name the node that signed it")
        done = [(str(j), str(r)) for j, r in doc.get("done", [])][:MAX_LIST]
        failed = [(str(j), str(r), str(w)) for j, r, w in doc.get("failed", [])][:MAX_LIST]
    except (PreheatError, TypeError, ValueError) as e:
        return tracker.refuse(400, "invalid", str(e))
    except Oversize as e:
        return tracker.refuse(413, "oversize", str(e))
    try:
        found = await tracker.preheat.poll(node, tracker.wall(), done, failed)
        more = await tracker.preheat.waiting(node) if len(found) >= PER_POLL else 0
    except (RedisUnavailable, *REDIS_ERRORS) as e:
        return tracker.refuse(503, "redis", str(e))
    # More orders wait: come back at once (as soon as these have started), not in preheat_poll.
    interval = 1.0 if more else tracker.config.preheat_poll
    return web.json_response({"fetch": [o.to_json() for o in found], "interval": interval})


async def preheat_create(request: web.Request) -> web.Response:
    """``{"blobs": [{"ref": "REGISTRY/REPO@DIGEST", "size": N}], "nodes": N | "share": F}``."""
    tracker = request.app[TRACKER]
    try:
        doc = await _json(request)
        blobs = []
        listed = doc.get("blobs", [])
        if not isinstance(listed, list):
            raise PreheatError("blobs must be a list of {ref, size}")
        for b in listed:
            ref = parse_reference(str(b["ref"]))
            size = b.get("size")
            if ref.digest is None or not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise PreheatError(f"blob {b.get('ref')!r} needs a digest (@sha256:...) and a size")
            blobs.append((str(ref), b["size"]))
        count, share = doc.get("nodes"), doc.get("share")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise PreheatError("nodes must be an integer")
        if share is not None and not isinstance(share, int | float):
            raise PreheatError("share must be a number")
        job = await tracker.preheat.create(blobs, count, None if share is None else float(share), tracker.wall())
    except Oversize as e:
        return tracker.refuse(413, "oversize", str(e))
    except (PreheatError, InvalidName, DigestError, KeyError, TypeError) as e:
        return tracker.refuse(400 if not str(e).startswith("no agent") else 409, "preheat", str(e))
    except (RedisUnavailable, *REDIS_ERRORS) as e:
        return tracker.refuse(503, "redis", str(e))
    log_event(log, logging.INFO, "preheat_job", job=job["job"], blobs=len(blobs), nodes=len(job["nodes"]))
    return web.json_response(job, status=201)


async def preheat_progress(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    try:
        found = await tracker.preheat.progress(request.match_info["job"][:64])
    except (RedisUnavailable, *REDIS_ERRORS) as e:
        return tracker.refuse(503, "redis", str(e))
    if found is None:
        return tracker.refuse(404, "preheat", "no such preheat job (jobs are kept for a day, 256 at most)")
    return web.json_response(found)


async def healthz(request: web.Request) -> web.Response:
    state = request.app[TRACKER].state
    return web.json_response({"status": "ok", "blobs": state.blob_count(), "peers": state.peer_count()})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[TRACKER].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A bug in one request becomes a JSON 500 and a logged traceback; the process keeps serving."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("internal_error", extra={"fields": {"path": request.path}})
        return request.app[TRACKER].refuse(500, "internal", f"internal error: {type(e).__name__}")


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    """Forget idle blobs even when nobody announces, so the gauges and memory follow; keep the
    long-lived state out of the garbage collector's passes (gc_tuning)."""
    tracker = app[TRACKER]
    freezer = Freezer(time.monotonic())

    async def loop() -> None:
        while True:
            await asyncio.sleep(min(FREEZE_EVERY, tracker.config.peer_ttl))
            if tracker.shared is not None:
                try:
                    dropped = await tracker.shared.sweep(tracker.clock())
                except (RedisUnavailable, OSError, *REDIS_ERRORS) as e:
                    log_event(log, logging.WARNING, "redis_unavailable", why=str(e))
                    continue
            else:
                dropped = tracker.state.sweep(tracker.clock())
            for digest in dropped:
                tracker.emit("blob_dropped", blob=digest)
            freezer.tick(time.monotonic())

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    config: TrackerConfig,
    state: TrackerState | None = None,
    *,
    clock: Callable[[], float] | None = None,
    rng: random.Random | None = None,
    shared: RedisState | None = None,
) -> web.Application:
    """The tracker's application: in-memory ``state`` (made from ``config`` if None), or ``shared``
    in Redis. Replicas compare times in the shared state, so with Redis the clock is Unix time."""
    # client_max_size = the wire's frame limit: aiohttp itself refuses anything larger.
    app = web.Application(client_max_size=MAX_FRAME, middlewares=[error_middleware, auth_middleware])
    if shared is not None:
        state = shared
    if clock is None:
        clock = time.time if shared is not None else time.monotonic
    app[TRACKER] = Tracker(config, state if state is not None else memory_state(config), clock,
                           rng if rng is not None else random.Random(), shared=shared)
    app.router.add_post(ANNOUNCE_PATH, announce)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/orders", orders)
    app.router.add_post("/v1/preheat", preheat_create)
    app.router.add_get("/v1/preheat/{job}", preheat_progress)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_sweeper)
    return app
