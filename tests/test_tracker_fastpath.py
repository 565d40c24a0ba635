"""The tracker's announce fast path (tracker/fastpath.py), against a real tracker process over raw
sockets: announces answered there, every other request relayed to aiohttp in order, and what a
broken or hostile client sends answered precisely."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pdist.core import wire
from p2pdist.core.identity import sign_request
from tests.support.identity import Caller
from tests.support.procs import Tracker
from tracker.app import TRACKER, create_app
from tracker.config import TrackerConfig
from tracker.fastpath import HELD_PER_CONNECTION, PER_TURN, PROMPT, Connections, FastPath

TOKEN = "fastpath-test-secret"
BLOB = "sha256:" + "ab" * 32
RELAYED = "p2pdist_tracker_connections_relayed_total"


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    proc = Tracker(tmp_path_factory.mktemp("fastpath"), TOKEN).start()
    try:
        yield proc
    finally:
        proc.stop()


NODE = Caller(TOKEN, "fast-node")


def announce_body(node: str = "fast-node", have: int = 0) -> bytes:
    return wire.encode(wire.Announce(node=node, addr="10.0.0.1:65003", blob=BLOB, size=64 << 20, have=have,
                                     event="started", want_leases=1))


def announce_request(body: bytes | None = None, caller: Caller = NODE, extra: str = "") -> bytes:
    body = announce_body() if body is None else body
    auth = caller.tracker(body)["Authorization"]
    return (f"POST /v1/announce HTTP/1.1\r\nHost: t\r\nContent-Type: application/msgpack\r\n"
            f"Authorization: {auth}\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def orders_request(caller: Caller = NODE) -> bytes:
    body = json.dumps({"node": caller.node, "done": [], "failed": []}).encode()
    auth = caller.tracker(body, "/v1/orders")["Authorization"]
    return (f"POST /v1/orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


class Conn:
    """One raw keep-alive connection; responses read one at a time, whole."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a response: {self.buf[:200]!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server closed the connection (after what was read)."""
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def reply_of(body: bytes) -> wire.AnnounceReply:
    reply = wire.decode(body, expect=(wire.AnnounceReply,))
    assert isinstance(reply, wire.AnnounceReply)
    return reply


def relayed(tracker: Tracker) -> float:
    # Every metrics fetch is a connection of its own, relayed: counted before the value is read.
    return tracker.metrics()[RELAYED] - 1


def test_announces_stay_on_the_fast_path_and_other_requests_go_to_aiohttp_in_order(tracker: Tracker):
    before = relayed(tracker)
    conn = Conn(tracker.port)
    try:
        for _ in range(3):
            conn.send(announce_request())
            status, headers, body = conn.response()
            assert status == 200 and headers["content-type"] == "application/msgpack"
            assert reply_of(body).size == 64 << 20 and "server" not in headers  # aiohttp would name itself
        assert relayed(tracker) == before + 1  # only the metrics fetch in between
        # An orders poll on the same connection: aiohttp answers it, and the announces after it too.
        conn.send(orders_request())
        status, headers, body = conn.response()
        assert status == 200 and json.loads(body)["fetch"] == [] and "aiohttp" in headers["server"]
        conn.send(announce_request())
        status, headers, body = conn.response()
        assert status == 200 and reply_of(body).size == 64 << 20
        assert relayed(tracker) == before + 3  # two metrics fetches and this connection
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order_across_both_servers(tracker: Tracker):
    conn = Conn(tracker.port)
    try:
        conn.send(announce_request() + HEALTHZ + announce_request() + orders_request() + announce_request())
        kinds = []
        for _ in range(5):
            status, headers, body = conn.response()
            assert status == 200
            kinds.append("announce" if headers["content-type"] == "application/msgpack" else
                         "orders" if b"fetch" in body else "healthz" if b"status" in body else body[:40])
        assert kinds == ["announce", "healthz", "announce", "orders", "announce"]
    finally:
        conn.close()


