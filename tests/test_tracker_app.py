"""The real tracker process (`python -m tracker`) over real HTTP on 127.0.0.1.

Every bad request must get a precise refusal, and the next valid announce must still succeed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.cli.demo.procs import free_port
from p2pdist.core.identity import NodeCredential, TicketChecker, public_bytes, sign_request
from p2pdist.core.wire import MAX_FRAME, VERSION, Announce, AnnounceReply, decode, encode
from tests.support.identity import Caller

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-cluster-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BLOB = "sha256:" + "c" * 64
MiB = 1 << 20


@dataclass
class Proc:
    proc: subprocess.Popen
    url: str
    stdout: Path
    stderr: Path


def start_tracker(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Proc:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("P2PDIST_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    out, err = tmp / "stdout.log", tmp / "stderr.log"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracker", "--listen", f"127.0.0.1:{port}", *args],
            cwd=tmp, env={**clean, **(env or {})}, stdout=o, stderr=e,
        )
    running = Proc(proc, f"http://127.0.0.1:{port}", out, err)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded poll of /healthz
        if proc.poll() is not None:
            raise AssertionError(f"tracker exited with {proc.returncode}: {err.read_text()}")
        try:
            with urllib.request.urlopen(f"{running.url}/healthz", timeout=0.5) as resp:
                if resp.status == 200:
                    return running
        except OSError:  # not listening yet (URLError is an OSError)
            pass
        time.sleep(0.05)
    stop_tracker(running)
    raise AssertionError(f"tracker did not become healthy: {err.read_text()}")


def stop_tracker(running: Proc) -> int:
    running.proc.send_signal(signal.SIGTERM)  # by PID, the one we started
    try:
        return running.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()
        raise


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    running = start_tracker(tmp_path_factory.mktemp("tracker"), env={"P2PDIST_TRACKER_CLUSTER_TOKEN": TOKEN})
    yield running
    assert stop_tracker(running) == 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def announce_body(node: str = "n1", **fields: Any) -> bytes:
    return encode(Announce(node=node, addr=f"127.0.0.1:{7000 + len(node)}", blob=BLOB, **fields))


_callers: dict[str, Caller] = {}


def signed(body: Any) -> dict[str, str]:
    """Headers of a request signed by the node the body announces (n1 for a body that is no announce)."""
    try:
        node = msgpack.unpackb(body)["node"] if isinstance(body, bytes) else "n1"
        assert isinstance(node, str) and node
    except Exception:
        node = "n1"
    caller = _callers.setdefault(node, Caller(TOKEN, node))
    return caller.tracker(body if isinstance(body, bytes) else b"")


async def post(http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
               ) -> tuple[int, Any]:
    async with http.post(f"{url}/v1/announce", data=body,
                         headers={"Content-Type": "application/msgpack",
                                  **(signed(body) if headers is None else headers)}) as resp:
        raw = await resp.read()
        if resp.content_type == "application/msgpack":
            return resp.status, decode(raw, expect=(AnnounceReply,))
        assert resp.content_type == "application/json", raw
        return resp.status, (await resp.json())["error"]


async def assert_still_serving(http: aiohttp.ClientSession, url: str) -> None:
    status, reply = await post(http, url, announce_body("checker", size=16 * MiB))
    assert status == 200 and isinstance(reply, AnnounceReply)
    assert (reply.size, reply.piece_size) == (16 * MiB, MiB)


def frame(**fields: Any) -> bytes:
    base = {"v": VERSION, "t": "announce", "node": "n1", "addr": "127.0.0.1:7001", "blob": BLOB}
    return msgpack.packb({**base, **fields}, use_bin_type=True)


async def test_healthz_needs_no_token(tracker: Proc, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{tracker.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    assert "listening on " + tracker.url in tracker.stdout.read_text()


async def test_announce_round_trip(tracker: Proc, http: aiohttp.ClientSession) -> None:
    await assert_still_serving(http, tracker.url)
    status, reply = await post(http, tracker.url, announce_body("n2", want_leases=1))
    assert status == 200
    assert reply.peers and all(p.node != "n2" for p in reply.peers)
    assert len(reply.leases) == 1 and reply.interval == 1.0  # leased pieces pending: announce faster


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"\xc1not msgpack", 400, "malformed msgpack frame"),
        (b"", 400, "malformed msgpack frame"),
        (frame(v=1), 400, f"unsupported protocol version 1: this node speaks version {VERSION}"),
        (frame(blob="sha256:../../etc/passwd"), 400,
         "field 'blob': invalid digest 'sha256:../../etc/passwd': sha256 needs 64 lowercase hex characters"),
        (frame(t="hello"), 400, "unexpected message type 'hello' here"),
        (frame(digests=[[0, b"short"]]), 400, "field 'digests[0]' must carry a 32-byte piece digest"),
        (frame(want_leases=99), 400, "field 'want_leases' must be an integer in [0, 16]"),
        (b"\x00" * (MAX_FRAME + 1), 413, f"frame of {MAX_FRAME + 1} bytes exceeds the {MAX_FRAME}-byte limit"),
        (frame(size=1 << 41), 400, f"blob size {1 << 41} exceeds this tracker's max_blob_size of {1 << 40} bytes"),
    ],
    ids=["garbage", "empty", "version", "digest-traversal", "wrong-type", "short-digest", "bounds", "oversize",
         "size-conflict"],
)
async def test_bad_announce_is_refused_precisely_and_service_continues(
    tracker: Proc, http: aiohttp.ClientSession, body: bytes, status: int, error: str
) -> None:
    await assert_still_serving(http, tracker.url)  # fixes the blob's size for the conflict case
    got_status, got_error = await post(http, tracker.url, body)
    assert (got_status, got_error[: len(error)]) == (status, error)
    await assert_still_serving(http, tracker.url)


async def test_oversize_chunked_body_is_refused(tracker: Proc, http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"\x00" * (MAX_FRAME // 4)

    status, error = await post(http, tracker.url, chunks())
    assert (status, error) == (413, f"frame exceeds the {MAX_FRAME}-byte limit")
    await assert_still_serving(http, tracker.url)


def _forged(kind: str) -> dict[str, str]:
    """One announce's headers that must not get in, by what is wrong with them."""
    body = announce_body()
    if kind == "missing":
        return {}
    if kind == "cluster-token-bearer":  # the old shared-token scheme: the secret itself on the wire
        return {"Authorization": f"Bearer {TOKEN}"}
    if kind == "other-secret":
        return Caller("another-cluster", "n1").tracker(body)
    if kind == "expired":
        caller = Caller(TOKEN, "n1")
        caller.credential = NodeCredential.issue(TOKEN, "n1", int(time.time()) - 10)
        return caller.tracker(body)
    if kind == "other-body":  # a signature lifted onto another announce
        return Caller(TOKEN, "n1").tracker(announce_body(size=1))
    if kind == "skewed":
        cred = NodeCredential.issue(TOKEN, "n1", int(time.time()) + 3600)
        return {"Authorization": sign_request(cred, "POST", "/v1/announce", body, time.time() - 3600)}
    if kind == "non-ascii":
        return {"Authorization": "P2P-Node " + "\u00e9" * 8}
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "error"), [
    ("missing", "missing 'Authorization: P2P-Node ...' header"),
    ("cluster-token-bearer", "must use the P2P-Node scheme"),
    ("other-secret", "invalid signature for node 'n1'"),
    ("expired", "credential of node 'n1' expired"),
    ("other-body", "invalid signature for node 'n1'"),
    ("skewed", "synchronise the clocks"),
    ("non-ascii", "malformed P2P-Node authorization"),
])
async def test_announces_need_a_node_credential_signature(
    tracker: Proc, http: aiohttp.ClientSession, kind: str, error: str
) -> None:
    headers = _forged(kind)
    status, got = await post(http, tracker.url, announce_body(), headers=headers)
    assert status == 401 and error in got
    await assert_still_serving(http, tracker.url)


