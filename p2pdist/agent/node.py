"""The agent: one store, one neighbourhood, one swarm per blob being fetched, and seeding."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from p2pdist.agent.block_lists import BlockLists
from p2pdist.agent.identity import NodeIdentity
from p2pdist.agent.metrics import AgentMetrics
from p2pdist.agent.neighbours import Neighbour, Neighbourhood
from p2pdist.agent.orders import OrderTaker
from p2pdist.agent.origin import Credentials, OriginClient
from p2pdist.agent.ratelimit import TokenBucket
from p2pdist.agent.relay import Relay
from p2pdist.agent.swarm import Swarm
from p2pdist.agent.tracker_client import TrackerClient, TrackerUnavailable
from p2pdist.agent.upload_slots import UploadSlots
from p2pdist.config import AgentConfig
from p2pdist.core import wire
from p2pdist.core.bitfield import Bitfield
from p2pdist.core.digest import Digest
from p2pdist.core.layout import PieceLayout, decide_layout
from p2pdist.store import Store
from p2pdist.tls import client_context

from ..errors import P2pdistError

log = logging.getLogger("p2pdist.agent")

SEED_INTERVAL = 10.0  # fallback re-announce interval for complete blobs (the tracker's reply wins)


class UpstreamNotAllowed(P2pdistError):
    """A registry that is not on the agent's upstream allow-list."""


