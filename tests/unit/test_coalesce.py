"""Coalescing round trips (accounting/coalesce.py)."""

from __future__ import annotations

import asyncio

import pytest

from accounting.coalesce import Coalescer


class Recorder:
    """A batch function that records its batches and takes one event-loop turn."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0.01)
        if self.fail_on in items:
            raise ValueError("boom")
        return [i * 10 for i in items]


def test_a_lone_request_goes_at_once_and_waiting_ones_go_together() -> None:
    async def main() -> tuple[list[int], list[list[int]]]:
        rec = Recorder()
        c: Coalescer[int, int] = Coalescer(rec.run)
        first = asyncio.ensure_future(c.submit(1))
        await asyncio.sleep(0.001)  # the first batch is in flight
        rest = await asyncio.gather(*(c.submit(i) for i in range(2, 6)))
        return [await first, *rest], rec.batches

    results, batches = asyncio.run(main())
    assert results == [10, 20, 30, 40, 50]
    assert batches == [[1], [2, 3, 4, 5]]


def test_batches_are_capped() -> None:
    async def main() -> list[list[int]]:
        rec = Recorder()
        c: Coalescer[int, int] = Coalescer(rec.run, max_batch=2)
        await asyncio.gather(*(c.submit(i) for i in range(5)))
        return rec.batches

    assert asyncio.run(main()) == [[0, 1], [2, 3], [4]]


def test_a_failure_fails_its_own_batch_only() -> None:
    async def main() -> tuple[list[object], list[int]]:
        rec = Recorder(fail_on=1)
        c: Coalescer[int, int] = Coalescer(rec.run)
        first = asyncio.ensure_future(c.submit(1))
        await asyncio.sleep(0.001)
        later = await asyncio.gather(c.submit(2), c.submit(3))
        return [await asyncio.gather(first, return_exceptions=True)], later

    (failed,), later = asyncio.run(main())
    assert isinstance(failed[0], ValueError) and later == [20, 30]


def test_a_cancelled_waiter_does_not_disturb_the_others() -> None:
    async def main() -> tuple[list[int], list[list[int]]]:
        rec = Recorder()
        c: Coalescer[int, int] = Coalescer(rec.run)
        first = asyncio.ensure_future(c.submit(1))
        await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(c.submit(2))
        kept = asyncio.ensure_future(c.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return [await first, await kept], rec.batches

    results, batches = asyncio.run(main())
    assert results == [10, 30] and batches == [[1], [3]]


def test_a_window_gathers_the_requests_of_its_span_into_one_batch() -> None:
    async def main() -> tuple[list[int], list[list[int]]]:
        rec = Recorder()
        c: Coalescer[int, int] = Coalescer(rec.run, window_s=0.05)
        first = asyncio.ensure_future(c.submit(1))
        await asyncio.sleep(0.01)  # within the window: nothing sent yet
        assert rec.batches == []
        rest = await asyncio.gather(*(c.submit(i) for i in range(2, 5)))
        return [await first, *rest], rec.batches

    results, batches = asyncio.run(main())
    assert results == [10, 20, 30, 40]
    assert batches == [[1, 2, 3, 4]]


def test_a_full_batch_does_not_wait_for_the_window() -> None:
    async def main() -> tuple[float, list[list[int]]]:
        rec = Recorder()
        c: Coalescer[int, int] = Coalescer(rec.run, max_batch=3, window_s=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(asyncio.gather(*(c.submit(i) for i in range(3))), 5)
        return loop.time() - started, rec.batches

    took, batches = asyncio.run(main())
    assert batches == [[0, 1, 2]]
    assert took < 5


def test_cancelling_the_drain_during_the_window_cancels_its_waiters() -> None:
    async def main() -> bool:
        rec = Recorder()
        c: Coalescer[int, int] = Coalescer(rec.run, window_s=30)
        waiter = asyncio.ensure_future(c.submit(1))
        await asyncio.sleep(0.01)
        assert c._worker is not None
        c._worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 5)
        return rec.batches == []

    assert asyncio.run(main())
