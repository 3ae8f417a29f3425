"""Resource limits and the reply-time quantum: what one analyst can make a proxy do.

Limits count per proxy process (each replica enforces its own), which bounds the load
one analyst can put on the backend and keeps other analysts served.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from proxy.errors import TOO_MANY_CONNECTIONS, ProxyError


@dataclass
class Admission:
    """Connection counts and per-analyst query slots of one proxy process."""

    max_connections: int
    max_per_analyst: int
    max_queries_per_analyst: int
    total: int = 0
    per_analyst: dict[str, int] = field(default_factory=dict)
    slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def admit(self, analyst: str) -> None:
        """Count a new session in, or refuse it with PostgreSQL's own messages."""
        if self.total >= self.max_connections:
            raise ProxyError(TOO_MANY_CONNECTIONS, "sorry, too many clients already", severity="FATAL")
        if self.per_analyst.get(analyst, 0) >= self.max_per_analyst:
            raise ProxyError(
                TOO_MANY_CONNECTIONS,
                f'too many connections for role "{analyst}"',
                hint=f"each analyst may hold {self.max_per_analyst} connections to one dpproxy",
                severity="FATAL",
            )
        self.total += 1
        self.per_analyst[analyst] = self.per_analyst.get(analyst, 0) + 1

    def release(self, analyst: str) -> None:
        """Count a closed session out."""
        self.total = max(0, self.total - 1)
        left = self.per_analyst.get(analyst, 0) - 1
        if left > 0:
            self.per_analyst[analyst] = left
        else:
            self.per_analyst.pop(analyst, None)

    def query_slot(self, analyst: str) -> asyncio.Semaphore:
        """The semaphore bounding an analyst's concurrent queries on the data database."""
        sem = self.slots.get(analyst)
        if sem is None:
            sem = self.slots[analyst] = asyncio.Semaphore(self.max_queries_per_analyst)
        return sem


async def pad_to_quantum(started: float, quantum_s: float) -> None:
    """Sleep until the next multiple of the quantum since `started` (monotonic seconds).

    With a quantum longer than any query, success, error and timeout all reply after
    exactly one quantum, so the reply time says nothing about the data. A query longer
    than the quantum replies at a later multiple, which reveals only the coarse duration.
    """
    if quantum_s <= 0:
        return
    elapsed = time.monotonic() - started
    slots = max(1, math.ceil(elapsed / quantum_s))
    await asyncio.sleep(max(0.0, slots * quantum_s - (time.monotonic() - started)))
