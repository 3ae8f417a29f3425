"""The ledger's optimistic charge: decided on rows read without locks (or on the rows
this process last wrote), written only if those rows are unchanged (or, under the pure
accountant, if the decision still holds on them as they are now), else decided again;
under row locks after repeated losses.

Another writer is made to change a budget row between a charge's read and its write
(a real UPDATE on another connection, at the moment the ledger decides).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest

from accounting.accountant import Accountant, AccountantKind, laplace_release
from accounting.budget import AnalystBudget, sync_config
from accounting.known_rows import LOCK_AFTER_FALLBACK, PAUSE_AFTER_LOSS
from accounting.ledger import OPTIMISTIC_TRIES, BudgetExhausted, GroupCommit, Ledger
from accounting.pool import create_pool
from proxy.pgcluster import PgCluster
from tests.support.ledgers import ledger_database

VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"


class Interfering(Ledger):
    """A ledger during whose first `times` decisions outside a transaction block another
    connection runs `change` (committed before the decision returns)."""

    def __init__(self, *args: Any, change: str, times: int, dsn: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.change, self.times, self.dsn = change, times, dsn
        self.decisions = 0
        self.locked = 0
        self.reads = 0

    def _decide(self, batch: Any, dstate: Any, bstate: Any) -> Any:
        self.decisions += 1
        if self.decisions <= self.times:
            with psycopg.connect(self.dsn, autocommit=True) as other:
                other.execute(self.change)
        return super()._decide(batch, dstate, bstate)

    async def _commit_optimistic(self, batch: Any) -> Any:
        self.reads += 1
        return await super()._commit_optimistic(batch)

    async def _commit_locked(self, batch: Any) -> Any:
        self.locked += 1
        return await super()._commit_locked(batch)


@pytest.fixture()
def ledger_dsn(pg_cluster: PgCluster, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A fresh ledger database holding dataset "d" and analyst "a" (budget epsilon 1)."""

    async def analyst(ledger: Ledger) -> None:
        async with ledger.pool.acquire() as conn:
            await sync_config(conn, "d", [AnalystBudget("a", VERIFIER, Decimal(1))])

    with ledger_database(pg_cluster, unique_name("ledger_optimistic"), analyst) as dsn:
        yield dsn


def _charge(dsn: str, change: str, times: int, eps: Fraction,
            kind: AccountantKind = AccountantKind.PURE) -> tuple[Any, Interfering]:  # fmt: skip
    """One charge of `eps`, with `change` run during the ledger's first `times` decisions."""
    outs, _, ledger = _run_charges(dsn, [(None, eps)], change, times, kind)
    return outs[0], ledger


def _state(dsn: str) -> tuple[Decimal, Decimal, int, int]:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT b.epsilon, d.epsilon, b.version, "
                        "(SELECT count(*) FROM dpproxy.charges) FROM dpproxy.budget_spent b "
                        "JOIN dpproxy.datasets d USING (dataset)").fetchone()  # fmt: skip
    assert row is not None
    return row  # type: ignore[return-value]


def test_every_update_of_a_budget_row_bumps_its_version(ledger_dsn: str) -> None:
    with psycopg.connect(ledger_dsn, autocommit=True) as c:
        before = c.execute("SELECT version FROM dpproxy.budget_spent").fetchone()
        c.execute("UPDATE dpproxy.budget_spent SET budget_epsilon = budget_epsilon")
        after = c.execute("SELECT version FROM dpproxy.budget_spent").fetchone()
        d0 = c.execute("SELECT version FROM dpproxy.datasets").fetchone()
        c.execute("UPDATE dpproxy.datasets SET cache_epoch = cache_epoch + 1")
        d1 = c.execute("SELECT version FROM dpproxy.datasets").fetchone()
    assert before is not None and after is not None and d0 is not None and d1 is not None
    assert after[0] == before[0] + 1 and d1[0] == d0[0] + 1


# Another replica's charge of 0.25 lands between this charge's read and its write.
OTHER_CHARGE = ("UPDATE dpproxy.budget_spent SET epsilon = epsilon + 0.25; "
                "UPDATE dpproxy.datasets SET epsilon = epsilon + 0.25")  # fmt: skip
# An admin's change that leaves every budget as it was, but bumps the row's version.
BUMP = "UPDATE dpproxy.budget_spent SET budget_epsilon = budget_epsilon"
# The approx accountant's checks are not linear in the sums: its rows are version-checked.
APPROX = AccountantKind.APPROX


