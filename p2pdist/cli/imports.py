"""`p2pdist import ARCHIVE`: a `docker save` or OCI layout tar into the agent's store, for nodes
that cannot reach the registry.

Two passes. The first hashes every member against its digest (streamed, never a whole blob in
memory) and changes nothing: a damaged archive is refused by name with nothing imported. The
second hands each blob to the store, which verifies it again as it writes (the file could change
in between) and commits it atomically: through the running daemon's API (which then announces it
to the tracker, so peers fetch it from this node), or into the data directory under the store
lock when no daemon runs (announced at its next start). Manifests go to the mirror's manifest
cache, which serves one under a repository only once the upstream confirmed it there.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from p2pdist.cli.cache import CliError, Target, add_target_options, human, open_target
from p2pdist.core.digest import DigestMismatch
from p2pdist.mirror.manifests import ManifestCache
from p2pdist.store import StoreError
from p2pdist.store.archive import Archive, ArchiveError, Item, Plan
from p2pdist.store.ingest import BlobWriter, IngestError

EXAMPLES = """\
examples:
  docker save -o app.tar registry.example.com/team/app:1.4
  p2pdist import app.tar                     # through the daemon on 127.0.0.1:65002
  skopeo copy docker://registry.example.com/team/app:1.4 oci-archive:app-oci.tar
  p2pdist import app-oci.tar --json
  p2pdist import app.tar --data-dir /var/lib/p2pdist   # daemon stopped: straight into its store

OCI layout archives (skopeo oci-archive:, docker save from Docker 25 on) carry blobs under their
digests; skopeo keeps the registry's compressed layers, so later pulls through the mirror and
peers find them here. Older docker save archives (and skopeo docker-archive:) hold uncompressed
layers: they are imported under their own digests (the image's diff_ids), which a registry pull of
the compressed layers does not ask for. Every member is checked against its digest first; a
damaged archive is refused and nothing is imported.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("import", help="import a docker save or OCI layout tar into the store (air-gapped nodes)",
                              description="Verify every blob of an image archive against its digest and commit "
                                          "it into the agent's store, so pulls through the mirror and peers "
                                          "are served from this node.", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", type=Path, metavar="ARCHIVE", help="a docker save tar or an OCI layout tar "
                                                                  "(plain, or gzip/bzip2/xz compressed)")
    p.add_argument("--json", action="store_true", help="print one JSON result instead of progress and a summary")
    add_target_options(p)


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        if not args.archive.is_file():
            raise CliError(f"{args.archive} is not a file", 2)
        with Archive(args.archive) as archive:
            plan = archive.plan()
            target = open_target(args, create=True)
            try:
                result = _import(archive, plan, target, err, quiet=args.json)
            finally:
                target.close()
    except CliError as e:
        err.print(f"[red]p2pdist import: {e}", highlight=False, soft_wrap=True)
        return e.status
    except (ArchiveError, StoreError, DigestMismatch) as e:
        err.print(f"[red]p2pdist import: {e}", highlight=False, soft_wrap=True)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    out = Console()
    out.print(f"imported {len(result['imported'])} blobs ({human(result['bytes'])}), "
              f"{len(result['present'])} already here, {len(result['manifests'])} manifests"
              + (f"; images: {', '.join(result['images'])}" if result["images"] else ""), highlight=False)
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)
    if result["downloading"]:
        out.print(f"{len(result['downloading'])} blobs are being downloaded by the daemon now: left to it",
                  highlight=False)
    return 0


