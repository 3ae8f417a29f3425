"""Template plans (rewriter/template.py) on the real database and through dpproxy: the
bounded SQL with bound values returns exactly what the same SQL with literals returns,
and each value is its own query to the ledger and the answer cache."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.config import BackendConfig
from proxy.literal_shapes import tokenize
from proxy.observe import normalize
from rewriter.params import bind_parameters
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from rewriter.template import instantiate, make_template, value_kinds
from tests.e2e.conftest import ANALYSTS, Env, truth
from tests.support.ledgers import ledger_dsn
from tests.support.ops import audit_rows, wait_for
from tests.support.proxy_process import ProxyProcess
from tests.unit.test_corpus import META

# Statements and value sets, edges included: extreme integers, a quote and non-ASCII
# text, the first and a far date, a value no row reaches.
CASES: list[tuple[str, list[list[Any]]]] = [
    ("SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders WHERE o_totalprice > $1 "
     "GROUP BY o_orderpriority",
     [[0], [150000], [-(1 << 63)], [(1 << 63) - 1], [Decimal("151234.56")], [Decimal("-1e40")]]),
    ("SELECT c_mktsegment, COUNT(*), SUM(c_acctbal) FROM customer WHERE c_acctbal > $1 / 100.0 "
     "GROUP BY c_mktsegment",
     [[-99900], [250000], [Decimal("123456.789")], [10**17]]),
    ("SELECT COUNT(*), SUM(o_totalprice) FROM orders WHERE o_orderdate BETWEEN $1 AND $2 "
     "AND o_orderpriority = $3",
     [[date(1995, 1, 1), date(1995, 12, 31), "1-URGENT"], [date(1, 1, 1), date(9999, 12, 31), "5-LOW"],
      [date(1996, 1, 1), date(1995, 1, 1), "1-URGENT"], [date(1995, 1, 1), date(1997, 1, 1), "O'Brien Ünï"],
      [date(1995, 1, 1), date(1997, 1, 1), ""]]),
    ("SELECT COUNT(*) FROM orders WHERE o_orderdate >= $1 AND o_custkey IN ($2, $3, 10)",
     [[datetime(1994, 6, 1, 12, 30), 1, 4], [datetime(1994, 6, 1, tzinfo=UTC), 7, -5]]),
    ("SELECT o_orderstatus, COUNT(*) FROM orders WHERE NOT (o_totalprice < $1 OR o_shippriority <> $2) "
     "GROUP BY 1", [[Decimal("1000.005"), 0], [5, 1]]),
    # values in a derived table's and a CTE's WHERE (a scalar subquery's place in Q22)
    ("SELECT k, COUNT(*), SUM(b) FROM (SELECT c_mktsegment AS k, c_acctbal AS b FROM customer "
     "WHERE c_acctbal > $1 AND c_nationkey IN ($2, 7)) AS t GROUP BY k",
     [[Decimal("4500.25"), 3], [-(1 << 63), 1], [Decimal("1e40"), 2]]),
    ("WITH t AS (SELECT o_totalprice AS p FROM orders WHERE o_orderdate < $1) SELECT COUNT(*), AVG(p) FROM t "
     "WHERE p > $2", [[date(1995, 6, 1), 100000], [date(1, 1, 1), Decimal("0.5")]]),
]


async def _rows(dsn: str, sql: str, params: tuple[Any, ...], plans: str | None = None) -> list[tuple[Any, ...]]:
    # As dpproxy runs the bounded SQL: asyncpg, prepared, with the data sessions' settings
    # (`plans`: another plan_cache_mode, to hold PostgreSQL to one kind of plan).
    settings = BackendConfig(dsn="", ledger_dsn="").session_settings()
    if plans is not None:
        settings["plan_cache_mode"] = plans
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *params)]
    finally:
        await conn.close()


@pytest.mark.parametrize(("sql", "value_sets"), CASES)
def test_bound_values_return_exactly_the_literal_rows(env: Env, sql: str, value_sets: list[list[Any]]) -> None:
    tree = parse_one(sql)
    for values in value_sets:
        kinds = value_kinds(values)
        assert kinds is not None
        template = make_template(tree, kinds, META)
        assert template is not None, sql
        plan = instantiate(template, values)
        literal = rewrite(bind_parameters(tree, values), META)
        expected = asyncio.run(_rows(env.tpch_dsn, literal.sql, ()))
        # PostgreSQL may run a template on a plan made with its values or on a generic one.
        for plans in ("force_custom_plan", "force_generic_plan"):
            got = asyncio.run(_rows(env.tpch_dsn, plan.sql, plan.sql_params, plans))
            assert got == expected, (sql, values, plans)


@pytest.mark.parametrize(("sql", "param_type", "column"), [
    (CASES[1][0], "int8", "c_acctbal"),  # `$1 / 100.0`: an InitPlan, divided once
    (CASES[0][0], "numeric", "o_totalprice"),  # an integer against a numeric column: bound as numeric
])  # fmt: skip
def test_a_generic_plan_compares_each_row_with_a_value_computed_once(
    env: Env, sql: str, param_type: str, column: str
) -> None:
    # A generic plan cannot fold `$1 / 100.0` or `($1::int8)::numeric` into a constant:
    # the template's SQL keeps both out of the scan's filter, which would otherwise
    # divide or cast for every row.
    template = make_template(parse_one(sql), ("int",), META)
    assert template is not None
    with psycopg.connect(env.tpch_dsn, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE t({param_type}) AS {template.sql}")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (VERBOSE) EXECUTE t(250000)"))
    scan_filter = next(line for line in plan.splitlines() if "Filter:" in line and column in line)
    assert "$" in scan_filter and "/" not in scan_filter and "::numeric" not in scan_filter, plan


def test_each_value_through_dpproxy_is_its_own_charged_and_cached_query(proxy: ProxyProcess, env: Env) -> None:
    # psycopg binds %s as $1 (extended protocol): one template, three executions.
    statement = "SELECT COUNT(*) FROM customer WHERE c_acctbal > $1"
    assert make_template(parse_one(statement), ("numeric",), META) is not None
    answers: dict[Decimal, list[tuple[int, list[str]]]] = {}
    with psycopg.connect(proxy.dsn("alice", ANALYSTS["alice"].password), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET dp.epsilon = 9000")  # noise of a count: 0 but with negligible probability
        for bound in (Decimal(-1000), Decimal(5000), Decimal(-1000)):
            notices.clear()
            row = conn.execute("SELECT COUNT(*) FROM customer WHERE c_acctbal > %s", [bound]).fetchone()
            assert row is not None
            answers.setdefault(bound, []).append((int(row[0]), list(notices)))
    for bound, seen in answers.items():
        exact = truth(env.tpch_dsn, f"SELECT COUNT(*) FROM customer WHERE c_acctbal > {bound}")[0][0]
        assert seen[0][0] == exact
    (first, first_notes), (repeat, repeat_notes) = answers[Decimal(-1000)]
    assert repeat == first and any("cache hit" in n for n in repeat_notes)
    assert not any("cache hit" in n for n in first_notes + answers[Decimal(5000)][0][1])
    with psycopg.connect(ledger_dsn(env.config)) as ledger:
        fps = ledger.execute("SELECT fingerprint FROM dpproxy.charges WHERE analyst = 'alice' "
                             "ORDER BY id DESC LIMIT 2").fetchall()  # fmt: skip
    assert len({f for (f,) in fps}) == 2  # the two values' charges, under their own labels


def test_literal_texts_share_a_template_and_answer_as_before(proxy: ProxyProcess, env: Env) -> None:
    # A BI tool's filter value changing: new SQL text each time, parsed but not rewritten.
    sql = "SELECT c_mktsegment, COUNT(*) FROM customer WHERE c_acctbal > {} GROUP BY c_mktsegment"
    with psycopg.connect(proxy.dsn("alice", ANALYSTS["alice"].password), autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 9000")  # noise of a count: 0 but with negligible probability
        # The first of a shape is planned as literals, the next ones from its template.
        for bound in ("0", "1234.5", "7000"):
            got = sorted(conn.execute(sql.format(bound)).fetchall())  # type: ignore[call-overload]
            exact = dict(truth(env.tpch_dsn, sql.format(bound)))  # type: ignore[arg-type]
            assert got == sorted((k, exact.get(k, 0)) for k, _ in got)
        lines = [r[0] for r in conn.execute("EXPLAIN " + sql.format("2500.5")).fetchall()]  # type: ignore[call-overload]
    assert any(ln.startswith("Rewritten SQL:") and "$1::numeric" in ln for ln in lines)
    assert "Parameters: $1 = 2500.5" in lines


def _literal_answers(protocol: str, p: ProxyProcess, analyst: str, epsilon: int,
                     texts: list[str]) -> list[list[tuple[Any, ...]]]:  # fmt: skip
    """The answers of `texts`, as `analyst` at `epsilon` by the protocol named."""
    password = ANALYSTS[analyst].password
    if protocol == "simple":
        # psycopg sends a text without parameters as a Query message.
        with psycopg.connect(p.dsn(analyst, password), autocommit=True) as conn:
            conn.execute(f"SET dp.epsilon = {epsilon}")
            return [sorted(conn.execute(t).fetchall()) for t in texts]  # type: ignore[call-overload]
    return asyncio.run(_literal_answers_extended(p.port, analyst, password, epsilon, texts))


async def _literal_answers_extended(port: int, analyst: str, password: str, epsilon: int,
                                    texts: list[str]) -> list[list[tuple[Any, ...]]]:  # fmt: skip
    # asyncpg runs a text without arguments as Parse, Describe, Bind, Execute, Sync.
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=analyst, password=password,
                                 database="tpch", ssl=False)  # fmt: skip
    try:
        await conn.execute(f"SET dp.epsilon = {epsilon}")
        return [sorted(tuple(r) for r in await conn.fetch(t)) for t in texts]
    finally:
        await conn.close()


def _assert_exact_and_charged_as_general(env: Env, cfg: Path, analyst: str, texts: list[str],
                                         answers: list[list[tuple[Any, ...]]]) -> None:  # fmt: skip
    """Each answer is the exact one (noise negligible at the epsilon used), and the
    ledger's last charges carry the fingerprints the general path gives the texts."""
    for text, got in zip(texts, answers, strict=True):
        exact = dict(truth(env.tpch_dsn, text))  # type: ignore[arg-type]
        assert got == sorted((k, exact.get(k, 0)) for k, _ in got), text
    with psycopg.connect(ledger_dsn(cfg)) as ledger:
        charged = [f for (f,) in ledger.execute(
            "SELECT fingerprint FROM dpproxy.charges WHERE analyst = %s ORDER BY id", [analyst]).fetchall()]  # fmt: skip
    assert charged[-len(texts):] == [rewrite(parse_one(t), META).fingerprint for t in texts]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_new_values_in_a_literal_text_answer_charge_and_audit_as_the_general_path(
    audited: tuple[ProxyProcess, Path], env: Env, protocol: str
) -> None:
    # The first text of the shape goes the general way and is learned; the next ones run
    # as the shape with their values bound (proxy/literal_shapes.py).
    p, cfg = audited
    sql = ("SELECT c_mktsegment, COUNT(*) FROM customer WHERE c_acctbal > {} AND c_mktsegment <> '{}' "
           f"AND c_custkey > {len(protocol)} GROUP BY 1")  # (a shape of its own per protocol)
    values = [("0", "x"), ("1234.5", "MACHINERY"), ("7000", "it''s"), ("-0.5", "")]
    texts = [sql.format(*v) for v in values]
    answers = _literal_answers(protocol, p, "dave", 100, texts)  # count noise 0 but w.p. ~e^-100
    _assert_exact_and_charged_as_general(env, cfg, "dave", texts, answers)
    where = f"analyst = 'dave' AND route = 'dp' AND protocol = '{protocol}'"
    rows = wait_for(lambda: (r := audit_rows(cfg, where)) and len(r) >= 4 and r, what="four audit rows")
    assert [r["statement"] for r in rows[-4:]] == [normalize(t, parse_one(t))[0] for t in texts]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_new_dates_in_a_typed_literal_text_answer_as_the_general_path(
    audited: tuple[ProxyProcess, Path], env: Env, protocol: str
) -> None:
    # A BI tool's date filter (`DATE '...'`, `'...'::date`, `TIMESTAMP '...'`): the dates
    # are the shape's values, bound as dates (rewriter/template.py `typed_value`).
    p, cfg = audited
    sql = ("SELECT o_orderpriority, COUNT(*) FROM orders WHERE o_orderdate >= DATE '{}' "
           "AND o_orderdate < '{}'::date AND o_orderdate <> TIMESTAMP '{} 00:00:00' "
           f"AND o_custkey > {len(protocol)} GROUP BY 1")  # (a shape of its own per protocol)
    months = [("1995-01-01", "1995-02-01", "1995-01-05"), ("1996-03-01", "1996-04-01", "1996-03-31"),
              ("1997-12-01", "1998-01-01", "1997-12-24"), ("1993-06-01", "1993-07-01", "1993-06-15")]  # fmt: skip
    texts = [sql.format(*m) for m in months]
    for first, end, _ in months:  # no customer has more orders in a month than bounding keeps
        (most,) = truth(env.tpch_dsn, "SELECT max(n) FROM (SELECT count(*) AS n FROM orders WHERE o_orderdate "
                        f">= '{first}' AND o_orderdate < '{end}' GROUP BY o_custkey) c")[0]  # fmt: skip
        assert most <= META.tables["orders"].max_rows
    # epsilon 5000: a count's noise (sensitivity 8) is 0 but with probability ~2e^-625
    answers = _literal_answers(protocol, p, "alice", 5000, texts)
    _assert_exact_and_charged_as_general(env, cfg, "alice", texts, answers)
    shapes = [t for t in (tokenize(x) for x in texts) if t is not None]
    assert len(shapes) == len(texts) and len({t.skeleton for t in shapes}) == 1
    with psycopg.connect(p.dsn("alice", ANALYSTS["alice"].password), autocommit=True) as conn:
        lines = [r[0] for r in conn.execute("EXPLAIN " + texts[1]).fetchall()]  # type: ignore[call-overload]
    # planned from the template: the dates are bound, not written into the bounded SQL
    assert any(ln.startswith("Rewritten SQL:") and "$1::date" in ln and "1996" not in ln for ln in lines), lines
    assert f"Parameters: $1 = '1996-03-01', $2 = '1996-04-01', $3 = '1996-03-31 00:00:00', $4 = {len(protocol)}" in lines
