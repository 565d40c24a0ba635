"""Origin Range bodies read in a worker thread (p2pdist/agent/origin_reader.py), against a real docker-registry.

The thread takes only the plain case (authorised already, 206); a challenge, a redirect or an origin
without Range raise NeedsAsyncClient, and the swarm then uses the async client for that run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from p2pdist.agent.origin import OriginError
from p2pdist.agent.origin_reader import NeedsAsyncClient, RunControl, Stopped, read_range
from p2pdist.agent.origin_target import RangeTarget
from tests.support.procs import AgentProc
from tests.support.registry import Registry
from tests.support.servers import blob_store, serving

pytestmark = pytest.mark.integration


def target(registry: Registry, repo: str, digest: str, authorization: str | None = None) -> RangeTarget:
    return RangeTarget("http", "127.0.0.1", registry.port, f"/v2/{repo}/blobs/{digest}", authorization, True, 10.0)


def read(t: RangeTarget, start: int, lengths: list[int], control: RunControl | None = None) -> list[bytes]:
    pieces: list[bytes] = []
    spare: list[bytearray] = []
    read_range(t, start, lengths, lambda k, piece: pieces.append(bytes(piece)),
               lambda n: spare.pop() if spare else bytearray(n), control or RunControl(), lambda n: None)
    return pieces


def test_pieces_arrive_whole_and_in_order(registry: Registry) -> None:
    data = os.urandom(3 * 65536 + 100)
    digest = registry.push_blob("team/app", data)
    lengths = [65536, 65536, 65536 - 1000, 100]  # from byte 1000 to the end: a short last piece
    pieces = read(target(registry, "team/app", digest), 1000, lengths)
    assert [len(p) for p in pieces] == lengths
    assert b"".join(pieces) == data[1000:]


def test_challenge_and_unknown_blob_go_to_the_async_client(registry_token: Registry) -> None:
    data = os.urandom(10_000)
    digest = registry_token.push_blob("private/app", data)
    with pytest.raises(NeedsAsyncClient, match="401"):
        read(target(registry_token, "private/app", digest), 0, [len(data)])
    assert registry_token.issuer is not None
    token = registry_token.issuer.mint("alice", [{"type": "repository", "name": "private/app", "actions": ["pull"]}])
    assert read(target(registry_token, "private/app", digest, f"Bearer {token}"), 0, [len(data)]) == [data]
    missing = "sha256:" + hashlib.sha256(b"not there").hexdigest()
    with pytest.raises(NeedsAsyncClient, match="answered 404"):
        read(target(registry_token, "private/app", missing, f"Bearer {token}"), 0, [10])


def test_a_stop_ends_the_read(registry: Registry) -> None:
    data = os.urandom(4 * 65536)
    digest = registry.push_blob("team/app", data)
    control = RunControl()
    control.stop()
    with pytest.raises(Stopped):
        read(target(registry, "team/app", digest), 0, [65536] * 4, control)


def serve_origin(data: bytes, after_half: str) -> Iterator[tuple[int, bytes]]:
    """An origin that promises a 206 body, sends half and then hangs up (``cut``: a fault
    mid-transfer), goes silent (``hang``: a stalled origin) or sends 64 bytes every 50 ms
    (``trickle``: a congested proxy, a degraded backend)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def blob(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        if after_half == "hang":
            await asyncio.sleep(60)
        elif after_half == "trickle":
            for at in range(len(data) // 2, len(data), 64):
                await resp.write(data[at:at + 64])
                await asyncio.sleep(0.05)
            return resp
        request.transport.close()
        return resp

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(runner.addresses[0][1])
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0], data
    finally:
        # Cancel the hanging handler first, or the runner's cleanup would wait for it.
        loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def cutting_origin() -> Iterator[tuple[int, bytes]]:
    yield from serve_origin(os.urandom(200_000), "cut")


@pytest.fixture
def stalling_origin() -> Iterator[tuple[int, bytes]]:
    yield from serve_origin(os.urandom(200_000), "hang")


@pytest.fixture
def trickling_origin() -> Iterator[tuple[int, bytes]]:
    yield from serve_origin(os.urandom(200_000), "trickle")


def read_stalled(port: int, data: bytes, stall: float) -> tuple[list[bytes], OriginError]:
    """Read the origin's blob in four pieces, with a 60 s answer timeout and a ``stall`` s body window:
    the pieces that came, and the error that ended the read."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    t = RangeTarget("http", "127.0.0.1", port, f"/v2/team/app/blobs/{digest}", None, True, 60.0, stall)
    pieces: list[bytes] = []
    with pytest.raises(OriginError) as caught:
        read_range(t, 0, [50_000] * 4, lambda k, piece: pieces.append(bytes(piece)), bytearray, RunControl(),
                   lambda n: None)
    return pieces, caught.value


def test_an_origin_body_gone_silent_is_given_up_after_the_stall_window(stalling_origin: tuple[int, bytes]) -> None:
    # The socket's 60 s timeout held the run (and its lease, the others' pieces) for 60 s.
    pieces, error = read_stalled(*stalling_origin, stall=0.5)
    assert "sent nothing for 0.5 s" in str(error) and error.transient
    assert len(pieces) == 2  # what came before the silence was handed on


def test_an_origin_body_that_trickles_is_a_stall(trickling_origin: tuple[int, bytes]) -> None:
    # 64 bytes every 50 ms never let a read time out: the run held its lease until the trickle
    # ended (here 78 s; a real one, for good).
    pieces, error = read_stalled(*trickling_origin, stall=0.5)
    assert "stalled" in str(error) and error.transient
    assert len(pieces) == 2


def _blocked_in_recv(thread: threading.Thread) -> bool:
    """The thread is inside socket.SocketIO.readinto (recv_into) for piece 2, the first never sent."""
    frame = sys._current_frames().get(thread.ident)
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, frame.f_code.co_filename))
        frame = frame.f_back
    return any(name == "readinto" and file.endswith("socket.py") for name, file in names)


def test_a_stop_ends_a_read_blocked_on_a_silent_origin(stalling_origin: tuple[int, bytes]) -> None:
    port, data = stalling_origin
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    t = RangeTarget("http", "127.0.0.1", port, f"/v2/team/app/blobs/{digest}", None, True, 60.0)
    control, got_one, outcome = RunControl(), threading.Event(), []

    def run() -> None:
        try:
            read_range(t, 0, [50_000] * 4, lambda k, piece: k == 1 and got_one.set(), bytearray, control,
                       lambda n: None)
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    assert got_one.wait(10), "the first piece never arrived"
    # Stop only once the thread waits in recv for bytes the origin never sends (the half it sent is
    # two pieces): a stop seen between pieces would pass without the socket shutdown being tested.
    deadline = time.monotonic() + 10
    while not _blocked_in_recv(thread):
        assert thread.is_alive() and time.monotonic() < deadline, "the reader never waited on the origin"
        time.sleep(0.01)
    control.stop()  # the origin sends nothing more; without the socket shutdown this waits 60 s
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Stopped)


def test_a_body_cut_short_is_an_origin_error(cutting_origin: tuple[int, bytes]) -> None:
    port, data = cutting_origin
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    t = RangeTarget("http", "127.0.0.1", port, f"/v2/team/app/blobs/{digest}", None, True, 10.0)
    pieces: list[bytes] = []
    with pytest.raises(OriginError, match="early"):
        read_range(t, 0, [50_000] * 4, lambda k, piece: pieces.append(bytes(piece)), bytearray,
                   RunControl(), lambda n: None)
    assert b"".join(pieces) == data[: 50_000 * len(pieces)] and len(pieces) == 2


async def test_an_agent_behind_a_redirecting_registry_still_gets_every_byte(tmp_path: Path) -> None:
    """307 to a blob store (S3, a CDN): the thread hands the run to the async client, which follows it."""
    root: list[Path] = []
    async with serving(blob_store(root)) as port:
        store_url = f"http://127.0.0.1:{port}/"
        with Registry(redirect_baseurl=store_url, workdir=tmp_path / "registry") as registry:
            root.append(registry.root)
            data = os.urandom(9 << 20)
            digest = registry.push_blob("team/app", data)
            agent = AgentProc(tmp_path, "agent", "http://127.0.0.1:9", upstreams=[f"http://{registry.host}"],
                              mirror=True).start()
            try:
                async with aiohttp.ClientSession() as s, s.get(
                        f"http://{agent.mirror}/v2/team/app/blobs/{digest}", params={"ns": registry.host}) as r:
                    assert r.status == 200
                    assert await r.read() == data
            finally:
                agent.stop()
            ranges = [r for r in registry.requests() if r.path.endswith(digest) and r.method == "GET"]
            assert ranges and all(r.status == 307 for r in ranges)
