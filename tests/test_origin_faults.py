"""The origin failing under a pull: a registry restarted mid-distribution, a registry that rate-limits.

Real processes: docker-registry as the origin, the tracker, agents. A rate-limiting front stands
in for what Docker Hub, ghcr.io and quay.io answer a busy client (429 with Retry-After): the real
registry is behind it, and distribution itself never answers 429.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import os
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
from aiohttp import web

from p2pdist.agent.origin import STALL_FLOOR, OriginError, OriginNotFound, StallWatch, retry_after_seconds
from p2pdist.core import wire
from tests.support.cluster import TOKEN, Cluster, fetch_all, sha256_file, wait_until
from tests.support.identity import Caller
from tests.support.procs import AgentProc
from tests.support.registry import Registry
from tests.support.servers import serving

MiB = 1 << 20
NODES = 4


def test_retry_after_is_read_as_seconds_or_a_date_and_only_some_answers_are_worth_asking_again() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 30
    assert retry_after_seconds(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert OriginError("cut off").transient  # no answer at all
    assert all(OriginError("x", status=s).transient for s in (429, 500, 502, 503, 504, 408))
    assert not any(OriginError("x", status=s).transient for s in (400, 401, 403, 416))
    assert not OriginNotFound("gone", status=404).transient


def test_a_stall_is_a_window_of_waiting_since_the_body_last_moved_its_floor() -> None:
    watch = StallWatch(5.0, "registry.example")
    watch.read(0.01, 512 << 10)  # a burst, then a trickle: judged from the burst on, not with it
    for _ in range(4):
        watch.read(1.0, 64)
    with pytest.raises(OriginError, match=r"stalled: 320 bytes in 5\.0 s") as caught:
        watch.read(1.0, 64)
    assert caught.value.transient
    slow = StallWatch(5.0, "registry.example")  # slow but moving: the floor every 2 s, for ever
    for _ in range(1000):
        slow.read(1.0, STALL_FLOOR // 2)
    paused = StallWatch(5.0, "registry.example")  # our own pauses (hashing, the rate limit) are not waits
    for _ in range(1000):
        paused.read(0.001, 0)
    assert "sent nothing for 5 s" in str(paused.silent()) and paused.silent().transient


@pytest.mark.integration
def test_a_registry_restarted_mid_distribution_is_waited_for(registry: Registry, cluster: Cluster):
    # The origin crashes while lease holders stream from it, and is back 2 s later. Each origin run
    # tried 3 times in 0.6 s: 2 of 4 pulls failed, the other two stalled 10 s, 1.66x egress.
    size = 48 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    cluster.start_tracker()
    slow = {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(16 * MiB)}  # 3 s each: time for the crash to land mid-run
    agents = [cluster.agent(f"node{i}", env=slow) for i in range(NODES)]
    with ThreadPoolExecutor(NODES) as pool:
        pulls = [pool.submit(a.fetch, f"{registry.host}/team/app@{digest}") for a in agents]
        wait_until(lambda: registry.egress(digest) >= size // 4, "a quarter of the blob left the origin")
        registry.kill()
        wait_until(lambda: any("origin request failed; retrying" in a.output() for a in agents),
                   "an agent found the origin gone")
        time.sleep(2)  # the restart's downtime: what the test is about, not a stand-in for a signal
        registry.relaunch()
        results = [p.result() for p in pulls]
    for agent, result in zip(agents, results, strict=True):
        assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-3000:]}"
        assert sha256_file(result["path"]) == digest
        assert "fetching the rest from the origin" not in agent.output()
    # The registry's log misses the requests the crash cut off: the agents count what they took.
    taken = sum(r["from_origin"] for r in results) / size
    print(json.dumps({"case": "registry restarted mid-distribution", "from_origin_total": round(taken, 3),
                      "from_origin": [round(r["from_origin"] / MiB) for r in results]}))
    assert registry.egress(digest) / size <= taken <= 1.2, f"the agents took {taken:.2f} x the blob from the origin"


# A body writer: (response, chunk, bytes of the body sent before it) -> writes the chunk its way.
BodyWriter = Callable[[web.StreamResponse, bytes, int], Awaitable[None]]


async def _plain(response: web.StreamResponse, chunk: bytes, sent: int) -> None:
    await response.write(chunk)


def front(upstream: str, answer: Callable[[web.Request], web.Response | None] = lambda r: None,
          body: Callable[[web.Request], BodyWriter] = lambda r: _plain,
          seen: Callable[[web.Request, int], None] = lambda r, s: None) -> web.Application:
    """A proxy before the real registry at ``upstream`` (a CDN, a rate-limiting gateway): every
    request is passed on, unless ``answer`` answers it here; each upstream status goes to ``seen``,
    and the body is written by the writer ``body`` picks for the request (the faults under test)."""

    async def forward(request: web.Request) -> web.StreamResponse:
        mine = answer(request)
        if mine is not None:
            return mine
        write = body(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("range", "authorization", "accept")}
        async with aiohttp.ClientSession() as session, session.request(
                request.method, upstream + request.path_qs, headers=headers, allow_redirects=False) as up:
            seen(request, up.status)
            response = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items()
                if k.lower() in ("content-type", "content-length", "content-range", "docker-content-digest")})
            await response.prepare(request)
            sent = 0
            async for chunk in up.content.iter_chunked(1 << 16):
                await write(response, chunk, sent)
                sent += len(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def blob_get(request: web.Request) -> bool:
    return request.method == "GET" and "/blobs/" in request.path


def ranged_get(request: web.Request) -> bool:
    return blob_get(request) and "Range" in request.headers


def rate_limiting_front(upstream: str, refusals: int, seen: list[tuple[float, int]]) -> web.Application:
    """Answers the first ``refusals`` blob GETs 429 with Retry-After: 1, as a registry whose pull
    rate limit the node reached does; ``seen`` gets (time, status) of every blob GET."""

    def answer(request: web.Request) -> web.Response | None:
        if not blob_get(request) or sum(1 for _, s in seen if s == 429) >= refusals:
            return None
        seen.append((time.monotonic(), 429))
        return web.json_response(
            {"errors": [{"code": "TOOMANYREQUESTS", "message": "You have reached your pull rate limit."}]},
            status=429, headers={"Retry-After": "1"})

    def note(request: web.Request, status: int) -> None:
        if blob_get(request):
            seen.append((time.monotonic(), status))

    return front(upstream, answer=answer, seen=note)


def trickling_front(upstream: str, seen: list[tuple[str, bool]]) -> web.Application:
    """The first blob Range GET's body stops after 512 KiB and then trickles 64 bytes a second, as
    behind a congested proxy or a degraded backend; ``seen`` gets (Range, trickled) of each."""

    async def trickle(response: web.StreamResponse, chunk: bytes, sent: int) -> None:
        if sent < 512 << 10:
            await response.write(chunk)
            return
        for at in range(0, len(chunk), 64):
            await response.write(chunk[at:at + 64])
            await asyncio.sleep(1.0)

    def body(request: web.Request) -> BodyWriter:
        if not ranged_get(request):
            return _plain
        first = not any(t for _, t in seen)
        seen.append((request.headers["Range"], first))
        return trickle if first else _plain

    return front(upstream, body=body)


@pytest.mark.integration
async def test_a_response_that_trickles_mid_body_is_asked_again_before_the_swarm_gives_up(registry: Registry,
                                                                                          cluster: Cluster):
    # The first origin piece's body trickles after 512 KiB. Its run held the lease (and, with the
    # audit of that piece and the slow start waiting on it, every other lease) for as long as the
    # trickle lasted; the others went to the origin for the whole blob at their 10 s stall timeout
    # (3 x 24 MiB: up to 3.0x egress). Now the holder asks again after limits.origin_stall_timeout.
    size = 24 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    seen: list[tuple[str, bool]] = []
    async with serving(trickling_front(registry.url, seen)) as port:
        cluster.upstreams = [f"http://127.0.0.1:{port}"]
        tracker = cluster.start_tracker()
        agents = [cluster.agent(f"node{i}") for i in range(3)]
        results = await asyncio.to_thread(fetch_all, agents, f"127.0.0.1:{port}/team/app@{digest}")
    assert sum(t for _, t in seen) == 1, seen
    for agent, result in zip(agents, results, strict=True):
        assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-3000:]}"
        assert sha256_file(result["path"]) == digest
        assert "fetching the rest from the origin" not in agent.output()
    assert sum("stalled" in a.output() for a in agents) == 1
    # The fresh tracker audits its new reporters: one piece twice per audit, one audit per pair of
    # them at most (three nodes: two audits when the third's first origin piece was leased before
    # the first audit was decided, as on a loaded machine, where it came to 1.08x).
    audits = tracker.metrics().get('p2pdist_tracker_audits_total{result="assigned"}', 0)
    taken = sum(r["from_origin"] for r in results)
    print(json.dumps({"case": "a trickling origin response", "from_origin_total": round(taken / size, 3),
                      "audits": audits, "seconds": [round(r["seconds"], 2) for r in results]}))
    assert 1 <= audits <= 2
    assert taken == size + audits * MiB, f"the agents took {taken / size:.3f} x the blob from the origin"


def flipping_front(upstream: str, armed: list[bool], flipped: list[str]) -> web.Application:
    """Once ``armed``, the first blob Range GET's body has its first byte flipped (a bit flipped in
    a proxy, a storage backend read gone wrong); ``flipped`` gets its Range."""

    async def flip(response: web.StreamResponse, chunk: bytes, sent: int) -> None:
        await response.write(bytes([chunk[0] ^ 1]) + chunk[1:] if sent == 0 else chunk)

    def body(request: web.Request) -> BodyWriter:
        if not (ranged_get(request) and armed[0] and not flipped):
            return _plain
        flipped.append(request.headers["Range"])
        return flip

    return front(upstream, body=body)


@pytest.mark.integration
async def test_a_byte_flipped_in_one_origin_response_costs_the_swarm_one_fetch_more_not_one_per_node(
        registry: Registry, cluster: Cluster):
    # The lease holder of the flipped piece reports its digest (it is proven: no audit), the others
    # take the piece from it, and every assembled blob fails its digest. Each node reported it and
    # went to the origin alone for the whole blob, and each report wiped the tracker's log again:
    # 3 nodes, 2.5-4.2x the blob from the registry (N+1 for N nodes). Now the first report wipes
    # the log, the others are stale, and the swarm fetches the blob once more.
    warm = registry.push_blob("team/app", os.urandom(4 * MiB))  # proves the nodes: no audit below
    size = 24 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    armed, flipped = [False], []
    async with serving(flipping_front(registry.url, armed, flipped)) as port:
        cluster.upstreams = [f"http://127.0.0.1:{port}"]
        tracker = cluster.start_tracker()
        agents = [cluster.agent(f"node{i}") for i in range(3)]
        await asyncio.to_thread(fetch_all, agents, f"127.0.0.1:{port}/team/app@{warm}")
        armed[0] = True
        results = await asyncio.to_thread(fetch_all, agents, f"127.0.0.1:{port}/team/app@{digest}")
    assert flipped, "no Range request came through the front: the test proved nothing"
    failed = [a for a in agents if "assembled blob failed its digest" in a.output()]
    assert failed  # the holder of the flipped piece at least
    for agent, result in zip(agents, results, strict=True):
        assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-3000:]}"
        assert sha256_file(result["path"]) == digest
    for agent in failed:  # each went through the swarm first, where every one went to the origin alone
        assert "assembled blob failed its digest; fetching it again through the swarm" in agent.output()
    assert tracker.metrics().get("p2pdist_tracker_corrupt_resets_total") == 1  # one wipe, not one per node
    egress = registry.egress(digest) / size
    print(json.dumps({"case": "a byte flipped in one origin response", "registry_egress": round(egress, 3),
                      "failed": len(failed)}))
    # A node still on its first try when the log is wiped starts over too (the reply says "wiped"):
    # re-reporting what it held, as after a tracker restart, put the digest that failed into the
    # new log in 2 of about 25 runs, and every node failed again (4.4x).
    assert not any("failed its digest again" in a.output() for a in agents)
    assert egress <= 2.2, f"{egress:.2f} x the blob left the registry"  # 2.0 measured; before 2.38-4.17


def announce_corrupt(tracker: str, blob: str, size: int, node: str) -> None:
    """What a node whose assembled blob failed its digest says, signed with its own credential."""
    body = wire.encode(wire.Announce(node=node, addr="127.0.0.1:1", blob=blob, size=size, event="corrupt"))
    request = urllib.request.Request(f"{tracker}/v1/announce", data=body, method="POST",
                                     headers=Caller(TOKEN, node).tracker(body))
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


@pytest.mark.integration
def test_a_download_whose_log_is_wiped_midway_starts_over_and_reports_nothing_it_held(registry: Registry,
                                                                                     cluster: Cluster):
    # Another node's assembled blob failed and the tracker wiped the log this pull's pieces were
    # checked against. The pull used to re-report them to the new log (as after a tracker restart),
    # the digest that failed among them when it held the bad piece.
    size = 24 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    tracker = cluster.start_tracker()
    agent = cluster.agent("node0", env={"P2PDIST_LIMITS_DOWNLOAD_RATE": str(8 * MiB)})  # 3 s: time to wipe midway
    with ThreadPoolExecutor(1) as pool:
        pull = pool.submit(agent.fetch, f"{registry.host}/team/app@{digest}")
        wait_until(lambda: registry.egress(digest) >= size // 4, "a quarter of the blob left the origin")
        announce_corrupt(tracker.url, digest, size, "witness")
        result = pull.result()
    assert result.get("done"), f"{result}\n{agent.output()[-3000:]}"
    assert sha256_file(result["path"]) == digest
    assert "fetching the blob again through the swarm" in agent.output()
    assert tracker.metrics().get("p2pdist_tracker_corrupt_resets_total") == 1
    assert result["resumed"] == 0  # what it held before the wipe was dropped, not resumed
    print(json.dumps({"case": "log wiped midway", "seconds": result["seconds"]}))


@pytest.mark.integration
async def test_a_rate_limited_origin_is_asked_again_after_its_retry_after(registry: Registry, cluster: Cluster):
    # Three tries in 0.6 s: a 429 with Retry-After: 1 failed the pull. Now its Retry-After is waited.
    size = MiB // 4  # one piece: one origin run, whose tries follow one another
    digest = registry.push_blob("team/app", os.urandom(size))
    seen: list[tuple[float, int]] = []
    async with serving(rate_limiting_front(registry.url, 3, seen)) as port:
        cluster.upstreams = [f"http://127.0.0.1:{port}"]
        cluster.start_tracker()
        agent = cluster.agent("node0")
        result = await asyncio.to_thread(agent.fetch, f"127.0.0.1:{port}/team/app@{digest}")
    assert result.get("done"), f"{result}\n{agent.output()[-3000:]}"
    assert sha256_file(result["path"]) == digest
    statuses = [s for _, s in seen]
    assert statuses[:3] == [429, 429, 429] and 206 in statuses[3:], statuses
    # Each try after a 429 came a second later at least, not after the 0.2 s, 0.4 s ... of back-off.
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(seen[:4])]
    assert all(gap >= 0.95 for gap in gaps), gaps


@pytest.mark.integration
def test_a_pull_the_origin_fails_for_good_fails_and_hands_its_leases_back_at_once(registry: Registry,
                                                                                   cluster: Cluster):
    size = 48 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    tracker = cluster.start_tracker()
    env = {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(16 * MiB), "P2PDIST_LIMITS_ORIGIN_PATIENCE": "1"}
    agent = cluster.agent("node0", env=env)
    with ThreadPoolExecutor(1) as pool:
        pull = pool.submit(agent.fetch, f"{registry.host}/team/app@{digest}")
        wait_until(lambda: registry.egress(digest) > 0, "the blob began to leave the origin")
        registry.kill()  # and it stays down
        result = pull.result()
    assert not result.get("done") and "origin" in result.get("error", ""), result
    # The tracker heard it leave: its leases were handed back, not held until they expired.
    wait_until(lambda: tracker.metrics().get('p2pdist_tracker_announces_total{event="stopped"}', 0) == 1,
               "the failed download announced stopped")


@pytest.mark.integration
async def test_a_client_of_the_mirror_hears_the_upstreams_rate_limit_as_it_said_it(registry: Registry,
                                                                                   cluster: Cluster):
    # Past the patience, the pull fails as the upstream failed it: 429 TOOMANYREQUESTS with its
    # Retry-After (docker prints "toomanyrequests"), where it was a 502 that blamed the mirror.
    digest = registry.push_blob("team/app", os.urandom(MiB // 4))
    seen: list[tuple[float, int]] = []
    async with serving(rate_limiting_front(registry.url, 1000, seen)) as port:
        cluster.upstreams = [f"http://127.0.0.1:{port}"]
        tracker = cluster.start_tracker()
        agent = AgentProc(cluster.workdir, "node0", tracker.url, TOKEN, {"P2PDIST_LIMITS_ORIGIN_PATIENCE": "1.5"},
                          upstreams=cluster.upstreams, mirror=True)
        cluster.procs.append(agent)
        await asyncio.to_thread(agent.start)
        url = f"http://127.0.0.1:{agent.mirror_port}/v2/team/app/blobs/{digest}?ns=127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            body = await resp.json()
            assert resp.status == 429, body
            assert resp.headers.get("Retry-After") == "1"
            assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert len([s for _, s in seen if s == 429]) >= 2  # asked again within the patience, then gave up


@pytest.mark.integration
def test_a_fetch_that_begins_while_the_registry_restarts_waits_for_it(registry: Registry, cluster: Cluster):
    # A fetch by reference asks the origin for the blob's size first (preheat orders, `p2pdist
    # fetch`): with the registry down at that moment, it failed at once.
    digest = registry.push_blob("team/app", os.urandom(4 * MiB))
    cluster.start_tracker()
    agent = cluster.agent("node0")
    registry.kill()
    with ThreadPoolExecutor(1) as pool:
        pull = pool.submit(agent.fetch, f"{registry.host}/team/app@{digest}")
        wait_until(lambda: "origin request failed; retrying" in agent.output(), "the agent found the origin gone")
        registry.relaunch()
        result = pull.result()
    assert result.get("done"), f"{result}\n{agent.output()[-3000:]}"
    assert sha256_file(result["path"]) == digest
