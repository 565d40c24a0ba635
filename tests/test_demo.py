"""`p2pdist demo`: end to end with both origins, the embedded origin's HTTP behaviour, the image it builds."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import aiohttp
import pytest

from p2pdist.cli.demo import build_parser, run
from p2pdist.cli.demo.cluster import Cluster, ClusterError
from p2pdist.cli.demo.embedded_origin import EmbeddedOrigin
from p2pdist.cli.demo.image import OCI_LAYER, OCI_MANIFEST, build_image
from tests.support.images import file_sha256

MiB = 1 << 20
REPO = "p2pdist/demo"


def sha256_file(path: Path) -> str:
    return "sha256:" + file_sha256(path)


def registry_log_egress(log: Path) -> int:
    """Blob bytes the registry wrote (GET 200/206), read from its JSON log independently of the demo."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        uri = str(entry.get("http.request.uri", "")).partition("?")[0]
        if (entry.get("msg") == "response completed" and entry.get("http.request.method") == "GET"
                and entry.get("http.response.status") in (200, 206) and uri.startswith(f"/v2/{REPO}/blobs/")):
            total += int(entry["http.response.written"])
    return total


def log_warnings(workdir: Path, most: int = 40) -> str:
    """The warnings and errors of every agent and the tracker: why a failed run went as it did."""
    lines = []
    for log in sorted((workdir / "logs").glob("*.log")):
        lines += [f"{log.stem}: {line}" for line in log.read_text(errors="replace").splitlines()
                  if '"level": "warning"' in line or '"level": "error"' in line]
    return "\n".join(lines[:most])


