"""The answer cache: the same canonical query returns the same noisy answer, for free.

Re-releasing an answer already released is post-processing, so it costs nothing; and
because a repeat returns the identical noise, averaging repeats learns nothing new.
Answers live in the ledger database (they survive restarts and are shared by every
replica), keyed by a hash of the dataset, the analyst (or `*` when answers are shared
across analysts), the plan fingerprint (normalized SQL with bound parameters), the
requested epsilon and delta, the accountant and the configured data version.

An entry is valid until its TTL passes, `dpproxy cache clear` bumps the dataset's
cache epoch, or the configured `cache.data_version` changes. Queries that are
equivalent but written differently have different fingerprints: they are new queries.
Only released (noisy, post-processed) values are stored, never exact ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from accounting.coalesce import Coalescer
from accounting.pool import LeanPool

CACHE_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS dpproxy.answers (
    key text PRIMARY KEY,
    dataset text NOT NULL,
    analyst text NOT NULL,
    fingerprint text NOT NULL,
    epoch bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    columns jsonb NOT NULL,
    rows jsonb NOT NULL,
    bounds text NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A released answer as stored: column (name, type) pairs, rows, noise-bounds text."""

    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]]
    bounds: str


def cache_key(
    dataset: str, analyst: str | None, fingerprint: str, epsilon: Decimal,
    delta: Decimal, accountant: str, data_version: str,
) -> str:  # fmt: skip
    """The cache key of one canonical query (analyst None: shared across analysts)."""
    parts = [dataset, analyst or "*", fingerprint, str(Decimal(epsilon).normalize()),
             str(Decimal(delta).normalize()), accountant, data_version]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def encode_value(v: Any) -> list[str] | None:
    """A released value as a tagged JSON pair that decodes to an identical value."""
    if v is None:
        return None
    if isinstance(v, bool):
        return ["b", "1" if v else "0"]
    if isinstance(v, int):
        return ["i", str(v)]
    if isinstance(v, float):
        return ["f", repr(v)]
    if isinstance(v, Decimal):
        return ["d", str(v)]
    if isinstance(v, dt.datetime):
        return ["ts", v.isoformat()]
    if isinstance(v, dt.date):
        return ["dt", v.isoformat()]
    if isinstance(v, str):
        return ["s", v]
    raise TypeError(f"cannot cache a value of type {type(v).__name__}")


def decode_value(e: list[str] | None) -> Any:
    """The inverse of encode_value."""
    if e is None:
        return None
    tag, s = e
    return {
        "b": lambda x: x == "1",
        "i": int,
        "f": float,
        "d": Decimal,
        "ts": dt.datetime.fromisoformat,
        "dt": dt.date.fromisoformat,
        "s": str,
    }[tag](s)


_GET_SQL = """
SELECT a.key, a.columns, a.rows, a.bounds FROM dpproxy.answers a
  JOIN dpproxy.datasets d ON d.dataset = a.dataset
 WHERE a.key = ANY($1::text[]) AND a.epoch = d.cache_epoch
   AND ($2::float8 IS NULL OR a.created_at > now() - make_interval(secs => $2))
"""

# An answer is stored unless a valid one is stored already (the first stays: every
# repeat gets that one); an entry of an older epoch or past its TTL is replaced.
_PUT_SQL = """
INSERT INTO dpproxy.answers AS a (key, dataset, analyst, fingerprint, epoch, columns, rows, bounds)
SELECT v.key, v.dataset, v.analyst, v.fingerprint, d.cache_epoch, v.columns::jsonb,
       v.rows::jsonb, v.bounds
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
       AS v(key, dataset, analyst, fingerprint, columns, rows, bounds)
  JOIN dpproxy.datasets d ON d.dataset = v.dataset
ON CONFLICT (key) DO UPDATE SET epoch = EXCLUDED.epoch, created_at = now(),
    columns = EXCLUDED.columns, rows = EXCLUDED.rows, bounds = EXCLUDED.bounds
 WHERE a.epoch <> EXCLUDED.epoch
    OR ($8::float8 IS NOT NULL AND a.created_at <= now() - make_interval(secs => $8))
RETURNING a.key
"""


@dataclass(frozen=True, slots=True)
class AnswerProbe:
    """A cache key to look up inside a ledger charge (`Ledger.charge(unless_answered=)`):
    the charge is not made if a valid answer is stored under it."""

    key: str
    ttl_seconds: float | None


