"""The durable privacy ledger, in PostgreSQL (a database analysts cannot reach).

Reserve-before-run: a query's whole cost is committed here before it is released. A
charge checks the per-query cap, the analyst's budget and the dataset's global budget
with the dataset's accountant against the dataset's row and the analyst's budget row,
then updates their running sums and appends to the charge log, all or nothing. Any
number of proxy replicas sharing the ledger never overspend:

- optimistically (two round trips): one statement reads both rows; the decision is
  made; one statement writes, but only if neither row's `version` (bumped by a trigger
  on every update, by anyone) has changed since the read, else it writes nothing and
  the charge is decided again on fresh rows. Measured, this cut a lone charge from
  five round trips (BEGIN, two locking reads, write, COMMIT) to two. Under the pure
  accountant a changed row is written anyway when the decision still holds on it as it
  now is (re-checked in the write, under the row lock): charges of one analyst from
  several workers or replicas then queue on the row instead of losing races (see
  `_WRITE_CHARGES_SQL`);
- after OPTIMISTIC_TRIES lost races, under row locks: `SELECT ... FOR UPDATE` in one
  fixed order in every replica, decide, write, COMMIT; this always completes (and the
  next few batches on that dataset lock at once: its row is contended).

Group commit: the charges of one process that arrive while its previous transaction is
committing are checked one after the other inside ONE transaction, so N concurrent
queries pay one commit instead of N (each charge still gets its own budget check). An
optional window (`window_us`, default 0) makes the first charge of a batch wait for
company; measured, any window only added latency (asyncio's timers fire no sooner than
about a millisecond), so by default a lone charge commits at once.

Nothing is ever deleted: the charge log is append-only and never holds results or
private values (only analyst, dataset, query fingerprint, mechanism costs, time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncpg

from accounting.accountant import ZERO, Accountant, AccountantKind, Cost, Limits, Spend
from accounting.cache import ANSWERED_SQL, AnswerProbe
from accounting.known_rows import KnownRows
from accounting.memo import IdentityMemo
from accounting.pool import LeanPool, create_pool

log = logging.getLogger("dpproxy.ledger")

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS dpproxy;
CREATE TABLE IF NOT EXISTS dpproxy.analysts (
    name text PRIMARY KEY,
    password text NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    managed_by text NOT NULL DEFAULT 'config' CHECK (managed_by IN ('config', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS dpproxy.datasets (
    dataset text PRIMARY KEY,
    accountant text NOT NULL,
    accounting_delta numeric NOT NULL,
    budget_epsilon numeric CHECK (budget_epsilon >= 0),
    budget_delta numeric CHECK (budget_delta >= 0),
    cache_epoch bigint NOT NULL DEFAULT 0,
    epsilon numeric NOT NULL DEFAULT 0 CHECK (epsilon >= 0),
    delta numeric NOT NULL DEFAULT 0 CHECK (delta >= 0),
    rho numeric NOT NULL DEFAULT 0 CHECK (rho >= 0),
    epsilon_sq numeric NOT NULL DEFAULT 0,
    epsilon_tanh numeric NOT NULL DEFAULT 0,
    releases bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dpproxy.budget_spent (
    analyst text NOT NULL,
    dataset text NOT NULL,
    epsilon numeric NOT NULL DEFAULT 0 CHECK (epsilon >= 0),
    delta numeric NOT NULL DEFAULT 0 CHECK (delta >= 0),
    PRIMARY KEY (analyst, dataset)
);
ALTER TABLE dpproxy.budget_spent
    ADD COLUMN IF NOT EXISTS budget_epsilon numeric NOT NULL DEFAULT 0 CHECK (budget_epsilon >= 0),
    ADD COLUMN IF NOT EXISTS budget_delta numeric NOT NULL DEFAULT 0 CHECK (budget_delta >= 0),
    ADD COLUMN IF NOT EXISTS max_epsilon_per_query numeric,
    ADD COLUMN IF NOT EXISTS renewal_period interval,
    ADD COLUMN IF NOT EXISTS period_start timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS rho numeric NOT NULL DEFAULT 0 CHECK (rho >= 0),
    ADD COLUMN IF NOT EXISTS epsilon_sq numeric NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS epsilon_tanh numeric NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS releases bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS dpproxy.charges (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    analyst text NOT NULL,
    dataset text NOT NULL,
    fingerprint text NOT NULL,
    epsilon numeric NOT NULL,
    delta numeric NOT NULL,
    mechanisms jsonb NOT NULL
);
ALTER TABLE dpproxy.charges ADD COLUMN IF NOT EXISTS rho numeric NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS charges_analyst_at ON dpproxy.charges (analyst, at);
CREATE TABLE IF NOT EXISTS dpproxy.admin_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    action text NOT NULL,
    analyst text,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE OR REPLACE FUNCTION dpproxy.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dpproxy.% is append-only', TG_TABLE_NAME;
END $$;
DROP TRIGGER IF EXISTS charges_append_only ON dpproxy.charges;
CREATE TRIGGER charges_append_only BEFORE UPDATE OR DELETE ON dpproxy.charges
    FOR EACH ROW EXECUTE FUNCTION dpproxy.append_only();
DROP TRIGGER IF EXISTS admin_log_append_only ON dpproxy.admin_log;
CREATE TRIGGER admin_log_append_only BEFORE UPDATE OR DELETE ON dpproxy.admin_log
    FOR EACH ROW EXECUTE FUNCTION dpproxy.append_only();
-- Every change to a budget row, by anyone, bumps its version: a charge decided on rows
-- it read without locking writes only if their versions are still the ones it read.
-- An analyst's row (the enabled flag) is read with their budget rows: changing or
-- removing it changes those rows' versions too.
CREATE OR REPLACE FUNCTION dpproxy.bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION dpproxy.analyst_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dpproxy.budget_spent SET version = version WHERE analyst = OLD.name;
    RETURN NULL;
END $$;
-- Only what is missing is added: DDL on a table that exists would lock it against the
-- config sync of a replica or worker starting at the same time (a deadlock).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'dpproxy.datasets'::regclass
                   AND attname = 'version' AND NOT attisdropped) THEN
        ALTER TABLE dpproxy.datasets ADD COLUMN version bigint NOT NULL DEFAULT 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'dpproxy.budget_spent'::regclass
                   AND attname = 'version' AND NOT attisdropped) THEN
        ALTER TABLE dpproxy.budget_spent ADD COLUMN version bigint NOT NULL DEFAULT 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'datasets_version'
                   AND tgrelid = 'dpproxy.datasets'::regclass) THEN
        CREATE TRIGGER datasets_version BEFORE UPDATE ON dpproxy.datasets
            FOR EACH ROW EXECUTE FUNCTION dpproxy.bump_version();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'budget_spent_version'
                   AND tgrelid = 'dpproxy.budget_spent'::regclass) THEN
        CREATE TRIGGER budget_spent_version BEFORE UPDATE ON dpproxy.budget_spent
            FOR EACH ROW EXECUTE FUNCTION dpproxy.bump_version();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'analysts_version'
                   AND tgrelid = 'dpproxy.analysts'::regclass) THEN
        CREATE TRIGGER analysts_version AFTER UPDATE OR DELETE ON dpproxy.analysts
            FOR EACH ROW EXECUTE FUNCTION dpproxy.analyst_changed();
    END IF;
END $$;
CREATE OR REPLACE FUNCTION dpproxy.not_answered(ok boolean) RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'an answer to this query is stored already' USING ERRCODE = 'DP001';
    END IF;
    RETURN true;
END $$;
CREATE OR REPLACE FUNCTION dpproxy.rows_unchanged(ok boolean) RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'a budget row changed after the charge read it'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END $$;
"""