def test_a_chunked_announce_is_read_whole_and_a_relayed_chunked_body_is_re_framed(tracker: Tracker):
    body = announce_body()
    auth = NODE.tracker(body)["Authorization"]
    half = len(body) // 2
    chunked = (f"POST /v1/announce HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
               f"{half:x}\r\n").encode() + body[:half] + f"\r\n{len(body) - half:x}\r\n".encode() + body[half:] \
        + b"\r\n0\r\n\r\n"
    conn = Conn(tracker.port)
    try:
        conn.send(chunked)
        status, _, reply = conn.response()
        assert status == 200 and reply_of(reply).size == 64 << 20
        poll = json.dumps({"node": NODE.node, "done": [], "failed": []}).encode()
        auth = NODE.tracker(poll, "/v1/orders")["Authorization"]
        conn.send((f"POST /v1/orders HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n"
                   f"\r\n{len(poll):x}\r\n").encode() + poll + b"\r\n0\r\n\r\n")
        status, _, answer = conn.response()
        assert status == 200 and json.loads(answer)["fetch"] == []  # the signature held: the body arrived intact
    finally:
        conn.close()


@pytest.mark.parametrize(("name", "request_bytes", "status", "says"), [
    ("garbage", b"\x16\x03\x01\x02\x00 not http\r\n\r\n", 400, "malformed HTTP request"),
    ("header without colon", b"POST /v1/announce HTTP/1.1\r\nBad Header\r\n\r\n", 400, "malformed HTTP request"),
    ("frame too large", b"POST /v1/announce HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413,
     "exceeds the 1048576-byte limit"),
    ("head too large", b"POST /v1/announce HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431,
     "exceed 8190 bytes"),
    ("conflicting framing", b"POST /v1/announce HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
                            b"\r\n0\r\n\r\n", 400, "malformed HTTP request"),
])
def test_broken_requests_get_a_precise_answer_and_the_connection_closes(tracker: Tracker, name: str,
                                                                       request_bytes: bytes, status: int, says: str):
    conn = Conn(tracker.port)
    try:
        conn.send(request_bytes)
        got, headers, body = conn.response()
        assert got == status and says in json.loads(body)["error"], (name, body)
        assert headers["connection"] == "close" and conn.closed()
    finally:
        conn.close()


