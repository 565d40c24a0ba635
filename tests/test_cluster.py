"""Agents and a tracker as separate processes on loopback, pulling from a real docker-registry."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from p2pdist.core.manifest import PIECE_HASH
from tests.support.cluster import TOKEN, Cluster, fetch_all, sha256_file
from tests.support.procs import AgentProc, free_port
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20


def test_eight_agents_flash_crowd_take_each_byte_from_origin_about_once(registry: Registry, cluster: Cluster):
    size = 256 * MiB
    digest = registry.push_blob("team/big", os.urandom(size))
    cluster.start_tracker()
    agents = [cluster.agent(f"node{i}") for i in range(8)]
    results = fetch_all(agents, f"{registry.host}/team/big@{digest}")
    for agent, result in zip(agents, results, strict=True):
        assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-2000:]}"
        assert sha256_file(result["path"]) == digest
    egress = registry.egress(digest)
    assert egress <= 1.10 * size, f"origin served {egress / size:.2f} x the blob"
    # The agents' own accounting agrees that most bytes moved between peers.
    assert sum(r["from_peers"] for r in results) >= 6 * size
    # Digests travelled with the pieces too (core.proofs): the tracker's proofs held at every
    # neighbour that checked them (a proof that failed would have banned an honest agent).
    metrics = [a.metrics() for a in agents]
    assert sum(m.get('p2pdist_piece_digests_learned_total{source="peer"}', 0) for m in metrics) > 0
    assert all(m.get("p2pdist_peers_banned_total", 0) == 0 for m in metrics)
    # Every piece went out with the block digests its sender kept when it verified it (from the peer
    # that sent it, or hashed from the origin's bytes): none was read back and hashed again to serve it.
    assert sum(m.get("p2pdist_bytes_uploaded_total", 0) for m in metrics) >= 6 * size
    assert all(m.get("p2pdist_block_lists_hashed_total", 0) == 0 for m in metrics)


def test_peer_that_corrupts_uploads_is_dropped_and_everyone_still_finishes(registry: Registry, cluster: Cluster):
    size = 64 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    cluster.start_tracker()
    # Fall back to the origin quickly for pieces only the bad peer holds.
    fast_stall = {"P2PDIST_LIMITS_STALL_TIMEOUT": "3"}
    bad = cluster.agent("bad", {"P2PDIST_FAULTS_CORRUPT_UPLOADS": "true", **fast_stall})
    good = [cluster.agent(f"good{i}", fast_stall) for i in range(4)]
    ref = f"{registry.host}/team/app@{digest}"
    assert bad.fetch(ref).get("done")  # the bad peer seeds the whole blob first
    results = fetch_all(good, ref)
    bad_pieces = 0
    for agent, result in zip(good, results, strict=True):
        assert result.get("done"), f"{agent.name}: {result}"
        assert sha256_file(result["path"]) == digest
        seen = agent.metrics().get("p2pdist_bad_pieces_total", 0)
        bad_pieces += seen
        if seen:
            assert "bad" in agent.status()["banned"], f"{agent.name} got bad pieces but kept the peer"
        # Once banned, no more requests: at most the ban threshold plus what was already in flight.
        assert seen <= 2 + 4
    assert bad_pieces >= 1, "the corrupting peer was never asked: the test proved nothing"
    uploaded = bad.metrics()["p2pdist_bytes_uploaded_total"]
    piece = 1 * MiB
    assert uploaded <= len(good) * (2 + 4) * piece


def test_agent_killed_halfway_resumes_without_refetching_verified_pieces(registry: Registry, cluster: Cluster):
    size = 128 * MiB
    digest = registry.push_blob("team/slow", os.urandom(size))
    cluster.start_tracker()
    slow = {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(32 * MiB)}  # ~4 s, so halfway can be caught
    agent = cluster.agent("victim", slow)
    ref = f"{registry.host}/team/slow@{digest}"
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(agent.fetch, ref)
        deadline = time.monotonic() + 60
        have = 0
        while time.monotonic() < deadline:
            have = agent.status()["downloads"].get(digest, {}).get("have", 0)
            if have >= size // 2:
                break
        assert have >= size // 2, "download never reached halfway"
        agent.kill9()
        try:
            last = pending.result()
        except OSError:  # the connection died with the process
            last = {}
        assert not last.get("done"), "the killed agent reported the blob complete"
    blob_file = agent.data_dir / "store" / "blobs" / "sha256" / digest.split(":")[1]
    assert not blob_file.exists(), "a partial blob was committed as complete"
    agent.env.pop("P2PDIST_LIMITS_DOWNLOAD_RATE")
    agent.start()
    result = agent.fetch(ref)
    assert result.get("done"), result
    assert result["resumed"] >= have, "verified pieces were lost by kill -9"
    assert result["from_origin"] + result["from_peers"] == size - result["resumed"]
    assert sha256_file(result["path"]) == digest
    # Counted on the origin side: what was verified before the kill was not fetched again.
    assert registry.egress(digest) <= size + 4 * 8 * MiB  # plus at most the origin streams cut by the kill


def test_an_origin_piece_slower_than_the_lease_ttl_leaves_the_origin_once(registry: Registry, cluster: Cluster):
    # 1 MiB pieces at 256 KiB/s take 4 s, the lease lives 2.5 s without progress. The holder's
    # announces (every busy_interval, 1 s or a little less) say its stream is moving, so the tracker
    # does not give the lease to the other node while the first still streams it (the shaped
    # benchmark's 1.04x egress). Bytes count once the rate limiter lets a 256 KiB chunk through,
    # about every second here: with a 1.5 s lease an announce could find no new chunk and the next
    # come too late (jittered announces made that happen in one run of four).
    size = 2 * MiB
    digest = registry.push_blob("team/slow", os.urandom(size))
    tracker = cluster.start_tracker(["--lease-ttl", "2.5"])  # 1 MiB pieces: the smallest the rule gives
    slow = {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(256 * 1024)}
    agents = [cluster.agent(f"slow{i}", slow) for i in range(2)]
    results = fetch_all(agents, f"{registry.host}/team/slow@{digest}")
    for agent, result in zip(agents, results, strict=True):
        assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-2000:]}"
        assert sha256_file(result["path"]) == digest
    metrics = tracker.metrics(TOKEN)
    assert metrics["p2pdist_tracker_leases_expired_total"] == 0, tracker.output()[-3000:]
    # The fresh tracker audits the first reporter: that one piece (1 MiB) leaves the origin twice.
    audits = metrics.get('p2pdist_tracker_audits_total{result="assigned"}', 0)
    assert audits <= 1
    assert sum(r["from_origin"] for r in results) == size + audits * MiB
    assert registry.egress(digest) == size + audits * MiB
    assert metrics["p2pdist_tracker_lease_renewals_total"] >= 2  # bytes, not digests, kept the lease


def test_fetch_works_with_tracker_down(registry: Registry, cluster: Cluster):
    size = 32 * MiB
    digest = registry.push_blob("team/solo", os.urandom(size))
    other = registry.push_blob("team/solo", os.urandom(MiB))
    dead_tracker = f"http://127.0.0.1:{free_port()}"
    agent = cluster.agent("lonely", tracker=dead_tracker, env={"P2PDIST_LIMITS_TRACKER_PATIENCE": "2"})
    result = agent.fetch(f"{registry.host}/team/solo@{digest}")
    assert result.get("done"), result
    assert result["from_origin"] == size
    assert sha256_file(result["path"]) == digest
    assert agent.metrics()['p2pdist_origin_fallbacks_total{reason="tracker"}'] == 1
    # The first download asked again for its patience (2 s: after 0.5, 1 and 0.5 s, fewer if the
    # agent's first poll of the tracker had failed already), then went to the origin; the next, with
    # the tracker silent for longer, asked once.
    def retries() -> list[str]:
        return [json.loads(line)["blob"] for line in agent.output().splitlines()
                if "tracker not answering; asking again" in line]

    first = retries()
    assert 1 <= len(first) <= 3 and set(first) == {digest}, first
    assert agent.fetch(f"{registry.host}/team/solo@{other}").get("done")
    assert agent.metrics()['p2pdist_origin_fallbacks_total{reason="tracker"}'] == 2
    assert retries() == first


def test_a_tracker_with_a_full_blob_table_sends_new_blobs_to_the_origin_at_once(registry: Registry,
                                                                                  cluster: Cluster):
    # Its 503 "capacity" lasts until a blob goes idle: asking again for the patience only made
    # every new blob's pull 5 s slower.
    shared, new = (registry.push_blob("team/full", os.urandom(MiB)) for _ in range(2))
    config = cluster.workdir / "tracker.toml"
    config.write_text("max_blobs = 1\n")
    cluster.start_tracker(["--config", str(config)])
    agents = [cluster.agent(f"node{i}") for i in range(2)]
    assert all(r.get("done") for r in fetch_all(agents, f"{registry.host}/team/full@{shared}"))  # two live peers
    result = agents[0].fetch(f"{registry.host}/team/full@{new}")
    assert result.get("done") and result["from_origin"] == MiB, result
    log = agents[0].output()
    assert "tracker refused the announce" in log and "asking again" not in log, log[-3000:]


def test_the_trackers_piece_size_wins_over_agents_configured_otherwise(registry: Registry, cluster: Cluster):
    # Two nodes pinned to different piece sizes: before one layout decision, each cut the blob its own
    # way, their bitfields and digests disagreed, and the second took the whole blob from the origin.
    size = 32 * MiB
    digest = registry.push_blob("team/layout", os.urandom(size))
    cluster.start_tracker()  # its rule: 1 MiB pieces for 32 MiB
    first = cluster.agent("pinned-4m", {"P2PDIST_LIMITS_PIECE_SIZE": str(4 * MiB)})
    second = cluster.agent("pinned-2m", {"P2PDIST_LIMITS_PIECE_SIZE": str(2 * MiB)})
    ref = f"{registry.host}/team/layout@{digest}"
    assert first.fetch(ref).get("done")
    result = second.fetch(ref)
    assert result.get("done"), result
    assert sha256_file(result["path"]) == digest
    # Every piece from the first node, but one: the fresh tracker had the second fetch one of the
    # first's pieces from the origin too (its audit), before it published the first's digests.
    assert result["from_peers"] == size - MiB and result["from_origin"] == MiB
    assert registry.egress(digest) == size + MiB


def test_completing_nodes_do_not_send_the_tracker_digests_its_log_has(registry: Registry, cluster: Cluster):
    # Every completing node sent all its piece digests in its "completed" announce, and once more
    # when it started seeding: 10,000 nodes x 256 pieces, twice, at the end of a flash crowd. Now
    # the reply to "completed" gives the log's length, and only a log that lacks some gets ours.
    size = 16 * MiB
    digest = registry.push_blob("team/done", os.urandom(size))
    ref = f"{registry.host}/team/done@{digest}"
    tracker = cluster.start_tracker()
    first, second = cluster.agent("first"), cluster.agent("second")
    assert first.fetch(ref).get("done")
    result = second.fetch(ref)
    assert result.get("done"), result
    assert result["from_peers"] > 0  # the first's digests reached the log (its audit passed)
    # Both nodes completed and then announced again as seeders (after the tracker's interval).
    deadline = time.monotonic() + 30
    while tracker.metrics().get('p2pdist_tracker_announces_total{event="completed"}', 0) < 4:
        assert time.monotonic() < deadline, "the seeders never announced again"
        time.sleep(0.1)
    repeated = tracker.metrics().get("p2pdist_tracker_digests_repeated_total", 0)
    assert repeated == 0, tracker.output()[-4000:]
    # Nor did the tracker lose any: the first node's last digests, still to report when it
    # completed, went in its "completed" announce, so no piece was leased and fetched again.
    assert registry.egress(digest) == size + MiB  # the blob, and the second node's audit piece


def test_nodes_pulling_one_after_another_each_after_the_last_left_all_finish(registry: Registry, cluster: Cluster):
    # One replica rolled over recycled nodes: each node pulls alone, unproven, and is gone before
    # the next starts. The first's claims wait for an audit; the next one's copy of that piece is
    # both the audit's opinion and a piece of its own lease. That report closed no lease, slow
    # start then held every other piece back, and the third node waited for good (a 512 MiB blob
    # did it every time; the tracker listed the same lease again every ttl, which the agent
    # counted as progress, so not even its stall fallback came).
    size = 512 * MiB
    digest = registry.push_blob("team/rollout", os.urandom(size))
    ref = f"{registry.host}/team/rollout@{digest}"
    cluster.start_tracker()
    with ThreadPoolExecutor(1) as pool:
        for n in range(3):
            node = cluster.agent(f"recycled{n}")
            fetching = pool.submit(node.fetch, ref)
            try:
                result = fetching.result(timeout=60)
            finally:
                node.stop()  # gone before the next node starts (and a hung fetch ends)
            assert result.get("done"), result
            assert result["from_origin"] == size and sha256_file(result["path"]) == digest
    assert registry.egress(digest) == 3 * size  # each from the origin once: nobody was left to share


def test_pieces_whose_only_holder_was_killed_are_leased_again_not_waited_for(registry: Registry, cluster: Cluster):
    # A node killed (SIGKILL: no "stopped" announce) right after it fetched a blob: the tracker
    # still counts its pieces as fetched and it as a peer until its TTL, so it leases them to
    # nobody. The next node found no holder, waited for its stall fallback (20 s) and then took
    # the blob from the origin without the tracker. Now it names the pieces no neighbour holds
    # (after 3 s without progress), and the tracker leases them again.
    size = 96 * MiB  # 96 pieces of 1 MiB: more than one announce names (core.download.MAX_ORPHANS)
    digest = registry.push_blob("team/killed", os.urandom(size))
    ref = f"{registry.host}/team/killed@{digest}"
    tracker = cluster.start_tracker()
    first = cluster.agent("killed-after")
    assert first.fetch(ref).get("done")
    first.kill9()
    second = cluster.agent("next")
    result = second.fetch(ref)
    assert result.get("done"), result
    assert result["from_origin"] == size and sha256_file(result["path"]) == digest
    assert second.metrics().get('p2pdist_origin_fallbacks_total{reason="stall"}', 0) == 0
    # Every piece but the one the second node was sent to audit (the first's claim) was named.
    metrics = tracker.metrics()
    assert metrics['p2pdist_tracker_audits_total{result="assigned"}'] == 1
    assert metrics["p2pdist_tracker_pieces_orphaned_total"] == 95
    assert registry.egress(digest) == 2 * size  # each piece once more, under lease


def test_a_blob_stored_by_an_older_version_is_recut_and_served_to_peers(registry: Registry, cluster: Cluster):
    import msgpack

    size = 24 * MiB
    data = os.urandom(size)
    digest = registry.push_blob("team/old", data)
    ref = f"{registry.host}/team/old@{digest}"
    first_tracker = cluster.start_tracker()
    old = cluster.agent("old")
    assert old.fetch(ref).get("done")
    old.stop()
    first_tracker.stop()
    # What version 1 left beside the blob: sha256 piece digests, over 4 MiB pieces, no piece hash named.
    (sidecar,) = old.data_dir.rglob(f"{digest.split(':')[1]}.pieces")
    old_pieces = [hashlib.sha256(data[o:o + 4 * MiB]).digest() for o in range(0, size, 4 * MiB)]
    sidecar.write_bytes(msgpack.packb({"piece_size": 4 * MiB, "digests": old_pieces}, use_bin_type=True))

    tracker = cluster.start_tracker()  # a fresh tracker: every digest it learns comes from the seeder
    again = AgentProc(cluster.workdir, "old-again", tracker.url, TOKEN, data_dir=old.data_dir,
                      upstreams=cluster.upstreams)
    cluster.procs.append(again)
    again.start()
    deadline = time.monotonic() + 30
    while tracker.metrics().get("p2pdist_tracker_digests_withheld_total", 0) < size // MiB:
        assert time.monotonic() < deadline, f"the seeder never sent its digests:\n{again.output()[-2000:]}"
        time.sleep(0.1)
    stored = msgpack.unpackb(sidecar.read_bytes())
    assert (stored["piece_hash"], stored["piece_size"]) == (PIECE_HASH, MiB)  # the tracker's piece size

    result = cluster.agent("new").fetch(ref)
    assert result.get("done"), result
    assert sha256_file(result["path"]) == digest
    # The seeder's digests were published once the newcomer's origin copy of one piece agreed.
    assert tracker.metrics()['p2pdist_tracker_audits_total{result="passed"}'] == 1
    assert result["from_peers"] == size - MiB and result["from_origin"] == MiB
    assert registry.egress(digest) == size + MiB  # the first download, long ago, and the audit