class Agent:
    def __init__(self, config: AgentConfig, node: str, session: aiohttp.ClientSession,
                 node_secret: str = "", identity: NodeIdentity | None = None) -> None:
        self.config = config
        # Who we are to the tracker and peers (signed requests, tickets); None: a node on its own,
        # whose peer port takes only this node's own secret. That secret never leaves this node.
        self.identity = identity
        self.peer_secret = node_secret
        self.node = identity.node if identity is not None else node
        self.addr = config.advertise
        self.session = session
        # TLS towards the tracker and peers: the cluster CA when configured, else aiohttp's default
        # checks (True), as every request to them passes it.
        self.ssl: ssl.SSLContext | bool = client_context(config.tls_ca) if config.tls_ca is not None else True
        self.metrics = AgentMetrics()
        self.store = Store(config.data_dir / "store", capacity=config.capacity or None)
        self.tracker = (TrackerClient(session, config.tracker, identity, ssl=self.ssl, start=self.node)
                        if config.tracker else None)
        self.neighbours = Neighbourhood(self, session, identity, config.limits.neighbours,
                                        config.limits.peer_concurrency, scheme=config.peer_scheme)
        self.neighbours.on_change = lambda: self.metrics.neighbours.set(len(self.neighbours.peers))
        self.swarms: dict[str, Swarm] = {}
        self._downloads: dict[str, asyncio.Task[Path]] = {}
        self._seeds: dict[str, float] = {}  # blob -> next announce (monotonic)
        self._seed_digests_sent: set[str] = set()
        # Complete blobs whose stored layout the tracker confirmed (its piece size): only their piece
        # digests may go to it. A seeder's digests are taken as facts for the tracker's layout.
        self._layout_agreed: set[str] = set()
        self._seed_wake = asyncio.Event()
        # "stopped" announces on their way, of blobs removed or downloads failed: a new download of
        # the blob sends its "started" after it (sent together, the tracker could take them the
        # other way round and drop the node it had just let in).
        self._stopping: dict[str, asyncio.Future[None]] = {}
        self._seeder: asyncio.Task | None = None
        self.orders = OrderTaker(self)  # preheat orders from the tracker (agent/orders.py)
        self._orderer: asyncio.Future[None] | None = None
        limits = config.limits
        self.upload_slots = UploadSlots(limits.upload_slots, limits.upload_line, limits.upload_line_wait,
                                        self._room_changed)
        self.download_rate = TokenBucket(config.limits.download_rate)
        # Block digests sent with pieces (block_lists.py).
        self.block_lists = BlockLists(on_hash=self.metrics.block_lists_hashed.inc)
        # Origin Range bodies are read by these threads, not the loop's (origin_reader.py): a few
        # streams per blob, for the few blobs a node pulls at once.
        self.origin_threads = ThreadPoolExecutor(max_workers=4 * config.limits.origin_concurrency,
                                                 thread_name_prefix="origin")

    # --- fetching ---------------------------------------------------------------------------

    def origin_client(self, registry: str, authorization: str | None = None) -> OriginClient:
        up = self.config.upstream(registry)
        if up is None:
            raise UpstreamNotAllowed(
                f"registry {registry} is not an allowed upstream: add it with --upstream "
                f"(e.g. --upstream https://{registry}) or an [[upstream]] table in the config file"
            )
        creds = Credentials(up.username, up.password) if up.username else None
        # A client's own credential wins: it is the one the upstream just accepted for this pull.
        limits = self.config.limits
        return OriginClient(self.session, up.host, plain_http=up.plain_http, credentials=creds,
                            authorization=authorization, verify_tls=not up.skip_verify,
                            first_byte_timeout=limits.piece_timeout, stall_timeout=limits.origin_stall_timeout)

    def fetch(self, registry: str, repo: str, digest: Digest, authorization: str | None = None,
              size: int | None = None) -> tuple[Swarm | None, asyncio.Future[Path]]:
        """Start (or join) the one download of this blob on this node.

        ``authorization`` is a mirror client's own credential, used for the origin when the
        download starts here; later joiners share the download (they were checked upstream first).
        ``size`` is the blob's size as the upstream gave it to the mirror (a manifest's descriptor,
        a HEAD), if known: the download then does not ask the origin for it again.
        """
        blob = str(digest)
        if self.store.has(digest):
            done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
            done.set_result(self.store.blob_path(digest))
            return None, done
        task = self._downloads.get(blob)
        if task is None:
            swarm = self.swarms[blob] = Swarm(self, digest, registry, repo, authorization, size=size)
            task = self._downloads[blob] = asyncio.ensure_future(swarm.run())
            self.metrics.swarms.set(len(self._downloads))
            task.add_done_callback(lambda t, b=blob: self._finished(b, t))
        return self.swarms.get(blob), task

    def _finished(self, blob: str, task: asyncio.Future[Path]) -> None:
        self._downloads.pop(blob, None)
        swarm = self.swarms.pop(blob, None)
        self.metrics.swarms.set(len(self._downloads))
        self.metrics.store_bytes.set(self.store.usage())
        if self.tracker is not None and swarm is not None and not task.cancelled() and task.exception() is not None:
            # A download that failed serves nothing more: its leases go back and its pieces stop
            # counting at once, not when the tracker notices its silence.
            self._stop_soon(blob)

    def _stop_soon(self, blob: str) -> None:
        """Announce "stopped" for ``blob`` in the background (it ends with the agent, at the latest)."""
        task = self._stopping[blob] = asyncio.ensure_future(self._stop(blob))
        task.add_done_callback(lambda t: self._stopping.pop(blob, None) if self._stopping.get(blob) is t else None)

    async def stop_sent(self, blob: str) -> None:
        """Wait for a "stopped" announce of ``blob`` still on its way, if any."""
        task = self._stopping.get(blob)
        # Not while the tracker is failing: the "started" would fail as well, after that wait.
        if task is not None and self.tracker is not None and self.tracker.down_for(time.monotonic()) == 0:
            await asyncio.wait({task})  # its outcome is its own: a tracker that did not hear it expires us

    # --- what neighbours and the peer server ask of us --------------------------------------

    def _complete_layout(self, digest: Digest) -> PieceLayout | None:
        manifest = self.store.piece_manifest(digest)
        return manifest.layout if manifest is not None else None

    def _holds(self, blob: str) -> bool:
        """Whether ``blob`` is complete in the store: a seeder pulls it no more, so neighbours'
        proofs of it (every HAVE of every downloader) need not wait for a pull."""
        try:
            return self.store.has(Digest.parse(blob))
        except ValueError:
            return False

    def local_bitfield(self, blob: str) -> Bitfield | None:
        swarm = self.swarms.get(blob)
        if swarm is not None and swarm.partial is not None:
            return swarm.partial.have.copy()
        try:
            digest = Digest.parse(blob)
        except ValueError:
            return None
        layout = self._complete_layout(digest) if self.store.has(digest) else None
        return Bitfield.full(layout.count) if layout else None

    def on_bitfield(self, blob: str, old: Bitfield | None, new: Bitfield | None) -> None:
        swarm = self.swarms.get(blob)
        if swarm is not None:
            swarm.on_bitfield(old, new)

    def on_have(self, blob: str, index: int) -> None:
        swarm = self.swarms.get(blob)
        if swarm is not None:
            swarm.on_have(index)

    def on_room(self, nb: Neighbour) -> None:
        for swarm in self.swarms.values():
            swarm.on_room(nb)

    def local_proofs(self, blob: str) -> tuple[int, list[tuple[int, bytes, bytes]]]:
        swarm = self.swarms.get(blob)
        return swarm.held_proofs() if swarm is not None else (0, [])

    def on_proofs(self, nb: Neighbour, blob: str, epoch: int, proofs: list[tuple[int, bytes, bytes]]) -> bool:
        swarm = self.swarms.get(blob)
        if swarm is None:
            if self.identity is not None and not self._holds(blob):
                nb.hold_proofs(blob, epoch, proofs)  # a pull of it starting later checks them
            return True
        return swarm.on_proofs(nb, epoch, proofs)

    @property
    def uploads(self) -> int:
        return self.upload_slots.active

    def _room_changed(self, free: int) -> None:
        """An upload started or ended, or a request joined or left the line: the neighbours hear
        how much room is left."""
        self.metrics.uploads.set(self.upload_slots.active)
        self.metrics.upload_line.set(self.upload_slots.waiting)
        self.neighbours.advertise_room(free)

    def piece_source(self, digest: Digest, start: int, end: int) -> tuple[Path, int] | None:
        """(file, blob size) if bytes [start, end) are verified here, else None."""
        if self.store.has(digest):
            size = self.store.size(digest)
            if size is not None and end <= size:
                return self.store.blob_path(digest), size
            return None
        swarm = self.swarms.get(str(digest))
        partial = swarm.partial if swarm else None
        if partial is None or end > partial.layout.blob_size or start >= end:
            return None
        layout = partial.layout
        if all(i in partial.have for i in range(layout.piece_at(start), layout.piece_at(end - 1) + 1)):
            return partial.data_path, layout.blob_size
        return None

    def relay_for(self, digest: Digest, start: int, end: int) -> Relay | None:
        """The piece that is bytes [start, end) of ``digest`` if it is arriving here and may be passed
        on as its blocks check out (agent/relay.py), else None."""
        swarm = self.swarms.get(str(digest))
        return swarm.relay_for(start, end) if swarm is not None else None

    # --- seeding ----------------------------------------------------------------------------

    def seeding(self, digest: Digest, interval: float | None = None, layout_agreed: bool = False,
                tracker_has_digests: bool = False) -> None:
        """Keep announcing ``digest`` as complete; ``layout_agreed``: it was cut as the tracker said;
        ``tracker_has_digests``: the tracker's log holds every piece's digest, so ours need not go."""
        self._seeds[str(digest)] = time.monotonic() + (interval or SEED_INTERVAL)
        if layout_agreed:
            self._layout_agreed.add(str(digest))
        if tracker_has_digests:
            self._seed_digests_sent.add(str(digest))
        self._seed_wake.set()  # an imported blob is announced now, not at the loop's next round

    def forget(self, digest: Digest) -> None:
        """``digest`` left the store (`p2pdist cache rm`, gc): no more seeding, and the tracker is
        told at once so nobody is handed this node for it. A later copy (an import, a download) has
        its layout agreed with the tracker again before its piece digests go out as facts."""
        blob = str(digest)
        self._seeds.pop(blob, None)
        self._layout_agreed.discard(blob)
        self._seed_digests_sent.discard(blob)
        self.block_lists.forget(blob)
        if self.tracker is not None and blob not in self._downloads:
            self._stop_soon(blob)

    async def start(self) -> None:
        for digest, _size in self.store.blobs():
            self._seeds[str(digest)] = 0.0
        if self.tracker is not None:
            self._seeder = asyncio.ensure_future(self._seed_loop())
            self._orderer = asyncio.ensure_future(self.orders.run())

    async def _seed_loop(self) -> None:
        """Keep the tracker told which complete blobs we can serve, so others find us."""
        while True:
            now = time.monotonic()
            due = [b for b, t in self._seeds.items() if t <= now and b not in self._downloads]
            for blob in due:
                interval = await self._announce_complete(blob)
                self._seeds[blob] = time.monotonic() + interval
            wait = max(0.2, min((t for t in self._seeds.values()), default=now + 5) - time.monotonic())
            self._seed_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._seed_wake.wait(), wait)

    async def _announce_complete(self, blob: str) -> float:
        digest = Digest.parse(blob)
        size = self.store.size(digest)
        if size is None:
            self._seeds.pop(blob, None)
            return SEED_INTERVAL
        # None for a sidecar an older version wrote (sha256 piece digests) or an unreadable one.
        manifest = self.store.piece_manifest(digest)
        layout = manifest.layout if manifest is not None else decide_layout(size)
        agreed = manifest is not None and blob in self._layout_agreed
        msg = wire.Announce(
            node=self.node, addr=self.addr, blob=blob, zone=self.config.zone, rack=self.config.rack,
            size=size, have=layout.count, complete=True, load=self.uploads, event="completed",
            # The piece digests go once per process (enough to rebuild a tracker's memory), and only
            # for the tracker's layout: it takes a seeder's digests as facts.
            digests=list(manifest.items())[: wire.MAX_LIST] if agreed and blob not in self._seed_digests_sent else [],
            wants_peers=False,  # downloaders dial seeders, not the other way round
        )
        try:
            reply = await self.tracker.announce(msg)
        except TrackerUnavailable:
            self.metrics.tracker_errors.inc()
            return SEED_INTERVAL
        if msg.digests:
            self._seed_digests_sent.add(blob)
        if agreed or not reply.piece_size:
            return reply.interval
        piece_size = reply.piece_size
        if manifest is None or manifest.layout.piece_size != piece_size:
            # Cut again from the blob's bytes (checked against its digest in the same pass), once,
            # to the piece size the tracker just told us.
            log.info("recutting a stored blob to the tracker's piece size",
                     extra={"blob": blob, "piece_size": piece_size, "was": layout.piece_size})
            if await asyncio.to_thread(self.store.rebuild_piece_manifest, digest, piece_size) is None:
                self._seeds.pop(blob, None)
                return SEED_INTERVAL
        self._layout_agreed.add(blob)
        return 0.0  # the digests go at the next announce, right away

    async def _announce_stopped(self) -> None:
        """Tell the tracker we are leaving, so nobody is handed a dead peer until its TTL runs out."""
        if self.tracker is None:
            return
        blobs = set(self._seeds) | set(self.swarms)
        # Bounded: a daemon asked to stop must stop even if the tracker is slow.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(self._stop(b) for b in blobs)), timeout=3.0)

    async def _stop(self, blob: str) -> None:
        assert self.tracker is not None
        msg = wire.Announce(node=self.node, addr=self.addr, blob=blob, event="stopped", wants_peers=False)
        with contextlib.suppress(TrackerUnavailable):
            await self.tracker.announce(msg)

    async def close(self) -> None:
        for task in (self._seeder, self._orderer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.orders.close()
        await self._announce_stopped()
        for task in list(self._downloads.values()):
            task.cancel()
        await asyncio.gather(*self._downloads.values(), return_exceptions=True)
        await self.neighbours.close()
        self.origin_threads.shutdown(wait=False, cancel_futures=True)