def test_a_charge_is_decided_again_when_its_rows_change_before_the_write(ledger_dsn: str) -> None:
    out, ledger = _charge(ledger_dsn, OTHER_CHARGE, 1, Fraction(1, 2), APPROX)
    assert not isinstance(out, BudgetExhausted)
    assert ledger.decisions == 2 and ledger.locked == 0  # the stale decision was not written
    assert out.spent_epsilon == Fraction(3, 4)
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert (spent, dataset_spent, charges) == (Decimal("0.75"), Decimal("0.75"), 1)


def test_pure_a_charge_that_still_fits_is_added_to_the_changed_row(ledger_dsn: str) -> None:
    # Pure accountant: 0.25 + 0.5 still fits the budget of 1 on the row as it now is, so
    # the charge is added to it in the same write, not decided again; it reports the
    # spend as it now stands, the other writer's 0.25 included.
    out, ledger = _charge(ledger_dsn, OTHER_CHARGE, 1, Fraction(1, 2))
    assert not isinstance(out, BudgetExhausted)
    assert ledger.decisions == 1 and ledger.reads == 1 and ledger.locked == 0
    assert (out.spent_epsilon, out.remaining_epsilon) == (Fraction(3, 4), Fraction(1, 4))
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert (spent, dataset_spent, charges) == (Decimal("0.75"), Decimal("0.75"), 1)


@pytest.mark.parametrize("change", [
    # another writer's charge leaves too little: 0.75 + 0.5 > 1
    "UPDATE dpproxy.budget_spent SET epsilon = epsilon + 0.75",
    # an admin caps queries at 0.4 (this one costs 0.5)
    "UPDATE dpproxy.budget_spent SET max_epsilon_per_query = 0.4",
    # an admin disables the analyst
    "UPDATE dpproxy.analysts SET enabled = false",
    # an admin makes the budget renew (renewing budgets are version-checked)
    "UPDATE dpproxy.budget_spent SET renewal_period = interval '1 day', epsilon = 0.75",
])  # fmt: skip
def test_pure_a_charge_that_no_longer_fits_the_changed_row_is_decided_again(
    ledger_dsn: str, change: str
) -> None:
    out, ledger = _charge(ledger_dsn, change, 1, Fraction(1, 2))
    assert isinstance(out, BudgetExhausted)
    assert ledger.decisions == 2  # the write wrote nothing; the fresh decision refused
    assert _state(ledger_dsn)[3] == 0


def test_pure_a_global_budget_is_rechecked_on_the_changed_dataset_row(ledger_dsn: str) -> None:
    with psycopg.connect(ledger_dsn, autocommit=True) as c:
        c.execute("UPDATE dpproxy.datasets SET budget_epsilon = 1")
    fits = "UPDATE dpproxy.datasets SET epsilon = epsilon + 0.25"
    out, ledger = _charge(ledger_dsn, fits, 1, Fraction(1, 2))
    assert not isinstance(out, BudgetExhausted) and ledger.decisions == 1
    does_not = "UPDATE dpproxy.datasets SET epsilon = epsilon + 0.5"
    out, ledger = _charge(ledger_dsn, does_not, 1, Fraction(1, 5))  # 0.75 + 0.5 + 0.2 > 1
    assert isinstance(out, BudgetExhausted) and out.reason == "dataset"
    assert ledger.decisions == 2
    assert _state(ledger_dsn)[1::2] == (Decimal("1.25"), 1)


def test_a_budget_lowered_before_the_write_refuses_the_charge(ledger_dsn: str) -> None:
    # Decided against a budget of 1, the charge of 0.5 would fit; the admin has lowered
    # it to 0.4 before the write, so the charge is refused and nothing is written.
    lower = "UPDATE dpproxy.budget_spent SET budget_epsilon = 0.4"
    out, ledger = _charge(ledger_dsn, lower, 1, Fraction(1, 2))
    assert isinstance(out, BudgetExhausted) and out.reason == "analyst"
    assert ledger.decisions == 2
    assert _state(ledger_dsn)[::3] == (Decimal(0), 0)


