"""Generated predicates and keys: the rewritten SQL means what the analyst wrote.

customer has one row per privacy unit and its values lie within their declared bounds,
so the rewritten SQL of `SELECT COUNT(*) FROM customer WHERE <p>` computes (before any
noise) exactly PostgreSQL's count of the analyst's own query, and a grouped count
exactly its groups. Any rebuilt node that drops a flag (NOT LIKE, IS NOT NULL, BETWEEN
SYMMETRIC...) or changes an operator shows up as a different number. No noise is drawn:
the rewritten SQL runs directly on PostgreSQL.
"""

from __future__ import annotations

import psycopg

from rewriter.errors import RewriteError
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.e2e.conftest import Env
from tests.support.proxy_process import ProxyProcess
from tests.unit.test_corpus import META

ATOMS = [
    "c_acctbal > 1000", "c_acctbal BETWEEN 0 AND 5000", "c_acctbal BETWEEN SYMMETRIC 5000 AND 0",
    "c_nationkey IN (1, 2, 3)", "c_mktsegment = 'BUILDING'", "c_mktsegment <> 'BUILDING'",
    "c_comment LIKE '%final%'", "c_comment ILIKE '%FINAL%'", "c_name LIKE 'Customer#00000001%'",
    "c_phone IS NULL", "c_acctbal IS DISTINCT FROM 0", "(c_acctbal > 1000) IS TRUE",
    "COALESCE(NULLIF(c_mktsegment, 'BUILDING'), 'x') = 'x'", "GREATEST(c_acctbal, 0) = 0",
    "LEAST(c_nationkey, 5) = 5", "ABS(c_acctbal) < 500", "ROUND(c_acctbal, -3) = 2000",
    "FLOOR(c_acctbal / 1000) = 3", "CEIL(c_acctbal) > 9000", "SIGN(c_acctbal) = -1",
    "LOWER(c_mktsegment) = 'machinery'", "UPPER(c_comment) LIKE '%SLY%'", "LENGTH(c_comment) > 60",
    "SUBSTRING(c_phone FROM 1 FOR 2) = '13'", "LEFT(c_phone, 2) = RIGHT(c_phone, 2)",
    "TRIM(c_comment) <> c_comment", "REPLACE(c_mktsegment, 'U', 'u') = 'AuTOMOBILE'",
    "POSITION('a' IN c_comment) = 1", "SPLIT_PART(c_phone, '-', 2) = '123'",
    "c_mktsegment || c_phone LIKE 'B%'", "CASE WHEN c_acctbal > 0 THEN c_nationkey ELSE 0 END > 10",
    "c_custkey % 7 = 3", "c_nationkey * 2 + 1 > 30", "width_bucket(c_acctbal, -1000, 10000, 4) = 2",
    "c_acctbal::int > 100", "CAST(c_nationkey AS text) = '7'", "strpos(c_comment, 'the') > 5",
    "INITCAP(c_mktsegment) = 'Building'", "btrim(c_phone, '1') <> c_phone", "TRUNC(c_acctbal, -2) = 500",
    "char_length(c_address) < 15", "SUBSTR(c_name, 10, 2) = '00'", "CONCAT(c_mktsegment, 'x') = 'HOUSEHOLDx'",
    "EXISTS (SELECT 1 FROM orders o WHERE o.o_custkey = c_custkey AND o.o_totalprice > 300000)",
    "c_custkey IN (SELECT o_custkey FROM orders WHERE o_orderstatus = 'P')",
    "c_nationkey IN (SELECT n_nationkey FROM nation WHERE n_regionkey = 1)",
    "EXISTS (SELECT 1 FROM lineitem JOIN orders ON l_orderkey = o_orderkey WHERE o_custkey = c_custkey)",
    "c_custkey IN (SELECT o_custkey FROM orders GROUP BY o_custkey HAVING COUNT(*) > 15)",
    "c_custkey IN (SELECT o_custkey FROM orders WHERE o_orderstatus = 'F' GROUP BY o_custkey "
    "HAVING SUM(o_totalprice) > 1000000 OR MAX(o_orderdate) < DATE '1997-01-01')",
    "c_custkey NOT IN (SELECT DISTINCT o_custkey FROM orders WHERE o_orderpriority = '1-URGENT')",
    "c_custkey IN (SELECT o_custkey FROM orders GROUP BY o_custkey HAVING AVG(o_totalprice) > 150000 AND MIN(o_clerk) < 'Clerk#000000500')",
]  # fmt: skip
KEYS = [
    "c_mktsegment", "LOWER(c_mktsegment)", "c_nationkey % 5", "c_acctbal > 0",
    "width_bucket(c_acctbal, -1000, 10000, 4)", "CASE WHEN c_nationkey < 10 THEN 'a' ELSE 'b' END",
    "FLOOR(c_acctbal / 2500)", "c_nationkey IN (1, 2)", "c_comment LIKE '%final%'",
    "c_nationkey", "SUBSTRING(c_phone FROM 1 FOR 2)", "c_comment NOT LIKE '%final%'",
    "c_phone IS NOT NULL", "width_bucket(c_acctbal, 0, 10000, 3) * 10",
    # listed by their bounds: rounded buckets, and constant arithmetic over a listed key
    "CEIL(c_acctbal / 2500) * 2500", "ROUND(c_acctbal, -3)", "TRUNC(c_acctbal / 1000) - 1",
    "-(c_nationkey % 5)", "c_nationkey * 2 + 1", "ROUND(c_acctbal / 1000, 1)",
]  # fmt: skip