def run_demo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(build_parser().parse_args(list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.integration
@pytest.mark.parametrize("origin", ["registry", "embedded"])
def test_demo_end_to_end(origin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "demo"
    code, out, err = run_demo(capsys, "--origin", origin, "--agents", "4", "--layers", "8MiB,4MiB,2MiB",
                              "--json", "--timeout", "120", "--workdir", str(workdir))
    assert code == 0, f"demo failed:\n{out[-3000:]}\n{err[-3000:]}"
    result = json.loads(out)
    assert result["ok"] is True and result["errors"] == []
    assert result["origin"]["kind"] == origin

    blobs = {b["digest"]: b["size"] for b in result["image"]["blobs"]}
    image_size = sum(blobs.values())
    assert len(blobs) == 4  # three layers and the config
    assert result["image"]["size"] == image_size > 14 * MiB

    # Every node holds every blob, and the file hashes to its digest (checked here, not taken on trust).
    assert [n["node"] for n in result["nodes"]] == ["node1", "node2", "node3", "node4"]
    for node in result["nodes"]:
        assert node["ok"] is True
        assert {b["digest"]: b["size"] for b in node["blobs"]} == blobs
        for blob in node["blobs"]:
            assert blob["ok"] and blob["verified"], blob
            assert sha256_file(Path(blob["path"])) == blob["digest"]
            assert str(workdir / "nodes" / node["node"]) in blob["path"]
        # Fresh stores: every byte came from a peer or from the origin.
        assert node["from_peers"] + node["from_origin"] == node["size"] == image_size
        assert node["from_cache"] == 0
        assert 0 < node["seconds"] == max(b["seconds"] for b in node["blobs"])

    summary = result["summary"]
    assert summary["nodes"] == 4
    assert summary["image_size"] == image_size
    assert summary["all_done_seconds"] == max(n["seconds"] for n in result["nodes"])
    assert summary["from_peers"] == sum(n["from_peers"] for n in result["nodes"])
    assert summary["from_origin"] == sum(n["from_origin"] for n in result["nodes"])
    assert summary["from_peers"] + summary["from_origin"] == 4 * image_size

    # Counted at the origin: each byte left it about once, not once per node.
    egress = result["origin"]["egress"]
    assert egress == sum(result["origin"]["egress_per_blob"].get(d, 0) for d in blobs)
    assert summary["origin_egress"] == egress
    assert summary["egress_ratio"] == pytest.approx(egress / image_size, abs=1e-4)
    # Each byte once, plus the fresh tracker's audits (a piece each, 1 MiB pieces here) and no more.
    # A node is the reporter of one audit at most, so at most one per agent. Usually fewer (an
    # audit also proves its auditor), but two first reporters may audit each other's pieces at once
    # (seen once in a loaded CI run: 4 audits, 1.21 x egress).
    audits = summary["audits"]
    assert 0 < audits <= len(result["nodes"]), summary
    assert image_size <= egress <= 1.05 * image_size + audits * MiB, (
        f"origin egress {egress / image_size:.2f} x the image with {audits} audits, "
        f"all done in {summary['all_done_seconds']:.1f} s; warnings:\n{log_warnings(workdir)}")
    if origin == "registry":
        assert registry_log_egress(workdir / "registry" / "registry.log") == egress
    assert summary["from_origin"] <= egress  # nodes cannot have more from the origin than it sent

    # Every agent it started was stopped (SIGTERM: each logs its orderly stop).
    for node in result["nodes"]:
        assert "agent stopping" in (workdir / "logs" / f"{node['node']}.log").read_text()


@pytest.mark.integration
def test_demo_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_demo(capsys, "--origin", "embedded", "--agents", "2", "--layers", "2MiB,1MiB",
                              "--timeout", "60")
    assert code == 0, f"{out}\n{err}"
    for text in ("node1", "node2", "time (s)", "MiB from peers", "MiB from origin", "image size:",
                 "origin egress:", "egress / image:", "audits:", "all nodes done:"):
        assert text in out
    assert "generating an OCI image" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--agents", "1"], "--agents must be at least 2"),
    (["--layers", "lots"], "--layers"),
    (["--layers", "0"], "positive sizes"),
])
def test_demo_rejects_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_demo(capsys, *argv)
    assert code == 2
    assert message in err


def test_demo_refuses_a_workdir_with_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = run_demo(capsys, "--workdir", str(tmp_path))
    assert code == 2 and "new or empty directory" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.integration
async def test_cluster_that_fails_to_start_stops_what_it_started(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PDIST_LIMITS_PIECE_SIZE", "3")  # agents refuse it (not a power of two); the tracker starts
    cluster = Cluster(tmp_path, "127.0.0.1:9", agents=2)
    with pytest.raises(ClusterError, match=r"node\d exited with 2"):
        await cluster.start()
    assert cluster.tracker is not None and cluster.tracker.proc is not None
    assert cluster.tracker.proc.poll() is None  # the tracker is up ...
    cluster.stop()
    assert cluster.tracker.proc.poll() is not None  # ... until stop(), by its PID
    assert all(node.proc is not None and node.proc.poll() is not None for node in cluster.nodes)


def test_demo_help_teaches() -> None:
    out = subprocess.run([sys.executable, "-m", "p2pdist.cli.demo", "--help"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    for text in ("flash crowd", "docker-registry", "examples:", "--origin", "--layers", "exit status"):
        assert text in out


def test_image_layout_has_real_tar_layers(tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", [3000, 70_000])
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest.digest
    assert json.loads((tmp_path / "layout" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    manifest = json.loads(image.blob_path(image.manifest.digest).read_bytes())
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == [layer.digest for layer in image.layers]
    config = json.loads(image.blob_path(image.config.digest).read_bytes())
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in image.layers]
    for layer, size in zip(image.layers, [3000, 70_000], strict=True):
        path = image.blob_path(layer.digest)
        assert layer.media_type == OCI_LAYER
        assert sha256_file(path) == layer.digest and path.stat().st_size == layer.size
        with tarfile.open(path) as tar:
            (member,) = tar.getmembers()
            assert member.isfile() and member.size == size
    assert image.size == sum(b.size for b in image.blobs)
    assert not list((tmp_path / "layout" / "blobs" / "sha256").glob(".*"))  # no temp files left


# --- the embedded origin's HTTP behaviour ------------------------------------------------------------


@pytest.fixture
async def origin(tmp_path: Path):
    image = build_image(tmp_path / "layout", [5000])
    server = await EmbeddedOrigin(image.layout, REPO).start()
    async with aiohttp.ClientSession(f"http://{server.host}") as session:
        yield server, image, session
    await server.stop()


async def test_embedded_origin_serves_blobs_with_ranges(origin) -> None:
    server, image, session = origin
    assert server.host.startswith("127.0.0.1:")
    layer = image.layers[0]
    data = image.blob_path(layer.digest).read_bytes()
    url = f"/v2/{REPO}/blobs/{layer.digest}"

    async with session.get("/v2/") as r:
        assert r.status == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    async with session.head(url) as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) == layer.size
        assert r.headers["Docker-Content-Digest"] == layer.digest
        assert await r.read() == b""
    async with session.get(url) as r:
        assert r.status == 200 and await r.read() == data
    async with session.get(url, headers={"Range": "bytes=10-19"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 10-19/{layer.size}"
        assert await r.read() == data[10:20]
    async with session.get(url, headers={"Range": f"bytes={layer.size - 5}-"}) as r:
        assert r.status == 206 and await r.read() == data[-5:]
    async with session.get(url, headers={"Range": f"bytes={layer.size}-"}) as r:
        assert r.status == 416
        assert r.headers["Content-Range"] == f"bytes */{layer.size}"
    # Egress: the full GET and the two ranges; HEAD and 416 cost nothing.
    assert (await server.egress()) == {layer.digest: layer.size + 10 + 5}


async def test_embedded_origin_serves_manifests(origin) -> None:
    _, image, session = origin
    manifest = image.blob_path(image.manifest.digest).read_bytes()
    for reference in ("latest", image.manifest.digest):
        async with session.get(f"/v2/{REPO}/manifests/{reference}") as r:
            assert r.status == 200 and await r.read() == manifest
            assert r.headers["Content-Type"] == OCI_MANIFEST
            assert r.headers["Docker-Content-Digest"] == image.manifest.digest
        async with session.head(f"/v2/{REPO}/manifests/{reference}") as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(manifest)
    async with session.get(f"/v2/{REPO}/manifests/nope") as r:
        assert r.status == 404 and (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # A layer is a blob, not a manifest.
    async with session.get(f"/v2/{REPO}/manifests/{image.layers[0].digest}") as r:
        assert r.status == 404 and (await r.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", f"/v2/{REPO}/blobs/sha256:{'0' * 64}", 404, "BLOB_UNKNOWN"),
    ("GET", f"/v2/{REPO}/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
    ("GET", f"/v2/{REPO}/blobs/md5:{'0' * 32}", 400, "DIGEST_INVALID"),
    ("GET", f"/v2/Bad/Name/blobs/sha256:{'0' * 64}", 400, "NAME_INVALID"),
    ("GET", "/v2/a..b/manifests/latest", 400, "NAME_INVALID"),
    ("GET", f"/v2/other/repo/blobs/sha256:{'0' * 64}", 404, "NAME_UNKNOWN"),
    ("POST", f"/v2/{REPO}/blobs/uploads/x", 405, "UNSUPPORTED"),
])
async def test_embedded_origin_errors(origin, method: str, path: str, status: int, code: str) -> None:
    server, _, session = origin
    async with session.request(method, path) as r:
        assert r.status == status
        body = await r.json()
        assert body["errors"][0]["code"] == code and body["errors"][0]["message"]
    async with session.head(path) as r:
        if method == "GET":
            assert r.status == status and await r.read() == b""  # HEAD: same status, no body
    assert await server.egress() == {}

