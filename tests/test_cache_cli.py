"""`p2pdist cache ls|rm|gc`: through a running daemon (real processes: registry, agent), and on a
stopped agent's data directory under the store lock."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pdist.core.digest import Digest
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import piece_digest
from p2pdist.store import Store, admin
from p2pdist.store.ingest import BlobWriter, Ingested
from tests.support.procs import ROOT, AgentProc
from tests.support.registry import Registry

MiB = 1 << 20


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pdist", "cache", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})


def put(store: Store, data: bytes) -> Digest:
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    writer = BlobWriter(store, digest, len(data))
    writer.write(data)
    assert writer.commit() is Ingested.ADDED
    return digest


@pytest.mark.integration
def test_ls_rm_gc_through_the_daemon(tmp_path: Path, registry: Registry):
    agent = AgentProc(tmp_path, "cached", "", token="", upstreams=[f"http://{registry.host}"]).start()
    api = ["--api", f"127.0.0.1:{agent.api_port}"]
    try:
        first = registry.push_blob("team/app", os.urandom(2 * MiB))
        second = registry.push_blob("team/app", os.urandom(3 * MiB))
        for digest in (first, second):
            assert agent.fetch(f"{registry.host}/team/app@{digest}").get("done")
        done = cli("ls", *api, "--json")
        assert done.returncode == 0, done.stderr
        listing = json.loads(done.stdout)
        assert listing["source"] == "daemon" and listing["usage"] == 5 * MiB and listing["capacity"] == 0
        assert {(b["digest"], b["size"]) for b in listing["blobs"]} == {(first, 2 * MiB), (second, 3 * MiB)}
        table = cli("ls", *api).stdout
        assert first in table and second in table and "5.0 MiB of unlimited" in table

        done = cli("rm", first, *api)
        assert done.returncode == 0 and f"removed {first}" in done.stdout, done.stderr
        assert [b["digest"] for b in json.loads(cli("ls", *api, "--json").stdout)["blobs"]] == [second]
        assert agent.metrics()["p2pdist_store_bytes"] == 3 * MiB  # the gauge follows
        again = cli("rm", first, *api)
        assert again.returncode == 1 and "is not in the store" in again.stderr
        bad = cli("rm", "sha256:nothex", second, *api)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
        assert agent.metrics()["p2pdist_store_bytes"] == 3 * MiB  # a malformed digest stops it all

        no_capacity = cli("gc", *api)
        assert no_capacity.returncode == 2 and "--keep" in no_capacity.stderr
        done = cli("gc", "--keep", "0", "--json", *api)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["evicted"] == [second]
        assert agent.metrics()["p2pdist_store_bytes"] == 0
        # The daemon's blob is fetched again, not served from a stale index.
        assert agent.fetch(f"{registry.host}/team/app@{second}")["cached"] is False

        # The directory itself belongs to the running daemon: refused, in one line.
        direct = cli("ls", "--data-dir", str(agent.data_dir))
        assert direct.returncode == 1 and "running daemon owns" in direct.stderr
        twin = AgentProc(tmp_path, "twin", "", token="", data_dir=agent.data_dir)
        assert "another p2pdist daemon uses" in twin.refused_start()
    finally:
        agent.stop()


def test_ls_and_gc_on_a_stopped_agents_data_dir(tmp_path: Path):
    store = Store(tmp_path / "data" / "store")
    old, recent = put(store, os.urandom(300_000)), put(store, os.urandom(200_000))
    a_month_ago = time.time() - 30 * 86400
    os.utime(store.blob_path(old), (a_month_ago, a_month_ago))
    # An unfinished download: one of its two pieces is here.
    layout = PieceLayout(2 * MiB, MiB)
    piece = os.urandom(MiB)
    partial_digest = Digest("sha256", "ab" * 32)
    partial = store.open_partial(partial_digest, layout)
    partial.write_piece(0, piece, piece_digest(piece))
    partial.close()
    (store.blob_path(old).parent / ".crashed.tmp").write_bytes(b"x" * 1000)
    del store  # the daemon is not running: the command line owns the directory

    data = ["--data-dir", str(tmp_path / "data")]
    done = cli("ls", *data, "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["source"] == "data_dir"
    assert [b["digest"] for b in listing["blobs"]] == [str(old), str(recent)]  # least recently used first
    assert listing["partials"] == [{"digest": str(partial_digest), "size": 2 * MiB, "present": MiB,
                                    "downloading": False}]
    assert "50 %" in cli("ls", *data).stdout

    done = cli("gc", "--partials", "--json", *data)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["partials"] == [str(partial_digest)]
    assert json.loads(done.stdout)["evicted"] == []  # --partials alone leaves complete blobs
    done = cli("gc", "--older-than", "7d", "--json", *data)
    assert json.loads(done.stdout)["evicted"] == [str(old)]
    listing = json.loads(cli("ls", *data, "--json").stdout)
    assert [b["digest"] for b in listing["blobs"]] == [str(recent)] and listing["partials"] == []

    assert cli("gc", *data).returncode == 2  # no capacity configured, nothing said: refused, not guessed
    bad = cli("gc", "--older-than", "soon", *data)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    missing = cli("rm", "sha256:" + "cd" * 32, *data)
    assert missing.returncode == 1 and "not in the store" in missing.stderr
    assert cli("rm", str(recent), *data).returncode == 0
    assert json.loads(cli("ls", *data, "--json").stdout)["usage"] == 0

    nowhere = cli("ls", "--data-dir", str(tmp_path / "none"))
    assert nowhere.returncode == 1 and "no store at" in nowhere.stderr


def test_a_blob_being_read_is_left_in_place(tmp_path: Path):
    store = Store(tmp_path / "store")
    data = os.urandom(100_000)
    digest = put(store, data)
    with store.open_blob(digest) as reader:
        removed = admin.remove(store, digest)
        assert removed.in_use and not removed.blob
        assert admin.collect(store, keep=0).skipped_in_use == 1
        assert reader.read(0, len(data)) == data
    assert admin.remove(store, digest).blob and not store.has(digest)
    assert not store.blob_path(digest).exists()


def test_an_import_that_does_not_match_leaves_nothing(tmp_path: Path):
    store = Store(tmp_path / "store")
    data = os.urandom(50_000)
    wrong = Digest("sha256", hashlib.sha256(b"other").hexdigest())
    writer = BlobWriter(store, wrong, len(data))
    writer.write(data)
    with pytest.raises(Exception, match="digest mismatch"):
        writer.commit()
    assert store.blobs() == [] and list(store.blob_path(wrong).parent.iterdir()) == []


def test_gc_of_leftovers_spares_an_import_stalled_however_long(tmp_path: Path):
    """An import's temp file is locked while its writer lives: `gc --partials` through the daemon
    sweeps leftovers untouched for ten minutes, and a slow import (a pipe from another host) must
    not lose its bytes to it. What a crashed writer left (no lock) still goes."""
    store = Store(tmp_path / "store")
    data = os.urandom(300_000)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    writer = BlobWriter(store, digest, len(data))
    writer.write(data[:100_000])
    (temp,) = [p for p in store.blob_path(digest).parent.iterdir() if p.name.endswith(".import")]
    crashed = temp.with_name(".crashed.import")
    crashed.write_bytes(b"x" * 1000)
    an_hour_ago = time.time() - 3600
    for path in (temp, crashed):
        os.utime(path, (an_hour_ago, an_hour_ago))  # stalled: older than the daemon's 10 minutes
    collected = admin.collect(store, keep=None, partials=True, blobs=False, leftover_age=600.0)
    assert temp.exists() and not crashed.exists()
    assert collected.leftovers == 1000
    writer.write(data[100_000:])
    writer.commit()
    with store.open_blob(digest) as reader:
        assert reader.read(0, len(data)) == data