_SUMS = ("epsilon", "delta", "rho", "epsilon_sq", "epsilon_tanh")
# The key under which a remembered row (a dict, never a database record) holds its sums.
_SPEND = "_spend"

# One statement writes the budget rows and the charge log, all or nothing. Each row is
# updated only if it is still fit for the decision; if any is not, `rows_unchanged`
# raises serialization_failure and nothing is written. The dataset rows are updated
# first (the first scalar subquery), so two writers on one dataset queue on its row
# before touching any analyst's row. The charges' ids come back first, in input order,
# then each written row that someone else had changed meanwhile, as it now stands (a row
# written on the version the decision read holds the sums the decision wrote, and that
# version plus one: nothing to send back).
#
# Every row gets the batch's costs added to its sums (to zero instead where the decision
# started a new renewal period). A budget row is fit for the decision when its version
# is still the one the decision read. Under the pure accountant it is also fit when it
# changed but the decision still holds on it as it is now: the batch's epsilon still
# fits its budget, the per-query cap (if any) still covers each charge, the analyst is
# still enabled and the budget does not renew. UPDATE re-reads a row that another
# writer changed and re-checks these conditions on its newest version under the row
# lock, so charges of one analyst from several workers or replicas queue on the row
# instead of losing races to each other, and still never overspend. Other accountants'
# checks are not linear in the sums (advanced composition, zCDP conversion): their rows
# are version-checked only.
#
# A dataset row with a global budget must be unchanged, or (pure) still cover the batch;
# one without (checked on the row as it is now, so a budget set meanwhile is seen) is
# never checked: no decision read its sums.
_WRITE_CHARGES_SQL = """
WITH ub AS (
    UPDATE dpproxy.budget_spent AS b
       SET epsilon = CASE WHEN v.renewed THEN 0 ELSE b.epsilon END + v.epsilon,
           delta = CASE WHEN v.renewed THEN 0 ELSE b.delta END + v.delta,
           rho = CASE WHEN v.renewed THEN 0 ELSE b.rho END + v.rho,
           epsilon_sq = CASE WHEN v.renewed THEN 0 ELSE b.epsilon_sq END + v.epsilon_sq,
           epsilon_tanh = CASE WHEN v.renewed THEN 0 ELSE b.epsilon_tanh END + v.epsilon_tanh,
           releases = CASE WHEN v.renewed THEN 0 ELSE b.releases END + v.releases,
           period_start = CASE WHEN v.renewed THEN v.period_start ELSE b.period_start END
      FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $5::numeric[],
                  $6::numeric[], $7::numeric[], $8::bigint[], $9::timestamptz[], $24::bigint[],
                  $26::boolean[], $27::numeric[])
           AS v(dataset, analyst, epsilon, delta, rho, epsilon_sq, epsilon_tanh, releases,
                period_start, version, renewed, max_own)
     WHERE b.dataset = v.dataset AND b.analyst = v.analyst
       AND (b.version = v.version
            OR ($28 AND NOT v.renewed AND b.renewal_period IS NULL
                AND b.epsilon + v.epsilon <= b.budget_epsilon
                AND (b.max_epsilon_per_query IS NULL OR v.max_own <= b.max_epsilon_per_query)
                AND EXISTS (SELECT 1 FROM dpproxy.analysts a WHERE a.name = b.analyst AND a.enabled)))
    RETURNING b.dataset, b.analyst, b.epsilon, b.delta, b.rho, b.epsilon_sq, b.epsilon_tanh,
              b.releases, b.period_start, b.version, b.version <> v.version + 1 AS changed
), ud AS (
    UPDATE dpproxy.datasets AS d
       SET epsilon = d.epsilon + v.epsilon, delta = d.delta + v.delta, rho = d.rho + v.rho,
           epsilon_sq = d.epsilon_sq + v.epsilon_sq,
           epsilon_tanh = d.epsilon_tanh + v.epsilon_tanh, releases = d.releases + v.releases
      FROM unnest($10::text[], $11::numeric[], $12::numeric[], $13::numeric[],
                  $14::numeric[], $15::numeric[], $16::bigint[], $25::bigint[])
           AS v(dataset, epsilon, delta, rho, epsilon_sq, epsilon_tanh, releases, version)
     WHERE d.dataset = v.dataset
       AND (d.version = v.version OR (d.budget_epsilon IS NULL AND d.budget_delta IS NULL)
            OR ($28 AND (d.budget_epsilon IS NULL OR d.epsilon + v.epsilon <= d.budget_epsilon)))
    RETURNING d.dataset, d.epsilon, d.delta, d.rho, d.epsilon_sq, d.epsilon_tanh, d.releases,
              d.version, d.version <> v.version + 1 AS changed
), ins AS (
    INSERT INTO dpproxy.charges (analyst, dataset, fingerprint, epsilon, delta, rho, mechanisms)
    SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::numeric[], $21::numeric[],
                         $22::numeric[], $23::jsonb[])
     WHERE dpproxy.rows_unchanged((SELECT count(*) FROM ud) = cardinality($10::text[])
                                  AND (SELECT count(*) FROM ub) = cardinality($1::text[]))
           {unless_answered}
    RETURNING id
)
SELECT id, NULL::text AS dataset, NULL::text AS analyst, NULL::numeric AS epsilon,
       NULL::numeric AS delta, NULL::numeric AS rho, NULL::numeric AS epsilon_sq,
       NULL::numeric AS epsilon_tanh, NULL::bigint AS releases,
       NULL::timestamptz AS period_start, NULL::bigint AS version FROM ins
UNION ALL
SELECT NULL, dataset, analyst, epsilon, delta, rho, epsilon_sq, epsilon_tanh, releases,
       period_start, version FROM ub WHERE changed
UNION ALL
SELECT NULL, dataset, NULL, epsilon, delta, rho, epsilon_sq, epsilon_tanh, releases, NULL,
       version FROM ud WHERE changed
"""

