"""This node's upload slots, with a short line of requests waiting for one.

A request that finds every slot taken may wait, briefly, for the next one to free. The slot then
starts its next piece without the gap of a 503 and a new request, which cost one round trip
through the asker's loaded uplink queue plus a refused HTTP exchange.

The line holds at most ``queue`` requests, and each waits at most ``wait`` seconds. A longer wait
would keep the asker from a holder with a free slot.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class UploadSlots:
    """``slots`` uploads at once; up to ``queue`` more wait, each for at most ``wait`` seconds.

    ``changed(free)`` runs whenever the room we advertise changes: the free slots, less the
    requests waiting for one.
    """

    def __init__(self, slots: int, queue: int, wait: float, changed: Callable[[int], None]) -> None:
        self.slots = slots
        self.queue = queue
        self.wait = wait
        self.active = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._changed = changed

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def room(self) -> int:
        return max(0, self.slots - self.active - len(self._waiting))

    async def acquire(self) -> bool:
        """Take a slot, waiting in line if there is room in it; False: busy (answer 503)."""
        if self.active < self.slots and not self._waiting:
            self.active += 1
            self._changed(self.room)
            return True
        if len(self._waiting) >= self.queue or self.wait <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._changed(self.room)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait)
        except TimeoutError:
            if waiter.done():  # the slot was handed over as the wait ran out: keep it
                return True
            self._waiting.remove(waiter)
            waiter.cancel()
            self._changed(self.room)
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but the request is gone: pass it on
            else:
                self._waiting.remove(waiter)
                waiter.cancel()
                self._changed(self.room)
            raise
        return True

    def release(self) -> None:
        """An upload ended: its slot goes to the first request in line, if any."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes over: active stays the same
                self._changed(self.room)
                return
        self.active -= 1
        self._changed(self.room)
