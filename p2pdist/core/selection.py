"""Piece-selection and peer-choice policies (which piece to ask for next, and from whom).

Policies are small and swappable so the simulator and the agent run the very same code.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol


class PieceSelector(Protocol):
    name: str

    def select(
        self,
        candidates: Collection[int],
        availability: Sequence[int],
        count: int,
        rng: random.Random,
        cursor: int | None = None,
    ) -> list[int]:
        """Pick up to ``count`` pieces from ``candidates`` (fetchable now), best first."""
        ...


@dataclass(frozen=True)
class RarestFirst:
    """Rarest-first, except an in-order window at a streaming reader's cursor.

    Rarest-first keeps every piece alive in the swarm and spreads load; the window keeps a
    client that is reading the blob as it downloads from stalling on the next bytes it needs.
    Window pieces are taken only once at least ``window_min`` peers hold them, or, when no
    candidate is that common (a small cluster), as many as hold the commonest: a scarcer piece is
    left to rarest-first, which spreads it, instead of every reader in a flash crowd queueing at
    its few holders. A reader's next piece is usually an old one that most neighbours hold, so it
    rarely waits for this. Simulator, 1,000 nodes: a minimum of 3 took 0.1 s longer than 8, and
    no window at all is 0.07 s faster than 8. See also ``reader_cursor``.
    """

    window: int = 4
    window_min: int = 8
    name: str = "rarest-first"

    def select(
        self,
        candidates: Collection[int],
        availability: Sequence[int],
        count: int,
        rng: random.Random,
        cursor: int | None = None,
    ) -> list[int]:
        if count <= 0 or not candidates:
            return []
        chosen: list[int] = []
        if cursor is not None and self.window > 0:
            # At most a quarter of the requests go to the window: when every node in a flash crowd
            # streams, all-window requests make them all chase the same few pieces (simulator).
            share = max(1, count // 4)
            window = [i for i in range(cursor, cursor + self.window) if i in candidates]
            chosen = [i for i in window if availability[i] >= self.window_min][:share]
            if window and not chosen:
                # Only then the scan over every candidate: is any of them common enough at all?
                need = max(availability[i] for i in candidates)
                chosen = [i for i in window if availability[i] >= need][:share]
        rest = count - len(chosen)
        draw = rng.random  # looked up once, not per candidate
        if rest == 1:
            # One piece (a pass usually has one request free): the rarest in one loop, the same pick
            # and draws as the heap below (nsmallest of one is the first least key).
            best = -1
            least = 0.0
            for i in candidates:
                if chosen and i in chosen:
                    continue
                key = availability[i] + draw()
                if best < 0 or key < least:
                    best, least = i, key
            if best >= 0:
                chosen.append(best)
        elif rest > 0:
            pool = [i for i in candidates if i not in chosen] if chosen else list(candidates)
            # Random secondary key: equally rare pieces are spread across requesters.
            # availability + a random fraction: the order of (availability, random) without a tuple
            # per candidate (this is the hottest line of a pass).
            chosen += heapq.nsmallest(rest, pool, key=lambda i: availability[i] + draw())
        return chosen


@dataclass(frozen=True)
class RandomOrder:
    """Uniformly random pieces (Kraken's default policy)."""

    name: str = "random"

    def select(
        self,
        candidates: Collection[int],
        availability: Sequence[int],
        count: int,
        rng: random.Random,
        cursor: int | None = None,
    ) -> list[int]:
        pool = sorted(candidates)
        return rng.sample(pool, max(0, min(count, len(pool))))


@dataclass(frozen=True)
class Sequential:
    """Lowest index first: what a plain streaming download does."""

    name: str = "sequential"

    def select(
        self,
        candidates: Collection[int],
        availability: Sequence[int],
        count: int,
        rng: random.Random,
        cursor: int | None = None,
    ) -> list[int]:
        return heapq.nsmallest(count, candidates)


def reader_cursor(
    selector: PieceSelector, cursor: int | None, count: int, in_flight: Callable[[int], bool]
) -> int | None:
    """The cursor to select with: none while a piece of the reader's window is already in flight.

    One window request at a time. A pass usually has one free request (one finished), so a
    window share of every pass would send nearly every request to the window: the swarm then
    fetches in order, and a piece fresh from the origin waits at its holder until every reader's
    cursor reaches it (the simulator saw the last pieces stuck for two seconds). ``count`` is the
    blob's piece count; ``in_flight(i)`` says whether piece i is being fetched.
    """
    window = getattr(selector, "window", 0)
    if cursor is None or window <= 0:
        return cursor
    for i in range(cursor, min(cursor + window, count)):
        if in_flight(i):
            return None
    return cursor


SELECTORS: dict[str, type] = {"rarest-first": RarestFirst, "random": RandomOrder, "sequential": Sequential}


def inflight_budget(min_bytes: int, upload_slots: int, piece_size: int) -> int:
    """Piece bytes one swarm may have in flight: ``min_bytes``, and never fewer pieces than the node
    has upload slots.

    In pieces, as many as the upload slots give both ends of a transfer the same share (with k slots
    an upload gets 1/k of the sender's uplink, with k pieces in flight a download 1/k of the
    receiver's downlink); fewer idle the uplinks. A budget in bytes alone held one 8 MiB piece:
    simulator, 1,000 nodes x 1 GiB in 8 MiB pieces, 15.8 s with 12 MiB and 3 slots against 10.5 s
    with two pieces and 2 slots. The bytes keep small pieces from leaving the link idle between
    them: every piece pays a request round trip, verification and a write, which the simulator's
    fluid links do not see. Real shaped benchmark, 16 nodes x 256 MiB in 2 MiB pieces, 2 slots:
    two pieces in flight took 71-77 s, four 65.4-66.7 s (the simulator: 47.5 s and 62.0 s).
    """
    return max(min_bytes, max(1, upload_slots) * piece_size)


class Neighbour(Protocol):
    """A peer we are connected to, as the peer chooser reads it: the agent's ``Neighbour`` and the
    simulator's are both this (core.download adds what the machine writes)."""

    peer: str  # its node id
    inflight: int  # our requests to it now
    limit: int  # our requests to it at once, at most
    score: float  # higher is better; penalties for bad pieces and timeouts drive it down
    room: int  # upload slots it last said it had free (unlimited until it says)


def choose_peer(holders: Sequence[Neighbour], rng: random.Random, min_score: float = -3.0) -> Neighbour | None:
    """Among peers holding a piece, the least busy one with a free slot; score breaks ties.

    Busy means, first, the peer's own free upload slots as it advertised them (``room``: the
    emptiest uplink sends the piece fastest, and a full one would answer 503), then our requests
    to it. Load before score: ranking by score first piles every requester onto the peers that
    answered first (seen in the simulator); the score's job is to keep bad peers out (``min_score``).
    """
    # The least of (-room, inflight / limit, -score, a random draw) over the usable holders, the
    # first on a tie, one draw per usable holder in order: in one loop, without a list of them or a
    # key tuple each (this runs for every request the agent and the simulator place; the simulator
    # spent 3.6 % of a 10,000-node run in the list-and-min form). usable(), inlined.
    # Each attribute read once and the draw looked up once: compiled for the simulator without types,
    # every read is a descriptor lookup and a boxed number.
    best = None
    best_room = 0
    best_load = best_score = best_draw = 0.0
    next_draw = rng.random
    for p in holders:
        room, inflight, limit, score = p.room, p.inflight, p.limit, p.score
        if not (inflight < limit and room > 0 and score > min_score):
            continue
        load = inflight / limit
        draw = next_draw()
        if best is not None:
            if room != best_room:
                if room < best_room:
                    continue
            elif load != best_load:
                if load > best_load:
                    continue
            elif score != best_score:
                if score < best_score:
                    continue
            elif draw >= best_draw:
                continue
        best, best_room, best_load, best_score, best_draw = p, room, load, score, draw
    return best


def usable(p: Neighbour, min_score: float = -3.0) -> bool:
    """A peer choose_peer may pick: a free request slot, room it advertised, not scored out."""
    return p.inflight < p.limit and p.room > 0 and p.score > min_score


def assign(
    selector: PieceSelector,
    candidates: Collection[int],
    availability: Sequence[int],
    count: int,
    holders: Callable[[int], Sequence[Neighbour]],
    rng: random.Random,
    cursor: int | None = None,
    reachable: Collection[int] | None = None,
) -> list[tuple[int, Neighbour]]:
    """Choose up to ``count`` (piece, peer) requests together.

    Only pieces some usable peer holds are ranked: ranking all of them and skipping the ones whose
    holders are busy left slots empty whenever the rarest pieces sat at full peers (the simulator
    saw most passes place nothing), idling every uplink but theirs. ``reachable``, if given, is
    that set already worked out by the caller (it must equal what ``holders`` and ``usable``
    give). ``holders(i)`` must return the same Neighbour objects across calls: their ``inflight``
    and ``room`` count the requests assigned here.
    """
    if count <= 0 or not candidates:
        return []
    pool = [i for i in candidates if any(usable(p) for p in holders(i))] if reachable is None else reachable
    out: list[tuple[int, Neighbour]] = []
    while pool and len(out) < count:
        ranked = selector.select(pool, availability, count - len(out), rng, cursor)
        if not ranked:
            break
        for index in ranked:
            slot = choose_peer(holders(index), rng)
            if slot is None:
                continue  # its holders filled up earlier in this pass
            slot.inflight += 1
            slot.room -= 1
            out.append((index, slot))
        if len(out) >= count:
            break
        # The pieces tried leave the pool, placed or not. Only then is it copied: a pass usually
        # places its one request at the first try (a set copied per pass was 2 % of a simulation).
        tried = set(ranked)
        pool = [i for i in pool if i not in tried]
    return out