def predicates() -> list[str]:
    """Each atom, its negation, and each atom AND / OR NOT the next one."""
    out = []
    for i, a in enumerate(ATOMS):
        b = ATOMS[(i + 7) % len(ATOMS)]
        out += [a, f"NOT ({a})", f"({a}) AND NOT ({b})", f"({a}) OR ({b})"]
        if (" LIKE " in a or " ILIKE " in a or " IS " in a or " BETWEEN " in a or " IN " in a) and "SELECT" not in a:
            out.append(a.replace(" LIKE ", " NOT LIKE ").replace(" ILIKE ", " NOT ILIKE ")
                       .replace(" IS ", " IS NOT ").replace(" BETWEEN ", " NOT BETWEEN ")
                       .replace(" IN (", " NOT IN ("))  # fmt: skip
    return out


def test_generated_predicates_count_what_postgresql_counts(env: Env) -> None:
    wrong, refused = [], []
    with psycopg.connect(env.tpch_dsn, autocommit=True) as conn:
        for p in predicates():
            q = f"SELECT COUNT(*) FROM customer WHERE {p}"
            try:
                plan = rewrite(parse_one(q), META)
            except RewriteError as e:
                refused.append(f"{p}: {e.message}")
                continue
            (got,) = conn.execute(plan.sql).fetchone()  # type: ignore[arg-type, misc]
            (want,) = conn.execute(q).fetchone()  # type: ignore[arg-type, misc]
            if got != want:
                wrong.append(f"{p}: rewritten {got}, PostgreSQL {want}")
    assert not wrong, "\n".join(wrong)
    # The grammar is meant to be accepted; the EXISTS over a join is refused (one table only).
    assert all("EXISTS (SELECT 1 FROM lineitem JOIN" in r for r in refused), refused


def test_generated_group_keys_group_as_postgresql_does(env: Env) -> None:
    wrong = []
    with psycopg.connect(env.tpch_dsn, autocommit=True) as conn:
        for k in KEYS:
            q = f"SELECT {k} AS k, COUNT(*) FROM customer GROUP BY 1"
            plan = rewrite(parse_one(q), META)
            rows = conn.execute(plan.sql).fetchall()  # type: ignore[arg-type]
            want = {r[0]: r[1] for r in conn.execute(q).fetchall()}  # type: ignore[arg-type]
            # Public keys come back as an index into the declared domain; others as values.
            (key,) = plan.keys
            got = {}
            for r in rows:
                value = key.domain[r[0]] if key.domain and not key.domain_sql and not key.private else r[0]
                if r[1]:
                    got[value] = r[1]
            if got != want:
                wrong.append(f"{k}: rewritten {sorted(got.items(), key=str)}, PostgreSQL {sorted(want.items(), key=str)}")
    assert not wrong, "\n".join(wrong)