# The same write, for a batch in which some charges are made only if no valid answer
# is stored under their cache keys ($29; $30 the cache's TTL): if one is, `not_answered`
# raises DP001 and nothing is written (an answer stored by another replica, or before a
# restart: rare, since this process looks up first where it knows one is stored). It
# saves a charged query the answer cache's own lookup, a round trip to the ledger.
_WRITE_CHARGES_UNLESS_ANSWERED_SQL = _WRITE_CHARGES_SQL.replace(
    "{unless_answered}",
    "AND dpproxy.not_answered(NOT " + ANSWERED_SQL.format(keys="$29", ttl="$30") + ")")
_WRITE_CHARGES_SQL = _WRITE_CHARGES_SQL.replace("{unless_answered}", "")
ANSWERED_SQLSTATE = "DP001"

# The rows a batch's charges are decided on, read in one statement (one snapshot),
# without locks: each budget row with its analyst's flag and its dataset's row.
_READ_ROWS_SQL = """
SELECT b.*, a.enabled, now() AS now,
       d.epsilon AS d_epsilon, d.delta AS d_delta, d.rho AS d_rho,
       d.epsilon_sq AS d_epsilon_sq, d.epsilon_tanh AS d_epsilon_tanh,
       d.releases AS d_releases, d.budget_epsilon AS d_budget_epsilon,
       d.budget_delta AS d_budget_delta, d.version AS d_version
  FROM unnest($1::text[], $2::text[]) AS k(dataset, analyst)
  JOIN dpproxy.budget_spent b ON b.dataset = k.dataset AND b.analyst = k.analyst
  JOIN dpproxy.analysts a ON a.name = b.analyst
  JOIN dpproxy.datasets d ON d.dataset = b.dataset
"""