# The condition a probing charge checks, in the charge's own statement: {keys} and {ttl}
# are its parameters (text[] and float8). The same validity as `_GET_SQL`.
ANSWERED_SQL = """EXISTS (SELECT 1 FROM dpproxy.answers a
                 JOIN dpproxy.datasets d ON d.dataset = a.dataset
                WHERE a.key = ANY({keys}::text[]) AND a.epoch = d.cache_epoch
                  AND ({ttl}::float8 IS NULL OR a.created_at > now() - make_interval(secs => {ttl})))"""


# New answers are stored in batches gathered over this long (issue #7): one statement per
# answer was a tenth of the ledger database's CPU on a stream of new queries. The answer
# is sent before it is stored, and this process serves repeats of an answer still being
# stored from memory, so the wait only delays when other replicas see it.
STORE_WINDOW_S = 0.02


@dataclass(frozen=True, slots=True)
class _Store:
    key: str
    dataset: str
    analyst: str
    fingerprint: str
    columns: str
    rows: str
    bounds: str


class AnswerCache:
    """Durable answers in the ledger database; concurrent lookups, and concurrent
    stores, share one statement each (accounting/coalesce.py)."""

    def __init__(self, pool: LeanPool, ttl_seconds: float | None,
                 store_window_s: float = STORE_WINDOW_S) -> None:  # fmt: skip
        self._pool = pool
        self._ttl = ttl_seconds
        self._gets: Coalescer[str, CachedAnswer | None] = Coalescer(self._get_many)
        self._puts: Coalescer[_Store, bool] = Coalescer(self._put_many, window_s=store_window_s)

    async def ensure_schema(self) -> None:
        """Create the answers table (idempotent)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(724011)")
            await conn.execute(CACHE_SCHEMA_SQL)

    def probe(self, key: str) -> AnswerProbe:
        """`key` to look up inside a ledger charge instead of in a statement of its own."""
        return AnswerProbe(key, self._ttl)

    async def get(self, key: str) -> CachedAnswer | None:
        """The valid cached answer for `key`, if any."""
        return await self._gets.submit(key)

    async def put(
        self, key: str, dataset: str, analyst: str | None, fingerprint: str,
        answer: CachedAnswer,
    ) -> bool:  # fmt: skip
        """Store an answer unless a valid one is stored already; whether this one was.

        The first valid answer stored for a key stays: every repeat gets that one.
        """
        cols = json.dumps([list(c) for c in answer.columns])
        rows = json.dumps([[encode_value(v) for v in r] for r in answer.rows])
        return await self._puts.submit(_Store(key, dataset, analyst or "*", fingerprint, cols, rows,
                                              answer.bounds))  # fmt: skip

    async def _get_many(self, keys: list[str]) -> list[CachedAnswer | None]:
        found = {r["key"]: r for r in await self._pool.fetch(_GET_SQL, list(set(keys)), self._ttl)}
        return [_decode(found[k]) if k in found else None for k in keys]

    async def _put_many(self, items: list[_Store]) -> list[bool]:
        # One row per key: ON CONFLICT cannot touch a row twice in one statement, and the
        # first answer for a key is the one kept anyway.
        first = list({s.key: s for s in reversed(items)}.values())
        stored = {r["key"] for r in await self._pool.fetch(
            _PUT_SQL, *([getattr(s, f) for s in first] for f in _Store.__slots__), self._ttl)}  # fmt: skip
        winners = {s.key: s for s in first}
        return [s.key in stored and winners[s.key] is s for s in items]

    async def clear(self, dataset: str) -> int:
        """Invalidate every cached answer of a dataset (bumps its epoch; returns it)."""
        v = await self._pool.fetchval(
            "UPDATE dpproxy.datasets SET cache_epoch = cache_epoch + 1 WHERE dataset = $1 "
            "RETURNING cache_epoch",
            dataset,
        )
        return int(v) if v is not None else -1


def _decode(row: Any) -> CachedAnswer:
    cols = json.loads(row["columns"])
    rows = json.loads(row["rows"])
    return CachedAnswer(
        columns=[(c[0], c[1]) for c in cols],
        rows=[tuple(decode_value(v) for v in r) for r in rows],
        bounds=row["bounds"],
    )