C = "COUNT(*)"
POST_EXPRESSIONS = [
    f"{C} / 7", f"{C} % 7", f"-{C} % 7", f"{C} / 7.0", f"{C} * 1.5", f"{C}::float / 3", f"{C}::numeric / 3",
    f"ROUND({C} / 7.0)", f"ROUND({C} / 7.0, 3)", f"ROUND({C}, -2)", f"ROUND({C}::float / 7)", f"ROUND({C})",
    f"CEIL({C} / 7.0)", f"FLOOR({C} / 7.0)", f"CEIL({C})", f"FLOOR({C}::float / 7)", f"TRUNC({C}::numeric / 7, 1)",
    f"SIGN({C}::numeric - 300)", f"SIGN({C} - 300)", f"ABS(100 - {C})", f"GREATEST({C}, 300.5)", f"LEAST({C}, 2)",
    f"COALESCE({C}, 0)", f"NULLIF({C}, 0)", f"NULLIF({C} % 2, 0)", f"CASE WHEN {C} > 300 THEN {C} ELSE 0 END",
    f"CASE WHEN {C} > 300 THEN 1.5 ELSE 0 END", f"{C}::text", f"{C}::int", f"{C}::smallint", f"{C}::numeric(10,2)",
    f"{C}::real", f"{C}::real / 7", f"{C}::varchar(2)", f"{C}::char(5)", f"{C} > 300", f"{C} BETWEEN 290 AND 310",
    f"{C} IN (300, 301)", f"{C} * {C}", f"100.0 * {C} / 1500", f"({C} + 0.5)::int", f"ROUND(100.0 * {C} / 1500, 2)",
    f"{C}::float * 2", f"{C} = 300 OR {C} IS NULL", f"{C} IS NOT NULL",
    # window functions over the released groups
    f"SUM({C}) OVER ()", f"100.0 * {C} / SUM({C}) OVER ()", f"RANK() OVER (ORDER BY {C} DESC)",
    f"ROW_NUMBER() OVER (ORDER BY c_mktsegment DESC) * {C}", f"DENSE_RANK() OVER (ORDER BY {C} % 3)",
    f"SUM({C}) OVER (ORDER BY c_mktsegment)", f"AVG({C}) OVER ()", f"MIN({C}) OVER ()", f"COUNT({C}) OVER ()",
    f"MAX({C}::float) OVER (PARTITION BY {C} > 300)", f"AVG({C}::float) OVER ()",
    f"COUNT({C}) OVER (ORDER BY {C} % 2)", f"SUM({C} % 2) OVER (PARTITION BY {C} % 2 ORDER BY c_mktsegment)",
    f"RANK() OVER (PARTITION BY {C} > 300 ORDER BY c_mktsegment)", f"AVG({C} / 7.0) OVER (ORDER BY {C} % 2)",
]  # fmt: skip


def test_post_processing_matches_postgresql_text_and_types(env: Env) -> None:
    # Expressions over counts are computed by dpproxy after the noise; with the noise
    # made negligible (epsilon 1e9), each value's wire text and type must be PostgreSQL's.
    from decimal import Decimal

    from psycopg.types.string import TextLoader

    from accounting.mechanisms import Mechanisms
    from accounting.release import release
    from proxy.results import type_oid
    from proxy.wire.types import encode_text

    mech = Mechanisms(workers=1)
    wrong = []
    with psycopg.connect(env.tpch_dsn, autocommit=True) as conn:
        for oid in (16, 20, 21, 23, 25, 700, 701, 1042, 1043, 1700):
            conn.adapters.register_loader(oid, TextLoader)  # raw wire text
        for e in POST_EXPRESSIONS:
            q = f"SELECT c_mktsegment, {e} AS v FROM customer GROUP BY 1 ORDER BY 1"
            plan = rewrite(parse_one(q), META)
            rows = conn.execute(plan.sql).fetchall()  # type: ignore[arg-type]
            ans = release(plan, rows, mech.plan_noise(plan, Decimal(10**9)), mech)
            oid = type_oid(ans.columns[1][1])
            got = [(r[0], None if r[1] is None else encode_text(r[1], oid).decode()) for r in ans.rows]
            cur = conn.execute(q)  # type: ignore[arg-type]
            want = cur.fetchall()
            want_oid = cur.description[1].type_code if cur.description else None
            if got != want or oid != want_oid:
                wrong.append(f"{e}: ours {got[:2]} oid {oid}, PostgreSQL {want[:2]} oid {want_oid}")
    assert not wrong, "\n".join(wrong)


def test_distinct_units_in_a_derived_table_count_as_postgresql_does(proxy: ProxyProcess, env: Env) -> None:
    # One row per customer: a count of them has sensitivity 1, exact at epsilon 9000.
    from tests.e2e.test_engine import at_large_epsilon

    q = "SELECT COUNT(*) FROM (SELECT DISTINCT o_custkey FROM orders WHERE o_orderstatus = 'F') t"
    rows, _, _ = at_large_epsilon(proxy, q)
    with psycopg.connect(env.tpch_dsn) as conn:
        assert rows == conn.execute(q).fetchall()  # type: ignore[arg-type]


def test_a_derived_table_per_order_is_bounded_like_orders(proxy: ProxyProcess, env: Env) -> None:
    # One row per (order, customer): the outer count weights each customer's rows to at
    # most orders' max_rows (8), so at epsilon 9000 it is sum(least(orders, 8)) over
    # customers (up to the weights' rounding, far below one row).
    from tests.e2e.test_engine import at_large_epsilon

    q = "SELECT COUNT(*) FROM (SELECT l_orderkey, COUNT(*) AS n FROM lineitem GROUP BY l_orderkey) t"
    rows, _, _ = at_large_epsilon(proxy, q)
    with psycopg.connect(env.tpch_dsn) as conn:
        ((want,),) = conn.execute(  # type: ignore[misc]
            "SELECT sum(least(n, 8)) FROM (SELECT o_custkey, count(*) AS n FROM orders "
            "WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem) GROUP BY o_custkey) c").fetchall()
    assert abs(rows[0][0] - want) <= 1, (rows, want)  # type: ignore[operator]
