"""List parameters: `x op ANY/ALL(array)` planned as the comparisons it stands for, array
literals and binary array parameters decoded, their types reported; and the catalog
path's answers to `current_database()` and three-part names."""

from __future__ import annotations

import struct
from datetime import date
from decimal import Decimal

import pytest

from proxy.catalog import prepare_catalog_sql
from proxy.results import type_oid
from proxy.wire import oids
from proxy.wire.binary_values import decode_binary
from rewriter.errors import RewriteError
from rewriter.params import bind_parameters
from rewriter.parse import parse_one
from rewriter.quantified import parse_array_text
from rewriter.rewrite import rewrite
from rewriter.typing import infer_parameter_types
from tests.unit.test_rewriter import META


def _bounded(sql: str) -> str:
    return rewrite(parse_one(sql), META).sql


@pytest.mark.parametrize(("quantified", "plain"), [
    ("o_orderstatus = ANY(ARRAY['F', 'O'])", "o_orderstatus IN ('F', 'O')"),
    ("o_orderstatus = SOME('{F,O}')", "o_orderstatus IN ('F', 'O')"),
    ("o_orderstatus <> ALL('{F,O}'::text[])", "NOT (o_orderstatus IN (CAST('F' AS TEXT), CAST('O' AS TEXT)))"),
    ("o_totalprice < ALL(ARRAY[3, 4, 5])", "((o_totalprice < 3) AND ((o_totalprice < 4) AND (o_totalprice < 5)))"),
    ("o_totalprice > ANY(ARRAY[1, 2.5])", "((o_totalprice > 1) OR (o_totalprice > 2.5))"),
    ("o_totalprice <= ALL(ARRAY[7])", "(o_totalprice <= 7)"),
    ("o_orderstatus = ANY('{}')", "FALSE"),
    ("o_orderstatus <> ALL('{}')", "TRUE"),
    ("o_orderstatus = ANY(ARRAY['F', NULL])", "o_orderstatus IN ('F', NULL)"),
    ("o_orderstatus = ANY(NULL::text[])", "o_orderstatus IN (NULL)"),
])  # fmt: skip
def test_quantified_comparisons_plan_as_the_comparisons_they_stand_for(quantified: str, plain: str) -> None:
    sql = "SELECT COUNT(*), SUM(o_totalprice) FROM orders WHERE {}"
    assert _bounded(sql.format(quantified)) == _bounded(sql.format(plain))


@pytest.mark.parametrize(("text", "items"), [
    ("{}", []),
    ("{ }", []),
    ("{a,b}", ["a", "b"]),
    ('{"a b", c ,NULL,"NULL"}', ["a b", "c", None, "NULL"]),
    ('{"say \\"hi\\"",back\\\\slash,\\NULL}', ['say "hi"', "back\\slash", "NULL"]),
    ("{1,2.5,-3}", ["1", "2.5", "-3"]),
    ("{1995-01-01}", ["1995-01-01"]),
])  # fmt: skip
def test_array_literals_read_as_postgresql_reads_them(text: str, items: list[str | None]) -> None:
    assert parse_array_text(text) == items


@pytest.mark.parametrize("text", ["a,b", "{a,b", "{{a},{b}}", "{a,,b}", '{"a}', "{a,}", '{"a"b}'])
def test_malformed_array_literals_are_refused_as_postgresql_does(text: str) -> None:
    with pytest.raises(RewriteError) as info:
        parse_array_text(text)
    assert info.value.sqlstate == "22P02"
    assert info.value.message.startswith("malformed array literal")


@pytest.mark.parametrize("op", ["= ANY", "<> ALL", "> ANY", "<= ALL"])
def test_long_lists_are_planned(op: str) -> None:
    # A balanced chain: thousands of values do not exhaust the analyzer's recursion.
    values = "{" + ",".join(str(i) for i in range(3000)) + "}"
    bounded = _bounded(f"SELECT COUNT(*) FROM orders WHERE o_custkey {op}('{values}')")
    assert "2999" in bounded


def test_quantified_over_a_subquery_or_a_column_array_stays_refused() -> None:
    with pytest.raises(RewriteError) as info:
        rewrite(parse_one("SELECT COUNT(*) FROM orders WHERE o_custkey = ANY(SELECT 1)"), META)
    assert info.value.sqlstate == "0A000"