# The ledger's sessions plan each prepared statement once, and never with a sequential
# scan where an index can serve. Left to PostgreSQL's choice, the charge's write was
# either planned anew on every call (~0.34 ms of planning for 0.15 ms of execution: most
# of the ledger database's CPU) or given a generic plan made from the statistics at
# start-up, when the answer cache is empty: its lookup in the cache was then a sequential
# scan, and every charge read the whole table as it grew (18 shared buffers a charge on
# a fresh plan; 113 -> 369 -> 496 over three 8-second runs on one connection, execution
# 0.16 -> 0.81 ms). Every ledger statement is a keyed lookup or write, so an index plan
# is the right one at any size; a report over all rows still scans.
LEDGER_SESSION = {"enable_seqscan": "off", "plan_cache_mode": "force_generic_plan"}

# Costs (and mechanism lists, and budget values) whose derived forms a Ledger remembers.
MEMO_SIZE = 1024

# Optimistic attempts before a batch falls back to locking its rows (which always
# succeeds): only another replica's charges or an admin change can make one fail.
OPTIMISTIC_TRIES = 3


def to_decimal(f: Fraction) -> Decimal:
    """A Fraction as an exact Decimal (it must have a finite decimal expansion)."""
    n, d = f.numerator, f.denominator
    k = 0
    while d % 10 == 0:
        d //= 10
        k += 1
    twos = fives = 0
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        raise ValueError(f"{f} has no finite decimal expansion")
    extra = max(twos, fives)
    n *= (10**extra) // (2**twos * 5**fives)
    # The string constructor is exact whatever the decimal context's precision.
    return Decimal(f"{n}E-{k + extra}")


def spend_of(row: Any) -> Spend:
    """The running sums of a ledger row as an exact Spend (a row this process
    remembers, `_row_after`, carries them already)."""
    known = row.get(_SPEND)
    if known is not None:
        return known
    return Cost(
        *(Fraction(Decimal(row[c])) for c in _SUMS),
        releases=int(row["releases"]),
    )


class AlreadyAnswered(Exception):
    """A probing charge found a valid answer stored under its cache key; nothing was
    charged (look the answer up, or charge again without the probe)."""


