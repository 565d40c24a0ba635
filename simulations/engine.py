"""The discrete-event core: a clock, an event heap, and links that share capacity among transfers.

Sharing model (see README "Network model"): every link is a processor-sharing server, so the k
transfers crossing it each get capacity/k ("per connection" fairness, like k TCP flows on one
bottleneck). A transfer crosses one to four links (sender uplink, receiver downlink, and the rack
or zone uplinks between them) and completes when the last of them has carried its bytes. Links
are not coupled: a transfer held back by one link does not hand its share of another link to the
other transfers there. That is what keeps every event cheap: a link tracks one virtual clock
(bytes served per transfer so far) and its jobs' finishing tags, so a transfer starting or ending
never touches the other transfers' state (it moves the link's one completion event in the heap).
Exact max-min sharing needs every rate recomputed per event, which at 10,000 nodes and millions of
piece transfers is out of reach in Python.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import cython

# Bytes of slack when deciding that a transfer has finished on a link: virtual clocks are sums of
# floats, and a transfer left with a thousandth of a byte must not cost another event.
_SLACK = 1e-3
# math.inf as a module constant: compiled, a C double (engine.pxd), where ``math.inf`` is two
# attribute lookups every time a link reschedules.
_INF = math.inf


def grown(column: Any, n: int, typecode: str) -> array:
    """A ``typecode`` array with twice the room (at least 4) holding ``column``'s first ``n`` values:
    the columns that grow in place (a link's jobs, a node's edges and watchers)."""
    out = array(typecode)
    out.frombytes(bytes(out.itemsize * max(4, 2 * n)))
    for k in range(n):
        out[k] = column[k]
    return out


class Simulator:
    """A clock and a heap of (time, seq, callback, argument); seq keeps equal times in FIFO order.

    Compiled (simulations/native.py), the heap is a flat array of C numbers (time, sequence number,
    slot of the callback): heapq compared Python tuples, a fifth of a 3,000-node run (perf). Plain,
    it is heapq over tuples. Both pop in (time, seq) order, so they run the same events in the same
    order (tests/test_sim_native.py compares the two cores).
    """

    __slots__ = ("_args", "_callbacks", "_free", "_heap", "_keys", "_n", "_nfree", "_pos", "_seq", "events", "now",
                 "stopped")

    def __init__(self) -> None:
        # Plain: heapq over [time, seq, callback, argument] lists; a moved or cancelled entry stays
        # with callback None and is dropped when it surfaces (not counted as an event).
        self._heap: list[list[Any]] = []
        self._seq = 0
        self.now = 0.0
        self.events = 0
        self.stopped = False
        # The compiled heap: entry k is _keys[3k:3k+3] = (time, seq, slot), _n in use; the callback and
        # argument wait in their slot, which does not move, so sifting moves three numbers only.
        self._n = 0
        if cython.compiled:
            self._keys = array("d", bytes(8 * 3 * 1024))
            self._callbacks: list[Any] = [None] * 1024
            self._args: list[Any] = [None] * 1024
            self._free = array("q", range(1023, -1, -1))  # free slots, a stack
            self._nfree = 1024
            self._pos = array("q", bytes(8 * 1024))  # heap index of each slot in use (to move or cancel it)

    def at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> None:
        self.schedule(when, callback, arg)

    def schedule(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> Any:
        """``at``, returning a handle that ``move`` and ``cancel`` take (valid until the event runs)."""
        if when < self.now:
            when = self.now
        self._seq += 1
        if cython.compiled:
            return self._push(when, self._seq, callback, arg)
        entry = [when, self._seq, callback, arg]
        heappush(self._heap, entry)
        return entry

    def move(self, handle: Any, when: float) -> Any:
        """The event of ``handle`` happens at ``when`` instead, ordered as if scheduled now; returns
        its handle from now on. (A link's completion moves on every arrival and departure: moving
        it, rather than leaving a stale event behind, halves the events of a run.)"""
        if when < self.now:
            when = self.now
        self._seq += 1
        if cython.compiled:
            slot = cython.cast(cython.Py_ssize_t, handle)
            self._rekey(self._pos[slot], when, self._seq)
            return handle
        callback, arg = handle[2], handle[3]
        handle[2] = handle[3] = None
        entry = [when, self._seq, callback, arg]
        heappush(self._heap, entry)
        return entry

    def cancel(self, handle: Any) -> None:
        if cython.compiled:
            self._remove(handle)
        else:
            handle[2] = handle[3] = None

    def after(self, delay: float, callback: Callable[[Any], None], arg: Any = None) -> None:
        self.at(self.now + delay, callback, arg)

    def peek(self) -> float:
        if cython.compiled:
            return self._keys[0] if self._n else math.inf
        return self._heap[0][0] if self._heap else math.inf

    def step(self) -> None:
        if cython.compiled:
            slot = cython.cast(cython.Py_ssize_t, self._keys[2])
            callback, arg = self._callbacks[slot], self._args[slot]
            self.now = self._keys[0]
            self._remove(slot)
        else:
            when, _, callback, arg = heappop(self._heap)
            if callback is None:
                return  # moved or cancelled
            self.now = when
        self.events += 1
        callback(arg)

    def run(self, until: float = math.inf, idle: Callable[[], bool] | None = None) -> None:
        """Run events up to ``until``; ``idle`` is called whenever the clock is about to move on
        (all events of this instant are done) and may schedule more work for the same instant."""
        if cython.compiled:
            while not self.stopped:
                if idle is not None and (self._n == 0 or self._keys[0] > self.now) and idle():
                    continue
                if self._n == 0 or self._keys[0] > until:
                    break
                self.step()
            return
        heap = self._heap
        while not self.stopped:
            if idle is not None and (not heap or heap[0][0] > self.now) and idle():
                continue
            if not heap or heap[0][0] > until:
                break
            when, _, callback, arg = heappop(heap)
            if callback is None:
                continue  # moved or cancelled
            self.now = when
            self.events += 1
            callback(arg)

    # --- the compiled heap (a binary min-heap on (time, seq); seq is unique) ---------------------

    def _grow(self) -> None:
        size = len(self._callbacks)
        keys = array("d", bytes(8 * 3 * 2 * size))
        for k in range(3 * self._n):
            keys[k] = self._keys[k]
        self._keys = keys
        self._callbacks.extend([None] * size)
        self._args.extend([None] * size)
        free = array("q", bytes(8 * 2 * size))
        for k in range(size):
            free[k] = 2 * size - 1 - k  # the new slots; every old one is in use
        self._free = free
        self._nfree = size
        pos = array("q", bytes(8 * 2 * size))
        for k in range(size):
            pos[k] = self._pos[k]
        self._pos = pos

    def _push(self, when: float, seq: int, callback: Any, arg: Any) -> int:
        if self._nfree == 0:
            self._grow()
        self._nfree -= 1
        slot = self._free[self._nfree]
        self._callbacks[slot] = callback
        self._args[slot] = arg
        k = self._n
        self._n += 1
        self._place(k, when, seq, slot)
        self._sift_up(k)
        return slot

    # The heap's methods index self._keys and self._pos directly: a memoryview local costs an atomic
    # reference count taken and dropped per call, and _place runs once per level a sift moves (perf,
    # N=10,000: _place alone 3.8 % of the run). Every index is below 3 * _n <= len(_keys).
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _place(self, k: int, when: float, seq: float, slot: float) -> None:
        self._keys[3 * k] = when
        self._keys[3 * k + 1] = seq
        self._keys[3 * k + 2] = slot
        self._pos[cython.cast(cython.Py_ssize_t, slot)] = k

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _sift_up(self, k: int) -> None:
        when = self._keys[3 * k]
        seq = self._keys[3 * k + 1]
        slot = self._keys[3 * k + 2]
        while k > 0:
            parent = (k - 1) >> 1
            if self._keys[3 * parent] < when or (self._keys[3 * parent] == when and self._keys[3 * parent + 1] < seq):
                break
            self._place(k, self._keys[3 * parent], self._keys[3 * parent + 1], self._keys[3 * parent + 2])
            k = parent
        self._place(k, when, seq, slot)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _sift_down(self, k: int) -> None:
        n = self._n
        when = self._keys[3 * k]
        seq = self._keys[3 * k + 1]
        slot = self._keys[3 * k + 2]
        while True:
            child = 2 * k + 1
            if child >= n:
                break
            right = child + 1
            if right < n and (self._keys[3 * right] < self._keys[3 * child]
                              or (self._keys[3 * right] == self._keys[3 * child]
                                  and self._keys[3 * right + 1] < self._keys[3 * child + 1])):
                child = right
            if self._keys[3 * child] < when or (self._keys[3 * child] == when and self._keys[3 * child + 1] < seq):
                self._place(k, self._keys[3 * child], self._keys[3 * child + 1], self._keys[3 * child + 2])
                k = child
            else:
                break
        self._place(k, when, seq, slot)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _rekey(self, k: int, when: float, seq: int) -> None:
        earlier = when < self._keys[3 * k]  # seq only grows: a later or equal time sifts down
        self._keys[3 * k] = when
        self._keys[3 * k + 1] = seq
        if earlier:
            self._sift_up(k)
        else:
            self._sift_down(k)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _remove(self, slot: int) -> None:
        """Drop the entry of ``slot`` and free the slot."""
        k = self._pos[slot]
        self._callbacks[slot] = self._args[slot] = None
        self._free[self._nfree] = slot
        self._nfree += 1
        n = self._n - 1
        self._n = n
        if k == n:
            return
        # The last entry fills the hole, then goes up or down.
        self._place(k, self._keys[3 * n], self._keys[3 * n + 1], self._keys[3 * n + 2])
        parent = (k - 1) >> 1
        if k > 0 and (self._keys[3 * k] < self._keys[3 * parent]
                      or (self._keys[3 * k] == self._keys[3 * parent]
                          and self._keys[3 * k + 1] < self._keys[3 * parent + 1])):
            self._sift_up(k)
        else:
            self._sift_down(k)


class Meter:
    """Bytes in fixed time bins: a link's as it carries them (origin egress over time, ``add``), or
    the nodes' as they store them (``count``)."""

    __slots__ = ("bin", "bins", "total")

    def __init__(self, bin_seconds: float) -> None:
        self.bin = bin_seconds
        self.bins: list[float] = []
        self.total = 0.0

    def add(self, start: float, end: float, rate: float) -> None:
        if end <= start:
            return
        self.total += (end - start) * rate
        first, last = int(start / self.bin), int(end / self.bin)
        if len(self.bins) <= last:
            self.bins.extend([0.0] * (last + 1 - len(self.bins)))
        if first == last:
            self.bins[first] += (end - start) * rate
            return
        self.bins[first] += ((first + 1) * self.bin - start) * rate
        for b in range(first + 1, last):
            self.bins[b] += self.bin * rate
        self.bins[last] += (end - last * self.bin) * rate

    def count(self, at: float, amount: float) -> None:
        """``amount`` bytes at one instant (a piece stored)."""
        k = int(at / self.bin)
        if len(self.bins) <= k:
            self.bins.extend([0.0] * (k + 1 - len(self.bins)))
        self.bins[k] += amount
        self.total += amount