def _binary_array(element: int, values: list[bytes | None], ndim: int = 1) -> bytes:
    head = struct.pack("!iiI", ndim, int(any(v is None for v in values)), element)
    if ndim == 0:
        return head
    body = b"".join(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in values)
    return head + struct.pack("!ii", len(values), 1) + body


def test_binary_array_parameters_decode_to_lists() -> None:
    ints = _binary_array(oids.INT4, [struct.pack("!i", 7), None, struct.pack("!i", -1)])
    assert decode_binary(ints, oids.INT4_ARRAY) == [7, None, -1]
    texts = _binary_array(oids.TEXT, [b"F", "Ünï".encode()])
    assert decode_binary(texts, oids.TEXT_ARRAY) == ["F", "Ünï"]
    days = _binary_array(oids.DATE, [struct.pack("!i", -1461)])
    assert decode_binary(days, oids.DATE_ARRAY) == [date(1996, 1, 1)]  # 1,461 days before 2000
    assert decode_binary(_binary_array(oids.TEXT, [], ndim=0), oids.TEXT_ARRAY) == []


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x01",  # shorter than the header
    _binary_array(oids.INT4, [struct.pack("!i", 1)], ndim=2),  # two dimensions
    _binary_array(oids.INT8, [struct.pack("!q", 1)]),  # int8 elements in an int4[]
    _binary_array(oids.INT4, [struct.pack("!i", 1)])[:-1],  # ends early
    _binary_array(oids.INT4, [struct.pack("!i", 1)]) + b"\x00",  # trailing bytes
])  # fmt: skip
def test_malformed_binary_arrays_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_binary(data, oids.INT4_ARRAY)


def test_bound_array_parameters_plan_like_literal_lists() -> None:
    tree = parse_one("SELECT COUNT(*) FROM orders WHERE o_custkey = ANY($1) AND o_totalprice < ALL($2)")
    bound = bind_parameters(tree, [[1, 2], [Decimal("10.5"), None]])
    expected = parse_one("SELECT COUNT(*) FROM orders WHERE o_custkey IN (1, 2) "
                         "AND ((o_totalprice < 10.5) AND (o_totalprice < NULL))")  # fmt: skip
    assert rewrite(bound, META).sql == rewrite(expected, META).sql


def test_array_parameter_types_are_reported_for_drivers_that_encode_by_them() -> None:
    tree = parse_one("SELECT COUNT(*) FROM orders WHERE o_custkey = ANY($1) AND o_orderstatus <> ALL($2) "
                     "AND o_orderdate = SOME($3) AND o_totalprice > $4::integer AND o_custkey = ANY($5::int[])")
    types = infer_parameter_types(tree, META)
    assert types == {1: "int4[]", 2: "text[]", 3: "date[]", 4: "int4", 5: "int4[]"}
    assert [type_oid(types[n]) for n in range(1, 6)] == [
        oids.INT4_ARRAY, oids.TEXT_ARRAY, oids.DATE_ARRAY, oids.INT4, oids.INT4_ARRAY]


@pytest.mark.parametrize(("sql", "sent"), [
    ("SELECT current_database()", "SELECT (SELECT 'tpch'::pg_catalog.name AS current_database)"),
    ("SELECT pg_catalog.current_database() AS db, current_catalog",
     "SELECT (SELECT 'tpch'::pg_catalog.name AS current_database) AS db, "
     "(SELECT 'tpch'::pg_catalog.name AS current_catalog)"),
    ("SELECT 'current_database()', x.current_database()", "SELECT 'current_database()', x.current_database()"),
    ("SELECT * FROM tpch.public.nation n JOIN \"tpch\".\"public\".region r ON true",
     'SELECT * FROM public.nation n JOIN "public".region r ON true'),
    ("SELECT tpch.public.nation FROM tpch", "SELECT tpch.public.nation FROM tpch"),
    ("SELECT * FROM other.public.nation", "SELECT * FROM other.public.nation"),
    ('SELECT * FROM "TPCH".public.nation', 'SELECT * FROM "TPCH".public.nation'),
])  # fmt: skip
def test_catalog_statements_answer_for_the_database_clients_connect_to(sql: str, sent: str) -> None:
    assert prepare_catalog_sql(sql, "tpch") == sent
    assert prepare_catalog_sql(sql) == sql  # without the name, nothing is changed
