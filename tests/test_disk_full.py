"""A full disk: the error names it, nothing is left behind, and a blob that fits is fetched after.

The agent's data dir is a 100 MiB tmpfs mounted for the test (root, as in CI); docker-registry
is the origin and a real tracker runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cluster import TOKEN, Cluster, sha256_file
from tests.support.disks import tmpfs
from tests.support.procs import AgentProc
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "100M") as mount:
        yield mount


def leftovers(data_dir: Path) -> list[Path]:
    """Files of downloads in the data dir (partials, journals), apart from complete blobs and ids."""
    return [p for p in data_dir.rglob("*") if p.is_file() and ("partial" in str(p) or p.name == "journal")]


def agent_on(cluster: Cluster, data_dir: Path, env: dict[str, str] | None = None) -> AgentProc:
    agent = AgentProc(cluster.workdir, "node", cluster.tracker.url, TOKEN, data_dir=data_dir,
                      upstreams=cluster.upstreams, extra_env=env)
    cluster.procs.append(agent)
    return agent.start()


def test_a_blob_larger_than_the_disk_fails_naming_it_and_a_blob_that_fits_follows(
        registry: Registry, cluster: Cluster, small_disk: Path) -> None:
    big = registry.push_blob("team/big", os.urandom(256 * MiB))
    small = registry.push_blob("team/small", os.urandom(16 * MiB))
    cluster.start_tracker()
    agent = agent_on(cluster, small_disk / "data")
    result = agent.fetch(f"{registry.host}/team/big@{big}")
    assert "error" in result and str(agent.data_dir) in result["error"], result
    assert "no space" in result["error"] and str(256 * MiB) in result["error"], result
    assert not leftovers(agent.data_dir)
    result = agent.fetch(f"{registry.host}/team/small@{small}")
    assert result.get("done") and sha256_file(result["path"]) == small, result


def test_running_out_of_disk_mid_download_frees_the_partial(registry: Registry, cluster: Cluster,
                                                             small_disk: Path) -> None:
    # Two 60 MiB blobs at once on 100 MiB: each fits when it starts (nothing is written yet), not both.
    # At 40 MiB/s for the node the two take 3 s together, so both have started before either ends.
    blobs = [registry.push_blob(f"team/b{i}", os.urandom(60 * MiB)) for i in range(2)]
    small = registry.push_blob("team/small", os.urandom(8 * MiB))
    cluster.start_tracker()
    agent = agent_on(cluster, small_disk / "data", {"P2PDIST_LIMITS_DOWNLOAD_RATE": str(40 * MiB)})
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: agent.fetch(f"{registry.host}/team/b{i}@{blobs[i]}"), range(2)))
    failed = [r for r in results if "error" in r]
    assert failed, f"both 60 MiB blobs fit on 100 MiB? {results}"
    for r in failed:
        assert "no space" in r["error"] and str(small_disk) in r["error"], r
    assert not leftovers(agent.data_dir), leftovers(agent.data_dir)
    for r, digest in zip(results, blobs, strict=True):
        if r.get("done"):
            assert sha256_file(r["path"]) == digest
    # Room for the small one is there (or is made, by evicting what completed).
    result = agent.fetch(f"{registry.host}/team/small@{small}")
    assert result.get("done") and sha256_file(result["path"]) == small, result
    assert shutil.disk_usage(small_disk).used <= 70 * MiB  # what completed, and nothing else


def test_the_mirror_passes_a_blob_that_does_not_fit_through_from_the_origin(
        registry: Registry, cluster: Cluster, small_disk: Path) -> None:
    data = os.urandom(160 * MiB)
    digest = registry.push_blob("team/big", data)
    cluster.start_tracker()
    agent = AgentProc(cluster.workdir, "node", cluster.tracker.url, TOKEN, data_dir=small_disk / "data",
                      upstreams=cluster.upstreams, mirror=True)
    cluster.procs.append(agent)
    agent.start()
    url = f"http://{agent.mirror}/v2/team/big/blobs/{digest}?ns={registry.host}"
    with urllib.request.urlopen(url, timeout=60) as resp:
        got = hashlib.sha256()
        while chunk := resp.read(1 << 20):
            got.update(chunk)
    assert "sha256:" + got.hexdigest() == digest
    assert agent.metrics()['p2pdist_origin_fallbacks_total{reason="disk"}'] == 1
    assert not leftovers(agent.data_dir) and agent.status()["store"] == {"bytes": 0, "blobs": 0}