class Transfer:
    """Bytes moving across a set of links; ``done(transfer)`` runs when every link has carried them."""

    __slots__ = ("cancelled", "data", "done", "links", "pending", "size", "started")

    def __init__(self, size: float, links: list[Link], done: Callable[[Transfer], None], data: Any) -> None:
        self.size = size
        self.links = links
        self.pending = len(links)
        self.done = done
        self.cancelled = False
        self.started = 0.0
        self.data = data


class Link:
    """A processor-sharing link: each of its ``active`` transfers is served at capacity/active."""

    __slots__ = ("active", "busy", "capacity", "event", "fire", "meter", "name", "seqs", "sim", "stamp", "tags",
                 "transfers", "vtime")

    def __init__(self, sim: Simulator, name: str, capacity: float, meter: Meter | None = None) -> None:
        if not capacity > 0:
            raise ValueError(f"link {name}: capacity must be > 0 bytes/s, got {capacity}")
        self.sim = sim
        self.name = name
        self.capacity = capacity
        self.active = 0  # the jobs: transfers[:active], each with its tags[k] and seqs[k]
        self.vtime = 0.0  # bytes served to each transfer present since the link was last idle
        self.stamp = 0.0  # wall time vtime refers to
        # The jobs in three columns: the vtime at which each is done, its sequence number, its
        # transfer. A scan reads the tags, contiguous, and touches a transfer only once it is done:
        # with a tuple per job, a scan's misses on the tuples and their transfers were most of a
        # link's time (perf, N=10,000). ``tags`` and ``seqs`` have room beyond ``active``.
        self.tags = array("d", bytes(8 * 4))
        self.seqs = array("q", bytes(8 * 4))
        self.transfers: list[Transfer] = []
        self.event: Any = None  # the handle of the next completion event, moved on every change
        self.meter = meter
        self.busy = 0.0  # seconds with at least one transfer (utilisation)
        self.fire = self._fire  # the completion callback, bound once: it is scheduled on every change

    def _advance(self, now: float) -> None:
        if self.active and now > self.stamp:
            self.vtime += (now - self.stamp) * self.capacity / self.active
            self.busy += now - self.stamp
            if self.meter is not None:
                self.meter.add(self.stamp, now, self.capacity)
        self.stamp = now

    @cython.boundscheck(False)  # compiled: k < active <= len(tags) on every access
    @cython.wraparound(False)
    def add(self, transfer: Transfer, seq: int) -> None:
        self._advance(self.sim.now)
        k = self.active
        if k == len(self.tags):
            self.tags = grown(self.tags, k, "d")
            self.seqs = grown(self.seqs, k, "q")
        self.tags[k] = self.vtime + transfer.size
        self.seqs[k] = seq
        self.transfers.append(transfer)
        self.active = k + 1
        self._reschedule()

    def remove(self, transfer: Transfer) -> None:
        """A cancelled transfer leaves (if it is here)."""
        for k in range(self.active):
            if self.transfers[k] is transfer:
                self._advance(self.sim.now)
                self._drop(k)
                if self.active == 0:
                    self.vtime = 0.0
                self._reschedule()
                return

    @cython.boundscheck(False)  # compiled: k < active <= len(tags) on every access
    @cython.wraparound(False)
    def _drop(self, k: int) -> None:
        """Job k leaves; the last job takes its place (the columns' order means nothing)."""
        last = self.active - 1
        self.tags[k] = self.tags[last]
        self.seqs[k] = self.seqs[last]
        self.transfers[k] = self.transfers[last]
        self.transfers.pop()
        self.active = last

    @cython.boundscheck(False)  # compiled: k < active <= len(tags) on every access
    @cython.wraparound(False)
    def _reschedule(self) -> None:
        # The jobs are few (a node's uploads and downloads): a scan for the earliest tag costs less
        # than keeping a heap (perf, N=10,000).
        best = _INF
        for k in range(self.active):
            if self.tags[k] < best:
                best = self.tags[k]
        if self.active:
            delay = (best - self.vtime) * self.active / self.capacity
            when = self.stamp + max(0.0, delay)
            if self.event is None:
                self.event = self.sim.schedule(when, self.fire)
            else:
                self.event = self.sim.move(self.event, when)
            return
        if self.event is not None:
            self.sim.cancel(self.event)
            self.event = None

    @cython.boundscheck(False)  # compiled: k < active <= len(tags) on every access
    @cython.wraparound(False)
    def _fire(self, _: object = None) -> None:
        self.event = None  # this event is running: a new one is scheduled below if need be
        self._advance(self.sim.now)
        # Usually one transfer finishes: it is kept as is, and a list of (tag, seq, transfer) to
        # sort is made only when a second one does (a tuple per finished transfer was 1 % of a run).
        first: Transfer | None = None
        first_tag = 0.0
        first_seq = 0
        done: list[tuple[float, int, Transfer]] | None = None
        limit = self.vtime + _SLACK
        k = 0
        while k < self.active:
            if self.tags[k] <= limit:
                if first is None:
                    first, first_tag, first_seq = self.transfers[k], self.tags[k], self.seqs[k]
                else:
                    if done is None:
                        done = [(first_tag, first_seq, first)]
                    done.append((self.tags[k], self.seqs[k], self.transfers[k]))
                self._drop(k)
                continue
            k += 1
        if self.active == 0:
            self.vtime = 0.0
        self._reschedule()
        if done is None:
            if first is not None:
                _arrived(first)
            return
        done.sort()  # in (tag, seq) order, as a heap would give them (seq is unique)
        for job in done:
            _arrived(job[2])