async def test_a_signed_announce_is_accepted_once(tracker: Proc, http: aiohttp.ClientSession) -> None:
    body = announce_body("once")
    headers = Caller(TOKEN, "once").tracker(body)
    assert (await post(http, tracker.url, body, headers=headers))[0] == 200
    status, got = await post(http, tracker.url, body, headers=headers)
    assert (status, got) == (401, "request replayed")


async def test_a_node_cannot_announce_as_another(tracker: Proc, http: aiohttp.ClientSession) -> None:
    body = announce_body("victim")
    status, got = await post(http, tracker.url, body, headers=Caller(TOKEN, "mallory").tracker(body))
    assert status == 403 and "signed by node 'mallory' but announces node 'victim'" in got


async def test_a_signed_announce_with_a_peer_key_gets_a_ticket_for_it(tracker: Proc, http: aiohttp.ClientSession):
    key = public_bytes(Ed25519PrivateKey.generate().public_key())
    body = announce_body("ticketed", peer_key=key)
    status, reply = await post(http, tracker.url, body)
    assert status == 200
    ticket, _ = TicketChecker(Caller(TOKEN).credential.ticket_key, "anyone").ticket(reply.ticket, time.time())
    assert (ticket.node, ticket.peer_key) == ("ticketed", key)
    assert 3500 < ticket.expires - time.time() <= 3600  # the default ticket_ttl
    _, again = await post(http, tracker.url, announce_body("ticketed"))
    assert again.ticket == ""  # asked for only with a peer key


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
                         ids=["missing", "wrong", "scheme"])
