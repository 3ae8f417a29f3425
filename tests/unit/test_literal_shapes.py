"""Literal statements answered as their learned shapes (proxy/literal_shapes.py): the
tokenizer's refusals, and a hit giving exactly what the general path gives."""

from __future__ import annotations

from datetime import timedelta

import pytest

from proxy.literal_shapes import (
    MAX_CONSTANT_SETS,
    MAX_FAILURES,
    LiteralShapes,
    literal_value,
    tokenize,
)
from proxy.observe import normalize
from proxy.router import Routed
from proxy.statements import route
from rewriter.parse import split_statements
from rewriter.template import parameterize, typed_value
from tests.unit.test_corpus import META


def _routed(sql: str) -> Routed:
    (statement,) = split_statements(sql)
    routed = route(statement, META)
    assert isinstance(routed, Routed)
    return routed


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > 5 -- note",
    "SELECT COUNT(*) FROM orders /* c */ WHERE o_totalprice > 5",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > $1",
    "SELECT COUNT(*) FROM orders WHERE o_comment = $$x$$",
    "SELECT COUNT(*) FROM orders WHERE o_comment = E'a\\'b'",
    "SELECT COUNT(*) FROM orders WHERE o_comment = 'a\\'",
    "SELECT COUNT(*) FROM orders WHERE o_comment = U&'x'",
    "SELECT COUNT(*) FROM orders WHERE o_comment = 'a'\n'b'",  # one string in PostgreSQL
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > 5; SELECT 1",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > 10abc",
    "SELECT COUNT(*) FROM orders",  # no literal: the exact-text caches serve it
    "SELECT COUNT(*) FROM orders WHERE o_comment = 'unterminated",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice >\u00a05",  # a name character to PostgreSQL
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > \u0665",  # not a digit to PostgreSQL
])  # fmt: skip
def test_text_the_tokenizer_is_not_sure_of_is_left_to_the_parser(sql: str) -> None:
    assert tokenize(sql) is None


def test_literals_are_read_as_written_and_the_rest_is_kept() -> None:
    t = tokenize('SELECT "t1""x", COUNT(*) FROM orders t1 WHERE a >= 1.50 AND b = \'it\'\'s\' LIMIT 3;')
    assert t is not None
    assert t.literals == ("1.50", "'it''s'", "3")
    assert [literal_value(x) for x in t.literals] == [literal_value("1.50"), "it's", 3]
    assert literal_value("007") is None and literal_value("1e5") is None  # they read back otherwise


SHAPES = [
    ("SELECT c_mktsegment, COUNT(*), SUM(c_acctbal) FROM customer WHERE c_acctbal > {} / 100.0 "
     "GROUP BY c_mktsegment", [("12345",), ("5000",), ("1.5",), ("1.50",)]),
    ("SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders WHERE o_orderdate >= '{}' "
     "AND o_totalprice > {} GROUP BY 1 ORDER BY 1 LIMIT 3",
     [("1995-01-01", "1000"), ("1996-03-04", "2500.50"), ("1997-01-01", "7")]),
    ("SELECT COUNT(*) FROM orders WHERE o_orderpriority IN ('{}', '2-HIGH') "
     "AND o_custkey BETWEEN {} AND 500;", [("1-URGENT", "10"), ("it''s", "20"), ("", "30")]),
    # A sign after a comparison is part of the value: positive and negative share a shape.
    ("SELECT COUNT(*) FROM customer WHERE c_acctbal > {} / 100.0 AND c_acctbal BETWEEN {} AND 2",
     [("-5000", "-1.5"), ("5000", "1.5"), ("-7", "-0.25")]),
    # Typed dates and timestamps are values too (bound as such); the same text untyped
    # in another place is a text value.
    ("SELECT COUNT(*) FROM orders WHERE o_orderdate >= DATE '{}' AND o_orderdate < '{}'::date "
     "AND o_orderdate <> CAST('{}' AS TIMESTAMP) AND o_comment <> '{}'",
     [("1995-01-01", "1995-02-01", "1995-01-05 10:00:00", "1995-01-01"),
      ("1996-02-29", "1996-04-01", "1996-03-31 23:59:59.000001", "x"),
      ("0001-01-01", "9999-12-31", "2000-01-01 00:00:00", "1995-01-01")]),
]  # fmt: skip


@pytest.mark.parametrize(("template", "value_sets"), SHAPES)
def test_a_hit_gives_the_shape_values_and_audit_text_the_general_path_gives(
    template: str, value_sets: list[tuple[str, ...]]
) -> None:
    shapes = LiteralShapes(META)
    first = template.format(*value_sets[0])
    assert shapes.lookup(first) is None
    shapes.learn(first, _routed(first))
    for values in value_sets[1:]:
        sql = template.format(*values)
        hit = shapes.lookup(sql)
        assert hit is not None, sql
        routed = _routed(sql)
        found = parameterize(routed.tree)
        assert found is not None
        assert hit.shape == found[0].sql(dialect="postgres")
        assert [(type(v), v) for v in hit.values] == [(type(v), v) for v in found[1]]
        assert hit.normalized == normalize(sql, routed.tree)


