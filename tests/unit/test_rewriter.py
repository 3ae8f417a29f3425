"""Unit tests of the rewriter: plans, sensitivities, refusals, golden SQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from rewriter.errors import RewriteError
from rewriter.metadata import Metadata, load_metadata
from rewriter.parse import parse_one, split_statements
from rewriter.plan import PrimitiveKind
from rewriter.rewrite import rewrite
from rewriter.typing import infer_parameter_types

META = load_metadata(Path(__file__).resolve().parents[2] / "proxy" / "examples" / "tpch.yaml")


def without_date_bounds(meta: Metadata) -> Metadata:
    """`meta` with no bounds on its date columns (the paths for undeclared dates)."""
    tables = {
        name: t.model_copy(update={"columns": {
            c: m.model_copy(update={"lower": None, "upper": None}) if m.date_bounds else m
            for c, m in t.columns.items()}})
        for name, t in meta.tables.items()
    }  # fmt: skip
    return meta.model_copy(update={"tables": tables})


META_UNDATED = without_date_bounds(META)


def plan(sql: str, meta: Metadata = META):  # type: ignore[no-untyped-def]
    return rewrite(parse_one(sql), meta)


def test_count_star_sensitivity_is_max_rows() -> None:
    p = plan("SELECT COUNT(*) FROM orders")
    assert [(x.kind, x.sensitivity) for x in p.primitives] == [(PrimitiveKind.COUNT, 8)]
    assert '"t0"."o_custkey" AS u' in p.sql
    assert "coalesce(sum(least(b.c, 8)), 0)" in p.sql and "GROUP BY i.u" in p.sql


def test_sum_alone_uses_plain_sum_with_max_abs_bound() -> None:
    p = plan("SELECT SUM(o_totalprice) FROM orders")
    (prim,) = p.primitives
    assert prim.kind == PrimitiveKind.SUM
    # 600000 in steps of 0.01, 8 rows per unit (in units of 1/denominator: weighted rows).
    assert prim.sensitivity == 8 * 60_000_000 * prim.denominator


def test_avg_shares_count_and_uses_normalized_sum() -> None:
    p = plan("SELECT COUNT(*), SUM(o_totalprice), AVG(o_totalprice) FROM orders")
    kinds = {x.name: (x.kind, x.sensitivity // x.denominator) for x in p.primitives}
    # COUNT(*), SUM and AVG are derived from two primitives, not three or four.
    assert kinds == {
        "p0": (PrimitiveKind.COUNT, 8),
        "p1": (PrimitiveKind.NORMALIZED_SUM, 8 * 30_000_000),
    }


def test_public_domain_group_keys_and_golden_sql() -> None:
    p = plan("SELECT o_orderstatus, COUNT(*) FROM orders WHERE o_totalprice > 10 GROUP BY 1")
    assert p.keys[0].domain == ("F", "O", "P")
    assert p.group_count == 3
    assert p.sql == (
        "WITH i0 AS (SELECT \"t0\".\"o_orderstatus\" AS k0, \"t0\".\"o_custkey\" AS u FROM \"public\".\""
        "orders\" AS t0 WHERE (\"t0\".\"o_totalprice\" > 10)), i AS (SELECT i0.*, (CASE i0.k0 WHEN"
        " CAST('F' AS TEXT) THEN 0 WHEN CAST('O' AS TEXT) THEN 1 WHEN CAST('P' AS TEXT) THEN "
        "2 END) AS g FROM i0 OFFSET 0), pu AS (SELECT count(*) FILTER (WHERE b.g IS NOT NULL)"
        " AS c, count(*) FILTER (WHERE b.g = 0) AS x0_0, count(*) FILTER (WHERE b.g = 1) AS x"
        "1_0, count(*) FILTER (WHERE b.g = 2) AS x2_0 FROM i AS b GROUP BY b.u), pc AS (SELEC"
        "T pu.c, sum(pu.x0_0) AS x0_0, sum(pu.x1_0) AS x1_0, sum(pu.x2_0) AS x2_0 FROM pu GRO"
        "UP BY pu.c) SELECT v.k0, coalesce(sum(v.a0::numeric * (CASE WHEN pc.c <= 8 THEN 1000"
        "000 ELSE 8000000 / pc.c END)), 0) AS p0 FROM pc CROSS JOIN LATERAL (VALUES (0, pc.x0"
        "_0), (1, pc.x1_0), (2, pc.x2_0)) AS v(k0, a0) GROUP BY v.k0"
    )
    assert p.primitives[0].denominator == 1_000_000


def test_sampling_window_kept_where_weights_do_not_apply() -> None:
    # A grouped quantile has no row term to weight: each unit's groups and then its
    # rows are sampled.
    p = plan("SELECT o_clerk, MEDIAN(o_totalprice) FROM orders GROUP BY 1")
    assert p.bounding == "sampled" and "AS rn FROM q" in p.sql and "q.nc" not in p.sql
    assert all(x.denominator == 1 for x in p.primitives)


def test_clamp_keeps_null() -> None:
    # GREATEST/LEAST would turn NULL into a bound: the fixed-point clamp is NULL-guarded,
    # and the value is scaled by multiplying with 1/step (100), once.
    p = plan("SELECT MEDIAN(c_acctbal) FROM customer")
    assert "IS NULL THEN NULL ELSE LEAST(GREATEST(round(((i0.w0)::numeric * 100))" in p.sql
    assert "/ 0.01" not in p.sql
    # Summed expressions are clamped unscaled (scaled once per group), NULL-guarded too.
    p = plan("SELECT SUM(c_acctbal * 2) FROM customer")
    assert "IS NULL THEN NULL ELSE LEAST(GREATEST((i0.w0)::numeric, -2000.00), 20000.00)" in p.sql
    assert "sum(b.r0), 0) * 100000 * 100)" in p.sql  # S = 10^5: 2^40 / (20000 / 0.01)


def test_row_expression_comments_are_not_emitted() -> None:
    p = plan("SELECT COUNT(*) FROM orders /* hi */ WHERE o_totalprice > 1 -- x")
    assert "/*" not in p.sql and "--" not in p.sql


@pytest.mark.parametrize(
    ("sql", "state"),
    [
        ("SELECT * FROM orders", "42501"),
        ("SELECT o_totalprice FROM orders", "42803"),
        ("SELECT o_custkey, COUNT(*) FROM orders GROUP BY o_custkey", "42501"),
        ("SELECT o_orderstatus, COUNT(*) FROM orders GROUP BY ROLLUP (o_orderstatus)", "0A000"),
        ("SELECT SUM(o_orderstatus) FROM orders", "42883"),
        ("SELECT COUNT(*) FROM orders WHERE o_comment ~ 'x'", "0A000"),
        ("SELECT COUNT(*) FROM orders WHERE pg_sleep(1) IS NULL", "0A000"),
        ("SELECT COUNT(*) FROM orders WHERE o_comment::int > 1", "0A000"),
        ("SELECT COUNT(*) FROM orders o JOIN customer c ON o.o_orderkey = c.c_custkey", "42501"),
        ("SELECT COUNT(*) FROM nation", "0A000"),
        ("SELECT COUNT(*) FROM missing", "42P01"),
        ("SELECT COUNT(*) FROM orders WHERE nosuch = 1", "42703"),
        ("SELECT MAX(o_comment) FROM orders", "0A000"),
        ("SELECT COUNT(*) FROM orders; SELECT 1", "42501"),
        ("SELECT COUNT(*) FROM orders FOR UPDATE", "0A000"),
        ("SELECT COUNT(*) OVER () FROM orders", "42501"),
        # PostgreSQL has no sum(date) (a window over released dates: was an internal error)
        ("SELECT o_orderstatus, SUM(MAX(o_orderdate)) OVER () FROM orders GROUP BY 1", "42883"),
        ("SELECT o_orderstatus, AVG(o_orderstatus) OVER () FROM orders GROUP BY 1", "42883"),
        # a public subquery's value in arithmetic: only within bounds no public row can
        # break (an overflow would raise only where private rows reach it)
        ("SELECT COUNT(*) FROM customer WHERE c_acctbal > (SELECT s_acctbal FROM supplier WHERE s_suppkey = 1) * 2", "0A000"),
    ],
)
def test_refusals(sql: str, state: str) -> None:
    with pytest.raises(RewriteError) as info:
        plan(sql)
    assert info.value.sqlstate == state
    assert info.value.message


@pytest.mark.parametrize(("sql", "named"), [
    ("SELECT COUNT(*) FROM orders WHERE to_number(o_comment, '999') > 1", "TO_NUMBER()"),
    ("SELECT COUNT(*) FROM orders WHERE regexp_replace(o_comment, 'a', 'b') = 'x'", "REGEXP_REPLACE()"),
    ("SELECT COUNT(*) FROM orders WHERE md5(o_comment) = 'x'", "MD5()"),
])  # fmt: skip
def test_refusals_name_functions_as_the_analyst_wrote_them(sql: str, named: str) -> None:
    with pytest.raises(RewriteError) as info:
        plan(sql)
    assert f"the function {named} is not allowed" in info.value.message


@pytest.mark.parametrize(("sql", "message"), [
    # sqlglot calls these JSONArrayAgg, GroupConcat, LogicalOr, RegexpLike and Tuple.
    ("SELECT json_agg(o_orderstatus) FROM orders", "the aggregate JSON_AGG() is not supported"),
    ("SELECT string_agg(o_comment, ',') FROM orders", "the aggregate STRING_AGG() is not supported"),
    ("SELECT bool_or(o_totalprice > 5) FROM orders", "the aggregate BOOL_OR() is not supported"),
    ("SELECT COUNT(*) FROM orders WHERE o_comment ~ 'a.*b'",
     "the expression o_comment ~ 'a.*b' is not allowed in WHERE"),
    ("SELECT COUNT(*) FROM orders WHERE (o_orderstatus, o_shippriority) = ('F', 0)",
     "the expression (o_orderstatus, o_shippriority) is not allowed in WHERE"),
    ("SELECT COUNT(*) FROM orders WHERE o_orderstatus = ANY(SELECT 'F')",
     "the expression ANY (SELECT 'F') is not allowed in WHERE"),
])  # fmt: skip
def test_refusals_name_constructs_in_postgresql_syntax(sql: str, message: str) -> None:
    with pytest.raises(RewriteError) as info:
        plan(sql)
    assert info.value.message == message


@pytest.mark.parametrize(("sql", "message", "hint"), [
    ("SELECT COUNT(*) FROM orders WHERE", "syntax error at end of input", "line 1, column 33"),
    ("SELECT COUNT(* FROM orders", 'syntax error at or near "FROM"', "line 1, column 19; Expecting )"),
    ("SELEC 1", 'syntax error at or near "1"', "line 1, column 7; Invalid expression / Unexpected token"),
    ("SELECT COUNT(*) FROM orders WHERE o_custkey = = 1", 'syntax error at or near "="', "line 1, column 47"),
])  # fmt: skip
def test_syntax_errors_say_where_in_postgresql_words(sql: str, message: str, hint: str) -> None:
    with pytest.raises(RewriteError) as info:
        parse_one(sql)
    assert (info.value.sqlstate, info.value.message, info.value.hint) == ("42601", message, hint)


def test_three_part_names_may_name_the_dataset_database_only() -> None:
    assert plan("SELECT COUNT(*) FROM tpch.public.orders").sql == plan("SELECT COUNT(*) FROM orders").sql
    assert plan('SELECT COUNT(*) FROM "tpch".public.orders o JOIN TPCH.public.customer c '
                "ON o.o_custkey = c.c_custkey").sql == plan(
        "SELECT COUNT(*) FROM orders o JOIN customer c ON o.o_custkey = c.c_custkey").sql
    with pytest.raises(RewriteError) as info:
        plan("SELECT COUNT(*) FROM other.public.orders")
    assert info.value.sqlstate == "0A000"
    assert info.value.message == 'cross-database references are not implemented: "other.public.orders"'


def test_long_or_chains_are_planned_and_fingerprinted_as_written() -> None:
    # A filter listing 400 values as ORs (as some BI tools write it) is no deep nesting.
    ors = " OR ".join(f"o_custkey = {i}" for i in range(400))
    sql = f"SELECT COUNT(*) FROM orders WHERE o_orderstatus = 'F' AND ({ors})"
    p = plan(sql)
    assert "= 399" in p.sql
    assert p.fingerprint == plan(sql.replace("o_custkey = 0 OR", "o_custkey = 0  OR")).fingerprint
    with pytest.raises(RewriteError) as info:  # real nesting is still bounded
        parse_one("SELECT " + "(" * 300 + "1" + ")" * 300)
    assert info.value.message == "the query is nested too deeply"


def test_split_statements_respects_quotes_and_comments() -> None:
    parts = split_statements("select 'a;b'; select $$x;y$$ /* ; */; -- c;\n select 3;;")
    assert [p.keyword for p in parts] == ["SELECT", "SELECT", "SELECT"]
    assert parts[0].text == "select 'a;b'"
    assert split_statements("  -- only a comment\n") == []


def test_fingerprint_ignores_whitespace_and_comments() -> None:
    a = plan("SELECT COUNT(*) FROM orders WHERE o_totalprice > 1")
    b = plan("select   count(*)  from orders -- c\n where o_totalprice > 1")
    assert a.fingerprint == b.fingerprint


# --- golden SQL of the engine's constructs -------------------------------------------------


def test_golden_fk_path_joins_the_referenced_table_for_the_unit() -> None:
    p = plan("SELECT COUNT(*) FROM lineitem WHERE l_quantity > 10")
    assert p.sql == (
        'WITH i AS (SELECT "t1"."o_custkey" AS u FROM "public"."lineitem" AS t0 JOIN '
        '"public"."orders" AS t1 ON "t0"."l_orderkey" = "t1"."o_orderkey" WHERE '
        '("t0"."l_quantity" > 10)) SELECT coalesce(sum(least(b.c, 16)), 0) AS p0 '
        "FROM (SELECT count(*) AS c FROM i GROUP BY i.u) AS b"
    )


def test_golden_private_key_bounds_groups_then_rows_and_counts_units() -> None:
    p = plan("SELECT o_clerk, COUNT(*) FROM orders GROUP BY 1")
    assert p.selection == "p1" and p.max_groups == 4 and p.bounding == "weighted_groups"
    # Rows summed per (unit, group); each unit keeps 4 of its groups at random, and its
    # rows in them weigh min(1, 8 / n); each kept (unit, group) is one unit of its group.
    assert p.sql == (
        'WITH i AS (SELECT "t0"."o_clerk" AS k0, "t0"."o_custkey" AS u FROM "public"."orders" '
        "AS t0), pk AS (SELECT b.u, b.k0, count(*) AS c, count(*) AS a0 FROM i AS b GROUP BY "
        "b.u, b.k0), pg AS (SELECT pk.*, row_number() OVER (PARTITION BY pk.u ORDER BY random()) "
        "AS gn FROM pk), w AS (SELECT pg.*, (sum(pg.c) OVER (PARTITION BY pg.u))::int8 AS n FROM pg "
        "WHERE pg.gn <= 4) SELECT w.k0, coalesce(sum(w.a0::numeric * (CASE WHEN w.n <= 8 THEN "
        "1000000 ELSE 8000000 / w.n END)), 0) AS p0, count(*) AS p1 FROM w GROUP BY w.k0"
    )
    sens = {x.kind: x.sensitivity for x in p.primitives}
    assert sens == {PrimitiveKind.COUNT: 8 * 10**6, PrimitiveKind.UNIT_COUNT: 4}
    assert [x.denominator for x in p.primitives] == [10**6, 1]


def test_golden_public_join_on_unique_key() -> None:
    p = plan("SELECT COUNT(*) FROM customer c JOIN nation n ON c.c_nationkey = n.n_nationkey "
             "WHERE n.n_name = 'FRANCE'")  # fmt: skip
    assert p.sql == (
        'WITH i AS (SELECT "t0"."c_custkey" AS u FROM "public"."customer" AS t0 JOIN '
        '"public"."nation" AS t1 ON "t0"."c_nationkey" = "t1"."n_nationkey" WHERE '
        "(\"t1\".\"n_name\" = 'FRANCE')) SELECT count(*) AS p0 FROM i AS b"
    )
    # c_custkey is declared unique and nation is joined on its unique key: every unit
    # has at most one row, so no bounding window is emitted.


def test_bounding_kept_when_units_have_many_rows() -> None:
    p = plan("SELECT SUM(o_totalprice) FROM orders o JOIN nation n ON o.o_orderkey = n.n_nationkey")
    # Weighted rows: a unit with n > 8 rows counts each row 8/n (per-unit partial sums).
    assert "WHEN q.c <= 8 THEN 10000 ELSE 80000 / q.c" in p.sql and "GROUP BY b.u" in p.sql
    # A plain COUNT(*) bounds each unit with least(rows, max_rows) instead: same count,
    # whichever rows a window would keep, and no sort.
    p = plan("SELECT COUNT(*) FROM orders o JOIN nation n ON o.o_orderkey = n.n_nationkey")
    assert "least(b.c, 8)" in p.sql and "row_number" not in p.sql


def test_division_by_a_column_is_guarded_and_bounded() -> None:
    p = plan("SELECT SUM(l_quantity / l_linenumber) FROM lineitem")
    assert "NULLIF(" in p.sql
    (prim,) = p.primitives
    # [1, 50] / [1, 7] lies in [1/7, 50]: 5000 steps of 0.01, 16 rows per unit.
    assert prim.sensitivity == 16 * 5000 * prim.denominator


def test_integer_arithmetic_cannot_overflow() -> None:
    p = plan("SELECT SUM(l_linenumber * l_linenumber) FROM lineitem")
    assert "AS BIGINT" in p.sql  # int4 * int4 is computed in int8, within [1, 49]
    # bigint * bigint * bigint leaves int8's range: computed in numeric instead.
    p = plan("SELECT SUM(o_orderkey * o_orderkey * o_orderkey) FROM orders")
    assert "AS DECIMAL" in p.sql


def test_plan_names_how_it_bounds_contributions() -> None:
    assert plan("SELECT SUM(o_totalprice) FROM orders").bounding == "weighted"
    assert plan("SELECT o_orderstatus, AVG(o_totalprice) FROM orders GROUP BY 1").bounding == (
        "weighted"
    )
    assert plan("SELECT SUM(c_acctbal) FROM customer").bounding == "none"  # unique unit key
    assert plan("SELECT COUNT(DISTINCT o_custkey) FROM orders").bounding == "none"
    assert plan("SELECT MEDIAN(o_totalprice) FROM orders").bounding == "sampled"
    assert plan("SELECT o_clerk, COUNT(*) FROM orders GROUP BY 1").bounding == "weighted_groups"
    assert plan("SELECT o_clerk, MEDIAN(o_totalprice) FROM orders GROUP BY 1").bounding == "sampled"


@pytest.mark.parametrize(
    ("comma", "explicit"),
    [
        (
            "SELECT r_name, COUNT(*) FROM customer, nation, region "
            "WHERE c_nationkey = n_nationkey AND n_regionkey = r_regionkey AND c_acctbal > 0 GROUP BY r_name",
            "SELECT r_name, COUNT(*) FROM customer JOIN nation ON c_nationkey = n_nationkey "
            "JOIN region ON n_regionkey = r_regionkey WHERE c_acctbal > 0 GROUP BY r_name",
        ),
        (  # written out of join order: orders is taken before customer
            "SELECT COUNT(*) FROM lineitem l, customer c, orders o "
            "WHERE o.o_custkey = c.c_custkey AND l.l_orderkey = o.o_orderkey AND c.c_mktsegment = 'BUILDING'",
            "SELECT COUNT(*) FROM lineitem l JOIN orders o ON l.l_orderkey = o.o_orderkey "
            "JOIN customer c ON o.o_custkey = c.c_custkey WHERE c.c_mktsegment = 'BUILDING'",
        ),
        (
            "SELECT COUNT(*) FROM orders o CROSS JOIN customer c WHERE o.o_custkey = c.c_custkey",
            "SELECT COUNT(*) FROM orders o JOIN customer c ON o.o_custkey = c.c_custkey",
        ),
    ],
)
def test_comma_joins_rewrite_as_the_explicit_join(comma: str, explicit: str) -> None:
    assert plan(comma).sql == plan(explicit).sql


def test_comma_join_without_a_linking_equality_stays_refused() -> None:
    for sql in ("SELECT COUNT(*) FROM orders, customer WHERE o_totalprice > c_acctbal",
                "SELECT COUNT(*) FROM customer, nation WHERE c_nationkey = n_nationkey OR c_acctbal > 0"):  # fmt: skip
        with pytest.raises(RewriteError, match="CROSS JOIN, comma joins") as e:
            plan(sql)
        assert e.value.sqlstate == "0A000"


def test_integer_cast_of_a_year_maps_infinite_dates_to_null() -> None:
    # EXTRACT(YEAR FROM 'infinity'::date)::int raises in PostgreSQL: a data-dependent error.
    q = "SELECT EXTRACT(YEAR FROM o_orderdate)::int AS y, COUNT(*) FROM orders GROUP BY 1"
    p = plan(q, META_UNDATED)
    assert 'EXTRACT(YEAR FROM CASE WHEN ISFINITE("t0"."o_orderdate") THEN "t0"."o_orderdate" END)' in p.sql
    with pytest.raises(RewriteError, match="can overflow") as e:
        plan("SELECT COUNT(*) FROM orders WHERE EXTRACT(EPOCH FROM o_orderdate)::int > 0", META_UNDATED)
    assert e.value.sqlstate == "0A000"
    # With declared dates, years outside them become NULL before the cast (and fall
    # outside the listed years).
    assert 'CASE WHEN (EXTRACT(YEAR FROM "t0"."o_orderdate")) BETWEEN 1992 AND 1998 THEN' in plan(q).sql


def test_plans_reading_the_clock_are_marked() -> None:
    assert plan("SELECT COUNT(*) FROM orders WHERE o_orderdate >= CURRENT_DATE - 30").reads_clock
    assert plan("SELECT COUNT(*) FROM orders WHERE o_orderdate < transaction_timestamp()").reads_clock
    assert not plan("SELECT COUNT(*) FROM orders WHERE o_orderdate >= DATE '1995-01-01'").reads_clock


def test_an_outer_select_over_an_aggregate_folds_into_it() -> None:
    nested = plan("SELECT p, c FROM (SELECT o_orderpriority AS p, COUNT(*) AS c FROM orders GROUP BY 1) s "
                  "WHERE c > 10 ORDER BY c DESC LIMIT 2")  # fmt: skip
    flat = plan("SELECT o_orderpriority AS p, COUNT(*) AS c FROM orders GROUP BY o_orderpriority "
                "HAVING COUNT(*) > 10 ORDER BY COUNT(*) DESC LIMIT 2")  # fmt: skip
    assert nested.sql == flat.sql
    assert [o.name for o in nested.outputs] == ["p", "c"] and nested.limit == 2
    # An outer aggregate over groups is not post-processing of one release: refused.
    with pytest.raises(RewriteError) as e:
        plan("SELECT SUM(c) FROM (SELECT o_orderpriority, COUNT(*) AS c FROM orders GROUP BY 1) s")
    assert e.value.sqlstate == "42501"


@pytest.mark.parametrize(("where", "rendered"), [
    ("o_comment NOT LIKE '%x%'", """"t0"."o_comment" NOT LIKE '%x%'"""),
    ("o_comment NOT ILIKE '%x%'", """"t0"."o_comment" NOT ILIKE '%x%'"""),
    ("o_comment IS NOT NULL", """"t0"."o_comment" IS NOT NULL"""),
    ("o_totalprice BETWEEN SYMMETRIC 5 AND 1", "BETWEEN SYMMETRIC 5 AND 1"),
    ("o_clerk IS DISTINCT FROM 'a'", """"t0"."o_clerk" IS DISTINCT FROM 'a'"""),
])  # fmt: skip
def test_negations_and_modifiers_are_kept(where: str, rendered: str) -> None:
    # sqlglot spells these with flags on the node (negate, symmetric): a rebuilt node
    # that dropped one would silently invert the filter.
    assert rendered in plan(f"SELECT COUNT(*) FROM orders WHERE {where}").sql


def test_weighted_plans_sum_whole_steps_that_cannot_overflow() -> None:
    # Per-unit sums of int4 steps sit in int8 states: a unit of 2^31 rows or more is
    # dropped (HAVING) so neither they nor the offset products can overflow or wrap.
    sql = plan("SELECT COUNT(*), AVG(o_totalprice) FROM orders").sql
    assert "::int4" in sql and "HAVING count(*) < 2147483648" in sql
    grouped = plan("SELECT o_orderpriority, SUM(o_totalprice) FROM orders GROUP BY 1").sql
    assert "::int4" in grouped and "< 2147483648" in grouped
    # Bounds beyond int4 steps: int8 steps, summed without the per-unit int8 shortcut.
    wide = META.model_copy(deep=True)
    col = wide.tables["orders"].columns["o_totalprice"]
    wide.tables["orders"].columns["o_totalprice"] = col.model_copy(update={"upper": Decimal(10**9)})
    wide_sql = plan("SELECT COUNT(*), AVG(o_totalprice) FROM orders", wide).sql
    assert "::int8" in wide_sql and "::int4" not in wide_sql


@pytest.mark.parametrize(("where", "types"), [
    ("c_acctbal > $1", {1: "numeric"}),
    ("c_acctbal > $1 / 100.0", {1: "numeric"}),  # as pgbench sends `:p / 100.0`
    ("c_acctbal > $1 + 1", {1: "int4"}),
    ("c_acctbal > c_acctbal * $1", {1: "numeric"}),
    ("c_nationkey - $1 > 0 AND c_mktsegment = $2", {1: "int4", 2: "text"}),
    ("c_acctbal > $1 + 'x'", {}),
])  # fmt: skip
def test_parameter_types_are_inferred_as_postgresql_resolves_them(where: str, types: dict[int, str]) -> None:
    assert infer_parameter_types(parse_one(f"SELECT COUNT(*) FROM customer WHERE {where}"), META) == types


@pytest.mark.parametrize(("sql", "types"), [
    ("SELECT c_mktsegment FROM customer GROUP BY 1 HAVING COUNT(*) > $1", {1: "int8"}),
    ("SELECT COUNT(*) * $1, SUM(c_acctbal) / $2 FROM customer", {1: "int8", 2: "numeric"}),
    ("SELECT c_mktsegment FROM customer GROUP BY 1 HAVING MAX(c_acctbal) < $1 AND AVG(c_acctbal) > $2",
     {1: "numeric", 2: "numeric"}),
    ("SELECT COUNT(*) FROM customer WHERE c_custkey = $1::integer AND c_acctbal > $2::bigint", {1: "int4", 2: "int8"}),
])  # fmt: skip
def test_parameters_beside_aggregates_and_casts_get_their_types(sql: str, types: dict[int, str]) -> None:
    assert infer_parameter_types(parse_one(sql), META) == types


def test_null_limit_and_offset_mean_none_as_in_postgresql() -> None:
    # Also how a statement with `LIMIT $1` is described before its value is bound.
    p = plan("SELECT o_orderstatus, COUNT(*) FROM orders GROUP BY 1 LIMIT NULL OFFSET NULL")
    assert (p.limit, p.offset) == (None, 0)
    assert plan("SELECT o_orderstatus, COUNT(*) FROM orders GROUP BY 1 LIMIT 2 OFFSET 1").limit == 2
    p = plan("SELECT COUNT(*) FROM orders WHERE o_comment LIKE NULL")
    assert "LIKE NULL" in p.sql


def test_a_constant_division_stays_numeric() -> None:
    # sqlglot renders an untyped division of constants as CAST(a AS DOUBLE PRECISION) / b:
    # the filter would then compare in floating point, not as PostgreSQL divides numerics.
    sql = plan("SELECT COUNT(*) FROM orders WHERE o_totalprice > 12345678901234567.5 / 10.0").sql
    assert "12345678901234567.5 / 10.0" in sql and "DOUBLE" not in sql


def test_values_that_are_bare_columns_are_not_fenced() -> None:
    # OFFSET 0 keeps a clamp from being evaluated at each use; a column read as it is
    # (its bound enforced by a CHECK constraint) costs nothing to repeat, and inlined
    # the plan is the plain query's.
    from rewriter.metadata import with_enforced_bounds

    q = "SELECT c_mktsegment, COUNT(*), SUM(c_acctbal) FROM customer GROUP BY 1"
    assert "OFFSET 0" in plan(q).sql
    assert "OFFSET 0" not in plan(q, with_enforced_bounds(META, {("customer", "c_acctbal"): 1})).sql


def test_in_subquery_leaves_out_nulls_of_a_nullable_match() -> None:
    # One NULL among the subquery's values would make NOT IN NULL for every row of every
    # unit not found: the subquery leaves NULLs out (only when they can occur).
    q = "SELECT COUNT(*) FROM customer WHERE c_custkey NOT IN (SELECT o_custkey FROM orders WHERE o_totalprice > 400000)"
    assert 'WHERE "s0"."o_totalprice" > 400000))' in plan(q).sql
    orders = META.tables["orders"]
    unit = orders.columns["o_custkey"].model_copy(update={"nullable": True})
    meta = META.model_copy(update={"tables": {
        **META.tables, "orders": orders.model_copy(update={"columns": {**orders.columns, "o_custkey": unit}})}})  # fmt: skip
    sql = plan(q, meta).sql
    assert 'WHERE ("s0"."o_totalprice" > 400000) AND NOT "s0"."o_custkey" IS NULL' in sql, sql


@pytest.mark.parametrize(("key", "domain"), [
    ("FLOOR(o_totalprice / 100000) * 100000", tuple(Decimal(v) for v in range(0, 600001, 100000))),
    ("ROUND(o_totalprice, -5)", tuple(Decimal(v) for v in range(0, 600001, 100000))),
    ("TRUNC(o_totalprice / 100000)", tuple(Decimal(v) for v in range(7))),
    ("CEIL(o_totalprice / 100000) - 1", tuple(Decimal(v) for v in range(-1, 6))),
    ("ROUND(o_totalprice / 100000, 1)", tuple(Decimal(v).scaleb(-1) for v in range(61))),
    ("-EXTRACT(MONTH FROM o_orderdate) + 13", tuple(range(12, 0, -1))),
])  # fmt: skip
def test_rounded_and_shifted_keys_list_every_value_their_bounds_allow(key: str, domain: tuple[object, ...]) -> None:
    (k,) = plan(f"SELECT {key} AS k, COUNT(*) FROM orders GROUP BY 1").keys
    assert not k.private and k.domain == domain
    assert [str(v) for v in k.domain[:2]] == [str(v) for v in domain[:2]]  # as PostgreSQL prints them


def test_sum_result_types_follow_postgresql() -> None:
    # sum() of smallint and integer is bigint; of bigint, numeric (a noisy sum of bigints
    # can pass bigint's range, which was an internal error in the wire encoding).
    assert plan("SELECT SUM(o_orderkey) FROM orders").outputs[0].type_name == "numeric"
    assert plan("SELECT SUM(o_shippriority) FROM orders").outputs[0].type_name == "int8"
    assert plan("SELECT SUM(o_orderdate - DATE '1992-01-01') FROM orders").outputs[0].type_name == "int8"
