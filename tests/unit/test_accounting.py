"""Unit tests of mechanisms, release and composition (no database)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from sqlglot import exp

import accounting.release as release_module
from accounting.mechanisms import (
    Mechanisms,
    NoiseSpec,
    discrete_laplace_quantile,
    total_epsilon,
)
from accounting.release import release
from rewriter.metadata import load_metadata
from rewriter.parse import parse_one
from rewriter.plan import DPPlan
from rewriter.postprocess import PostProcessError, evaluate
from rewriter.rewrite import rewrite

META = load_metadata(Path(__file__).resolve().parents[2] / "proxy" / "examples" / "tpch.yaml")


@pytest.fixture(scope="module")
def mech() -> Mechanisms:
    return Mechanisms()


@pytest.mark.parametrize("eps", ["1", "0.1", "0.3", "2.5", "0.001"])
def test_cost_from_privacy_map_never_exceeds_request(mech: Mechanisms, eps: str) -> None:
    p = rewrite(parse_one("SELECT COUNT(*), AVG(o_totalprice) FROM orders"), META)
    specs = mech.plan_noise(p, Decimal(eps))
    assert len(specs) == 2
    total = total_epsilon(specs)
    assert total <= Decimal(eps)
    assert total >= Decimal(eps) * (1 - Decimal("1e-12"))
    for s in specs:
        # the scale is sensitivity / share, up to float rounding
        assert math.isclose(s.scale, s.sensitivity / (float(eps) / 2), rel_tol=1e-12)


def test_error95_matches_closed_form() -> None:
    for scale in (0.5, 1.0, 8.0, 1000.0):
        k = discrete_laplace_quantile(scale, 0.95)
        p = math.exp(-1 / scale)
        def tail(j: int, p: float = p) -> float:  # P(|X| > j)
            return 2 * p ** (j + 1) / (1 + p)

        assert tail(k) <= 0.05 + 1e-12
        assert k == 0 or tail(k - 1) > 0.05


def test_release_fills_every_public_key_and_post_processes(mech: Mechanisms) -> None:
    p = rewrite(
        parse_one(
            "SELECT o_orderstatus AS s, COUNT(*) AS n FROM orders GROUP BY 1 "
            "HAVING COUNT(*) >= 0 ORDER BY s DESC LIMIT 2"
        ),
        META,
    )
    specs = mech.plan_noise(p, Decimal(10_000_000))
    # Only group 1 ('O') has rows: the others must still be released (as ~0).
    den = p.primitives[0].denominator  # weighted bounding: counts in units of 1/den
    ans = release(p, [(1, 42 * den)], specs, mech)
    assert [r[0] for r in ans.rows] == ["P", "O"]
    assert dict(ans.rows)["O"] == 42 and dict(ans.rows)["P"] == 0
    assert ans.columns == [("s", "text"), ("n", "int8")]


class NoNoise(Mechanisms):
    """A test double that releases the exact values (to check post-processing only)."""

    def sample_all(self, jobs: Sequence[tuple[NoiseSpec, Sequence[int]]]) -> list[list[int]]:
        return [[int(v) for v in values] for _, values in jobs]


def _in_units(p: DPPlan, rows: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Exact rows as the database returns them: primitives in units of 1/denominator."""
    k = len(p.keys)
    dens = [x.denominator for x in p.primitives]
    return [r[:k] + tuple(v * d for v, d in zip(r[k:], dens, strict=True)) for r in rows]


def test_release_without_post_processing_reads_every_group_in_domain_order() -> None:
    p = rewrite(parse_one("SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY 1"), META)
    mech = NoNoise()
    ans = release(p, _in_units(p, [(3, 7), (0, 2)]), mech.plan_noise(p, Decimal(1)), mech)
    assert ans.rows == [("1-URGENT", 2), ("2-HIGH", 0), ("3-MEDIUM", 0),
                        ("4-NOT SPECIFIED", 7), ("5-LOW", 0)]  # fmt: skip


def test_release_having_order_by_offset_limit_and_expressions() -> None:
    p = rewrite(parse_one(
        "SELECT o_orderpriority AS p, COUNT(*) AS n, SUM(o_totalprice) / COUNT(*) AS mean "
        "FROM orders GROUP BY 1 HAVING COUNT(*) > 1 ORDER BY n DESC, p LIMIT 2 OFFSET 1"), META)  # fmt: skip
    mid = p.aggregates[1].midpoint  # the sum is released normalized: steps - mid * count
    mech = NoNoise()
    rows = [(0, 4, 40_000 - mid * 4), (1, 10, 25_000 - mid * 10),
            (2, 1, 500 - mid), (3, 10, 3_000 - mid * 10)]  # fmt: skip
    ans = release(p, _in_units(p, rows), mech.plan_noise(p, Decimal(1)), mech)
    # HAVING drops 3-MEDIUM (1) and 5-LOW (0); ties on n break by p; OFFSET skips 2-HIGH.
    assert [r[:2] for r in ans.rows] == [("4-NOT SPECIFIED", 10), ("1-URGENT", 4)]
    assert [r[2] for r in ans.rows] == [Decimal("3"), Decimal("100")]