def test_a_refusal_reaches_a_client_still_sending_its_body(tracker: Tracker):
    """A chunked announce past the frame limit: the 413 goes out while the client is still sending, as
    an HTTP client does until it reads. Closed at once, the rest of the body met a closed socket, the
    client's kernel got a reset, and the reset threw the 413 away unread; the fast path now reads and
    drops what still comes (a lingering close) after ending its own side."""
    conn = Conn(tracker.port)
    try:
        conn.send(b"POST /v1/announce HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%b\r\n" % (64 << 10, bytes(64 << 10))
        for _ in range(wire.MAX_FRAME // (64 << 10) + 1):  # past the limit
            conn.send(chunk)
        readable, _, _ = select.select([conn.sock], [], [], 10)  # the refusal is here, unread
        assert readable
        for _ in range(8):
            conn.send(chunk)
        conn.send(b"0\r\n\r\n")
        status, headers, body = conn.response()
        assert status == 413 and "exceeds the 1048576-byte limit" in json.loads(body)["error"]
        assert headers["connection"] == "close" and conn.closed()
    finally:
        conn.close()


def test_refusals_on_the_fast_path_are_the_tracker_s_own(tracker: Tracker):
    other = Caller(TOKEN, "other-node")
    conn = Conn(tracker.port)
    try:
        unsigned = announce_body()
        conn.send(b"POST /v1/announce HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (len(unsigned), unsigned))
        status, headers, body = conn.response()
        assert status == 401 and headers["www-authenticate"].startswith("P2P-Node")
        assert "missing 'Authorization: P2P-Node" in json.loads(body)["error"]
        conn.send(announce_request(caller=other))  # signed by other-node, announcing fast-node
        status, _, body = conn.response()
        assert status == 403 and "signed by node 'other-node'" in json.loads(body)["error"]
        conn.send(announce_request(b"\xc1 not msgpack", caller=other))
        status, _, body = conn.response()
        assert status == 400 and "malformed msgpack" in json.loads(body)["error"]
        replayed = announce_request()
        conn.send(replayed)
        assert conn.response()[0] == 200
        conn.send(replayed)  # the same signature again
        status, _, body = conn.response()
        assert status == 401 and "replayed" in json.loads(body)["error"]
        conn.send(announce_request(extra="Connection: close\r\n"))
        status, _, _ = conn.response()
        assert status == 200 and conn.closed()  # the client asked to close after it
    finally:
        conn.close()


def test_a_request_sent_too_slowly_is_closed_at_the_idle_timeout(tmp_path: Path):
    proc = Tracker(tmp_path, TOKEN)
    proc.env["P2PDIST_TRACKER_IDLE_TIMEOUT"] = "1"
    proc.start()
    try:
        slow, idle = Conn(proc.port), Conn(proc.port)
        body = announce_body()
        auth = sign_request(NODE.credential, "POST", "/v1/announce", body, time.time())
        whole = (f"POST /v1/announce HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Length: {len(body)}\r\n\r\n"
                 ).encode() + body
        opened = time.monotonic()
        slow.send(whole[:40])
        idle.send(announce_request())
        assert idle.response()[0] == 200
        assert slow.closed() and idle.closed()  # neither completed a request within the second after
        assert time.monotonic() - opened < 5
    finally:
        proc.stop()



class FakeTransport:
    """What the fast path asks of its transport, recorded (the test drives the protocol directly)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_a_client_that_does_not_read_its_answers_is_not_read_either():
    """Answers pile up in the transport when the client reads none: the fast path stops reading
    its requests until the transport drains, as aiohttp's handler does."""
    app = create_app(TrackerConfig(cluster_token=TOKEN))
    transport = FakeTransport()
    conn = FastPath(app[TRACKER], lambda: None, Connections(0), idle_timeout=60.0)  # type: ignore[arg-type,return-value]
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(announce_request())
    assert transport.written.startswith(b"HTTP/1.1 200 OK") and transport.reading
    conn.pause_writing()  # the transport's buffer passed its high-water mark
    assert not transport.reading
    conn.resume_writing()
    assert transport.reading
    conn.connection_lost(None)


async def test_at_the_cap_each_new_connection_evicts_another_waiting_one():
    """A burst of connections past ``max_connections``: each new one takes the place of a different
    waiting connection, so the open ones never exceed the cap (the evicted close meanwhile)."""
    app = create_app(TrackerConfig(cluster_token=TOKEN))
    book = Connections(3)
    conns, transports = [], []
    for _ in range(10):
        transport = FakeTransport()
        conn = FastPath(app[TRACKER], lambda: None, book, idle_timeout=60.0)  # type: ignore[arg-type,return-value]
        conn.connection_made(transport)  # type: ignore[arg-type]
        conns.append(conn)
        transports.append(transport)
    assert len(book.open) == 3 and list(book.open) == conns[-3:]
    assert [t.closed for t in transports] == [True] * 7 + [False] * 3
    for conn in conns:
        conn.connection_lost(None)
    assert not book.open


def _fast_conn(app, book: Connections) -> tuple[FastPath, FakeTransport]:
    transport = FakeTransport()
    conn = FastPath(app[TRACKER], lambda: None, book, idle_timeout=60.0)  # type: ignore[arg-type,return-value]
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def test_under_a_flood_a_digest_report_is_answered_before_the_announces_read_with_it():
    """One event-loop turn reads every connection with data: a crowd's announces, then a lease
    holder's digest report. The first PROMPT are answered as read, the report at once, the rest
    PER_TURN a turn after it, in order."""
    app = create_app(TrackerConfig(cluster_token=TOKEN))
    book = Connections(0)
    holder = Caller(TOKEN, "lease-holder")
    reporter, reporter_transport = _fast_conn(app, book)
    reporter.data_received(announce_request(announce_body("lease-holder"), caller=holder))  # its lease
    started = wire.decode(bytes(reporter_transport.written).split(b"\r\n\r\n", 1)[1], expect=(wire.AnnounceReply,))
    assert started.leases, started  # the first node to ask fetches from the origin
    await asyncio.sleep(0)  # a turn later
    reporter_transport.written.clear()

    size = PROMPT + 2 * PER_TURN + 3
    crowd = [_fast_conn(app, book) for _ in range(size)]
    for i, (conn, _) in enumerate(crowd):
        node = f"crowd-{i}"
        conn.data_received(announce_request(announce_body(node), caller=Caller(TOKEN, node)))
    start = started.leases[0][0]
    report = wire.encode(wire.Announce(node="lease-holder", addr="10.0.0.1:65003", blob=BLOB, size=64 << 20,
                                       have=1, event="progress", digests=[(start, bytes(32))]))
    reporter.data_received(announce_request(report, caller=holder))

    def answered() -> list[int]:
        return [i for i, (_, t) in enumerate(crowd) if t.written]

    assert answered() == list(range(PROMPT))
    assert reporter_transport.written.startswith(b"HTTP/1.1 200 OK")  # ahead of announces read before it
    assert [c.waiting() for c, _ in crowd] == [True] * PROMPT + [False] * (size - PROMPT)  # not evictable
    await asyncio.sleep(0)
    assert answered() == list(range(PROMPT + PER_TURN))  # in the order they came
    await asyncio.sleep(0)
    assert answered() == list(range(PROMPT + 2 * PER_TURN))
    await asyncio.sleep(0)
    assert answered() == list(range(size))
    for _, transport in crowd:
        assert transport.written.startswith(b"HTTP/1.1 200 OK") and transport.written.count(b"HTTP/1.1") == 1
    assert app[TRACKER].metrics.deferred._value.get() == size - PROMPT


def _take_prompt_answers(app, book: Connections) -> None:
    """PROMPT agents' announces in this event-loop turn: the next ones read are held back."""
    for i in range(PROMPT):
        conn, _ = _fast_conn(app, book)
        conn.data_received(announce_request(announce_body(f"first-{i}"), caller=Caller(TOKEN, f"first-{i}")))


async def test_a_held_back_announce_is_answered_before_what_follows_it_on_its_connection():
    """Pipelined on one connection behind a flood: an announce held back, then a request refused.
    The refusal goes out after the announce's answer, not before it."""
    app = create_app(TrackerConfig(cluster_token=TOKEN))
    book = Connections(0)
    _take_prompt_answers(app, book)
    conn, transport = _fast_conn(app, book)
    conn.data_received(announce_request() + b"POST /v1/announce HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    first = bytes(transport.written)
    assert first.startswith(b"HTTP/1.1 200 OK")  # held back, then answered before the refusal
    assert first.index(b"HTTP/1.1 200 OK") < first.index(b"HTTP/1.1 401")
    await asyncio.sleep(0)
    assert bytes(transport.written) == first  # answered once


async def test_a_client_that_pipelines_behind_a_held_back_announce_is_read_no_further():
    """An agent sends one announce at a time; a client that pipelines them while they are held back
    is read no further once HELD_PER_CONNECTION wait, and again once they are answered, in order."""
    app = create_app(TrackerConfig(cluster_token=TOKEN))
    book = Connections(0)
    _take_prompt_answers(app, book)
    conn, transport = _fast_conn(app, book)
    requests = [announce_request(announce_body(have=i)) for i in range(HELD_PER_CONNECTION)]  # signed apart
    conn.data_received(b"".join(requests[:-1]))
    assert transport.reading and not transport.written
    conn.data_received(requests[-1])
    assert not transport.reading and not transport.written
    await asyncio.sleep(0)
    assert transport.reading and bytes(transport.written).count(b"HTTP/1.1 200 OK") == HELD_PER_CONNECTION