def test_repeated_lost_races_fall_back_to_locking_the_rows(ledger_dsn: str) -> None:
    out, ledger = _charge(ledger_dsn, BUMP, OPTIMISTIC_TRIES, Fraction(1, 2), APPROX)
    assert not isinstance(out, BudgetExhausted)
    assert ledger.decisions == OPTIMISTIC_TRIES + 1 and ledger.locked == 1
    spent, dataset_spent, version, charges = _state(ledger_dsn)
    assert (spent, dataset_spent, charges) == (Decimal("0.5"), Decimal("0.5"), 1)
    assert version == OPTIMISTIC_TRIES + 1  # the other writer's bumps and one write: lost attempts wrote nothing


def test_pure_a_changed_version_alone_loses_no_race(ledger_dsn: str) -> None:
    out, ledger = _charge(ledger_dsn, BUMP, OPTIMISTIC_TRIES, Fraction(1, 2))
    assert not isinstance(out, BudgetExhausted)
    assert ledger.decisions == 1 and ledger.locked == 0
    assert _state(ledger_dsn)[::3] == (Decimal("0.5"), 1)


def test_a_dataset_without_a_global_budget_is_added_to_without_a_race(ledger_dsn: str) -> None:
    # Another analyst's charge (on another worker or replica) changes the shared dataset
    # row between this charge's read and its write. No decision read that row's sums (it
    # has no global budget), so this charge is not decided again, and both are counted.
    other = "UPDATE dpproxy.datasets SET epsilon = epsilon + 0.25, releases = releases + 1"
    out, ledger = _charge(ledger_dsn, other, 1, Fraction(1, 2))
    assert not isinstance(out, BudgetExhausted)
    assert ledger.decisions == 1 and ledger.locked == 0
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert (spent, dataset_spent, charges) == (Decimal("0.5"), Decimal("0.75"), 1)


def test_a_dataset_with_a_global_budget_is_version_checked(ledger_dsn: str) -> None:
    # With a global budget the decision reads the dataset's sums: a change to them
    # before the write makes the charge be decided again, on the new sums (here the
    # global budget of 1 no longer covers it).
    with psycopg.connect(ledger_dsn, autocommit=True) as c:
        c.execute("UPDATE dpproxy.datasets SET budget_epsilon = 1")
    other = "UPDATE dpproxy.datasets SET epsilon = epsilon + 0.75"
    out, ledger = _charge(ledger_dsn, other, 1, Fraction(1, 2))
    assert isinstance(out, BudgetExhausted) and out.reason == "dataset"
    assert ledger.decisions == 2
    assert _state(ledger_dsn)[1::2] == (Decimal("0.75"), 0)


def _run_charges(
    dsn: str, steps: list[tuple[str | None, Fraction]], interfere: str = "", times: int = 0,
    kind: AccountantKind = AccountantKind.PURE,
) -> tuple[list[Any], list[int], Interfering]:
    """Charges of one ledger, in order; before step i, `steps[i][0]` (if any) is run on
    another connection, and `interfere` during the ledger's first `times` decisions. The
    outcomes, how many reads the ledger had made after each step, and the ledger."""

    async def run() -> tuple[list[Any], list[int], Interfering]:
        ledger = Interfering(await create_pool(dsn), Accountant(kind),
                             GroupCommit(enabled=False), change=interfere, times=times, dsn=dsn)  # fmt: skip
        outs: list[Any] = []
        reads: list[int] = []
        try:
            for change, eps in steps:
                if change:
                    with psycopg.connect(dsn, autocommit=True) as other:
                        other.execute(change)
                try:
                    outs.append(await ledger.charge("a", "d", "fp", laplace_release(eps)))
                except BudgetExhausted as e:
                    outs.append(e)
                reads.append(ledger.reads)
        finally:
            await ledger.close()
        return outs, reads, ledger

    return asyncio.run(run())


def test_charges_after_the_first_are_decided_on_the_rows_this_process_wrote(ledger_dsn: str) -> None:
    tenth = Fraction(1, 10)
    outs, reads, _ = _run_charges(ledger_dsn, [(None, tenth)] * 4)
    assert reads == [1, 1, 1, 1]  # one read; then one round trip per charge
    assert [o.spent_epsilon for o in outs] == [tenth, 2 * tenth, 3 * tenth, 4 * tenth]
    spent, dataset_spent, version, charges = _state(ledger_dsn)
    assert (spent, dataset_spent, charges) == (Decimal("0.4"), Decimal("0.4"), 4)