def test_release_casts_to_typed_numeric_and_varchar_as_postgresql_does() -> None:
    p = rewrite(parse_one(
        "SELECT o_orderpriority AS p, AVG(o_totalprice)::numeric(10,1) AS a, "
        "CAST(COUNT(*) AS varchar(1)) AS c FROM orders GROUP BY 1"), META)  # fmt: skip
    mid = next(a.midpoint for a in p.aggregates if a.sum)  # released as steps - mid * count
    mech = NoNoise()
    # 1-URGENT: 4 orders of mean 100.25 (steps of 0.01); 2-HIGH: 10 of mean 0.04.
    rows = [(0, 4, 40_100 - mid * 4), (1, 10, 40 - mid * 10)]
    ans = release(p, _in_units(p, rows), mech.plan_noise(p, Decimal(1)), mech)
    got = {r[0]: r[1:] for r in ans.rows}
    assert got["1-URGENT"] == (Decimal("100.3"), "4")  # half away from zero; varchar(1) cuts "4"
    assert got["2-HIGH"] == (Decimal("0.0"), "1")  # "10" cut to one character
    assert [t for _, t in ans.columns] == ["text", "numeric", "varchar"]
    tight = rewrite(parse_one("SELECT SUM(o_totalprice)::numeric(4,2) FROM orders"), META)
    with pytest.raises(PostProcessError) as e:  # 401.00 needs 3 digits before the point
        release(tight, _in_units(tight, [(40_100,)]), mech.plan_noise(tight, Decimal(1)), mech)
    assert e.value.sqlstate == "22003"
    cast = exp.cast(exp.column("v"), exp.DataType.build("numeric(5,1)", dialect="postgres"))
    assert evaluate(cast, {"v": Decimal("1.25")}) == Decimal("1.3")
    odd = exp.DataType(this=exp.DataType.Type.DECIMAL, expressions=[exp.DataTypeParam(this=exp.column("p"))])
    with pytest.raises(PostProcessError) as e:  # a modifier that is not a whole number
        evaluate(exp.cast(exp.column("v"), odd), {"v": Decimal(1)})
    assert e.value.sqlstate == "0A000"


def test_sampler_clamps_out_of_range_values(mech: Mechanisms) -> None:
    p = rewrite(parse_one("SELECT COUNT(*) FROM orders"), META)
    (spec,) = mech.plan_noise(p, Decimal(1_000_000))
    out = mech.sample(spec, [2**70])
    assert out[0] <= 2**62 + 100


def test_two_mechanism_instances_draw_different_noise() -> None:
    p = rewrite(parse_one("SELECT COUNT(*) FROM orders"), META)
    a, b = Mechanisms(), Mechanisms()
    (sa,) = a.plan_noise(p, Decimal("0.01"))
    (sb,) = b.plan_noise(p, Decimal("0.01"))
    # scale 800, 50 draws each: identical vectors have probability < 1e-100.
    assert a.sample(sa, [0] * 50) != b.sample(sb, [0] * 50)


def test_two_processes_started_identically_draw_different_noise() -> None:
    import subprocess
    import sys

    code = (
        "from decimal import Decimal\n"
        "from accounting.mechanisms import Mechanisms\n"
        "from rewriter.parse import parse_one\nfrom rewriter.rewrite import rewrite\n"
        "from rewriter.metadata import load_metadata\nfrom pathlib import Path\n"
        "m = Mechanisms()\n"
        "meta = load_metadata(Path('proxy/examples/tpch.yaml'))\n"
        "(s,) = m.plan_noise(rewrite(parse_one('SELECT COUNT(*) FROM orders'), meta), Decimal('0.01'))\n"
        "print(m.sample(s, [0] * 50))\n"
    )
    root = Path(__file__).resolve().parents[2]
    outs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       check=True, env={"PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}).stdout
        for _ in range(2)
    ]  # fmt: skip
    # Scale 800, 50 draws each: identical vectors have probability far below 1e-100, so
    # equal outputs would mean the noise is seeded from something the processes share.
    assert outs[0] != outs[1] and outs[0].startswith("[")


