"""Handle.events on the event loop: what waits is yielded, the deadline holds, the job is cancelled at the end."""

import asyncio

import pytest

from app.engine.handle import Handle
from app.engine.jobs import Finished, GenerationJob, StepRecord


def _record(i: int) -> StepRecord:
    return StepRecord(i, "x", -0.1, [], *([0.0] * 9))


def test_events_yields_queued_and_later_items_then_cancels_the_job():
    async def run():
        handle = Handle(GenerationJob([1], 3))
        handle.emit(_record(0))  # waiting before the iteration starts
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, handle.emit, _record(1))  # arriving while it waits
        loop.call_later(0.1, handle.emit, Finished("length", 1))
        items = [item async for item in handle.events(5.0)]
        return handle, items

    handle, items = asyncio.run(run())
    assert [type(i).__name__ for i in items] == ["StepRecord", "StepRecord", "Finished"]
    assert [i.token_id for i in items[:2]] == [0, 1]
    assert handle.cancelled


def test_events_time_out_while_waiting():
    async def run():
        handle = Handle(GenerationJob([1], 3))
        with pytest.raises(TimeoutError):
            async for _ in handle.events(0.05):
                pass
        return handle

    assert asyncio.run(run()).cancelled


def test_events_deadline_holds_even_when_items_keep_coming():
    async def run():
        handle = Handle(GenerationJob([1], 3))
        for i in range(3):
            handle.emit(_record(i))
        await asyncio.sleep(0)  # the emits are delivered on the loop
        got = []
        with pytest.raises(TimeoutError):
            async for item in handle.events(0.05):
                got.append(item)
                await asyncio.sleep(0.03)  # a slow consumer
        return got

    assert len(asyncio.run(run())) == 2  # at 0 and 0.03 s; at 0.06 s the deadline has passed
