"""One blob's download on this node, driven over asyncio: the core's ``Download`` machine decides,
this module carries its commands out (peer requests, origin Range streams, announces, commit) and
feeds it what happened.

It never marks a piece as had before it is verified, and it never commits a blob before the
whole-blob digest matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from p2pdist.agent.origin import OriginError, OriginRetry, RangeNotSupported
from p2pdist.agent.origin_reader import NeedsAsyncClient, RunControl, read_range
from p2pdist.agent.peer_client import PeerBusy, PeerError, PeerLacks, PeerLied, Piece, fetch_piece
from p2pdist.agent.relay import Relay
from p2pdist.agent.tracker_client import SizeConflict, TrackerDown, TrackerUnavailable
from p2pdist.core import download as machine
from p2pdist.core import wire
from p2pdist.core.blocks import BlockCheck
from p2pdist.core.digest import Digest, DigestMismatch
from p2pdist.core.download import Download, Request
from p2pdist.core.layout import PieceLayout, decide_layout
from p2pdist.core.manifest import ManifestError, hash_piece
from p2pdist.core.proofs import EPOCH_SHIFT, cursor_epoch, tracker_lacks_digests
from p2pdist.store import PartialClosed, StoreFull

from ..errors import P2pdistError

if TYPE_CHECKING:
    from p2pdist.agent.neighbours import Neighbour
    from p2pdist.agent.node import Agent
    from p2pdist.store import Partial

log = logging.getLogger("p2pdist.swarm")

DEADLINE_RECHECK = 0.25  # seconds between looks at a waiting piece request's (moving) deadline
SEND_DIGESTS_NOW = 0.001  # seconds before the seeding loop sends a tracker the digests its log lacks


class LogWiped(P2pdistError):
    """The tracker wiped the digest log this download's pieces were checked against (a "corrupt")."""


class FetchFailed(P2pdistError):
    """The blob could not be fetched even from the origin; the message says why."""


@dataclass
class SwarmStats:
    size: int = 0
    from_peers: int = 0
    from_origin: int = 0
    resumed: int = 0  # verified bytes found on disk from an earlier, interrupted download
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def have(self) -> int:
        return self.resumed + self.from_peers + self.from_origin


class NeighbourView:
    """The neighbours a pass may ask now (``core.download.Holders``), read from their bitfields."""

    def __init__(self, blob: str, count: int, free: list[Neighbour]) -> None:
        self.blob = blob
        self.free = free
        # The pieces some usable neighbour holds, from the union of their bitfields: one shift per
        # piece instead of asking every neighbour about every piece.
        self.reach, self.width = 0, 0
        for nb in free:
            bf = nb.bitfields.get(blob)
            if bf is not None and bf.size == count:
                self.reach |= bf.as_int()
                self.width = bf.width

    def __call__(self, index: int) -> list[Neighbour]:
        return [nb for nb in self.free if nb.has(self.blob, index)]

    def reachable(self, pieces) -> list[int]:
        reach, last = self.reach, self.width - 1
        return [i for i in pieces if reach >> (last - i) & 1] if self.width else []