def test_other_constants_are_another_shape() -> None:
    shapes = LiteralShapes(META)
    sql = "SELECT o_orderpriority, COUNT(*) FROM orders WHERE o_totalprice > {} GROUP BY 1 LIMIT {}"
    shapes.learn(sql.format(5, 3), _routed(sql.format(5, 3)))
    assert shapes.lookup(sql.format(6, 3)) is not None
    assert shapes.lookup(sql.format(6, 4)) is None  # LIMIT 4 is not a filter value


def test_a_value_the_template_cannot_bind_goes_the_general_way() -> None:
    shapes = LiteralShapes(META)
    sql = "SELECT COUNT(*) FROM orders WHERE o_totalprice > {}"
    shapes.learn(sql.format(5), _routed(sql.format(5)))
    assert shapes.lookup(sql.format(10**30)) is None  # beyond int8: planned as a literal
    assert shapes.lookup(sql.format("007")) is None
    dated = "SELECT COUNT(*) FROM orders WHERE o_orderdate >= DATE {}"
    shapes.learn(dated.format("'1995-01-01'"), _routed(dated.format("'1995-01-01'")))
    assert shapes.lookup(dated.format("'1996-01-01'")) is not None
    for other in ("'1996-1-1'", "'today'", "'1996-02-30'", "5"):  # no ISO date: planned as written
        assert shapes.lookup(dated.format(other)) is None, other


def test_a_shape_that_cannot_be_learned_is_tried_a_few_times_only() -> None:
    shapes = LiteralShapes(META)
    # A subtraction is not a filter value: `- {}` with a space stays a minus and a number,
    # which `parameterize` reads as one negative value, so the mapping does not check out.
    sql = "SELECT COUNT(*) FROM orders WHERE o_totalprice > - {}"
    for n in range(MAX_FAILURES + 2):
        shapes.learn(sql.format(n + 1), _routed(sql.format(n + 1)))
        assert shapes.lookup(sql.format(n + 7)) is None
    tokens = tokenize(sql.format(1))
    assert tokens is not None
    assert shapes._skeletons[tokens.skeleton].failures == MAX_FAILURES  # then no more parses


def test_a_skeleton_with_ever_new_constants_stops_being_learned() -> None:
    shapes = LiteralShapes(META)
    sql = "SELECT o_orderpriority, COUNT(*) FROM orders WHERE o_totalprice > {} GROUP BY 1 LIMIT {}"
    for limit in range(1, MAX_CONSTANT_SETS + MAX_FAILURES + 3):
        shapes.learn(sql.format(5, limit), _routed(sql.format(5, limit)))
    assert shapes.lookup(sql.format(6, 1)) is not None  # the first sets are kept
    assert shapes.lookup(sql.format(6, MAX_CONSTANT_SETS + 1)) is None
    tokens = tokenize(sql.format(5, 1))
    assert tokens is not None and shapes._skeletons[tokens.skeleton].failures == MAX_FAILURES


def _bumped(literal: str) -> str:
    """Another literal of the same kind (the sign kept; an ISO date a day later)."""
    if literal.startswith("'"):
        text = literal[1:-1]
        for kind, step in (("date", timedelta(days=1)), ("timestamp", timedelta(seconds=1))):
            if (value := typed_value(text, kind)) is not None:
                later = value + step
                return f"'{later.isoformat(sep=' ') if kind == 'timestamp' else later.isoformat()}'"
        return literal[:-1] + "z'"
    if "." in literal:
        return literal + "1"
    return str(int(literal) * 10 + 3) if literal.lstrip("-").isdigit() else literal


def test_every_learnable_corpus_query_answers_new_values_as_the_general_path() -> None:
    # The corpus's accepted queries, each learned, then asked again with other filter
    # values: a hit must give the shape, values and audit text the general path gives.
    from tests.unit.test_corpus import ACCEPTED

    checked = 0
    for case in ACCEPTED:
        tokens = tokenize(case.sql)
        try:
            routed = _routed(case.sql)
        except Exception:  # noqa: BLE001 - several statements, or refused by the router
            continue
        if tokens is None or routed.tree is None:
            continue
        shapes = LiteralShapes(META)
        shapes.learn(case.sql, routed)
        learned = shapes._skeletons.get(tokens.skeleton)
        if learned is None or not learned.mappings:
            continue
        (mapping,) = learned.mappings.values()
        literals = [_bumped(t) if i in mapping.params else t for i, t in enumerate(tokens.literals)]
        pieces = tokens.skeleton.split("\x00")
        text = pieces[0] + "".join(lit + piece[1:] for lit, piece in zip(literals, pieces[1:], strict=True))
        hit = shapes.lookup(text)
        assert hit is not None, text
        general = _routed(text)
        found = parameterize(general.tree)
        assert found is not None, text
        assert hit.shape == found[0].sql(dialect="postgres"), text
        assert [(type(v), v) for v in hit.values] == [(type(v), v) for v in found[1]], text
        assert hit.normalized == normalize(text, general.tree), text
        checked += 1
    assert checked >= 25  # the corpus's queries with filter values (4 with typed dates)
