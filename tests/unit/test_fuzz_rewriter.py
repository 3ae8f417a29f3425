"""Mutated statements never make the rewriter fail with anything but a refusal.

Each corpus query has one token deleted, inserted, replaced or swapped (a fixed seed, so
a failure reproduces); parsing and rewriting must then either plan it or raise a
RewriteError with a SQLSTATE. An exception of any other kind would reach the client as
an internal error (found this way: a missing REPLACE argument, GROUP BY 1e308, a column
definition list, COUNT() OVER ())."""

from __future__ import annotations

import random
import re

import pytest

from rewriter.errors import RewriteError
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.unit.test_corpus import CORPUS
from tests.unit.test_rewriter import META

_EXTRA = ["NULL", "0", "-1", "1e308", "'x'", "(", ")", ",", "*", "COUNT(*)", "o_totalprice", "AND", "OR",
          "NOT", "CASE WHEN", "END", "::int", "::text", "::date", "DISTINCT", "GROUP BY 1", "ORDER BY 1",
          "LIMIT 1", "'1995-01-01'", "INTERVAL '1 day'", "ANY", "ALL", "ARRAY[1]", "IN (1)", "/", "%", "||",
          "'NaN'", "o_orderdate", "c_custkey", "HAVING", "FILTER (WHERE true)", "OVER ()", "$$x$$"]  # fmt: skip
_TOKEN = re.compile(r"'[^']*'|\w+|[^\s\w]")


def _queries() -> list[str]:
    return [line.split("::", 1)[1].strip() for line in CORPUS.read_text().splitlines()
            if line[:2] in ("A ", "R ") and "::" in line]  # fmt: skip


def _mutated(q: str, rng: random.Random) -> str:
    toks = _TOKEN.findall(q)
    op, i = rng.random(), rng.randrange(len(toks))
    if op < 0.3:
        del toks[i]
    elif op < 0.6:
        toks.insert(i, rng.choice(_EXTRA))
    elif op < 0.8:
        toks[i] = rng.choice(_EXTRA)
    else:
        j = rng.randrange(len(toks))
        toks[i], toks[j] = toks[j], toks[i]
    return " ".join(toks)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_queries_are_planned_or_refused(seed: int) -> None:
    rng = random.Random(seed)
    queries = _queries()
    for _ in range(600):
        sql = _mutated(rng.choice(queries), rng)
        try:
            rewrite(parse_one(sql), META)
        except RewriteError as e:
            assert e.sqlstate and e.message, sql
