"""`p2pdist import`: real archives written by skopeo from a real registry (oci-archive: and
docker-archive:), imported into a stopped agent's data directory and into a running daemon, which
then serves the blobs to a second agent through the tracker. A tampered archive is refused by name
and leaves the store empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from p2pdist.core.layout import decide_layout
from tests.support.images import OciImage, build_image, require_binary
from tests.support.procs import ROOT, AgentProc, Tracker
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

REPO = "team/app"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pdist", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})


@pytest.fixture
def image(tmp_path: Path, registry: Registry) -> OciImage:
    built = build_image(tmp_path / "layout", tag="1", random_sizes=(300_000, 5 << 20))
    built.push(registry.host, REPO)
    return built


def skopeo_archive(registry: Registry, dest: str, tmp_path: Path) -> None:
    skopeo = require_binary("skopeo", "skopeo")
    cmd = [skopeo, "copy", "--quiet", "--src-tls-verify=false", f"docker://{registry.host}/{REPO}:1", dest]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr


def stored(data_dir: Path) -> set[str]:
    root = data_dir / "store" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in root.iterdir() if "." not in p.name} if root.is_dir() else set()


def import_skopeo_archive(registry: Registry, dest: str, tmp_path: Path) -> tuple[Path, Path, dict]:
    """skopeo writes the registry's image to ``dest`` (TRANSPORT:PATH[:REF]), then `p2pdist import`
    takes it into a stopped agent's data dir: (archive, data dir, the import's JSON answer)."""
    skopeo_archive(registry, dest, tmp_path)
    archive, data = Path(dest.split(":")[1]), tmp_path / "data"
    done = cli("import", str(archive), "--data-dir", str(data), "--json")
    assert done.returncode == 0, done.stderr
    return archive, data, json.loads(done.stdout)


def test_oci_archive_into_a_stopped_agents_store(tmp_path: Path, registry: Registry, image: OciImage):
    archive, data, result = import_skopeo_archive(registry, f"oci-archive:{tmp_path / 'app-oci.tar'}", tmp_path)
    assert result["format"] == "oci-layout" and result["source"] == "data_dir"
    # skopeo kept the registry's blobs: the very digests a pull through the mirror asks for.
    assert sorted(result["imported"]) == sorted(image.blob_digests)
    assert result["manifests"] == [image.manifest_digest]
    assert stored(data) == set(image.blob_digests)
    for digest in image.blob_digests:
        blob = data / "store" / "blobs" / "sha256" / digest.partition(":")[2]
        assert blob.read_bytes() == image.blob_path(digest).read_bytes()
        assert blob.with_name(blob.name + ".pieces").exists()  # piece digests for seeding
    cached = (data / "manifests" / "sha256" / image.manifest_digest.partition(":")[2]).read_bytes()
    assert cached.partition(b"\n")[2] == image.manifest

    listing = cli("cache", "ls", "--data-dir", str(data), "--json")
    assert listing.returncode == 0, listing.stderr
    assert {b["digest"] for b in json.loads(listing.stdout)["blobs"]} == set(image.blob_digests)

    again = cli("import", str(archive), "--data-dir", str(data), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["imported"] == []
    assert sorted(json.loads(again.stdout)["present"]) == sorted(image.blob_digests)


def test_docker_archive_imports_config_and_layers_by_content_digest(tmp_path: Path, registry: Registry,
                                                                   image: OciImage):
    _archive, data, result = import_skopeo_archive(
        registry, f"docker-archive:{tmp_path / 'app-docker.tar'}:{REPO}:1", tmp_path)
    assert result["format"] == "docker-save" and result["manifests"] == []
    diff_ids = {layer.diff_id for layer in image.layers}
    imported = set(result["imported"])
    # The layers are the uncompressed tars: their digests are the diff_ids, not the registry's blobs.
    assert diff_ids <= imported and not imported & set(image.layer_digests)
    (config,) = imported - diff_ids
    config_path = data / "store" / "blobs" / "sha256" / config.partition(":")[2]
    assert json.loads(config_path.read_bytes())["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    assert any("diff_ids" in note for note in result["notes"])
    assert stored(data) == imported


def test_a_tampered_archive_is_refused_by_member_and_nothing_is_imported(tmp_path: Path, registry: Registry,
                                                                         image: OciImage):
    archive = tmp_path / "app-oci.tar"
    skopeo_archive(registry, f"oci-archive:{archive}", tmp_path)
    big = image.big_layer.digest.partition(":")[2]
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(big))
    with open(archive, "r+b") as f:  # one byte in the middle of the big layer's data
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    data = tmp_path / "data"
    done = cli("import", str(archive), "--data-dir", str(data))
    assert done.returncode == 1
    assert member.name in done.stderr and "damaged" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert stored(data) == set()  # not even the blobs before it
    assert not any((data / "store" / "blobs").rglob(".*"))  # no temp file either

    not_tar = tmp_path / "junk.tar"
    not_tar.write_bytes(os.urandom(4096))
    done = cli("import", str(not_tar), "--data-dir", str(data))
    assert done.returncode == 1 and "not a readable tar archive" in done.stderr and "Traceback" not in done.stderr


def test_imported_blobs_are_seeded_to_a_second_agent_through_the_tracker(tmp_path: Path, registry: Registry,
                                                                         image: OciImage):
    archive = tmp_path / "app-oci.tar"
    skopeo_archive(registry, f"oci-archive:{archive}", tmp_path)
    tracker = Tracker(tmp_path).start()
    upstream = [f"http://{registry.host}"]
    seeder = AgentProc(tmp_path, "importer", tracker.url, upstreams=upstream)
    leecher = AgentProc(tmp_path, "leecher", tracker.url, upstreams=upstream)
    try:
        seeder.start()
        leecher.start()
        done = cli("import", str(archive), "--api", f"127.0.0.1:{seeder.api_port}", "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["source"] == "daemon" and sorted(result["imported"]) == sorted(image.blob_digests)
        total = sum(image.blob_path(d).stat().st_size for d in image.blob_digests)
        assert seeder.metrics()["p2pdist_store_bytes"] == total
        # The daemon announces them complete: once to learn the tracker's layout, once more with the digests.
        wanted = 2 * len(image.blob_digests)
        deadline = time.monotonic() + 60
        while tracker.metrics().get('p2pdist_tracker_announces_total{event="completed"}', 0) < wanted:
            assert time.monotonic() < deadline, "the imported blobs were never announced complete"
            time.sleep(0.1)
        big = image.big_layer
        fetched = leecher.fetch(f"{registry.host}/{REPO}@{big.digest}")
        assert fetched.get("done"), fetched
        # From the importing node; the tracker may have one piece checked at the origin (an audit of a
        # seeder's digests), never more.
        piece = decide_layout(big.size).piece_size
        assert fetched["from_peers"] + fetched["from_origin"] == big.size
        assert fetched["from_peers"] >= big.size - piece and fetched["from_origin"] <= piece
    finally:
        leecher.stop()
        seeder.stop()
        tracker.stop()