async def test_metrics_need_the_cluster_secret_or_a_node_signature(
    tracker: Proc, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with http.get(f"{tracker.url}/metrics", headers=headers) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("P2P-Node")
    async with http.get(f"{tracker.url}/metrics", headers=Caller(TOKEN, "n1").tracker(b"", "/metrics", "GET")) as resp:
        assert resp.status == 200
    await assert_still_serving(http, tracker.url)


async def test_leases_and_digests_over_http(tracker: Proc, http: aiohttp.ClientSession) -> None:
    blob = "sha256:" + "d" * 64

    def body(node: str, **fields: Any) -> bytes:
        return encode(Announce(node=node, addr="127.0.0.1:1", blob=blob, **fields))

    _, holder = await post(http, tracker.url, body("h", size=4 * MiB, want_leases=1))
    assert [tuple(lease[:2]) for lease in holder.leases] == [(0, 1)]  # one piece per lease by default
    # o wants origin work too: it is sent to audit h's piece (fetch it from the origin as well).
    _, other = await post(http, tracker.url, body("o", size=4 * MiB, want_leases=1))
    assert (0, 1) in [tuple(lease[:2]) for lease in other.leases]
    digest = bytes(range(32))
    _, holder = await post(http, tracker.url, body("h", size=4 * MiB, digests=[(0, digest)],
                                                   digest_pos=holder.digest_pos))
    assert holder.digests == []  # withheld: nobody has checked h's word yet
    _, other = await post(http, tracker.url, body("o", size=4 * MiB, digests=[(0, digest)],
                                                  digest_pos=other.digest_pos))
    assert other.digests == [(0, digest)]  # proven: published


async def test_metrics_count_announces_and_errors(tracker: Proc, http: aiohttp.ClientSession) -> None:
    await post(http, tracker.url, b"\xc1")
    await assert_still_serving(http, tracker.url)
    async with http.get(f"{tracker.url}/metrics", headers=AUTH) as resp:
        assert resp.status == 200
        text = await resp.text()
    for needle in (
        'p2pdist_tracker_announces_total{event="progress"}', 'p2pdist_tracker_errors_total{kind="malformed"}',
        "p2pdist_tracker_peers ", "p2pdist_tracker_blobs ", "p2pdist_tracker_leases_granted_total",
        "p2pdist_tracker_digests_rejected_total",
    ):
        assert needle in text


async def _leases_out(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics", headers=AUTH) as resp:
        text = await resp.text()
    (line,) = [line for line in text.splitlines() if line.startswith("p2pdist_tracker_leases_out ")]
    return float(line.split()[1])


async def test_leases_out_gauge_follows_grants(tracker: Proc, http: aiohttp.ClientSession) -> None:
    before = await _leases_out(http, tracker.url)
    other = "sha256:" + os.urandom(32).hex()  # a blob of its own: the module's tracker is shared by other tests
    body = encode(Announce(node="leaser", addr="127.0.0.1:7999", blob=other, size=64 * MiB, want_leases=3))
    status, reply = await post(http, tracker.url, body)
    assert status == 200 and len(reply.leases) == 1  # origin slow start: one stream first
    assert await _leases_out(http, tracker.url) == before + 1
    # One piece digested: one stream more may open (1 + 1 digested out at once).
    body = encode(Announce(node="leaser", addr="127.0.0.1:7999", blob=other, want_leases=3,
                           digests=[(reply.leases[0][0], os.urandom(32))]))
    status, reply = await post(http, tracker.url, body)
    assert status == 200 and len(reply.leases) == 2
    assert await _leases_out(http, tracker.url) == before + 2


async def test_events_are_logged_as_json_lines(tracker: Proc, http: aiohttp.ClientSession) -> None:
    await post(http, tracker.url, frame(v=9))
    lines = [json.loads(line) for line in tracker.stderr.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "listening" for line in lines)
    assert any(line["msg"] == "bad_announce" and "version 9" in line["why"] for line in lines)


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    running = start_tracker(tmp_path)  # no token: allowed on loopback
    assert stop_tracker(running) == 0
    assert any(json.loads(line).get("msg") == "stopping" for line in running.stderr.read_text().splitlines())


def test_refuses_to_expose_without_token(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("P2PDIST_")}
    clean["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "tracker", "--listen", f"0.0.0.0:{free_port()}"],
                          env=clean, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "without a cluster token" in done.stderr and "--insecure" in done.stderr
