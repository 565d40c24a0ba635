"""Guards found missing by a review: claimed sizes that would empty the cache, requests from web
pages, foreign manifest types, a malformed archive config, a placeholder cluster secret, dangerous
Kubernetes values, preheat orders past one poll. Real daemon, real files."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from p2pdist.config import PLACEHOLDER_TOKEN, ConfigError
from p2pdist.core.digest import Digest
from p2pdist.core.layout import PieceLayout
from p2pdist.deploy.values import load_values
from p2pdist.store import Store, StoreFull
from p2pdist.store.archive import Archive, ArchiveError
from p2pdist.store.ingest import BlobWriter
from tests.support.procs import AgentProc
from tracker.config import load as load_tracker
from tracker.preheat import PER_POLL, MemoryPreheat


def _commit(store: Store, data: bytes) -> Digest:
    digest = Digest.of(data)
    writer = BlobWriter(store, digest, len(data), 1 << 20)
    writer.write(data)
    writer.commit()
    return digest


def test_a_size_that_can_never_fit_evicts_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    kept = [_commit(store, os.urandom(1000 + i)) for i in range(3)]
    huge = Digest.parse("sha256:" + "f" * 64)
    with pytest.raises(StoreFull, match="could be evicted"):
        store.open_partial(huge, PieceLayout(1 << 50, 1 << 30))  # a petabyte: no disk has it
    assert all(store.has(d) for d in kept), "the cache was emptied for a blob that could never fit"


def test_an_archive_config_with_a_malformed_rootfs_is_refused_in_words(tmp_path: Path) -> None:
    config = json.dumps({"rootfs": [1]}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]).encode()
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in ((config_name, config), ("manifest.json", manifest), ("l/layer.tar", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with Archive(path) as archive, pytest.raises(ArchiveError, match="diff_ids"):
        archive.plan()


def test_the_placeholder_secret_is_refused_by_tracker_and_agent() -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        load_tracker(env={"P2PDIST_TRACKER_CLUSTER_TOKEN": PLACEHOLDER_TOKEN})
    from p2pdist.config import load as load_agent

    with pytest.raises(ConfigError, match="placeholder"):
        load_agent(environ={"P2PDIST_CLUSTER_TOKEN": PLACEHOLDER_TOKEN})


@pytest.mark.parametrize("setting, words", [
    ("agent.store_path=/", "absolute, normalised path"),
    ("agent.store_path=/var/lib/../lib", "absolute, normalised path"),
    ('agent.settings={api_listen="0.0.0.0:65002"}', "set by the manifests"),
    ('agent.settings={data_dir="/"}', "set by the manifests"),
])
def test_values_that_would_harm_the_node_are_refused(setting: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_values(None, [setting])


def test_orders_past_one_poll_wait_for_the_next_and_none_is_lost() -> None:
    async def run() -> tuple[int, int, int, int]:
        desk = MemoryPreheat(poll=1.0)
        await desk.poll("n", 0.0, [], [])
        blobs = [(f"r.example/app@sha256:{i:064x}", 1) for i in range(PER_POLL + 10)]
        await desk.create(blobs, 1, None, 0.5)
        first = await desk.poll("n", 1.0, [], [])
        left = await desk.waiting("n")
        second = await desk.poll("n", 1.1, [], [])
        return len(first), left, len(second), await desk.waiting("n")

    assert asyncio.run(run()) == (PER_POLL, 10, 10, 0)


@pytest.fixture
def agent(tmp_path: Path):
    proc = AgentProc(tmp_path, "guarded", "").start()
    yield proc
    proc.stop()


def _call(url: str, method: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_the_api_refuses_web_pages_foreign_manifests_and_impossible_sizes(agent: AgentProc) -> None:
    small = os.urandom(5000)
    digest = Digest.of(small)
    status, _ = _call(f"{agent.api}/v1/cache/blobs/{digest}", "PUT", small,
                      {"Content-Type": "application/octet-stream"})
    assert status == 201
    # A page on any site could POST here (no CORS preflight for a form): browsers send Origin.
    status, body = _call(f"{agent.api}/v1/cache/gc", "POST", b'{"keep": 0}',
                         {"Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert status == 403 and "web pages" in body["error"]
    status, _ = _call(f"{agent.api}/v1/fetch", "POST", b'{"ref": "x"}', {"Origin": "https://evil.example"})
    assert status == 403
    doc = b'{"schemaVersion": 2}'
    status, body = _call(f"{agent.api}/v1/cache/manifests/{Digest.of(doc)}", "PUT", doc, {"Content-Type": "text/html"})
    assert status == 415 and "media type" in body["error"]
    # A claimed 10 TB blob: refused without evicting what is there.
    huge = "sha256:" + "e" * 64
    req = urllib.request.Request(f"{agent.api}/v1/cache/blobs/{huge}", data=b"x" * 10, method="PUT",
                                 headers={"Content-Length": str(10 << 40)})
    with pytest.raises((urllib.error.HTTPError, OSError)) as err:
        urllib.request.urlopen(req, timeout=30)
    if isinstance(err.value, urllib.error.HTTPError):
        assert err.value.code in (400, 507)
    status, listing = _call(f"{agent.api}/v1/cache", "GET", None, {})
    assert status == 200 and str(digest) in {b["digest"] for b in listing["blobs"]}
