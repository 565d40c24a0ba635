"""The upload slots' line: a request beyond the slots waits for the next free one, briefly, and
the room neighbours hear counts the requests already waiting."""

from __future__ import annotations

import asyncio

from p2pdist.agent.upload_slots import UploadSlots


def slots(n: int = 2, queue: int = 2, wait: float = 5.0) -> tuple[UploadSlots, list[int]]:
    heard: list[int] = []
    return UploadSlots(n, queue, wait, heard.append), heard


async def test_slots_are_taken_then_the_line_fills_then_requests_are_refused():
    s, heard = slots()
    assert await s.acquire() and await s.acquire()
    assert heard == [1, 0]
    first = asyncio.create_task(s.acquire())
    second = asyncio.create_task(s.acquire())
    await asyncio.sleep(0)  # both join the line
    assert not await s.acquire()  # the line is full: busy at once, no wait
    assert not first.done() and not second.done()
    assert s.active == 2 and s.room == 0
    for waiter in (first, second):  # the requests go away: they leave the line
        waiter.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert s.waiting == 0 and s.active == 2


async def test_a_freed_slot_goes_to_the_first_in_line_without_an_idle_moment():
    s, heard = slots()
    await s.acquire()
    await s.acquire()
    first = asyncio.create_task(s.acquire())
    await asyncio.sleep(0)
    second = asyncio.create_task(s.acquire())
    await asyncio.sleep(0)
    s.release()
    assert s.active == 2  # handed over, never free in between
    assert await first is True
    assert not second.done()
    s.release()
    assert await second is True
    s.release()
    s.release()
    assert s.active == 0 and s.room == 2 and heard[-1] == 2


async def test_a_slot_handed_to_the_line_is_not_taken_by_a_newcomer():
    s, _ = slots(n=1, queue=1, wait=0.05)
    await s.acquire()
    waiting = asyncio.create_task(s.acquire())
    await asyncio.sleep(0)
    s.release()  # handed to the waiter
    assert await s.acquire() is False  # the newcomer waits its turn, and nobody releases
    assert await waiting is True
    assert s.active == 1


async def test_a_wait_that_runs_out_is_a_busy_answer_and_leaves_the_line():
    s, heard = slots(n=1, queue=1, wait=0.05)
    await s.acquire()
    assert await s.acquire() is False  # nobody released within the wait
    assert heard[-1] == 0 and s.room == 0 and s.active == 1
    s.release()
    assert s.active == 0 and s.room == 1


async def test_a_request_that_goes_away_while_waiting_leaves_no_trace():
    s, _ = slots(n=1, queue=1)
    await s.acquire()
    waiting = asyncio.create_task(s.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    s.release()
    assert s.active == 0 and s.room == 1
    assert await s.acquire() is True  # the slot is free, not promised to the departed request


async def test_without_a_line_a_full_node_refuses_at_once():
    s, _ = slots(n=1, queue=0)
    await s.acquire()
    assert await s.acquire() is False