def test_rows_changed_by_another_writer_are_read_again(ledger_dsn: str) -> None:
    tenth = Fraction(1, 100)
    steps = [(None, tenth), (OTHER_CHARGE, tenth)] + [(None, tenth)] * (PAUSE_AFTER_LOSS + 1)
    outs, reads, _ = _run_charges(ledger_dsn, steps, kind=APPROX)
    # The second charge's write found the rows changed: nothing written, read again
    # (and so for the next PAUSE_AFTER_LOSS charges), then one round trip again.
    assert reads[:2] == [1, 2]
    assert reads[2:] == [3 + i for i in range(PAUSE_AFTER_LOSS)] + [2 + PAUSE_AFTER_LOSS]
    assert all(not isinstance(o, BudgetExhausted) for o in outs)
    n = len(steps)
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert charges == n and spent == dataset_spent == Decimal("0.25") + n * Decimal("0.01")


def test_pure_rows_changed_by_another_writer_are_caught_up_by_the_write(ledger_dsn: str) -> None:
    # The write returns the rows as they now stand: the next charges are decided on
    # them (the other writer's 0.25 included) in one round trip each, with no read.
    tenth = Fraction(1, 100)
    steps = [(None, tenth), (OTHER_CHARGE, tenth)] + [(None, tenth)] * 3
    outs, reads, _ = _run_charges(ledger_dsn, steps)
    assert reads == [1] * len(steps)
    assert [o.spent_epsilon for o in outs] == [tenth] + [Fraction(1, 4) + i * tenth for i in range(2, 6)]
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert charges == 5 and spent == dataset_spent == Decimal("0.25") + 5 * Decimal("0.01")


def test_a_disabled_analyst_is_refused_at_the_next_charge(ledger_dsn: str) -> None:
    tenth = Fraction(1, 10)
    disable = "UPDATE dpproxy.analysts SET enabled = false WHERE name = 'a'"
    outs, reads, _ = _run_charges(ledger_dsn, [(None, tenth), (disable, tenth)])
    assert isinstance(outs[1], BudgetExhausted) and outs[1].reason == "disabled"
    assert _state(ledger_dsn)[3] == 1


def test_refusals_and_renewing_budgets_are_decided_on_rows_read_afresh(ledger_dsn: str) -> None:
    # Known rows say 0.9 is spent of 1: a charge of 0.2 would be refused on them, so the
    # rows are read again (an admin may have raised the budget) before refusing.
    raise_budget = "UPDATE dpproxy.budget_spent SET budget_epsilon = 2"
    outs, reads, _ = _run_charges(ledger_dsn, [(None, Fraction(9, 10)), (raise_budget, Fraction(1, 5))])
    assert not isinstance(outs[1], BudgetExhausted) and reads == [1, 2]
    renew = "UPDATE dpproxy.budget_spent SET renewal_period = interval '1 day'"
    outs, reads, _ = _run_charges(ledger_dsn, [(renew, Fraction(1, 10)), (None, Fraction(1, 10))])
    assert reads == [1, 2]  # a budget that renews is never charged on known rows


def test_after_falling_back_to_locks_the_next_charges_lock_at_once(ledger_dsn: str) -> None:
    steps: list[tuple[str | None, Fraction]] = [(None, Fraction(1, 100))] * (LOCK_AFTER_FALLBACK + 2)
    _, _, ledger = _run_charges(ledger_dsn, steps, BUMP, OPTIMISTIC_TRIES, APPROX)
    # The first charge lost every optimistic try; the next LOCK_AFTER_FALLBACK took the
    # locks at once; then the rows it last wrote were used again (no read, no lock).
    assert ledger.reads == OPTIMISTIC_TRIES
    assert ledger.locked == 1 + LOCK_AFTER_FALLBACK
    assert _state(ledger_dsn)[3] == LOCK_AFTER_FALLBACK + 2


