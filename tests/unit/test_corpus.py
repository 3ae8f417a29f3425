"""The table-driven query corpus (tests/corpus/queries.txt): shape, cost and refusals."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from accounting.mechanisms import Mechanisms, total_delta, total_epsilon
from rewriter.errors import RewriteError
from rewriter.metadata import load_metadata
from rewriter.parse import parse_one
from rewriter.plan import DPPlan
from rewriter.rewrite import rewrite

ROOT = Path(__file__).resolve().parents[2]
META = load_metadata(ROOT / "proxy" / "examples" / "tpch.yaml")
CORPUS = ROOT / "tests" / "corpus" / "queries.txt"


@dataclass(frozen=True)
class Case:
    """One corpus line."""

    sql: str
    accept: bool
    primitives: int = 0
    columns: int = 0
    delta: bool = False
    sqlstate: str = ""


def load_corpus() -> list[Case]:
    """Parse the corpus file."""
    cases = []
    for line in CORPUS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        head, sql = line.split(" :: ", 1)
        parts = head.split()
        if parts[0] == "A":
            cases.append(Case(sql, True, int(parts[1]), int(parts[2]), parts[3] == "1"))
        else:
            cases.append(Case(sql, False, sqlstate=parts[1]))
    return cases


CASES = load_corpus()
ACCEPTED = [c for c in CASES if c.accept]
REFUSED = [c for c in CASES if not c.accept]


def plan_of(sql: str) -> DPPlan:
    """The plan of a corpus query."""
    return rewrite(parse_one(sql), META)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150
    assert len(ACCEPTED) >= 100 and len(REFUSED) >= 50


@pytest.fixture(scope="module")
def mech() -> Mechanisms:
    return Mechanisms()


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.sql[:70] for c in ACCEPTED])
def test_accepted_shape_and_cost(case: Case, mech: Mechanisms) -> None:
    p = plan_of(case.sql)
    assert len(p.primitives) == case.primitives, [x.label for x in p.primitives]
    assert len(p.outputs) == case.columns
    assert p.needs_delta == case.delta
    for prim in p.primitives:
        assert prim.sensitivity >= 1
    if p.public_only:  # declared public values only: no SQL, no cost
        assert not p.primitives and not p.sql and all(not k.private for k in p.keys)
        return
    # The whole query costs exactly the epsilon asked for (never more), and delta only
    # when partition selection runs.
    noise = mech.plan_noise(p, Decimal("1"), Decimal("1e-7"))
    eps = total_epsilon(noise)
    assert Decimal("0.999999") <= eps <= Decimal(1)
    d = total_delta(noise)
    assert (0 < d <= Decimal("1e-7")) if case.delta else d == 0
    # The SQL that runs is regenerated: no comments, one statement.
    assert ";" not in p.sql and "--" not in p.sql and "/*" not in p.sql


@pytest.mark.parametrize("case", REFUSED, ids=[c.sql[:70] for c in REFUSED])
def test_refused_with_sqlstate(case: Case) -> None:
    with pytest.raises(RewriteError) as info:
        plan_of(case.sql)
    assert info.value.sqlstate == case.sqlstate, info.value.message
    assert info.value.message