class Swarm:
    def __init__(self, agent: Agent, digest: Digest, registry: str, repo: str,
                 authorization: str | None = None, size: int | None = None) -> None:
        self.agent = agent
        # The size the upstream gave the mirror for this client (descriptor or HEAD), if any: the
        # manifest is the root of trust, so it beats a size another node told the tracker.
        self.size_hint = size
        self.digest = digest
        self.blob = str(digest)
        self.registry = registry
        self.repo = repo
        self.stats = SwarmStats()
        self.partial: Partial | None = None
        self.layout: PieceLayout | None = None
        self.machine: Download | None = None
        self.rng = random.Random(f"{agent.node}/{digest}")
        self.direct = agent.tracker is None  # before the machine exists: no tracker to ask
        self.wake_event = asyncio.Event()
        self.piece_done = asyncio.Condition()
        self.error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self._deadline = math.inf  # the machine's next timer
        self._complete = False
        self._announcing = False
        self.origin = agent.origin_client(registry, authorization)
        self.ready = asyncio.Event()  # the layout is known and the partial is open
        self.layout_agreed = False  # the layout is the tracker's (its reply gave the piece size)
        # The bytes of the tracker's proofs (core.proofs), index -> (digest, proof). Which of them
        # hold (in our cursor's epoch) is the machine's word: ``Download.proved(i)``.
        self.proofs: dict[int, tuple[bytes, bytes]] = {}
        # Pieces arriving from peers that askers may have while they arrive (relay.py), once the
        # machine offered them (``Download.offering``).
        self.relays: dict[int, Relay] = {}
        self.verified = asyncio.Event()  # the assembled blob matched its digest (commit may still be syncing)
        self.started_epoch = 0  # the tracker's digest log the current download began on (0: none)
        self.finished = False
        self._pending_readers: dict[int, int] = {}  # readers that arrived before the machine

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> Path:
        try:
            try:
                try:
                    path = await self._download()
                except LogWiped as e:
                    log.warning("fetching the blob again through the swarm", extra={"blob": self.blob, "why": str(e)})
                    self.error = None
                    self._drop_held()
                    path = await self._download()
            except DigestMismatch as e:
                # The assembled blob is wrong although every piece matched its digest: a lease
                # holder's origin copy was bad (a byte flipped on the way, a node that lies) or the
                # origin changed. The tracker wipes the blob's digests and leases (once: the others'
                # reports, from the same log, find it wiped), and the swarm fetches it anew, each
                # piece from the origin once more. Going to the origin alone at once, every node of
                # the swarm took the whole blob again: one flipped byte, 3 nodes, 2.4-4.2x egress.
                again = "through the swarm" if not self.direct else "from the origin"
                log.error(f"assembled blob failed its digest; fetching it again {again}",
                          extra={"blob": self.blob, "error": str(e)})
                await self._start_over()
                try:
                    path = await self._download()
                except DigestMismatch as e2:
                    if self.direct:
                        raise
                    # Wrong twice through the swarm: the origin alone, as a last try.
                    log.error("assembled blob failed its digest again; fetching it from the origin",
                              extra={"blob": self.blob, "error": str(e2)})
                    self.direct = True
                    await self._start_over()
                    path = await self._download()
        except StoreFull as e:
            # Said plainly (the disk, the sizes), and nothing kept (see _download): a partial that
            # cannot be finished would only take the room a blob that fits needs.
            log.error("no room for the blob", extra={"blob": self.blob, "error": str(e)})
            self.agent.metrics.fetches.labels("error").inc()
            raise FetchFailed(str(e)) from e
        except BaseException:
            self.agent.metrics.fetches.labels("error").inc()
            raise
        finally:
            await self._stop_tasks()
            self.finished = True
            self.ready.set()
            async with self.piece_done:
                self.piece_done.notify_all()  # readers waiting for pieces learn that nothing more comes
        self.stats.finished = time.monotonic()
        self.agent.metrics.fetches.labels("ok").inc()
        self.agent.metrics.fetch_seconds.observe(self.stats.finished - self.stats.started)
        return path

    async def _start_over(self) -> None:
        """After a failed assembly: say so to the tracker, drop what we had, ask the origin's size anew."""
        self.agent.metrics.origin_fallbacks.labels("corrupt").inc()
        await self._announce_safely("corrupt")
        self._drop_held()
        self.size_hint = None  # the origin's own word this time, should the hint have been wrong

    def _drop_held(self) -> None:
        """The download's pieces are discarded: neighbours must stop asking us for them; start afresh."""
        self.agent.neighbours.broadcast_lost(self.blob)
        self.agent.block_lists.forget(self.blob)
        self._reset()

    def _reset(self) -> None:
        if self.machine is not None:
            self._pending_readers = dict(self.machine.readers)
        self.partial = None
        self.machine = None
        self.proofs = {}
        self.relays = {}
        self.verified.clear()
        self._complete = False
        self._deadline = math.inf
        self.stats.from_origin = self.stats.from_peers = 0

    async def _download(self) -> Path:
        # The size is the upstream's (the client's descriptor, or a HEAD), never the tracker's: the
        # tracker keys swarms by digest and size, so a node announcing a wrong size first only
        # makes a swarm of its own.
        size = self.size_hint if self.size_hint is not None else await self._origin_size()
        self.size_hint = size
        reply = None if self.direct else await self._first_announce()
        self.started_epoch = cursor_epoch(reply.digest_pos) if reply is not None else 0
        limits = self.agent.config.limits
        self.layout = decide_layout(size, tracker_piece_size=reply.piece_size if reply else None,
                                    pinned_piece_size=limits.piece_size)
        self.layout_agreed = bool(reply and reply.piece_size)
        self.stats.size = size
        self.partial = await asyncio.to_thread(self.agent.store.open_partial, self.digest, self.layout)
        try:
            dl = self.machine = self._new_machine()
            self.ready.set()
            for i in self.partial.have:
                dl.mark_had(i)
            for nb in self.agent.neighbours.peers.values():
                bf = nb.bitfields.get(self.blob)
                if bf is not None and bf.size == self.layout.count:
                    for i in bf:
                        dl.add_holder(i)
            self.stats.from_origin = 0
            self.stats.from_peers = 0
            self.stats.resumed = sum(self.layout.length(i) for i in self.partial.have)
            dl.start(time.monotonic(), self._reply(reply) if reply is not None else None)
            self._check_held_proofs()
            if reply is not None:
                self.agent.neighbours.connect(reply.peers, self.blob)
            while not self._complete:
                if self.error is not None:
                    raise self.error
                now = time.monotonic()
                if now >= self._deadline:
                    self._deadline = math.inf
                    dl.tick(now)
                if dl.dirty:
                    dl.schedule(now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(self._deadline - now, 1.0))):
                        await self.wake_event.wait()
                self.wake_event.clear()
            await self._stop_tasks()
            loop = asyncio.get_running_loop()
            stored = time.monotonic()
            verified_at: list[float] = []

            def on_verified() -> None:
                verified_at.append(time.monotonic())
                loop.call_soon_threadsafe(self.verified.set)

            path = await asyncio.to_thread(self.partial.commit, on_verified)
            # Where the tail of a download goes: the whole-blob hash catching up, then the fsync.
            now = time.monotonic()
            log.debug("blob committed", extra={"blob": self.blob, "seconds": round(now - self.stats.started, 3),
                                               "hash_tail": round(verified_at[0] - stored, 3),
                                               "fsync": round(now - verified_at[0], 3)})
            # One line per pull at info: what an operator looks for first.
            log.info("blob fetched", extra={"blob": self.blob, "repository": self.repo, "size": self.stats.size,
                                            "seconds": round(now - self.stats.started, 3),
                                            "from_peers": self.stats.from_peers,
                                            "from_origin": self.stats.from_origin, "resumed": self.stats.resumed})
        except (StoreFull, LogWiped):
            # Nothing kept: a partial that cannot be finished would only take room (StoreFull), and
            # pieces checked against a wiped log would be resumed and reported again (LogWiped).
            await self._stop_tasks()
            with contextlib.suppress(PartialClosed):
                await asyncio.to_thread(self.partial.discard)
            raise
        finally:
            if self.partial is not None:
                self.partial.close()
        await self._announce_safely("completed")
        return path

    def _check_held_proofs(self) -> None:
        """Proofs neighbours sent before this download could check them (before it began, or before
        its first tracker reply) are checked now, before its first pass: a forger is banned before
        it is asked for anything. Dropped unchecked, they left its bitfield standing, and the pass
        asked it first (it says it holds everything, with room)."""
        for nb in list(self.agent.neighbours.peers.values()):
            held = nb.take_proofs(self.blob)
            if held is not None:
                self.on_proofs(nb, *held)

    def _new_machine(self) -> Download:
        limits = self.agent.config.limits
        layout = self.layout
        settings = machine.Settings(
            inflight_bytes=limits.inflight_bytes, upload_slots=limits.upload_slots,
            origin_concurrency=limits.origin_concurrency, stall_timeout=limits.stall_timeout,
            piece_timeout=limits.piece_timeout, cut_through=limits.cut_through,
        )
        dl = Download(self, settings, layout.piece_size, layout.blob_size, time.monotonic(), self.rng,
                      direct=self.direct)
        for reader, index in self._pending_readers.items():
            dl.follow(reader, index, time.monotonic())
        self._pending_readers.clear()
        return dl

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
        self.wake_event.set()

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the machine's commands (core.download.Shell) ---------------------------------------

    def wake(self) -> None:
        self.wake_event.set()

    def timer(self, at: float) -> None:
        if at < self._deadline:
            self._deadline = at
            self.wake_event.set()

    def holders(self, now: float) -> NeighbourView | None:
        free = []
        for nb in self.agent.neighbours.peers.values():
            nb.room = nb.advertised  # what it last said: the previous pass's count-down is over
            if machine.askable(nb, now):
                free.append(nb)
        return NeighbourView(self.blob, self.layout.count, free) if free else None

    def fetch_piece(self, req: Request) -> None:
        self._spawn(self._peer_piece(self.machine, req))

    def start_origin(self, runs: list[tuple[int, int]]) -> None:
        self._spawn(self._origin_lease(self.machine, runs))

    def announce(self) -> None:
        self._spawn(self._progress_announce(self.machine))

    def stored(self, index: int, from_origin: bool, tell: int) -> None:
        length = self.layout.length(index)
        if from_origin:
            self.stats.from_origin += length
        else:
            self.stats.from_peers += length
        self.agent.metrics.bytes_in.labels("origin" if from_origin else "peer").inc(length)
        if tell == machine.TELL_HAVE:
            self._have(index)
        elif tell == machine.TELL_PROOF:
            self.proved(index)
        self._spawn(self._notify_readers())

    def offer(self, index: int) -> None:
        self._have(index)

    def unoffer(self, index: int) -> None:
        # The relay was cut off already (``_peer_piece``), and ``relay_for`` asks the machine: askers
        # from now on get a 404, as for any piece not here.
        self.agent.metrics.offers_withdrawn.inc()

    def _have(self, index: int) -> None:
        """HAVE ``index`` to the neighbours, with the tracker's proof if we hold it."""
        dl = self.machine
        if dl is not None and dl.proved(index):
            self.agent.neighbours.broadcast_have(self.blob, index, self.proofs.get(index), dl.proof_epoch)
        else:
            self.agent.neighbours.broadcast_have(self.blob, index)

    def relay_for(self, start: int, end: int) -> Relay | None:
        """The relay of the piece that is bytes [start, end), if it is arriving and was offered."""
        if self.layout is None or not 0 <= start < max(1, self.layout.blob_size):
            return None
        index = self.layout.piece_at(start)
        relay = self.relays.get(index)
        dl = self.machine
        if relay is None or dl is None or not dl.offering(index) or self.layout.span(index) != (start, end - start):
            return None
        return relay

    def proved(self, index: int) -> None:
        # The proof alone: the neighbours heard the HAVE already, so without its bytes there is
        # nothing to send again.
        proof = self.proofs.get(index)
        if self.machine is not None and proof is not None:
            self.agent.neighbours.broadcast_have(self.blob, index, proof, self.machine.proof_epoch)

    def complete(self) -> None:
        self._complete = True
        self.wake_event.set()

    def went_direct(self, reason: str) -> None:
        self.direct = True
        log.warning("no progress from peers or leases; fetching the rest from the origin",
                    extra={"blob": self.blob, "reason": reason})
        self.agent.metrics.origin_fallbacks.labels(reason).inc()

    def tracker_lost(self) -> None:
        log.warning("tracker unreachable mid-download; going on with the peers we know and asking again",
                    extra={"blob": self.blob})

    def tracker_back(self) -> None:
        log.info("tracker reachable again", extra={"blob": self.blob})

    def lacks(self, peer: Neighbour, index: int) -> bool:
        return peer.lacks(self.blob, index)

    def ban(self, peer: Neighbour, reason: str) -> None:
        if self.agent.neighbours.ban(peer, reason):
            self.agent.metrics.peers_banned.inc()

    def abort(self, reason: str) -> None:
        if self.error is None:
            self.error = FetchFailed(reason)
        self.wake_event.set()

    def blocking(self, on: bool) -> None:
        pass  # a ROOM from any neighbour wakes every swarm (Agent.on_room)

    # --- tracker ----------------------------------------------------------------------------

    def _announce_msg(self, event: str, size: int | None = None, complete: bool = False,
                      fields: tuple[list[int], int, int, bool] | None = None,
                      orphans: list[int] | None = None) -> wire.Announce:
        have = len(self.partial.have) if self.partial else 0
        indices, digest_pos, want, streaming = fields if fields is not None else ([], 0, 0, False)
        if complete:
            want, streaming = 0, False
        if event == "started" and not self.direct:
            want = machine.first_want(self.agent.config.limits.origin_concurrency)
        digests: list[tuple[int, bytes]] = []
        if complete and self.partial is not None:
            # Only those still to report (our last origin pieces); the reply says whether the
            # tracker's log lacks others, and then the seeding loop sends ours. Every completing node
            # sent all of them here, and once more when seeding: 10,000 nodes x 256 pieces, twice, at
            # the end of a flash crowd. A seeder's digests are facts to the tracker, for its layout:
            # only if ours is the tracker's (a download that went direct from the start may have cut
            # the blob otherwise).
            manifest = self.partial.manifest
            if not self.layout_agreed:
                digests = []
            elif fields is None:  # no machine to say which are still owed: all of them
                digests = list(manifest.items())[: wire.MAX_LIST]
            else:
                digests = [(i, d) for i in indices if (d := manifest.get(i)) is not None]
        elif self.partial is not None:
            manifest = self.partial.manifest
            digests = [(i, d) for i in indices if (d := manifest.get(i)) is not None]
        return wire.Announce(
            node=self.agent.node, addr=self.agent.config.advertise, blob=self.blob,
            zone=self.agent.config.zone, rack=self.agent.config.rack,
            size=size if size is not None else (self.layout.blob_size if self.layout else None),
            have=have, complete=complete, load=self.agent.uploads, event=event,
            want_leases=want, digests=digests, digest_pos=digest_pos, streaming=streaming,
            wants_peers=not complete and event != "corrupt" and self.agent.neighbours.wants_more(),
            orphans=orphans or [], spares=machine.QUEUES_SPARES,
        )

    async def _first_announce(self) -> wire.AnnounceReply | None:
        tracker = self.agent.tracker
        await self.agent.stop_sent(self.blob)  # a failed download's "stopped" goes first
        msg = self._announce_msg("started", size=self.size_hint)
        patience, tries, first_failure = self.agent.config.limits.tracker_patience, 0, None
        try:
            while True:
                try:
                    return await tracker.announce(msg)
                except TrackerDown as e:
                    # Asked again while the tracker has been silent for less than the patience (a
                    # restart, a moment of overload as a rollout starts), and once more when it ends.
                    # Once it has been silent longer (this download's tries, or others' before), one
                    # try is all a download spends (limits.tracker_patience).
                    self.agent.metrics.tracker_errors.inc()
                    now = time.monotonic()
                    first_failure = now if first_failure is None else first_failure
                    left = patience - max(tracker.down_for(now), now - first_failure)
                    if left <= 0:
                        raise
                    tries += 1
                    wait = min(machine.backoff(tries), left)
                    log.info("tracker not answering; asking again",
                             extra={"blob": self.blob, "error": str(e), "retry_in": round(wait, 2)})
                    await asyncio.sleep(wait)
        except SizeConflict as e:
            # An older tracker that keys swarms by digest alone, and knows another size.
            log.warning("the tracker knows this blob with another size; fetching from the origin",
                        extra={"blob": self.blob, "size": self.size_hint, "error": str(e)})
            self.agent.metrics.origin_fallbacks.labels("size").inc()
        except TrackerDown as e:
            silent = round(tracker.down_for(time.monotonic()), 1)
            log.warning("tracker unreachable; fetching from the origin",
                        extra={"blob": self.blob, "error": str(e), "silent_for": silent})
            self.agent.metrics.origin_fallbacks.labels("tracker").inc()
        except TrackerUnavailable as e:
            log.warning("tracker refused the announce; fetching from the origin",
                        extra={"blob": self.blob, "error": str(e)})
            self.agent.metrics.tracker_errors.inc()
            self.agent.metrics.origin_fallbacks.labels("tracker").inc()
        self.direct = True
        return None

    async def _announce_safely(self, event: str, size: int | None = None) -> wire.AnnounceReply | None:
        if self.agent.tracker is None or (self.direct and event not in ("corrupt", "completed")):
            return None
        complete = event == "completed"
        try:
            # Completing, the digests still owed go as in a progress announce (the machine's report).
            fields = self.machine.announce_fields() if complete and self.machine is not None else None
            if event == "corrupt":
                # The log this download began on: a report from a log wiped since is stale.
                fields = ([], self.started_epoch << EPOCH_SHIFT, 0, False)
            reply = await self.agent.tracker.announce(self._announce_msg(event, size=size, complete=complete,
                                                                         fields=fields))
        except TrackerUnavailable:
            self.agent.metrics.tracker_errors.inc()
            reply = None
        if complete:  # seed even if this announce failed: the seeding loop retries
            # Cut as the tracker said unless the download went without one (direct from the start).
            # The reply's cursor counts the digests the tracker has (tracker.service._cursor): if it
            # lacks any, the seeding loop sends ours at once.
            count = self.layout.count if self.layout is not None else math.inf
            logged = reply is not None and not tracker_lacks_digests(reply.digest_pos, count)
            interval = None if reply is None else reply.interval if logged else SEND_DIGESTS_NOW
            self.agent.seeding(self.digest, interval, layout_agreed=self.layout_agreed, tracker_has_digests=logged)
        return reply

    async def _progress_announce(self, dl: Download) -> None:
        msg = self._announce_msg("progress", fields=dl.announce_fields(), orphans=dl.orphans(time.monotonic()))
        try:
            reply = await self.agent.tracker.announce(msg)
        except TrackerUnavailable as e:
            self.agent.metrics.tracker_errors.inc()
            log.info("announce failed", extra={"blob": self.blob, "error": str(e)})
            if dl is self.machine:
                dl.announce_failed(time.monotonic())
            return
        if dl is self.machine and reply.wiped:
            # Another node's assembled blob failed and the tracker wiped the log ours were checked
            # against: start over now, before the machine re-reports (as after a tracker restart)
            # a digest that may be the wrong one (tracker.service, "wiped").
            if self.error is None:
                self.error = LogWiped(f"the tracker wiped the digests of {self.blob}: another node's copy failed")
            self.wake()
            return
        if dl is self.machine:
            dl.on_reply(time.monotonic(), self._reply(reply))
            self.agent.neighbours.connect(reply.peers, self.blob)

    def _reply(self, reply: wire.AnnounceReply) -> machine.Reply:
        """The machine's view of a reply: the digests it carries are kept in the manifest first, and
        the bytes of their proofs (a proof binds the layout: only the tracker's is proved)."""
        manifest = self.partial.manifest
        learned, proved = [], []
        proofs = reply.proofs if len(reply.proofs) == len(reply.digests) and self.layout_agreed else None
        for k, (index, digest) in enumerate(reply.digests):
            try:
                if manifest.set(index, digest):
                    learned.append(index)
            except (ManifestError, IndexError):
                continue  # not ours to pass on: the origin's bytes said otherwise here
            if proofs is not None:
                self.proofs[index] = (digest, proofs[k])
                proved.append(index)
        if learned:
            self.agent.metrics.digests_learned.labels("tracker").inc(len(learned))
        return machine.Reply(interval=reply.interval, learned=learned, digest_pos=reply.digest_pos,
                             leases=reply.leases, reset=reply.reset, spacing=reply.spacing, proved=proved)

    # --- origin -----------------------------------------------------------------------------

    async def _origin_size(self) -> int:
        # A registry restarting is asked again for origin_patience, as an origin run does; a refusal
        # or a 404 is not.
        retry = OriginRetry(self.agent.config.limits.origin_patience, tries=1)
        while True:
            try:
                return await self.origin.blob_size(self.repo, self.blob)
            except OriginError as e:
                wait = retry.wait(e, time.monotonic())
                if wait is None:
                    raise FetchFailed(f"{self.registry}/{self.repo}@{self.blob}: {e}") from e
                await self._origin_retry(e, wait)

    async def _origin_retry(self, error: BaseException, wait: float) -> None:
        log.warning("origin request failed; retrying",
                    extra={"blob": self.blob, "error": str(error), "retry_in": round(wait, 2)})
        await asyncio.sleep(wait)

    async def _origin_lease(self, dl: Download, runs: list[tuple[int, int]]) -> None:
        log.debug("origin lease start", extra={"blob": self.blob, "runs": str(runs)})
        try:
            for start, end in runs:
                await self._origin_run(start, end)
        except FetchFailed as e:
            if dl is self.machine:
                if self.error is None:
                    self.error = e  # the origin's answer as its cause: the mirror passes a 429 on
                dl.origin_failed(runs, str(e), time.monotonic())
            return
        except BaseException:
            if dl is self.machine:
                dl.origin_done(runs, time.monotonic())
            raise
        if dl is self.machine:
            dl.origin_done(runs, time.monotonic())

    async def _origin_run(self, start: int, end: int) -> None:
        layout = self.layout
        retry, before = OriginRetry(self.agent.config.limits.origin_patience, machine.ORIGIN_RETRIES), end - start + 1
        while True:
            todo = [i for i in range(start, end) if i not in self.partial.have]
            if not todo:
                return
            if len(todo) < before:  # the last try moved pieces: its failure begins a new run of them
                retry.progress()
            before = len(todo)
            first, last = todo[0], todo[-1]
            try:
                if self.agent.download_rate.rate <= 0:  # the thread cannot wait for the rate limiter
                    try:
                        await self._read_run(first, last + 1)
                        return
                    except NeedsAsyncClient:
                        pass  # a challenge, a redirect or no Range support: the async client handles them
                await self._stream_pieces(first, last + 1, self.origin.fetch_range(
                    self.repo, self.blob, layout.offset(first), layout.offset(last) + layout.length(last)))
                return
            except RangeNotSupported:
                await self._stream_pieces(0, layout.count, self.origin.fetch_all(self.repo, self.blob))
                return
            except (OriginError, aiohttp.ClientError, OSError, TimeoutError) as e:
                wait = retry.wait(e, time.monotonic())  # a registry restarting mid-pull is waited for
                if wait is None:
                    raise FetchFailed(f"origin {self.registry} failed for {self.repo}@{self.blob}: {e}") from e
                await self._origin_retry(e, wait)

    async def _stream_pieces(self, first: int, end: int, chunks) -> None:
        """Cut an origin byte stream starting at piece ``first`` into pieces and store them."""
        layout = self.layout
        dl = self.machine
        index = first
        # Piece buffers are reused once stored: fresh multi-MiB buffers cost a page fault per 4 KiB,
        # which measured as more kernel time than the copies themselves.
        spare: list[bytearray] = []
        buf = bytearray(layout.length(index))
        filled = 0
        writes: list[tuple[asyncio.Task, bytearray]] = []
        try:
            async for chunk in chunks:
                await self.agent.download_rate.take(len(chunk))
                dl.streamed += len(chunk)
                view = memoryview(chunk)
                while view:
                    if index >= end:
                        raise OriginError("origin sent more bytes than requested")
                    n = min(len(view), len(buf) - filled)
                    buf[filled:filled + n] = view[:n]
                    filled += n
                    view = view[n:]
                    if filled == len(buf):
                        # Hash and write off the loop while the next piece streams in; two at most.
                        writes.append((asyncio.ensure_future(self._store_origin(dl, index, buf)), buf))
                        if len(writes) >= 2:
                            task, done_buf = writes.pop(0)
                            await task
                            spare.append(done_buf)
                        index += 1
                        filled = 0
                        if index < end:
                            length = layout.length(index)
                            buf = spare.pop() if spare and len(spare[-1]) == length else bytearray(length)
            if index < end:
                raise OriginError(f"origin stream ended early at piece {index} of {end}")
            for task, _ in writes:
                await task
        finally:
            for task, _ in writes:
                task.cancel()
            await asyncio.gather(*(task for task, _ in writes), return_exceptions=True)

    async def _store_origin(self, dl: Download, index: int, data: bytearray) -> None:
        """Digest an origin piece and write it, off the loop; the machine hears it on the loop."""
        partial = self.partial

        def work() -> bytes:
            return self._digest_and_write(partial, index, data)

        digest = await asyncio.to_thread(work)
        self._origin_piece(dl, partial, index, digest)

    def _digest_and_write(self, partial: Partial, index: int, data) -> bytes:
        """An origin piece's digest (its block digests kept to serve it with), and the piece written."""
        digest, blocks = hash_piece(data)
        offset, length = partial.layout.span(index)
        # Kept first: a neighbour may ask for the piece as soon as it is written. Should the origin's
        # bytes fail the blob's digest, _drop_held forgets them.
        self.agent.block_lists.put(self.blob, offset, length, blocks)
        self._write_origin_piece(partial, index, data, digest)
        return digest

    def _write_origin_piece(self, partial: Partial, index: int, data, digest: bytes) -> None:
        """Write an origin piece (in a worker thread). The origin's bytes beat a digest the cluster
        gave for the piece: a lying node's digest must not make the download fail. If the origin's
        bytes were the wrong ones, the whole-blob digest says so before anything is committed."""
        if partial.write_piece(index, data, digest, from_origin=True):
            log.warning("the origin's copy of a piece contradicts the digest the tracker gave; keeping "
                        "the origin's", extra={"blob": self.blob, "piece": index})
            self.agent.metrics.pieces_disputed.inc()

    def _origin_piece(self, dl: Download, partial: Partial, index: int, digest: bytes) -> None:
        """An origin piece is written: its digest is a fact for us (we hashed its bytes)."""
        if dl is not self.machine or partial is not self.partial:
            return  # the download started over meanwhile
        with contextlib.suppress(ManifestError):
            partial.manifest.set(index, digest)
        dl.piece_stored(index, True, time.monotonic())

    async def _notify_readers(self) -> None:
        async with self.piece_done:
            self.piece_done.notify_all()

    async def _read_run(self, first: int, end: int) -> None:
        """Origin pieces [first, end) read, hashed and written by a worker thread (origin_reader.py):
        the loop's thread neither receives nor copies them."""
        loop = asyncio.get_running_loop()
        layout, partial, dl = self.layout, self.partial, self.machine
        target = self.origin.range_target(self.repo, self.blob, self.agent.config.limits.piece_timeout)
        control = RunControl()
        spare: list[bytearray] = []

        def buffer_for(length: int) -> bytearray:
            return spare.pop() if spare and len(spare[-1]) >= length else bytearray(length)

        def on_piece(k: int, piece: memoryview) -> None:
            digest = self._digest_and_write(partial, first + k, piece)
            loop.call_soon_threadsafe(self._origin_piece, dl, partial, first + k, digest)
            spare.append(piece.obj)  # written: the buffer is free for the next piece

        def on_bytes(n: int) -> None:
            # Only "some bytes since the last announce" matters (lease renewal); a count lost to the
            # loop's reset racing this += is harmless.
            dl.streamed += n

        lengths = [layout.length(i) for i in range(first, end)]
        try:
            await loop.run_in_executor(self.agent.origin_threads, read_range, target, layout.offset(first),
                                       lengths, on_piece, buffer_for, control, on_bytes)
        finally:
            control.stop()  # cancelled: the thread's read ends now, not at the origin's next byte

    # --- peers ------------------------------------------------------------------------------

    async def _peer_piece(self, dl: Download, req: Request) -> None:
        cfg = self.agent.config
        nb: Neighbour = req.peer  # type: ignore[assignment]
        status = machine.CANCELLED  # unless it ends otherwise: cancelled with the download
        relay: Relay | None = None
        try:
            identity = self.agent.identity
            sign = None if identity is None else (
                lambda path, rng: identity.peer_authorization("GET", path, nb.node, rng))

            def on_checked(check: BlockCheck, data: bytearray) -> None:
                # Checked blocks may go on to askers (cut-through): the machine says whether to offer.
                nonlocal relay
                if relay is None:
                    if dl is not self.machine or req.index in self.relays:
                        return
                    relay = self.relays[req.index] = Relay(check.blocks, req.length, self.layout.blob_size)
                    relay.progress(data, check.checked)
                    dl.piece_arriving(req)
                else:
                    relay.progress(data, check.checked)

            # The digest the blocks must make. None only after a reset forgot it: the piece then comes
            # unchecked and is not stored (below), as the request is already on its way.
            expected = self.partial.manifest.get(req.index) if self.partial is not None else None
            offset = self.layout.offset(req.index)
            piece = await self._within_deadline(dl, req, fetch_piece(
                self.agent.session, nb.addr, self.blob, offset, req.length, expected=expected,
                sign=sign, scheme=cfg.peer_scheme, ssl=self.agent.ssl, timeout=cfg.limits.piece_timeout,
                on_checked=on_checked,
            ))
            if piece is None:
                status = machine.TIMEOUT
                self.agent.metrics.peer_errors.labels("timeout").inc()
                log.info("piece request timed out", extra={"peer": nb.node, "piece": req.index,
                                                           "after": round(time.monotonic() - req.sent, 3)})
                return
            await self.agent.download_rate.take(req.length)
            partial = self.partial
            if expected is None or partial.manifest.get(req.index) != expected:
                return  # our digest was forgotten (a reset): not the peer's fault, not stored
            # Verified block by block as it came (peer_client): here it is only written, its block
            # digests kept first for when we serve it (a neighbour may ask as soon as it is written).
            if piece.blocks is not None:
                self.agent.block_lists.put(self.blob, offset, req.length, piece.blocks)
            await asyncio.to_thread(partial.write_piece, req.index, piece.data, expected)
            status = machine.DONE
        except PeerLied as e:
            status = machine.BAD
            self.agent.metrics.pieces_bad.inc()
            log.warning("bad piece from peer", extra={"peer": nb.node, "blob": self.blob, "piece": req.index,
                                                      "error": str(e)})
        except PeerBusy:
            self.agent.metrics.peer_errors.labels("busy").inc()
            status = machine.BUSY
        except PeerLacks as e:
            # It does not hold a piece it advertised: the machine takes it off the piece's holders.
            self.agent.metrics.peer_errors.labels("missing").inc()
            log.info("peer lacks a piece it advertised", extra={"peer": nb.node, "piece": req.index, "error": str(e)})
            status = machine.LACKS
        except PeerError as e:
            self.agent.metrics.peer_errors.labels("transfer").inc()
            log.info("piece request failed", extra={"peer": nb.node, "piece": req.index, "error": str(e)})
            status = machine.FAILED
        finally:
            if relay is not None:
                # Written (askers get it from the store from now on; those streaming it finish from
                # memory), or failed: the answers in progress are cut off, and later askers get a 404.
                relay.fail()
                if self.relays.get(req.index) is relay:
                    del self.relays[req.index]
            if dl is self.machine:
                dl.request_done(req, status, time.monotonic())
            else:
                nb.inflight -= 1  # the download started over: only the neighbour's count matters

    @staticmethod
    async def _within_deadline(dl: Download, req: Request, fetch) -> Piece | None:
        """The piece, or None if it missed the machine's deadline for it. The deadline is asked
        again while waiting: pieces arriving meanwhile shorten it (a silent peer's first requests
        are sent before any piece has come in)."""
        task = asyncio.ensure_future(fetch)
        try:
            while True:
                left = dl.deadline(req) - time.monotonic()
                if left <= 0:
                    return None
                done, _ = await asyncio.wait({task}, timeout=min(left, DEADLINE_RECHECK))
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # --- streaming readers (the mirror) -----------------------------------------------------

    def follow(self, reader: int, index: int) -> None:
        """A reader streams the blob and next needs ``index``: the selection window sits there."""
        if self.machine is not None:
            self.machine.follow(reader, index, time.monotonic())
        else:
            self._pending_readers[reader] = index

    def unfollow(self, reader: int) -> None:
        if self.machine is not None:
            self.machine.unfollow(reader)
        self._pending_readers.pop(reader, None)

    async def wait_verified(self, done: asyncio.Future) -> None:
        """Until the whole blob matched its digest; raises the download's error if it failed."""
        waiter = asyncio.ensure_future(self.verified.wait())
        try:
            await asyncio.wait([waiter, done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self.verified.is_set():
            await done  # raises why it failed
            if not self.verified.is_set():
                raise DigestMismatch(self.blob, "a restarted download")

    async def wait_piece(self, partial: Partial, index: int) -> bool:
        """Wait until ``index`` is verified in ``partial``; False if the download ended without it."""
        async with self.piece_done:
            await self.piece_done.wait_for(lambda: index in partial.have or self.finished
                                           or self.partial is not partial)
        return index in partial.have

    # --- neighbour events -------------------------------------------------------------------

    def on_bitfield(self, old, new) -> None:
        dl = self.machine
        if dl is None:
            return
        if old is not None and old.size == dl.count:
            for i in old:
                dl.drop_holder(i)
        if new is not None and new.size == dl.count:
            for i in new:
                dl.add_holder(i)

    def on_have(self, index: int) -> None:
        dl = self.machine
        if dl is not None and index < dl.count:
            dl.add_holder(index, now=time.monotonic())

    def held_proofs(self) -> tuple[int, list[tuple[int, bytes, bytes]]]:
        """(epoch, proved digests of the pieces we hold) for a bitfield offer."""
        dl, partial = self.machine, self.partial
        if dl is None or partial is None or not self.proofs:
            return 0, []
        have = partial.have
        held = [(i, d, p) for i, (d, p) in self.proofs.items() if i in have and dl.proved(i)]
        return dl.proof_epoch, held[: wire.MAX_PROOFS]

    def on_proofs(self, nb: Neighbour, epoch: int, proofs: list[tuple[int, bytes, bytes]]) -> bool:
        """Digests a neighbour passed on: each checked against the tracker's key, once. A proof of
        another epoch is ignored (the tracker forgot those digests, or we have not heard from it yet);
        a forged one bans the neighbour, as a bad piece would (False: drop its message)."""
        dl, partial, identity = self.machine, self.partial, self.agent.identity
        if identity is None:
            return True
        if dl is None or partial is None:
            nb.hold_proofs(self.blob, epoch, proofs)  # before the first reply: checked after it
            return True
        if not self.layout_agreed or not dl.takes_proofs(epoch):
            return True
        manifest, layout = partial.manifest, self.layout
        checked, learned = [], 0
        for index, digest, proof in proofs:
            if index >= dl.count:
                continue
            known = manifest.get(index)
            if dl.proved(index) and digest == known:
                continue  # the tracker's proof of this very digest is here already: nothing to check
            # A proved piece with another digest is checked too: a forged bitfield that arrived after
            # every digest was proved here was taken unchecked, and its sender asked for pieces.
            if not identity.proofs.valid(self.blob, layout.blob_size, layout.piece_size, epoch, index, digest, proof):
                self.ban(nb, f"forged proof of piece {index}")
                return False
            if known is not None and known != digest:
                continue  # the origin's bytes said otherwise here (a disputed piece): ours stands
            self.proofs[index] = (digest, proof)
            checked.append(index)
            learned += known is None and manifest.set(index, digest)
        if learned:
            self.agent.metrics.digests_learned.labels("peer").inc(learned)
        if checked:
            dl.proofs_checked(checked, time.monotonic())
        return True

    def on_room(self, nb: Neighbour) -> None:
        bf = nb.bitfields.get(self.blob)
        if self.machine is not None and bf is not None:
            self.machine.room_opened(bf.__contains__)