def _import(archive: Archive, plan: Plan, target: Target, err: Console, quiet: bool) -> dict:
    present = _present(target)
    todo = [i for i in plan.blobs if str(i.digest) not in present]
    capacity = _capacity(target)
    adding = sum(i.size for i in todo)
    if capacity and adding > capacity:
        raise CliError(f"the archive's new blobs take {human(adding)}, more than the store keeps "
                       f"(capacity {human(capacity)}): raise the agent's capacity first")
    with _progress(err, quiet) as progress:
        task = progress.add_task("verifying", total=sum(i.size for i in plan.items))
        for item in plan.items:
            archive.verify(item, lambda n: progress.advance(task, n))
        progress.update(task, description="importing", completed=0, total=adding)
        imported: list[str] = []
        downloading: list[str] = []
        for item in todo:
            status = _put_blob(archive, item, target, lambda n: progress.advance(task, n))
            (imported if status == "added" else downloading if status == "downloading" else []).append(str(item.digest))
        for item in plan.manifests:
            _put_manifest(archive, item, target)
    return {"archive": str(archive.path), "format": plan.format, "source": "daemon" if target.api else "data_dir",
            "imported": imported, "present": sorted(str(i.digest) for i in plan.blobs if str(i.digest) in present),
            "downloading": downloading, "manifests": [str(i.digest) for i in plan.manifests],
            "bytes": sum(i.size for i in todo if str(i.digest) in imported), "images": plan.images,
            "notes": plan.notes}


def _progress(err: Console, quiet: bool) -> Progress:
    # The columns of `p2pdist fetch`'s bar.
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err, disable=quiet or not err.is_terminal)


def _present(target: Target) -> set[str]:
    if target.api is not None:
        status, listing = target.call("GET", "/v1/cache")
        if status != 200:
            raise CliError(listing.get("error", f"the daemon answered {status}"))
        return {b["digest"] for b in listing["blobs"]}
    assert target.store is not None
    return {str(d) for d, _ in target.store.blobs()}


def _capacity(target: Target) -> int:
    if target.api is not None:
        return int(target.call("GET", "/v1/cache")[1].get("capacity") or 0)
    assert target.store is not None
    return target.store.capacity or 0


def _put_blob(archive: Archive, item: Item, target: Target, advance: Callable[[int], None]) -> str:
    if target.api is None:
        assert target.store is not None and target.cfg is not None
        writer = BlobWriter(target.store, item.digest, item.size, target.cfg.limits.piece_size)
        try:
            for chunk in archive.chunks(item.member):
                writer.write(chunk)
                advance(len(chunk))
            return writer.commit().value
        except (DigestMismatch, IngestError) as e:
            raise ArchiveError(f"{archive.path}: member {item.member!r} changed while importing ({e}); the "
                               "blobs imported before it are complete and verified") from None
        finally:
            writer.abort()  # no-op after a commit
    status, body = _send(target.api, "PUT", f"/v1/cache/blobs/{item.digest}", "application/octet-stream",
                         item.size, archive.chunks(item.member), advance)
    if status == 400:
        raise ArchiveError(f"{archive.path}: member {item.member!r} was refused by the daemon "
                           f"({body.get('error')}); the blobs imported before it are complete and verified")
    if status not in (200, 201):
        raise CliError(f"the daemon refused {item.digest} ({status}): {body.get('error', body)}")
    return str(body.get("status"))


def _put_manifest(archive: Archive, item: Item, target: Target) -> None:
    body = archive.document(item.member)
    media_type = item.media_type or "application/vnd.oci.image.manifest.v1+json"
    if target.api is None:
        assert target.cfg is not None
        ManifestCache(target.cfg.data_dir / "manifests", target.cfg.mirror.tag_ttl, time.monotonic).put(
            item.digest, media_type, body)
        return
    status, answer = _send(target.api, "PUT", f"/v1/cache/manifests/{item.digest}", media_type, len(body),
                           iter([body]), lambda n: None)
    if status not in (200, 201):
        raise CliError(f"the daemon refused manifest {item.digest} ({status}): {answer.get('error', answer)}")


def _send(api: str, method: str, path: str, content_type: str, size: int, chunks,
          advance: Callable[[int], None]) -> tuple[int, dict]:
    """A streamed request body of known length (http.client: no chunked encoding, no buffering)."""
    host, _, port = api.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=300)
    try:
        conn.putrequest(method, path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        for chunk in chunks:
            conn.send(chunk)
            advance(len(chunk))
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, {"error": raw[:200].decode(errors="replace")}
    except OSError as e:
        raise CliError(f"the daemon at {api} stopped answering: {e}") from None
    finally:
        conn.close()