# One expression per node a post-processing expression may hold (rewrite._POST_NODES),
# with its PostgreSQL value for a = 6, b = 4. A node admitted by the rewriter but not
# evaluated would fail after the query was charged.
POST_SAMPLES = {
    "Literal": ("a + 1", 7), "Null": ("COALESCE(NULL, a)", 6), "Boolean": ("a > 1 AND TRUE", True),
    "Paren": ("(a)", 6), "Add": ("a + b", 10), "Sub": ("a - b", 2), "Mul": ("a * b", 24),
    "Div": ("a / b", 1), "Neg": ("-a", -6), "Mod": ("a % b", 2), "EQ": ("a = 6", True),
    "NEQ": ("a <> 6", False), "GT": ("a > b", True), "GTE": ("a >= 7", False), "LT": ("a < b", False),
    "LTE": ("b <= 4", True), "And": ("a > 1 AND b > 1", True), "Or": ("a > 9 OR b > 9", False),
    "Not": ("NOT a > 1", False), "Is": ("a IS NOT NULL", True), "Round": ("ROUND(a / 4.0, 1)", Decimal("1.5")),
    "Abs": ("ABS(b - a)", 2), "Coalesce": ("COALESCE(a, b)", 6), "Greatest": ("GREATEST(a, b)", 6),
    "Least": ("LEAST(a, b)", 4), "Case": ("CASE WHEN a > b THEN 'x' ELSE 'y' END", "x"),
    "If": ("CASE WHEN a < b THEN 1 END", None), "Cast": ("CAST(a AS text)", "6"), "Ceil": ("CEIL(a / 4.0)", 2),
    "Floor": ("FLOOR(a / 4.0)", 1), "Sqrt": ("SQRT(b)", 2.0), "Column": ("a", 6),
    "Between": ("a BETWEEN b AND 10", True), "In": ("a IN (1, 6)", True), "Nullif": ("NULLIF(a, 6)", None),
    "Trunc": ("TRUNC(a / 4.0, 1)", Decimal("1.5")), "Sign": ("SIGN(b - a)", -1.0),
}  # fmt: skip


def test_every_post_processing_node_evaluates_as_postgresql_does() -> None:
    from rewriter.parse import parse_one
    from rewriter.rewrite import _POST_NODES

    arg_only = {"DataType", "DataTypeParam", "Identifier"}
    assert {c.__name__ for c in _POST_NODES} - arg_only == set(POST_SAMPLES)
    for name, (sql, want) in POST_SAMPLES.items():
        node = parse_one(f"SELECT {sql}").expressions[0]
        assert evaluate(node, {"a": 6, "b": 4}) == want, name


def test_a_huge_average_keeps_its_places_instead_of_failing() -> None:
    # Found by fuzzing: AVG(1e308) quantized to 6 places overflowed the Decimal context.
    assert release_module._typed(Decimal("1E+308"), "numeric", digits=6) == Decimal("1E+308")
    assert str(release_module._typed(Decimal("1E+20"), "numeric", digits=6)) == "100000000000000000000.000000"


def test_noisy_integers_beyond_their_type_are_22003() -> None:
    check = release_module._check_int_ranges
    check([("s", "int8"), ("n", "int4")], [(2**63 - 1, -(2**31)), (None, 5)])
    cases = [([("s", "int8")], (2**63,), "bigint"), ([("n", "int4")], (-(2**31) - 1,), "integer"),
             ([("n", "int2")], (40000,), "smallint")]  # fmt: skip
    for cols, row, name in cases:
        with pytest.raises(PostProcessError) as info:
            check(cols, [row])
        assert info.value.sqlstate == "22003" and info.value.message == f"{name} out of range"


def test_window_aggregates_over_peers_match_a_recount() -> None:
    import random

    from accounting.release import window_values
    from rewriter.plan import OrderItem, WindowSpec

    rng = random.Random(7)
    # Keys with ties (peers share a frame end) and NULL values (skipped, as in SQL).
    envs = [{"k": rng.randrange(50), "v": rng.choice([None, *range(-5, 20)])} for _ in range(2000)]
    order = (OrderItem(expr=exp.column("k"), descending=False, nulls_first=False),)
    for func, type_name in (("sum", "numeric"), ("count", "int8"), ("min", "int8"), ("max", "int8"), ("avg", "numeric")):
        w = WindowSpec(func=func, arg=exp.column("v"), partition=(), order=order, type_name=type_name)
        got = window_values(w, envs)
        for i in rng.sample(range(len(envs)), 50):
            frame = [e["v"] for e in envs if e["k"] <= envs[i]["k"] and e["v"] is not None]
            want = {"sum": Decimal(sum(frame)) if frame else None, "count": len(frame),
                    "min": min(frame, default=None), "max": max(frame, default=None),
                    "avg": Decimal(sum(frame)) / len(frame) if frame else None}[func]  # fmt: skip
            assert got[i] == want or abs(got[i] - want) < Decimal("1e-15"), (func, i)