def test_a_renewal_period_restarts_the_analysts_sums_but_not_the_datasets(ledger_dsn: str) -> None:
    # Budget 1: after 0.9, a charge of 0.2 is refused; once a period of one day has
    # passed since the period started, the analyst's sums restart from zero.
    renew = ("UPDATE dpproxy.budget_spent SET renewal_period = interval '1 day', "
             "period_start = now() - interval '36 hours'")  # fmt: skip
    outs, _, _ = _run_charges(ledger_dsn, [(None, Fraction(9, 10)), (None, Fraction(1, 5)),
                                        (renew, Fraction(1, 5))])  # fmt: skip
    assert isinstance(outs[1], BudgetExhausted) and outs[1].reason == "analyst"
    assert not isinstance(outs[2], BudgetExhausted) and outs[2].spent_epsilon == Fraction(1, 5)
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert (spent, dataset_spent, charges) == (Decimal("0.2"), Decimal("1.1"), 2)
    with psycopg.connect(ledger_dsn) as c:
        (age,) = c.execute("SELECT now() - period_start FROM dpproxy.budget_spent").fetchone()  # type: ignore[misc]
    assert age.total_seconds() < 13 * 3600  # the period start moved on by whole periods


@pytest.mark.parametrize(("kind", "budget_covers"), [(AccountantKind.PURE, 60), (AccountantKind.PURE, 100),
                                                     (APPROX, 100)])  # fmt: skip
def test_two_workers_charging_one_analyst(ledger_dsn: str, kind: AccountantKind,
                                          budget_covers: int) -> None:  # fmt: skip
    # Two processes' ledgers (two workers, or replicas) charge the same analyst at once,
    # 40 charges each of 1/100 against a budget of `budget_covers`/100. Exactly as many
    # as the budget covers are committed, and the sums are those of the charge log. Under
    # the pure accountant the writes queue on the row instead of losing races, so after
    # its first read neither ledger reads again.
    with psycopg.connect(ledger_dsn, autocommit=True) as c:
        c.execute("UPDATE dpproxy.budget_spent SET budget_epsilon = %s", [Decimal(budget_covers) / 100])

    async def worker() -> tuple[int, int]:
        ledger = Interfering(await create_pool(ledger_dsn), Accountant(kind), GroupCommit(),
                             change="", times=0, dsn=ledger_dsn)  # fmt: skip
        ok = 0
        try:
            for _ in range(40):
                try:
                    await ledger.charge("a", "d", "fp", laplace_release(Fraction(1, 100)))
                    ok += 1
                except BudgetExhausted:
                    pass
        finally:
            await ledger.close()
        return ok, ledger.reads

    async def both() -> list[tuple[int, int]]:
        return list(await asyncio.gather(worker(), worker()))

    results = asyncio.run(both())
    committed = sum(ok for ok, _ in results)
    assert committed == min(80, budget_covers)
    spent, dataset_spent, _, charges = _state(ledger_dsn)
    assert charges == committed
    with psycopg.connect(ledger_dsn) as c:
        logged = c.execute("SELECT sum(epsilon) FROM dpproxy.charges").fetchone()
    assert logged is not None and spent == dataset_spent == logged[0] == Decimal(committed) / 100
    if kind == AccountantKind.PURE and budget_covers >= 80:
        assert [reads for _, reads in results] == [1, 1]


def test_the_charge_is_planned_once_and_never_scans_the_answer_cache(ledger_dsn: str) -> None:
    """The charge's write (with the answer cache's lookup in it) runs on one generic plan
    per connection, made while the cache is empty; no sequential scan may be in it, or
    every charge would read the whole cache as it grows."""
    from accounting.cache import AnswerCache

    async def main() -> tuple[list[tuple[str, int, int]], str, str]:
        ledger = await Ledger.connect(ledger_dsn, size=1)
        try:
            cache = AnswerCache(ledger.pool, None)
            await cache.ensure_schema()
            cost = laplace_release(Fraction(1, 10**6))
            for i in range(12):
                await ledger.charge("a", "d", f"q{i}", cost, unless_answered=cache.probe(f"k{i}"))
            async with ledger.pool.acquire() as conn:
                plans = [(r["statement"], r["generic_plans"], r["custom_plans"]) for r in await conn.fetch(
                    "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")]  # fmt: skip
                return plans, await conn.fetchval("SHOW enable_seqscan"), await conn.fetchval("SHOW plan_cache_mode")
        finally:
            await ledger.close()

    plans, seqscan, mode = asyncio.run(main())
    writes = [(g, c) for s, g, c in plans if "UPDATE dpproxy.budget_spent" in s and "not_answered" in s]
    assert writes == [(12, 0)], plans
    assert (seqscan, mode) == ("off", "force_generic_plan")
