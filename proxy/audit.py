"""The audit log: every statement received, append-only, in the ledger database.

One row per statement: who (analyst), when, which replica, the normalized statement
(SQL regenerated from the parsed tree; for text that does not parse, only its hash and
length), the decision, the SQLSTATE and the privacy cost. Never results, never a
backend's error text.

Durability. Entries are written by a background task in batches (one multi-row INSERT
per batch), so a statement never waits for the audit write by default. The writer
never drops an entry it accepted: a failed batch is retried (with back-off) until it
commits, the queue is bounded and a full queue makes statements wait (back-pressure,
not loss), and a graceful shutdown flushes the queue before the pools close. What a
crash (kill -9, power loss) can lose is the entries of the last `audit_flush_ms`
window that were not committed yet; the charge log (`dpproxy.charges`) is written before
any DP query runs, so no spend is ever unaccounted for. With `observability.audit_sync`
a statement's response is held until its entry has committed: then every answer a
client received has its audit row, at the price of one (group) commit per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

import asyncpg

from accounting.pool import LeanPool

log = logging.getLogger("dpproxy.audit")

# Needs the ledger's schema (dpproxy.append_only()), created by Ledger.ensure_schema.
AUDIT_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS dpproxy.audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    instance text NOT NULL,
    analyst text NOT NULL,
    dataset text NOT NULL,
    protocol text NOT NULL,
    route text NOT NULL,
    statement text,
    statement_hash text NOT NULL,
    statement_length integer NOT NULL,
    decision text NOT NULL,
    sqlstate text NOT NULL,
    epsilon numeric,
    delta numeric,
    cache_hit boolean,
    duration_ms double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_analyst_at ON dpproxy.audit (analyst, at);
CREATE INDEX IF NOT EXISTS audit_at ON dpproxy.audit (at);
DROP TRIGGER IF EXISTS audit_append_only ON dpproxy.audit;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON dpproxy.audit
    FOR EACH ROW EXECUTE FUNCTION dpproxy.append_only();
DROP TRIGGER IF EXISTS audit_no_truncate ON dpproxy.audit;
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON dpproxy.audit
    FOR EACH STATEMENT EXECUTE FUNCTION dpproxy.append_only();
"""

COLUMNS = ("id", "at", "instance", "analyst", "dataset", "protocol", "route", "statement",
           "statement_hash", "statement_length", "decision", "sqlstate", "epsilon", "delta",
           "cache_hit", "duration_ms")  # fmt: skip

_INSERT_COLUMNS = COLUMNS[1:]
_INSERT_VALUES = attrgetter(*_INSERT_COLUMNS)  # one C call per entry instead of 15 getattr


def statement_hash(text: str) -> str:
    """The audit's and the logs' fingerprint of a statement: sha256, first 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(slots=True)
class AuditEntry:
    """One statement as the audit log records it (not frozen: one is built per statement,
    and a frozen dataclass sets each of its 15 fields through object.__setattr__)."""

    at: datetime
    instance: str
    analyst: str
    dataset: str
    protocol: str
    route: str
    statement: str | None  # normalized SQL, or None when the text did not parse
    statement_hash: str
    statement_length: int
    decision: str
    sqlstate: str
    epsilon: Decimal | None
    delta: Decimal | None
    cache_hit: bool | None
    duration_ms: float

    def values(self) -> tuple[Any, ...]:
        """The entry in `_INSERT_COLUMNS` order."""
        return _INSERT_VALUES(self)  # type: ignore[no-any-return]


async def ensure_audit_schema(pool: LeanPool) -> None:
    """Create the audit table and its append-only triggers (idempotent, serialized)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(724013)")
        await conn.execute(AUDIT_SCHEMA_SQL)


@dataclass
class _Pending:
    entry: AuditEntry
    done: asyncio.Future[None] | None = field(default=None, repr=False)