def _arrived(transfer: Transfer) -> None:
    """One of the transfer's links has carried it: done once all of them have."""
    transfer.pending -= 1
    if transfer.pending == 0:
        transfer.links = []
        transfer.done(transfer)


class Network:
    """Starts and cancels transfers; owns the sequence numbers that make ties deterministic."""

    __slots__ = ("_seq", "bytes_started", "sim", "started")

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._seq = 0
        self.started = 0
        self.bytes_started = 0.0

    def transfer(self, size: float, links: list[Link], done: Callable[[Transfer], None], data: Any = None) -> Transfer:
        t = Transfer(size, links, done, data)
        t.started = self.sim.now
        self.started += 1
        self.bytes_started += size
        if size <= 0 or not links:
            t.pending = 1
            t.links = []
            self.sim.at(self.sim.now, _finish, t)
            return t
        self._seq += 1
        for link in links:
            link.add(t, self._seq)
        return t

    def cancel(self, transfer: Transfer) -> None:
        if transfer.cancelled or transfer.pending == 0:
            return
        transfer.cancelled = True
        for link in transfer.links:
            # Links that already carried all their bytes hold no job for it any more.
            link.remove(transfer)
        transfer.links = []


def _finish(transfer: Transfer) -> None:
    if not transfer.cancelled:
        transfer.pending = 0
        transfer.done(transfer)
