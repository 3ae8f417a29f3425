"""Coalescing round trips: requests that arrive while one batch is in flight go together.

Under concurrent load every DP answer makes the same small statements against the
ledger database (an answer-cache lookup, then a store). Sent one by one, each costs a
round trip and a statement's parse/plan/execute in PostgreSQL plus asyncpg's Python on
our side. A coalescer sends the first request at once (a lone client waits for nothing)
and sends everything that queued up meanwhile as one batch when it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Runs `run_batch` over requests that queue up while the previous batch runs.

    `run_batch(items)` returns one result per item, in order. An exception fails every
    request of its batch (and only that batch). With `window_s`, each batch first waits
    that long for more requests (unless `max_batch` are waiting): for requests nobody
    waits on, such as storing an answer already sent, fewer statements matter more than
    an earlier one.
    """

    def __init__(self, run_batch: Callable[[list[K]], Awaitable[list[V]]], max_batch: int = 128,
                 window_s: float = 0.0) -> None:  # fmt: skip
        self._run = run_batch
        self._max = max_batch
        self._window = window_s
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: K) -> V:
        """The result of `item`, from the next batch that includes it."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            if self._window > 0 and len(self._pending) < self._max:
                try:
                    await asyncio.sleep(self._window)
                except asyncio.CancelledError:
                    for _, f in self._pending:
                        f.cancel()
                    self._pending = []
                    raise
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            live = [(item, f) for item, f in batch if not f.done()]  # cancelled waiters drop out
            if not live:
                continue
            try:
                results = await self._run([item for item, _ in live])
            except asyncio.CancelledError:
                for _, f in live + self._pending:
                    f.cancel()
                self._pending = []
                raise
            except Exception as e:  # noqa: BLE001 -- handed to the waiters, who raise it
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), result in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(result)
