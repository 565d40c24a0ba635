"""`p2pdist preheat IMAGE`: spread an image's blobs to some of the cluster's nodes before a rollout.

Resolves the image in its registry (a tag or a digest; for a multi-platform index, the manifest of
``--platform``), then posts a job to the tracker with the config and layer blobs and how many nodes
(``--nodes``) or what share of them (``--share``) should hold them. The tracker orders that many live
agents to fetch them (peers first, each piece from the origin about once), and the command follows
the agents' reports with a progress bar until every picked node holds every blob.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as host_platform
import sys
import time
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from p2pdist.agent.origin import Credentials, OriginClient, OriginError
from p2pdist.cli.cache import human
from p2pdist.core.digest import Digest, DigestError
from p2pdist.core.image import ACCEPT, ImageError, image_blobs, is_index, parse_platform, select_manifest
from p2pdist.core.names import InvalidName
from p2pdist.core.reference import parse_reference
from p2pdist.errors import P2pdistError
from p2pdist.tls import CertError, client_context

EXAMPLES = """\
examples:
  p2pdist preheat registry.example.com/team/app:v42 --share 0.5
      half of the live nodes fetch the image's layers now; a rollout then pulls from them
  p2pdist preheat docker.io/library/nginx:1.27 --nodes 20 --platform linux/arm64
  p2pdist preheat 10.0.0.5:5000/app@sha256:4f3c... --plain-http --nodes 3 --tracker http://tracker:7070