class BudgetExhausted(Exception):
    """A charge was refused (budget, cap, or disabled analyst); nothing was charged."""

    def __init__(
        self,
        reason: str,
        message: str,
        remaining: Fraction | None = None,
        limit: Fraction | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason  # "analyst", "dataset", "per_query", "disabled", "no_budget"
        self.message = message
        self.remaining_epsilon = remaining
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Charge:
    """One committed charge and what remains after it."""

    cost: Cost
    epsilon: Fraction  # the query's own epsilon under the dataset's accountant
    spent_epsilon: Fraction
    remaining_epsilon: Fraction
    budget_epsilon: Fraction
    charge_id: int


@dataclass
class _Request:
    analyst: str
    dataset: str
    fingerprint: str
    cost: Cost
    mechanisms: list[dict[str, Any]]
    future: asyncio.Future[Charge] = field(repr=False)
    probe: AnswerProbe | None = None
    sent: asyncio.Future[None] | None = field(default=None, repr=False)


@dataclass
class _Written:
    """What a charge write returned: the charges' ids (in order), and the rows it wrote
    that another writer had changed since the decision read them, as they now stand, by
    (dataset, analyst) and by dataset."""

    ids: list[int]
    budgets: dict[tuple[str, str], Any]
    datasets: dict[str, Any]


@dataclass
class GroupCommit:
    """Group-commit settings: batches of at most `max_batch`, each first waiting `window_us`."""

    enabled: bool = True
    window_us: int = 0
    max_batch: int = 128


class Ledger:
    """Charges against the ledger database, with group commit."""

    def __init__(
        self, pool: LeanPool, accountant: Accountant | None = None,
        group: GroupCommit | None = None,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.accountant = accountant or Accountant(AccountantKind.PURE)
        self.group = group or GroupCommit()
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._known = KnownRows()
        # A Cost's sums as exact Decimals, per Cost object: the DP engine shares one Cost
        # between the queries of a calibration, and converting (or even hashing) five
        # Fractions each charge was a tenth of the charge's CPU.
        self._decimals: IdentityMemo[Cost, list[Decimal]] = IdentityMemo(
            lambda cost: [to_decimal(getattr(cost, c)) for c in _SUMS], MEMO_SIZE)
        # The JSON of a charge's mechanism records, per list (shared the same way).
        self._json: IdentityMemo[list[dict[str, Any]], str] = IdentityMemo(json.dumps, MEMO_SIZE)
        self._fractions: dict[Decimal, Fraction] = {}
        self._unbatched: set[asyncio.Task[None]] = set()  # group commit off: each charge's own

    @classmethod
    async def connect(
        cls, dsn: str, size: int = 4, accountant: Accountant | None = None,
        group: GroupCommit | None = None,
    ) -> Ledger:  # fmt: skip
        """Open a pool to the ledger database and create its schema if missing."""
        pool = await create_pool(dsn, min_size=1, max_size=size, server_settings=LEDGER_SESSION)
        ledger = cls(pool, accountant, group)
        await ledger.ensure_schema()
        return ledger

    async def ensure_schema(self) -> None:
        """Create the ledger's tables (idempotent; serialized across replicas)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(724011)")
            await conn.execute(SCHEMA_SQL)

    async def close(self) -> None:
        """Stop the group-commit worker and close the pool."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self.pool.close()

    async def spent(self, analyst: str, dataset: str) -> Decimal:
        """Epsilon spent so far by an analyst on a dataset (under the accountant)."""
        row = await self.pool.fetchrow(
            "SELECT * FROM dpproxy.budget_spent WHERE analyst = $1 AND dataset = $2",
            analyst,
            dataset,
        )
        if row is None:
            return Decimal(0)
        return Decimal(float(self.accountant.guarantee(spend_of(row)).epsilon))

    # --- charging -----------------------------------------------------------------------

    async def charge(
        self,
        analyst: str,
        dataset: str,
        fingerprint: str,
        cost: Cost,
        mechanisms: list[dict[str, Any]] | None = None,
        unless_answered: AnswerProbe | None = None,
        sent: asyncio.Future[None] | None = None,
    ) -> Charge:
        """Check and debit every budget the query is under, durably, before it runs.

        Raises BudgetExhausted (and charges nothing) if a budget does not cover it; with
        `unless_answered`, AlreadyAnswered (and charges nothing) if a valid answer is
        stored under its key. If the ledger itself fails, the error propagates and the
        query must not run. `sent` is resolved when a decision has accepted the charge
        and its write is on its way (it may still fail: only the return value counts).
        """
        return await self.submit(analyst, dataset, fingerprint, cost, mechanisms, unless_answered, sent)

    def submit(
        self,
        analyst: str,
        dataset: str,
        fingerprint: str,
        cost: Cost,
        mechanisms: list[dict[str, Any]] | None = None,
        unless_answered: AnswerProbe | None = None,
        sent: asyncio.Future[None] | None = None,
    ) -> asyncio.Future[Charge]:
        """`charge`, queued now (no task switch before the batcher sees it): the future
        of its outcome."""
        loop = asyncio.get_running_loop()
        req = _Request(analyst, dataset, fingerprint, cost, mechanisms or [], loop.create_future(),
                       unless_answered, sent)  # fmt: skip
        if not self.group.enabled:
            task = asyncio.ensure_future(self._run_batch([req]))
            self._unbatched.add(task)
            task.add_done_callback(self._unbatched.discard)
        else:
            if self._worker is None or self._worker.done():
                self._queue = asyncio.Queue()
                self._worker = asyncio.create_task(self._batcher())
            assert self._queue is not None
            self._queue.put_nowait(req)
        return req.future

    async def _batcher(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            batch = [await q.get()]
            if self.group.window_us > 0:
                await asyncio.sleep(self.group.window_us / 1e6)
            while len(batch) < self.group.max_batch and not q.empty():
                batch.append(q.get_nowait())
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        try:
            try:
                outcomes = await self._commit(batch)
            except asyncpg.PostgresError as e:
                if e.sqlstate != ANSWERED_SQLSTATE:
                    raise
                # Some probed key has an answer (which one, the statement does not say):
                # every probing charge of the batch is answered from the cache instead
                # (or charged again, unprobed, by its caller); the others go again.
                for r in batch:
                    if r.probe is not None and not r.future.done():
                        r.future.set_exception(AlreadyAnswered())
                batch = [r for r in batch if r.probe is None]
                outcomes = await self._commit(batch) if batch else []
        except Exception as e:  # the ledger failed: no query of this batch may run
            log.error("ledger transaction failed: %s", type(e).__name__)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        for r, out in zip(batch, outcomes, strict=True):
            if r.future.done():
                continue
            if isinstance(out, BudgetExhausted):
                r.future.set_exception(out)
            else:
                r.future.set_result(out)

    async def _commit(self, batch: list[_Request]) -> list[Charge | BudgetExhausted]:
        """Decide and write a batch: on the rows this process last wrote (one round
        trip), else optimistically (two round trips, no locks held between them), then,
        if other writers keep changing its rows, under row locks."""
        datasets = sorted({r.dataset for r in batch})
        if self._known.contended(datasets):
            return await self._commit_locked(batch)
        known = self._known.rows_for(sorted({(r.dataset, r.analyst) for r in batch}))
        if known is not None:
            done = await self._commit_speculative(batch, *known)
            if done is not None:
                return done
        for _ in range(OPTIMISTIC_TRIES):
            try:
                return await self._commit_optimistic(batch)
            except asyncpg.TransactionRollbackError:  # a row changed (or a deadlock): again
                continue
        self._known.fell_back(datasets)
        return await self._commit_locked(batch)

    async def _commit_speculative(
        self, batch: list[_Request], drows: dict[str, dict[str, Any]],
        brows: dict[tuple[str, str], dict[str, Any]],
    ) -> list[Charge | BudgetExhausted] | None:  # fmt: skip
        """Decide on the rows as this process last knew them and write at once; None if
        a charge would be refused or a row has changed since (nothing is written then)."""
        dstate = {d: [row, spend_of(row)] for d, row in drows.items()}
        bstate = {p: _budget_state(row) for p, row in brows.items()}
        outcomes, accepted = self._decide(batch, dstate, bstate)
        if len(accepted) < len(batch):
            return None  # refusals are decided on rows read afresh
        try:
            async with self.pool.acquire() as conn:
                written = await self._write(conn, accepted, dstate, bstate)
        except asyncpg.TransactionRollbackError:
            self._known.lost(bstate)
            return None
        return self._finish(batch, outcomes, dstate, bstate, written)

    async def _commit_optimistic(self, batch: list[_Request]) -> list[Charge | BudgetExhausted]:
        """Read the rows in one statement, decide, write only if none has changed since.

        Both statements run outside a transaction block: each is atomic on its own, and
        the write's version checks make the pair as if the rows had been locked between
        them (a write that would not be raises serialization_failure and writes nothing).
        """
        pairs = sorted({(r.dataset, r.analyst) for r in batch})
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_READ_ROWS_SQL, [p[0] for p in pairs], [p[1] for p in pairs])
            dstate: dict[str, list[Any]] = {}
            for r in rows:
                if r["dataset"] not in dstate:
                    drow = {c: r[f"d_{c}"] for c in (*_SUMS, "releases", "budget_epsilon",
                                                     "budget_delta", "version")}  # fmt: skip
                    dstate[r["dataset"]] = [drow, spend_of(drow)]
            bstate = {(r["dataset"], r["analyst"]): _budget_state(r) for r in rows}
            outcomes, accepted = self._decide(batch, dstate, bstate)
            written = await self._write(conn, accepted, dstate, bstate) if accepted else _Written([], {}, {})
        return self._finish(batch, outcomes, dstate, bstate, written)

    async def _commit_locked(self, batch: list[_Request]) -> list[Charge | BudgetExhausted]:
        """Lock the rows (`SELECT ... FOR UPDATE`), decide and write in one transaction."""
        datasets = sorted({r.dataset for r in batch})
        pairs = sorted({(r.dataset, r.analyst) for r in batch})
        async with self.pool.acquire() as conn, conn.transaction():
            # Lock order (datasets, then budget rows by dataset, analyst) is the same in
            # every replica, so concurrent batches cannot deadlock.
            drows = await conn.fetch(
                "SELECT * FROM dpproxy.datasets WHERE dataset = ANY($1::text[]) "
                "ORDER BY dataset FOR UPDATE",
                datasets,
            )
            brows = await conn.fetch(
                "SELECT b.*, a.enabled, now() AS now FROM dpproxy.budget_spent b "
                "JOIN dpproxy.analysts a ON a.name = b.analyst "
                "WHERE (b.dataset, b.analyst) IN "
                "(SELECT * FROM unnest($1::text[], $2::text[])) "
                "ORDER BY b.dataset, b.analyst FOR UPDATE OF b",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
            dstate = {r["dataset"]: [r, spend_of(r)] for r in drows}
            bstate = {(r["dataset"], r["analyst"]): _budget_state(r) for r in brows}
            outcomes, accepted = self._decide(batch, dstate, bstate)
            written = await self._write(conn, accepted, dstate, bstate) if accepted else _Written([], {}, {})
        return self._finish(batch, outcomes, dstate, bstate, written)

    def _finish(
        self, batch: list[_Request], outcomes: list[Charge | BudgetExhausted], dstate: dict[str, list[Any]],
        bstate: dict[tuple[str, str], list[Any]], written: _Written,
    ) -> list[Charge | BudgetExhausted]:  # fmt: skip
        """Keep the rows as they now stand in the ledger, and give each charge its id and
        the analyst's spend as it now stands.

        A row is as read, or as the decision wrote it (its version plus one), or, where
        another writer had changed it meanwhile (pure accountant only), as the write
        returned it: it then holds more than the decision counted, and each of its
        charges reports the spend shifted by that much."""
        accepted = [r for r, o in zip(batch, outcomes, strict=True) if isinstance(o, Charge)]
        written_d = {r.dataset for r in accepted}
        written_b = {(r.dataset, r.analyst) for r in accepted}
        shift = {p: spend_of(row).epsilon - bstate[p][1].epsilon for p, row in written.budgets.items()}
        self._known.remember(
            {d: _row_after(row, spend, d in written_d, written.datasets.get(d))
             for d, (row, spend) in dstate.items()},
            {p: _row_after(row, spend, p in written_b, written.budgets.get(p), period_start=start)
             for p, (row, spend, start) in bstate.items()},
        )  # fmt: skip
        ids = iter(written.ids)
        out: list[Charge | BudgetExhausted] = []
        for req, o in zip(batch, outcomes, strict=True):
            if isinstance(o, BudgetExhausted):
                out.append(o)
                continue
            spent = o.spent_epsilon + shift.get((req.dataset, req.analyst), Fraction(0))
            out.append(Charge(o.cost, o.epsilon, spent, max(Fraction(0), o.budget_epsilon - spent),
                              o.budget_epsilon, next(ids)))  # fmt: skip
        return out

    def _decide(
        self, batch: list[_Request], dstate: dict[str, list[Any]],
        bstate: dict[tuple[str, str], list[Any]],
    ) -> tuple[list[Charge | BudgetExhausted], list[_Request]]:  # fmt: skip
        """Check each charge in turn against the running sums, adding the accepted ones."""
        outcomes: list[Charge | BudgetExhausted] = []
        accepted: list[_Request] = []
        for req in batch:
            out = self._check(req, dstate.get(req.dataset), bstate.get((req.dataset, req.analyst)))
            if isinstance(out, BudgetExhausted):
                outcomes.append(out)
                continue
            charge, dstate[req.dataset][1], bstate[(req.dataset, req.analyst)][1] = out
            accepted.append(req)
            outcomes.append(charge)
        return outcomes, accepted

    async def _write(
        self, conn: asyncpg.Connection, accepted: list[_Request], dstate: dict[str, list[Any]],
        bstate: dict[tuple[str, str], list[Any]],
    ) -> _Written:  # fmt: skip
        """Add the batch's costs and append the charge log (one statement): the
        charges' ids, and the written rows another writer had changed meanwhile."""

        sums = self._decimals

        def columns(rows: list[list[Decimal]]) -> list[list[Decimal]]:
            return [[row[i] for row in rows] for i in range(len(_SUMS))]

        bkeys = sorted({(r.dataset, r.analyst) for r in accepted})
        dkeys = sorted({r.dataset for r in accepted})
        # A key's one charge is added as its own Cost object (a calibration's costs are
        # shared between queries, so their Decimals are converted once, in `_decimals`).
        added: dict[Any, Spend] = {}
        largest: dict[tuple[str, str], Cost] = {}  # pure: the charge of largest own epsilon
        for r in accepted:
            pair = (r.dataset, r.analyst)
            for k in (r.dataset, pair):
                added[k] = r.cost if k not in added else added[k] + r.cost
            if pair not in largest or r.cost.epsilon > largest[pair].epsilon:
                largest[pair] = r.cost
        probes = [r.probe for r in accepted if r.probe is not None]
        unless_answered = [[p.key for p in probes], probes[0].ttl_seconds] if probes else []
        for r in accepted:
            if r.sent is not None and not r.sent.done():
                r.sent.set_result(None)
        rows = await conn.fetch(
            _WRITE_CHARGES_UNLESS_ANSWERED_SQL if probes else _WRITE_CHARGES_SQL,
            [k[0] for k in bkeys], [k[1] for k in bkeys],
            *columns([sums(added[k]) for k in bkeys]),
            [added[k].releases for k in bkeys], [bstate[k][2] for k in bkeys],
            dkeys,
            *columns([sums(added[d]) for d in dkeys]),
            [added[d].releases for d in dkeys],
            [r.analyst for r in accepted],
            [r.dataset for r in accepted],
            [r.fingerprint for r in accepted],
            *columns([sums(r.cost) for r in accepted])[:3],  # epsilon, delta, rho
            [self._json(r.mechanisms) for r in accepted],
            [bstate[k][0]["version"] for k in bkeys],
            [dstate[d][0]["version"] for d in dkeys],
            [bstate[k][2] != bstate[k][0]["period_start"] for k in bkeys],  # a new period
            [sums(largest[k])[0] for k in bkeys],
            self.accountant.kind == AccountantKind.PURE,  # max_own is read under pure only
            *unless_answered,
        )  # fmt: skip
        written = _Written([], {}, {})
        for r in rows:
            if r["id"] is not None:
                written.ids.append(int(r["id"]))
            elif r["analyst"] is not None:
                written.budgets[(r["dataset"], r["analyst"])] = r
            else:
                written.datasets[r["dataset"]] = r
        return written

    def _fraction(self, value: Decimal) -> Fraction:
        """A budget or cap read from the ledger as a Fraction, remembered per value (the
        same few values come back on every charge; converting one costs ~5 us)."""
        hit = self._fractions.get(value)
        if hit is None:
            if len(self._fractions) >= MEMO_SIZE:
                self._fractions.clear()
            hit = self._fractions[value] = Fraction(value)
        return hit

    def _check(
        self, req: _Request, d: list[Any] | None, b: list[Any] | None
    ) -> tuple[Charge, Spend, Spend] | BudgetExhausted:
        """The charge with the dataset's and the analyst's spend after it, or why not.

        Each sum is added once (Fraction sums are most of a charge's own CPU)."""
        acc = self.accountant
        frac = self._fraction
        if d is None or b is None:
            return BudgetExhausted(
                "no_budget",
                f'analyst "{req.analyst}" has no budget on dataset "{req.dataset}"',
            )
        brow, bspend, _ = b
        if not brow["enabled"]:
            return BudgetExhausted("disabled", f'analyst "{req.analyst}" is disabled')
        drow, dspend = d
        own = acc.guarantee(req.cost).epsilon
        cap = brow["max_epsilon_per_query"]
        if cap is not None and own > frac(Decimal(cap)):
            return BudgetExhausted(
                "per_query",
                f"this query costs epsilon {_fmt(own)}, above your per-query limit of "
                f"{_fmt(frac(Decimal(cap)))}",
            )
        limits = Limits(frac(Decimal(brow["budget_epsilon"])),
                        frac(Decimal(brow["budget_delta"])) if acc.kind == AccountantKind.APPROX else None)  # fmt: skip
        btotal = bspend + req.cost
        if not acc.within(btotal, limits):
            rem = acc.remaining(bspend, limits)
            return BudgetExhausted(
                "analyst",
                f"privacy budget exhausted: this query costs epsilon {_fmt(own)} but "
                f"{_fmt(rem or Fraction(0))} of {_fmt(limits.epsilon or Fraction(0))} "
                f'remains on dataset "{req.dataset}"',
                rem,
                limits.epsilon,
            )
        dlimits = Limits(
            frac(Decimal(drow["budget_epsilon"])) if drow["budget_epsilon"] is not None else None,
            frac(Decimal(drow["budget_delta"]))
            if drow["budget_delta"] is not None and acc.kind == AccountantKind.APPROX
            else None,
        )
        dtotal = dspend + req.cost
        if not acc.within(dtotal, dlimits):
            return BudgetExhausted(
                "dataset",
                f'the global privacy budget of dataset "{req.dataset}" (shared by all '
                f"analysts) does not cover this query (epsilon {_fmt(own)})",
            )
        after = acc.guarantee(btotal).epsilon
        assert limits.epsilon is not None
        charge = Charge(
            cost=req.cost,
            epsilon=own,
            spent_epsilon=after,
            remaining_epsilon=max(Fraction(0), limits.epsilon - after),
            budget_epsilon=limits.epsilon,
            charge_id=0,
        )
        return charge, dtotal, btotal


def _budget_state(row: Any) -> list[Any]:
    """[row, spend, period start] of a budget row, its renewal period applied."""
    spend = spend_of(row)
    start = row["period_start"]
    period: timedelta | None = row["renewal_period"]
    now: datetime = row["now"]
    if period is not None and period.total_seconds() > 0 and now >= start + period:
        # A new renewal period: the analyst's sums restart from zero (the charge log
        # keeps everything; the global budget never renews).
        k = (now - start) // period
        start = start + k * period
        spend = ZERO
    return [row, spend, start]


def _row_after(row: Any, spend: Spend, written: bool, after: Any | None = None,
               **changed: Any) -> dict[str, Any]:  # fmt: skip
    """A ledger row as a dict: as read; or as the decision wrote it (`spend`, `changed`
    and the next version); or, where the write returned it (`after`: another writer had
    changed it), as it now stands. Its sums are kept as the exact Spend (`_SPEND`), not
    as Decimals: the next charge decided on it needs the Spend, and converting both ways
    cost more than the charge's own checks."""
    out = {k: v for k, v in row.items() if k not in _SUMS}
    if not written:
        out[_SPEND] = spend_of(row)  # the row's own sums (a renewed period's zero is not)
    elif after is None:
        out.update(releases=spend.releases, version=row["version"] + 1, **changed)
        out[_SPEND] = spend
    else:
        out.update({k: v for k, v in after.items() if k not in _SUMS and v is not None})
        out[_SPEND] = spend_of(after)
    return out


def _fmt(f: Fraction, places: int = 6) -> str:
    """A short human rendering of an exact amount (rounded to `places`, zeros dropped)."""
    q = Decimal(f.numerator) / Decimal(f.denominator)
    return format(q.quantize(Decimal(1).scaleb(-places)).normalize(), "f")