class AuditWriter:
    """Batches audit entries into the ledger database from one background task."""

    def __init__(
        self, pool: LeanPool, flush_ms: int = 100, max_batch: int = 500,
        max_queue: int = 10_000, on_written: Any = None, on_error: Any = None,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.flush_ms = flush_ms
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._on_written = on_written or (lambda n: None)
        self._on_error = on_error or (lambda: None)
        self._closing = False
        self._in_flight = False  # a batch has left the queue but not committed yet

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dpproxy-audit-writer")

    @property
    def pending(self) -> int:
        """Entries accepted and waiting in the queue (the batch being committed excluded)."""
        return self._queue.qsize()

    def offer(self, entry: AuditEntry) -> bool:
        """Accept an entry without waiting, if the queue has room (else False: `write` it)."""
        self.start()
        try:
            self._queue.put_nowait(_Pending(entry))
        except asyncio.QueueFull:
            return False
        return True

    async def write(self, entry: AuditEntry, wait: bool = False) -> None:
        """Accept an entry; with `wait`, return only once it has committed."""
        done = asyncio.get_running_loop().create_future() if wait else None
        self.start()
        try:
            self._queue.put_nowait(_Pending(entry, done))
        except asyncio.QueueFull:
            await self._queue.put(_Pending(entry, done))  # waits when full: back-pressure, no loss
        if done is not None:
            await done

    async def _run(self) -> None:
        q = self._queue
        while True:
            batch = [await q.get()]
            self._in_flight = True
            # The window only gathers company for a batch that is not full yet: with a
            # backlog of a whole batch, batches commit back to back (else the window
            # would cap the audited statements at max_batch per window, ~5,000 a second).
            if self.flush_ms > 0 and not self._closing and q.qsize() < self.max_batch - 1:
                # A statement waiting for its entry (audit_sync) must not wait a whole
                # window: it gets a group-commit window of at most 0.5 ms instead.
                window = self.flush_ms / 1000 if batch[0].done is None else min(self.flush_ms / 1000, 0.0005)
                await asyncio.sleep(window)
            while len(batch) < self.max_batch and not q.empty():
                batch.append(q.get_nowait())
            try:
                await self._commit(batch)
            finally:
                self._in_flight = False

    async def _commit(self, batch: list[_Pending]) -> None:
        delay = 0.05
        while True:
            try:
                # One binary COPY per batch: far less work for the proxy and the ledger
                # database than one INSERT per row (every statement has its audit row).
                async with self.pool.acquire() as conn:
                    await conn.copy_records_to_table(
                        "audit", schema_name="dpproxy", columns=list(_INSERT_COLUMNS),
                        records=[p.entry.values() for p in batch],
                    )  # fmt: skip
                break
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
                # Retry until it commits: an accepted entry is never dropped. The error's
                # type only: its text could quote a statement.
                self._on_error()
                log.warning("audit write failed (%s); retrying in %.2fs", type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._on_written(len(batch))
        for p in batch:
            if p.done is not None and not p.done.done():
                p.done.set_result(None)

    async def close(self, timeout: float = 10.0) -> int:
        """Flush every accepted entry (up to `timeout` seconds), then stop. Returns entries left."""
        self._closing = True
        if self._task is not None and not self._task.done():
            deadline = asyncio.get_running_loop().time() + timeout
            # Every accepted entry leaves the queue and then commits (or time runs out).
            while (self._queue.qsize() or self._in_flight) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = self._queue.qsize() + (1 if self._in_flight else 0)
        if left:
            log.error("audit: %d entries could not be written before shutdown", left)
        return left


# --- reading -----------------------------------------------------------------------------


async def read_audit(
    conn: asyncpg.Connection | LeanPool, analyst: str | None = None,
    since: datetime | None = None, limit: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Audit rows, oldest first, optionally for one analyst and since a time."""
    rows = await conn.fetch(
        f"SELECT {', '.join(COLUMNS)} FROM dpproxy.audit "
        "WHERE ($1::text IS NULL OR analyst = $1) AND ($2::timestamptz IS NULL OR at >= $2) "
        "ORDER BY at, id" + (" LIMIT $3" if limit else ""),
        *( (analyst, since, limit) if limit else (analyst, since) ),
    )
    return [dict(r) for r in rows]


def _cell(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, Decimal):
        return format(v.normalize(), "f") if v == v.to_integral() else str(v)
    return v


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """RFC 4180 CSV with a header row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else _cell(r[c]) for c in COLUMNS])
    return buf.getvalue()


def to_json(rows: Sequence[dict[str, Any]]) -> str:
    """A JSON array of objects (numbers as strings where exact: epsilon, delta)."""
    return json.dumps([{c: (None if r[c] is None else _json_cell(r[c])) for c in COLUMNS} for r in rows],
                      indent=2)  # fmt: skip


def _json_cell(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime):
        return v.isoformat()
    return v