The tracker takes jobs from operators only: the cluster secret comes from $P2PDIST_CLUSTER_TOKEN
(or --cluster-token-file). Agents poll the tracker for orders every 15 s, so a job starts within
that; they fetch with their own configured upstream credentials (the registry must be on each
agent's allow-list). Exit status: 0 when every picked node holds every blob, 1 when not (or
the registry or tracker failed), 2 for a wrong command line.
"""

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class PreheatFailed(P2pdistError):
    """The command cannot go on: the message says why and what to do. ``status`` 2: the command
    line is wrong; 1: the registry, the tracker or the nodes failed."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("preheat", help="spread an image's blobs to some nodes ahead of a rollout",
                              description=__doc__.split("\n\n")[1].replace("\n", " "), epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="REGISTRY/REPO[:TAG|@DIGEST]")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--nodes", type=int, help="how many nodes fetch it (default: --share 1.0, every live node)")
    who.add_argument("--share", type=float, help="what share of the live nodes fetch it, in (0, 1]")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] of a multi-platform image (default: this machine's, linux)")
    p.add_argument("--tracker", default=os.environ.get("P2PDIST_TRACKER", "http://127.0.0.1:7070").split(",")[0],
                   help="the tracker's URL (default $P2PDIST_TRACKER, else %(default)s)")
    p.add_argument("--cluster-token-file", help="a file with the cluster secret (default: $P2PDIST_CLUSTER_TOKEN)")
    p.add_argument("--tls-ca", help="the cluster CA that checks an https:// tracker's certificate")
    p.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP")
    p.add_argument("--creds", metavar="USER:PASSWORD", help="registry credentials to resolve the tag with")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the nodes (default %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="post the job and print its id, without following it")
    p.add_argument("--json", action="store_true", help="print the job's final progress as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except PreheatFailed as e:
        print(f"p2pdist preheat: error: {e}", file=sys.stderr)
        return e.status


async def _run(args: argparse.Namespace) -> int:
    secret = _secret(args)
    try:
        ref = parse_reference(args.image)
        wanted = parse_platform(args.platform or f"linux/{ARCH.get(host_platform.machine(), 'amd64')}")
        ssl = client_context(args.tls_ca) if args.tls_ca else True
    except (InvalidName, DigestError, ImageError, CertError) as e:
        raise PreheatFailed(str(e), status=2) from None
    share = args.share if args.nodes is None else None
    if args.nodes is None and args.share is None:
        share = 1.0
    async with aiohttp.ClientSession() as session:
        blobs = await _resolve(session, args, ref, wanted)
        body = {"blobs": [{"ref": f"{ref.registry}/{ref.repository}@{d}", "size": size} for d, size in blobs],
                "nodes": args.nodes, "share": share}
        headers = {"Authorization": f"Bearer {secret}"}
        url = args.tracker.rstrip("/") + "/v1/preheat"
        job = await _call(session, "POST", url, headers, ssl, body)
        console = Console(stderr=True)
        console.print(f"preheat job {job['job']}: {len(blobs)} blobs ({human(sum(s for _, s in blobs))}) "
                      f"to {len(job['nodes'])} nodes")
        if args.no_wait:
            print(job["job"])
            return 0
        final = await _follow(session, f"{url}/{job['job']}", headers, ssl, job, args.timeout, console)
    if args.json:
        print(json.dumps(final))
    failed = {ref: why for b in final["blobs"] for ref, why in [(b["ref"], b["failed"])] if why}
    for ref, why in failed.items():
        for node, reason in why.items():
            console.print(f"[red]{node}[/red] could not fetch {ref}: {reason}")
    return 0 if final["finished"] and not failed else 1


def _secret(args: argparse.Namespace) -> str:
    if args.cluster_token_file:
        try:
            with open(args.cluster_token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise PreheatFailed(f"cannot read {args.cluster_token_file}: {e.strerror}", status=2) from None
    secret = os.environ.get("P2PDIST_CLUSTER_TOKEN", "")
    if not secret:
        raise PreheatFailed("the tracker takes preheat jobs with the cluster secret: set $P2PDIST_CLUSTER_TOKEN "
                            "or --cluster-token-file", status=2)
    return secret


async def _resolve(session: aiohttp.ClientSession, args: argparse.Namespace, ref: Any,
                   wanted: Any) -> list[tuple[Digest, int]]:
    creds = None
    if args.creds:
        user, _, password = args.creds.partition(":")
        creds = Credentials(user, password)
    origin = OriginClient(session, ref.registry, plain_http=args.plain_http, credentials=creds)
    reference = str(ref.digest) if ref.digest else (ref.tag or "latest")
    try:
        body, media_type = await origin.manifest(ref.repository, reference, ACCEPT)
        if is_index(body, media_type):
            chosen = select_manifest(body, wanted)
            body, media_type = await origin.manifest(ref.repository, str(chosen.digest), ACCEPT)
        return [(b.digest, b.size) for b in image_blobs(body)]
    except (OriginError, ImageError) as e:
        raise PreheatFailed(f"{ref}: {e}") from None
    except aiohttp.ClientError as e:
        raise PreheatFailed(f"registry {ref.registry} unreachable: {e} (plain HTTP? --plain-http)") from None


async def _call(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], ssl: Any,
                body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        async with session.request(method, url, json=body, headers=headers, ssl=ssl,
                                   timeout=aiohttp.ClientTimeout(total=30)) as resp:
            data = await resp.read()
            if resp.status not in (200, 201):
                try:
                    why = json.loads(data).get("error", "")
                except ValueError:
                    why = data[:300].decode(errors="replace")
                raise PreheatFailed(f"the tracker answered {resp.status}: {why}")
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            return doc
    except ValueError as e:
        raise PreheatFailed(f"the tracker at {url} sent an unreadable answer ({e}): is it a p2pdist tracker?") from None
    except (aiohttp.ClientError, TimeoutError) as e:
        raise PreheatFailed(f"tracker {url} unreachable: {e or type(e).__name__} (--tracker?)") from None


async def _follow(session: aiohttp.ClientSession, url: str, headers: dict[str, str], ssl: Any,
                  job: dict[str, Any], timeout: float, console: Console) -> dict[str, Any]:
    total = len(job["nodes"]) * len(job["blobs"])
    deadline = time.monotonic() + timeout
    columns = (TextColumn("[bold]preheat"), BarColumn(), MofNCompleteColumn(), TextColumn("blobs on nodes"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("preheat", total=total)
        while True:
            job = await _call(session, "GET", url, headers, ssl)
            bar.update(task, completed=sum(b["done"] for b in job["blobs"]))
            if job["finished"] or time.monotonic() > deadline:
                return job
            await asyncio.sleep(1.0)  # a progress poll, once a second

