"""One blob's download on this node: pieces from peers first, leased pieces from the origin.

The swarm feeds the core's policies with what it sees (neighbour bitfields, leases, digests) and
carries out their decisions. It never marks a piece as had before it is verified, and it never
commits a blob before the whole-blob digest matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from .core import wire
from .core.digest import Digest, DigestMismatch
from .core.layout import PieceLayout, decide_layout
from .core.leases import missing_runs
from .core.manifest import ManifestError, piece_digest
from .core.selection import PeerSlot, RarestFirst, assign, inflight_budget, reader_cursor, usable
from .origin import OriginError, RangeNotSupported
from .origin_reader import NeedsAsyncClient, RunControl, read_range
from .peer_client import PeerBusy, PeerError, fetch_piece
from .tracker_client import TrackerUnavailable

if TYPE_CHECKING:
    from .agent import Agent
    from .neighbours import Neighbour
    from .store import Partial

log = logging.getLogger("p2pdist.swarm")

ANNOUNCE_SPACING = 0.05  # seconds between announces triggered by events (digests to send or learn)
ORIGIN_RETRIES = 3
SPARE_LEASES = 1
DIRECT_RUN_PIECES = 8  # pieces per origin Range request when fetching without a tracker


class FetchFailed(Exception):
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


class Swarm:
    def __init__(self, agent: Agent, digest: Digest, registry: str, repo: str,
                 authorization: str | None = None) -> None:
        self.agent = agent
        self.digest = digest
        self.blob = str(digest)
        self.registry = registry
        self.repo = repo
        self.stats = SwarmStats()
        self.partial: Partial | None = None
        self.layout: PieceLayout | None = None
        self.selector = RarestFirst()
        self.rng = random.Random(f"{agent.node}/{digest}")
        self.availability: list[int] = []
        self.inflight: set[int] = set()
        self.inflight_bytes = 0
        self.max_inflight = 0  # piece bytes we may fetch at once: core.selection.inflight_budget, set with the layout
        # Kept up to date piece by piece, so scheduling never scans the whole blob on every event:
        self.fetchable: set[int] = set()  # held by a neighbour, digest known, missing, not in flight
        self.undigested: set[int] = set()  # held by a neighbour, missing, but whose digest we lack
        self.leases: list[tuple[int, int]] = []  # granted to us, not yet fetched
        self.origin_active = 0
        self.streamed = 0  # origin bytes since the last announce (they renew our leases)
        self.direct = agent.tracker is None  # fetch everything from the origin ourselves
        self.report: list[tuple[int, bytes]] = []  # origin piece digests the tracker has not had
        # Pieces whose digests went into ``report`` once. Every reply lists the leases we hold, including
        # one being streamed, so it is queued and popped again: without this, _report_had sent the
        # same digests (and an announce) after every reply until the lease closed.
        self.reported: set[int] = set()
        self.digest_pos = 0
        self.cursor: int | None = None  # a streaming reader's next piece (mirror)
        self.wake = asyncio.Event()
        self.kick = asyncio.Event()
        self.piece_done = asyncio.Condition()
        self.last_progress = time.monotonic()
        self.error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self.origin = agent.origin_client(registry, authorization)
        self.ready = asyncio.Event()  # the layout is known and the partial is open
        self.layout_agreed = False  # the layout is the tracker's (its reply gave the piece size)
        self.verified = asyncio.Event()  # the assembled blob matched its digest (commit may still be syncing)
        self.finished = False
        self._readers: dict[int, int] = {}  # streaming reader id -> the piece it waits for

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> Path:
        try:
            try:
                path = await self._download()
            except DigestMismatch as e:
                # The assembled blob is wrong although every piece matched its digest: a lease
                # holder reported bad digests or the origin changed. Start over from the origin alone.
                log.error("assembled blob failed its digest; refetching from origin",
                          extra={"blob": self.blob, "error": str(e)})
                self.agent.metrics.origin_fallbacks.labels("corrupt").inc()
                await self._announce_safely("corrupt")
                # The discarded pieces are gone: neighbours must stop asking us for them.
                self.agent.neighbours.broadcast_lost(self.blob)
                self._reset()
                self.direct = True
                path = await self._download()
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

    def _reset(self) -> None:
        self.partial = None
        self.verified.clear()
        self.inflight.clear()
        self.inflight_bytes = 0
        self.fetchable.clear()
        self.undigested.clear()
        self.leases.clear()
        self.report.clear()
        self.reported.clear()
        self.digest_pos = 0
        self.stats.from_origin = self.stats.from_peers = 0

    async def _download(self) -> Path:
        reply = None if self.direct else await self._first_announce()
        size = reply.size if reply and reply.size is not None else await self._origin_size()
        if reply is not None and reply.size is None:
            reply = await self._announce_safely("started", size=size)
        limits = self.agent.config.limits
        self.layout = decide_layout(size, tracker_piece_size=reply.piece_size if reply else None,
                                    pinned_piece_size=limits.piece_size)
        self.layout_agreed = bool(reply and reply.piece_size)
        self.max_inflight = inflight_budget(limits.inflight_bytes, limits.upload_slots, self.layout.piece_size)
        self.stats.size = size
        self.partial = await asyncio.to_thread(self.agent.store.open_partial, self.digest, self.layout)
        self.ready.set()
        try:
            self.availability = [0] * self.layout.count
            for nb in self.agent.neighbours.peers.values():
                bf = nb.bitfields.get(self.blob)
                if bf is not None and bf.size == self.layout.count:
                    for i in bf:
                        self.availability[i] += 1
            for i in range(self.layout.count):
                self._refresh(i)
            self.stats.from_origin = 0
            self.stats.from_peers = 0
            self.stats.resumed = sum(self.layout.length(i) for i in self.partial.have)
            if reply is not None:
                self._apply(reply)
            if self.direct:
                self._lease_everything()
            else:
                self._spawn(self._announcer())
            # Done when every piece is stored *and* every fetch has settled (a worker thread can mark
            # the last piece had before its task has counted it).
            while not (self.partial.have.complete and not self.inflight):
                if self.error is not None:
                    raise self.error
                self._schedule_origin()
                self._schedule_peers()
                self._check_stall()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.wake.wait()
                self.wake.clear()
            await self._stop_tasks()
            loop = asyncio.get_running_loop()
            path = await asyncio.to_thread(self.partial.commit, lambda: loop.call_soon_threadsafe(self.verified.set))
        finally:
            if self.partial is not None:
                self.partial.close()
        await self._announce_safely("completed")
        return path

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
        self.wake.set()

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- tracker ----------------------------------------------------------------------------

    def _announce_msg(self, event: str, size: int | None = None, complete: bool = False) -> wire.Announce:
        have = len(self.partial.have) if self.partial else 0
        digests = self.report[: wire.MAX_LIST]
        if complete and self.partial is not None:
            # A seeder's digests are facts to the tracker, for its layout: only if ours is the tracker's
            # (a download that went direct from the start may have cut the blob otherwise).
            digests = list(self.partial.manifest.items())[: wire.MAX_LIST] if self.layout_agreed else []
        want = 0
        if not complete and not self.direct:
            # One spare lease per node keeps its origin streams busy across the announce round trip.
            slots = self.agent.config.limits.origin_concurrency + SPARE_LEASES
            want = max(0, slots - self.origin_active - len(self.leases))
        # Bytes on an origin stream since the last announce keep our leases alive at the tracker
        # while a piece is still on its way (a slow or crowded origin can take longer than the TTL).
        streaming = self.streamed > 0 and not complete and not self.direct
        self.streamed = 0
        return wire.Announce(
            node=self.agent.node, addr=self.agent.config.advertise, blob=self.blob,
            zone=self.agent.config.zone, rack=self.agent.config.rack,
            size=size if size is not None else (self.layout.blob_size if self.layout else None),
            have=have, complete=complete, load=self.agent.uploads, event=event,
            want_leases=min(want, 16), digests=digests, digest_pos=self.digest_pos, streaming=streaming,
        )

    async def _first_announce(self) -> wire.AnnounceReply | None:
        try:
            return await self.agent.tracker.announce(self._announce_msg("started"))
        except TrackerUnavailable as e:
            log.warning("tracker unreachable; fetching from the origin", extra={"blob": self.blob, "error": str(e)})
            self.agent.metrics.tracker_errors.inc()
            self.agent.metrics.origin_fallbacks.labels("tracker").inc()
            self.direct = True
            return None

    async def _announce_safely(self, event: str, size: int | None = None) -> wire.AnnounceReply | None:
        if self.agent.tracker is None or (self.direct and event not in ("corrupt", "completed")):
            return None
        complete = event == "completed"
        try:
            reply = await self.agent.tracker.announce(self._announce_msg(event, size=size, complete=complete))
        except TrackerUnavailable:
            self.agent.metrics.tracker_errors.inc()
            reply = None
        if complete:  # seed even if this announce failed: the seeding loop retries
            # Cut as the tracker said unless the download went without one (direct from the start).
            self.agent.seeding(self.digest, reply.interval if reply else None,
                               layout_agreed=self.layout_agreed)
        return reply

    async def _announcer(self) -> None:
        failures = 0
        interval = 1.0
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands
            # as the event fires, and this task must stop when the download is done.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.kick.wait()
            self.kick.clear()
            msg = self._announce_msg("progress")
            sent = len(msg.digests)
            try:
                reply = await self.agent.tracker.announce(msg)
            except TrackerUnavailable as e:
                failures += 1
                self.agent.metrics.tracker_errors.inc()
                if failures >= 2:
                    log.warning("tracker lost mid-download; fetching the rest from the origin",
                                extra={"blob": self.blob, "error": str(e)})
                    self.agent.metrics.origin_fallbacks.labels("tracker").inc()
                    self.direct = True
                    self._lease_everything()
                    self.wake.set()
                    return
                interval = 0.5
                continue
            failures = 0
            del self.report[:sent]
            self._apply(reply)
            interval = reply.interval
            await asyncio.sleep(ANNOUNCE_SPACING)

    def _apply(self, reply: wire.AnnounceReply) -> None:
        assert self.partial is not None
        if reply.reset:
            # The tracker forgot its digests (a restart, or a corrupt one discarded): what we sent
            # before must be sent again, or leases over pieces we hold would never close.
            self.digest_pos = 0
            self.reported.clear()
        learned = False
        for index, digest in reply.digests:
            with contextlib.suppress(ManifestError, IndexError):
                if self.partial.manifest.set(index, digest):
                    learned = True
                    self._refresh(index)
        if learned or reply.leases:
            self.last_progress = time.monotonic()  # the swarm is moving, even if not through us yet
        self.digest_pos = reply.digest_pos
        if not self.direct:  # direct: the queue is our own runs of every missing piece already
            self._take_leases(reply.leases)
        self.agent.neighbours.connect(reply.peers, self.blob)
        self.wake.set()

    def _take_leases(self, leases: list[tuple[int, int, float]]) -> None:
        """The reply lists every lease the tracker still gives us: a queued one missing from it
        expired and went to another node (fetching it too would take it from the origin twice)."""
        held = {(start, end) for start, end, _ttl in leases}
        self.leases = [lease for lease in self.leases if lease in held]
        queued = set(self.leases)
        for start, end, _ttl in leases:
            # A lease being streamed comes back too; its pieces are in flight, so it adds no request.
            if (start, end) not in queued and end <= self.layout.count:
                self.leases.append((start, end))

    # --- origin -----------------------------------------------------------------------------

    async def _origin_size(self) -> int:
        try:
            return await self.origin.blob_size(self.repo, self.blob)
        except OriginError as e:
            raise FetchFailed(f"{self.registry}/{self.repo}@{self.blob}: {e}") from e

    def _lease_everything(self) -> None:
        """Without a tracker every missing piece is ours to fetch, in runs for parallel streams."""
        assert self.layout is not None and self.partial is not None
        streams = self.agent.config.limits.origin_concurrency
        per = max(1, min(DIRECT_RUN_PIECES, -(-self.layout.count // streams)))
        queued = {i for s, e in self.leases for i in range(s, e)}
        for start in range(0, self.layout.count, per):
            end = min(start + per, self.layout.count)
            if any(i not in self.partial.have and i not in queued for i in range(start, end)):
                self.leases.append((start, end))

    def _schedule_origin(self) -> None:
        while self.leases and self.origin_active < self.agent.config.limits.origin_concurrency:
            start, end = self.leases.pop(0)
            self._report_had(start, end)
            runs = self._missing_runs(start, end)
            if not runs:
                continue
            for s, e in runs:
                self._start(range(s, e))
            self.origin_active += 1
            self._spawn(self._origin_lease(runs))

    def _report_had(self, start: int, end: int) -> None:
        """Pieces of a lease we already hold (resumed, or from peers) are reported, closing them."""
        if self.direct:
            return
        for i in range(start, end):
            digest = self.partial.manifest.get(i)
            if i in self.partial.have and digest is not None and i not in self.reported:
                self.report.append((i, digest))
                self.reported.add(i)
                self.kick.set()

    def _missing_runs(self, start: int, end: int) -> list[tuple[int, int]]:
        return missing_runs(start, end, lambda i: i in self.partial.have or i in self.inflight)

    async def _origin_lease(self, runs: list[tuple[int, int]]) -> None:
        log.debug("origin lease start", extra={"blob": self.blob, "runs": str(runs)})
        try:
            for start, end in runs:
                await self._origin_run(start, end)
        finally:
            self.origin_active -= 1
            for s, e in runs:
                self._settle(range(s, e))
            self.kick.set()
            # The driver may have seen the last piece stored while it was still in flight: without
            # this it would notice the settled download only at its next timeout, up to a second on.
            self.wake.set()

    async def _origin_run(self, start: int, end: int) -> None:
        layout = self.layout
        for attempt in range(ORIGIN_RETRIES):
            todo = [i for i in range(start, end) if i not in self.partial.have]
            if not todo:
                return
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
                if attempt == ORIGIN_RETRIES - 1:
                    raise FetchFailed(f"origin {self.registry} failed for {self.repo}@{self.blob}: {e}") from e
                log.warning("origin request failed; retrying", extra={"blob": self.blob, "error": str(e)})
                await asyncio.sleep(0.2 * 2**attempt)

    async def _stream_pieces(self, first: int, end: int, chunks) -> None:
        """Cut an origin byte stream starting at piece ``first`` into pieces and store them."""
        layout = self.layout
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
                self.streamed += len(chunk)
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
                        writes.append((asyncio.ensure_future(self._store(index, buf, None, "origin")), buf))
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

    # --- peers ------------------------------------------------------------------------------

    def _schedule_peers(self) -> None:
        layout = self.layout
        budget = self.max_inflight - self.inflight_bytes
        if budget < layout.piece_size and self.inflight_bytes:
            return
        if self.undigested:
            self.kick.set()  # peers have pieces whose digests we lack: ask the tracker
        if not self.fetchable:
            return
        count = max(1, budget // layout.piece_size)
        limit = self.agent.config.limits.peer_concurrency
        now = time.monotonic()
        # One PeerSlot per usable neighbour for this pass: assign() counts its requests on them.
        slots = {nb.node: (PeerSlot(nb.node, nb.inflight, limit, nb.score, nb.room), nb)
                 for nb in self.agent.neighbours.peers.values() if nb.busy_until <= now}

        def holders(index: int) -> list[PeerSlot]:
            return [slot for slot, nb in slots.values() if nb.has(self.blob, index)]

        # The pieces some usable peer holds, from the union of their bitfields: one shift per piece
        # instead of asking every neighbour about every piece, on every pass.
        reach, width = 0, self.layout.count
        for slot, nb in slots.values():
            bf = nb.bitfields.get(self.blob)
            if bf is not None and usable(slot):
                reach |= bf.as_int()
                width = bf.width
        reachable = [i for i in self.fetchable if reach >> (width - 1 - i) & 1]
        if not reachable:
            return
        cursor = reader_cursor(self.selector, self.cursor, layout.count, self.inflight.__contains__)
        for index, slot in assign(self.selector, self.fetchable, self.availability, count, holders, self.rng,
                                  cursor, reachable):
            self._fetch_from_peer(index, slots[slot.peer][1])

    def _fetch_from_peer(self, index: int, nb: Neighbour) -> None:
        length = self.layout.length(index)
        self._start((index,))
        self.inflight_bytes += length
        nb.inflight += 1
        self._spawn(self._peer_piece(index, nb, length))

    async def _peer_piece(self, index: int, nb: Neighbour, length: int) -> None:
        cfg = self.agent.config
        try:
            data = await fetch_piece(
                self.agent.session, nb.addr, self.blob, self.layout.offset(index), length,
                token=cfg.cluster_token, timeout=cfg.limits.piece_timeout,
            )
            await self.agent.download_rate.take(length)
            expected = self.partial.manifest.get(index)
            if not await self._store(index, data, expected, "peer"):
                self.agent.metrics.pieces_bad.inc()
                log.warning("bad piece from peer", extra={"peer": nb.node, "blob": self.blob, "piece": index})
                if self.agent.neighbours.penalise_bad_piece(nb):
                    self.agent.metrics.peers_banned.inc()
            else:
                nb.score = min(nb.score + 0.1, 1.0)
        except PeerBusy:
            self.agent.metrics.peer_errors.labels("busy").inc()
            nb.busy_until = time.monotonic() + 0.5
        except PeerError as e:
            self.agent.metrics.peer_errors.labels("transfer").inc()
            nb.score -= 1.0
            log.info("piece request failed", extra={"peer": nb.node, "piece": index, "error": str(e)})
        finally:
            nb.inflight -= 1
            self._settle((index,))
            self.inflight_bytes -= length
            self.wake.set()

    # --- storing ----------------------------------------------------------------------------

    async def _store(self, index: int, data: bytes | bytearray, expected: bytes | None, source: str) -> bool:
        """Verify (peer pieces) or digest (origin pieces) off the loop, then write and announce."""
        partial = self.partial

        def work() -> bytes | None:
            digest = piece_digest(data)
            if expected is not None and digest != expected:
                return None
            partial.write_piece(index, data, digest)
            return digest

        digest = await asyncio.to_thread(work)
        if digest is None:
            return False
        self._stored(partial, index, len(data), digest, source)
        async with self.piece_done:
            self.piece_done.notify_all()
        return True

    def _stored(self, partial: Partial, index: int, length: int, digest: bytes, source: str) -> None:
        """A piece is verified and written: count it, report it, tell the neighbours and readers."""
        self._refresh(index)
        if source == "origin":
            self.stats.from_origin += length
            with contextlib.suppress(ManifestError):
                partial.manifest.set(index, digest)
            if not self.direct:
                self.report.append((index, digest))
                self.reported.add(index)
                self.kick.set()
        else:
            self.stats.from_peers += length
        self.agent.metrics.bytes_in.labels(source).inc(length)
        self.last_progress = time.monotonic()
        self.agent.neighbours.broadcast_have(self.blob, index)
        self.wake.set()

    def _stored_in_thread(self, partial: Partial, index: int, length: int, digest: bytes) -> None:
        """An origin piece a worker thread stored (``_read_run``), heard on the loop."""
        if self.partial is not partial:
            return  # the download started over meanwhile
        self._stored(partial, index, length, digest, "origin")
        self._spawn(self._notify_readers())

    async def _notify_readers(self) -> None:
        async with self.piece_done:
            self.piece_done.notify_all()

    async def _read_run(self, first: int, end: int) -> None:
        """Origin pieces [first, end) read, hashed and written by a worker thread (origin_reader.py):
        the loop's thread neither receives nor copies them."""
        loop = asyncio.get_running_loop()
        layout, partial = self.layout, self.partial
        target = self.origin.range_target(self.repo, self.blob, self.agent.config.limits.piece_timeout)
        control = RunControl()
        spare: list[bytearray] = []

        def buffer_for(length: int) -> bytearray:
            return spare.pop() if spare and len(spare[-1]) >= length else bytearray(length)

        def on_piece(k: int, piece: memoryview) -> None:
            digest = piece_digest(piece)
            partial.write_piece(first + k, piece, digest)
            loop.call_soon_threadsafe(self._stored_in_thread, partial, first + k, len(piece), digest)
            spare.append(piece.obj)  # written: the buffer is free for the next piece

        def on_bytes(n: int) -> None:
            # Only "some bytes since the last announce" matters (lease renewal); a count lost to the
            # loop's reset racing this += is harmless.
            self.streamed += n

        lengths = [layout.length(i) for i in range(first, end)]
        try:
            await loop.run_in_executor(self.agent.origin_threads, read_range, target, layout.offset(first),
                                       lengths, on_piece, buffer_for, control, on_bytes)
        finally:
            control.stop()  # cancelled: the thread's read ends now, not at the origin's next byte

    def _check_stall(self) -> None:
        """A pull never fails because of P2P: if the swarm shows no progress (no piece verified here,
        no new digest, no HAVE from a neighbour) for stall_timeout, take the rest from the origin."""
        if self.direct or time.monotonic() - self.last_progress < self.agent.config.limits.stall_timeout:
            return
        if self.origin_active or self.inflight:
            return
        log.warning("no progress from peers or leases; fetching the rest from the origin",
                    extra={"blob": self.blob})
        self.agent.metrics.origin_fallbacks.labels("stall").inc()
        self.direct = True
        self._lease_everything()

    # --- piece bookkeeping ------------------------------------------------------------------

    def _refresh(self, i: int) -> None:
        """Re-file piece i into fetchable / undigested after anything about it changed."""
        partial = self.partial
        if partial is None or i in partial.have or not self.availability[i]:
            self.fetchable.discard(i)
            self.undigested.discard(i)
        elif not partial.manifest.known(i):
            self.fetchable.discard(i)
            self.undigested.add(i)
        else:
            self.undigested.discard(i)
            if i in self.inflight:
                self.fetchable.discard(i)
            else:
                self.fetchable.add(i)

    def _start(self, pieces) -> None:
        self.inflight.update(pieces)
        self.fetchable.difference_update(pieces)

    def _settle(self, pieces) -> None:
        self.inflight.difference_update(pieces)
        for i in pieces:
            self._refresh(i)

    # --- streaming readers (the mirror) -----------------------------------------------------

    def follow(self, reader: int, index: int) -> None:
        """A reader streams the blob and next needs ``index``: the selection window sits there."""
        self._readers[reader] = index
        self.cursor = min(self._readers.values())
        self.wake.set()

    def unfollow(self, reader: int) -> None:
        self._readers.pop(reader, None)
        self.cursor = min(self._readers.values(), default=None)

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
        if not self.availability:
            return
        for bf, delta in ((old, -1), (new, 1)):
            if bf is not None and bf.size == len(self.availability):
                for i in bf:
                    self.availability[i] += delta
                    self._refresh(i)
        self.wake.set()

    def on_have(self, index: int) -> None:
        if index < len(self.availability):
            self.availability[index] += 1
            self._refresh(index)
            self.last_progress = time.monotonic()
            self.wake.set()
