"""Origin leases: which node may fetch which piece ranges from the origin, and until when.

Each piece leaves the origin about once per cluster because only a lease holder fetches it.
Leases expire unless their holder reports progress, so a vanished holder's pieces return to the
pool. Time is passed in (seconds, any monotonic origin): the core owns no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# Leases a holder keeps queued behind the ones it is fetching, so its origin stream goes straight
# on to the next piece instead of idling for the announce round trip that reports the last one and
# asks for more (core.download runs a holder's leases but this many). In a crowd the origin's
# streams are shared out one per taker, and each stream paused between its one-piece leases: the
# origin's uplink dipped to 88 % whenever the pauses coincided (simulated, 1 GiB on 1 Gbit/s links:
# 1,000 nodes 1.081x the chunked bound over 3 seeds, 10,000 nodes 1.124x; with the spare 1.075x
# and 1.097x). A holder of leases from an older tracker, which grants no spare, fetches one less.
SPARE_LEASES = 1


def _streams(held: int, spares: bool = True) -> int:
    """Origin streams a holder of ``held`` leases runs: core.download keeps its spares queued; an
    agent that does not (``spares`` False: older ones) starts every lease at once."""
    if not spares:
        return held
    return max(1, held - SPARE_LEASES) if held else 0


@dataclass(slots=True)
class Lease:
    node: str
    start: int  # first piece
    end: int  # one past the last piece
    expires: float
    spares: bool = True  # its holder keeps a spare queued (its announce said so)

    def covers(self, index: int) -> bool:
        return self.start <= index < self.end


class LeaseBook:
    """Lease state of one blob: which pieces are digested, which are leased to whom."""

    def __init__(
        self, piece_count: int, lease_pieces: int = 8, ttl: float = 10.0, per_node: int = 2, max_leases: int = 0,
        slow_start: bool = False, solo_lease_pieces: int = 0,
    ) -> None:
        if piece_count <= 0 or lease_pieces <= 0 or ttl <= 0 or per_node <= 0 or max_leases < 0:
            raise ValueError("piece_count, lease_pieces, ttl and per_node must be positive, max_leases >= 0")
        self.piece_count = piece_count
        self.lease_pieces = lease_pieces
        self.ttl = ttl
        self.per_node = per_node
        self.max_leases = max_leases  # leases out at once for the blob (origin streams); 0 = no cap
        # Slow start: at most one lease more than pieces digested so far (see grant).
        self.slow_start = slow_start
        # Pieces per lease while the asker is the blob's only downloader (0 = lease_pieces). One-piece
        # leases spread fresh pieces over many uplinks; alone, there is nobody to spread to, and each
        # piece cost an announce round trip before its Range request: 1 GiB alone took 1.7 s with
        # one-piece leases, 1.27 s with eight (benchmarks/bench_fetch, curl 1.0 s).
        self.solo_lease_pieces = max(lease_pieces, solo_lease_pieces)
        self.digested = bytearray(piece_count)  # 1 once the piece's digest is known
        self._digested_n = 0
        # Pieces under a lease now, sparse: a tracker makes a book per blob at its first announce,
        # and a list per piece cost 8 bytes a piece before any lease (1 TiB blobs: gigabytes).
        self._leased_to: dict[int, Lease] = {}
        self.leases: list[Lease] = []
        self._cursor = 0  # every piece below it is digested or leased: keeps grant() O(lease)

    def emptied(self) -> LeaseBook:
        """A book for the same blob and settings with no digest and no lease (a reset)."""
        return LeaseBook(self.piece_count, self.lease_pieces, self.ttl, self.per_node, self.max_leases,
                         self.slow_start, self.solo_lease_pieces)

    def snapshot(self) -> tuple[bytes, list[tuple[str, int, int, float, bool]], int]:
        """The book's state as plain values, for a tracker store shared by replicas (``restore``)."""
        leases = [(x.node, x.start, x.end, x.expires, x.spares) for x in self.leases]
        return bytes(self.digested), leases, self._cursor

    def restore(self, digested: bytes, leases: list[tuple], cursor: int) -> None:
        """Take back a ``snapshot`` of a book of the same piece count (or one an older tracker took,
        whose leases have no ``spares``: taken as spare-keeping)."""
        if len(digested) != self.piece_count:
            raise ValueError(f"a snapshot of {len(digested)} pieces for a book of {self.piece_count}")
        self.digested = bytearray(digested)
        self._digested_n = sum(self.digested)
        self.leases = [Lease(node, start, end, expires, bool(rest[0]) if rest else True)
                       for node, start, end, expires, *rest in leases]
        self._leased_to = {i: lease for lease in self.leases for i in range(lease.start, lease.end)}
        self._cursor = min(max(0, cursor), self.piece_count)

    def held_by(self, node: str) -> list[Lease]:
        return [lease for lease in self.leases if lease.node == node]

    def holder(self, index: int) -> str | None:
        lease = self._leased_to.get(index)
        return lease.node if lease else None

    def idle_holder(self, index: int, now: float, idle: float) -> str | None:
        """The holder of the lease on ``index`` if it has shown no progress for ``idle`` seconds
        (every renewal sets ``expires`` to a TTL ahead), else None."""
        lease = self._leased_to.get(index)
        if lease is None or now - (lease.expires - self.ttl) < idle:
            return None
        return lease.node

    def expire(self, now: float) -> list[Lease]:
        gone = [lease for lease in self.leases if lease.expires <= now]
        for lease in gone:
            self._drop(lease)
        return gone

    def release(self, node: str) -> None:
        for lease in self.held_by(node):
            self._drop(lease)

    def _drop(self, lease: Lease) -> None:
        self.leases.remove(lease)
        for i in range(lease.start, lease.end):
            if self._leased_to.get(i) is lease:
                del self._leased_to[i]
                if not self.digested[i]:
                    self._cursor = min(self._cursor, i)

    def share(self, downloaders: int) -> int:
        """Leases one node may fetch at once (its origin streams) when ``downloaders`` nodes are
        fetching the blob; it may hold ``SPARE_LEASES`` more, queued, within ``per_node``.

        With a cap, the cap is split among the downloaders (at least one each): origin pieces then
        land on many nodes, whose uplinks spread them at once, instead of queueing behind the few
        uplinks of the first nodes to ask (measured in the simulator).
        """
        if not self.max_leases:
            return self.per_node
        return max(1, min(self.per_node, self.max_leases // max(1, downloaders)))

    def streams(self) -> int:
        """Origin streams the leases out make: a holder fetches all its leases but its spares
        (core.download), and always at least one; an older agent fetches all of them."""
        held = Counter(lease.node for lease in self.leases)
        spares = {lease.node: lease.spares for lease in self.leases}  # one kind per holder (grant)
        return sum(_streams(n, spares[node]) for node, n in held.items())

    def grant(self, node: str, now: float, want: int = 1, downloaders: int = 1,
              spares: bool = True) -> list[Lease]:
        """Grant up to ``want`` new leases over unleased, undigested pieces, bounded by the node's
        ``share`` plus its spare (if it keeps ``spares`` queued) and by ``max_leases`` streams for
        the whole blob."""
        granted: list[Lease] = []
        # Long leases only once the asker has been alone for a piece's time (a digest came back): in a
        # flash crowd the first node to announce is briefly alone too, and a long first lease there
        # held back the spreading of the first pieces (simulated N=1,000: 1.075x the bound, not 1.064x).
        alone = downloaders <= 1 and self._digested_n > 0
        share = self.share(downloaders)
        mine = self.held_by(node)
        for lease in mine:
            lease.spares = spares  # the holder's kind, as its announce says now
        held = len(mine)
        run = self.lease_pieces
        if alone and self.solo_lease_pieces > run:
            # Guided: a run takes at most 1/share of the pieces left, so the lone node's streams end
            # together, not one long run straggling while the others idle; and the whole-blob hash,
            # which can only follow the contiguous prefix, has little left when the last piece lands.
            left = self.piece_count - self._digested_n - sum(lease.end - lease.start for lease in self.leases)
            run = max(run, min(self.solo_lease_pieces, -(-left // share)))
        room = min(want, min(self.per_node, share + (SPARE_LEASES if spares else 0)) - held)
        if self.max_leases:
            # The cap is on streams: a holder's first lease opens one, its spares none, and every
            # lease past those one more.
            free = self.max_leases - self.streams()
            while room > 0 and _streams(held + room, spares) - _streams(held, spares) > free:
                room -= 1
        if self.slow_start:
            # Streams share the origin's uplink, so k streams from the start deliver their first
            # pieces only after k piece-times, and the whole swarm waits. One stream first, and one
            # more per piece digested: the first piece leaves the origin at full speed and spreads
            # while the next ones come (simulator: about 0.2 s sooner at every node at N=1,000).
            # Counted in leases, spares too: counted in streams, the first node's spares took the
            # first pieces in its long runs while the crowd waited (N=1,000: 1.105x, not 1.075x).
            room = min(room, 1 + self._digested_n - len(self.leases))
        while room > 0:
            start = self._next_free(self._cursor)
            if start is None:
                break
            end = start
            while end < self.piece_count and end - start < run and self._free(end):
                end += 1
            lease = Lease(node, start, end, now + self.ttl, spares)
            for i in range(start, end):
                self._leased_to[i] = lease
            self.leases.append(lease)
            granted.append(lease)
            room -= 1
        return granted

    def _free(self, i: int) -> bool:
        return not self.digested[i] and i not in self._leased_to

    def _next_free(self, start: int) -> int | None:
        i = start
        while i < self.piece_count and not self._free(i):
            i += 1
        if start == self._cursor:
            self._cursor = i
        return i if i < self.piece_count else None

    def may_report(self, node: str, index: int) -> bool:
        lease = self._leased_to.get(index)
        return lease is not None and lease.node == node

    def record(self, node: str, index: int, now: float) -> bool:
        """A digest for ``index`` reported by ``node``: accepted only from its lease holder.

        Progress renews the holder's leases; a lease whose pieces are all digested is closed.
        """
        if not self.may_report(node, index) or self.digested[index]:
            return False
        lease = self._leased_to.get(index)
        assert lease is not None
        self.digested[index] = 1
        self._digested_n += 1
        self.progress(node, now)
        if all(self.digested[i] for i in range(lease.start, lease.end)):
            self._drop(lease)
        return True

    def progress(self, node: str, now: float) -> int:
        """``node`` shows its origin streams are moving (a digest, or bytes since its last announce):
        all its leases are renewed. Returns how many it holds.

        All of them, including ones queued behind its busy streams: on a slow origin those would
        otherwise expire unstarted and be fetched twice (measured 1.19x origin egress on 50 Mbit/s
        links). Bytes count as well as digests because a piece can take longer than ``ttl`` when
        the origin's uplink is shared by many streams (the shaped benchmark saw 2 MiB take > 10 s):
        the lease went to another node while the first kept streaming, and those pieces left the
        origin twice.
        """
        renewed = 0
        for held in self.leases:
            if held.node == node:
                held.expires = max(held.expires, now + self.ttl)
                renewed += 1
        return renewed

    def mark_digested(self, index: int) -> None:
        """A digest that came from a verified complete copy (a seeder), not from a lease."""
        if not 0 <= index < self.piece_count:
            raise ValueError(f"piece {index} outside 0..{self.piece_count - 1}")
        if not self.digested[index]:
            self._digested_n += 1
        self.digested[index] = 1
        lease = self._leased_to.get(index)
        if lease is not None and all(self.digested[i] for i in range(lease.start, lease.end)):
            self._drop(lease)

    def undigest(self, index: int) -> None:
        """The digest of ``index`` was withdrawn (its reporter lied): the piece is leased again."""
        if 0 <= index < self.piece_count and self.digested[index]:
            self.digested[index] = 0
            self._digested_n -= 1
            if index not in self._leased_to:
                self._cursor = min(self._cursor, index)

    def reopen(self) -> None:
        """Every holder left the swarm: the digests stay facts, but the bytes must leave the origin again.

        Unleased pieces become grantable; leases in progress are kept.
        """
        for i in range(self.piece_count):
            if i not in self._leased_to:
                self.digested[i] = 0
        self._digested_n = sum(self.digested)
        self._cursor = 0

    @property
    def all_digested(self) -> bool:
        return all(self.digested)


def missing_runs(start: int, end: int, skip: Callable[[int], bool]) -> list[tuple[int, int]]:
    """The contiguous runs of pieces in [start, end) not ``skip``-ped (had or in flight).

    One origin Range request per run: a lease's pieces that arrived meanwhile are not fetched again.
    """
    runs: list[tuple[int, int]] = []
    for i in range(start, end):
        if skip(i):
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
