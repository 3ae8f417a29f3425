"""Turning exact per-group primitives into the noisy, post-processed answer.

The database returns one row per non-empty group with exact integer primitives. Every
group of the public domain is materialized (empty groups get zeros, so emptiness is not
revealed), each primitive vector is noised once, and everything after that is
post-processing of noisy values.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cmp_to_key
from typing import Any

from accounting.extremes import candidate_steps, extreme_bound_text, extreme_scores, rank_target
from accounting.mechanisms import Mechanisms, NoiseSpec, discrete_laplace_quantile
from rewriter.plan import AggFunc, AggregateSpec, DPPlan, PrimitiveKind
from rewriter.postprocess import evaluate

AGG_PREFIX = "__a"
KEY_PREFIX = "__k"


@dataclass(frozen=True, slots=True)
class Answer:
    """The released rows, with the noise that went into them (for NOTICEs)."""

    columns: list[tuple[str, str]]  # (name, pg type name)
    rows: list[tuple[Any, ...]]
    noise: list[NoiseSpec]


def release(
    plan: DPPlan,
    exact_rows: Iterable[Sequence[Any]],
    noise: list[NoiseSpec],
    mechanisms: Mechanisms,
) -> Answer:
    """Noise the exact primitives of `exact_rows` and post-process them into the answer."""
    nkeys = len(plan.keys)
    names = [p.name for p in plan.primitives]
    if not plan.keys_from_rows:
        sizes = [len(k.domain) for k in plan.keys]
        n_groups = plan.group_count
        vectors = {p.name: [0] * n_groups for p in plan.primitives}
        hist_vectors: dict[str, list[Any]] = {
            p.name: [{}] * n_groups for p in plan.primitives if p.kind == PrimitiveKind.QUANTILE
        }
        for row in exact_rows:
            idx = 0
            for i in range(nkeys):
                idx = idx * sizes[i] + int(row[i])
            for j, name in enumerate(names):
                if name in hist_vectors:
                    hist_vectors[name][idx] = row[nkeys + j]
                else:
                    vectors[name][idx] = int(row[nkeys + j])
        groups: list[tuple[Any, ...]] = [
            tuple(plan.keys[i].domain[ki] for i, ki in enumerate(key_idx))
            for key_idx in itertools.product(*(range(s) for s in sizes))
        ]
    else:
        rows = [tuple(r) for r in exact_rows]
        if plan.selection is not None:
            # Private keys: only groups whose noisy unit count passes the threshold are
            # released; the other primitives are noised on those groups only.
            sel = next(s for s in noise if s.primitive == plan.selection)
            j_sel = names.index(plan.selection)
            kept = mechanisms.select(sel, {g: int(r[nkeys + j_sel]) for g, r in enumerate(rows)})
            order = sorted(kept)
        else:
            # Keys from public tables: the database returned every group of the public
            # domains (empty ones with zeros), so every row is released.
            order = list(range(len(rows)))
        groups = [
            tuple(k.domain[int(v)] if not k.domain_sql and not k.private else v
                  for k, v in zip(plan.keys, rows[g][:nkeys], strict=True))
            for g in order
        ]  # fmt: skip
        quantile = {p.name for p in plan.primitives if p.kind == PrimitiveKind.QUANTILE}
        vectors = {
            name: [int(rows[g][nkeys + j]) for g in order]
            for j, name in enumerate(names)
            if name not in quantile
        }
        hist_vectors = {
            name: [rows[g][nkeys + j] for g in order]
            for j, name in enumerate(names)
            if name in quantile
        }

    noisy: dict[str, list[Any]] = {
        s.primitive: mechanisms.sample(s, vectors[s.primitive])
        for s in noise
        if s.primitive != plan.selection and s.primitive not in hist_vectors
    }
    specs = {a.sum: a for a in plan.aggregates if a.func in _SELECTED}
    for s in noise:
        if s.primitive in hist_vectors:
            agg = specs[s.primitive]
            noisy[s.primitive] = [
                mechanisms.pick_min(s, candidate_scores(agg, _histogram(h), s))
                for h in hist_vectors[s.primitive]
            ]
    for p in plan.primitives:
        if p.denominator != 1:
            # Weighted bounding computed this primitive in units of 1/denominator.
            noisy[p.name] = [Decimal(v) / p.denominator for v in noisy[p.name]]
    kinds = {p.name: p.kind for p in plan.primitives}

    out_rows: list[tuple[Any, ...]] = []
    envs: list[dict[str, Any]] = []
    for g, key_values in enumerate(groups):
        env: dict[str, Any] = {}
        for i, v in enumerate(key_values):
            env[f"{KEY_PREFIX}{i}"] = v
        for a, spec in enumerate(plan.aggregates):
            env[f"{AGG_PREFIX}{a}"] = _aggregate_value(spec, noisy, kinds, g)
        if plan.having is not None and evaluate(plan.having, env) is not True:
            continue
        envs.append(env)
    if plan.order_by:
        envs.sort(key=cmp_to_key(lambda x, y: _order_cmp(plan, x, y)))
    end = None if plan.limit is None else plan.offset + plan.limit
    for env in envs[plan.offset : end]:
        out_rows.append(tuple(evaluate(o.expr, env) for o in plan.outputs))
    return Answer(columns=[(o.name, o.type_name) for o in plan.outputs], rows=out_rows, noise=noise)


_VARIANCE = (AggFunc.VAR_POP, AggFunc.VAR_SAMP, AggFunc.STDDEV_POP, AggFunc.STDDEV_SAMP)
# Aggregates released by noisy max over the candidates of a QUANTILE histogram.
_SELECTED = (AggFunc.QUANTILE, AggFunc.MIN, AggFunc.MAX)


def _aggregate_value(
    spec: AggregateSpec, noisy: dict[str, list[int]], kinds: dict[str, PrimitiveKind], g: int
) -> Any:
    count = noisy[spec.count][g] if spec.count is not None else None
    if spec.func == AggFunc.COUNT:
        assert count is not None
        # A count below zero is impossible; clamping and rounding are post-processing.
        return _typed(Decimal(max(0, count)), "int8")
    assert spec.sum is not None
    s = noisy[spec.sum][g]
    if spec.func in _SELECTED:
        return _typed(Decimal(candidate_steps(spec, s)) * spec.step, spec.result_type)
    if spec.func in _VARIANCE:
        return _variance(spec, count or 0, s, noisy[spec.sumsq][g] if spec.sumsq else 0)
    if kinds[spec.sum] == PrimitiveKind.NORMALIZED_SUM:
        assert count is not None
        total_steps = s + spec.midpoint * max(0, count)
        if spec.func == AggFunc.AVG:
            mean_steps = Decimal(s) / max(1, count) + spec.midpoint
            mean_steps = min(max(mean_steps, Decimal(spec.lower)), Decimal(spec.upper))
            return _typed(mean_steps * spec.step, spec.result_type, digits=6)
    else:
        total_steps = s
    return _typed(Decimal(total_steps) * spec.step, spec.result_type)


def _histogram(raw: Any) -> dict[int, int]:
    """The {cell: count} histogram of a quantile primitive (JSON text or a mapping)."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = json.loads(raw)
    return {int(k): int(v) for k, v in raw.items()}


def candidate_scores(spec: AggregateSpec, hist: dict[int, int], noise: NoiseSpec) -> list[int]:
    """The noisy-max scores of a quantile, MIN or MAX over its candidates."""
    if spec.func == AggFunc.QUANTILE:
        return quantile_scores(spec, hist)
    return extreme_scores(spec, hist, rank_target(spec.candidates, noise.scale))


def quantile_scores(spec: AggregateSpec, hist: dict[int, int]) -> list[int]:
    """Integer scores |(den - num) #(x < c) - num #(x > c)| of every candidate c.

    Cell 2j holds the values equal to candidate j, cell 2j + 1 those strictly between
    candidates j and j + 1. Lower scores are better.
    """
    n_cells = 2 * spec.candidates
    counts = [0] * n_cells
    for cell, n in hist.items():
        if 0 <= cell < n_cells:
            counts[cell] += n
    total = sum(counts)
    below = 0
    scores = []
    num, den = spec.alpha_num, spec.alpha_den
    for j in range(spec.candidates):
        at = counts[2 * j]
        above = total - below - at
        scores.append(abs((den - num) * below - num * above))
        below += at + counts[2 * j + 1]
    return scores


def _variance(spec: AggregateSpec, count: int, s1: int, s2: int) -> Any:
    """VAR/STDDEV from a noisy count, normalized sum and sum of squares (post-processing).

    Noisy values can make the raw estimate negative or absurdly large; it is clamped to
    [0, (range/2)^2], the largest variance values within the bounds can have.
    """
    n = max(1, count)
    q = Decimal(spec.sq_scale)
    var_steps = (Decimal(s2) * q * q) / n - (Decimal(s1) / n) ** 2
    if spec.func in (AggFunc.VAR_SAMP, AggFunc.STDDEV_SAMP):
        var_steps = var_steps * n / max(1, n - 1)
    top = (Decimal(spec.upper - spec.lower) / 2) ** 2
    var_steps = min(max(var_steps, Decimal(0)), top)
    var = var_steps * spec.step * spec.step
    if spec.func in (AggFunc.STDDEV_POP, AggFunc.STDDEV_SAMP):
        return float(var.sqrt())
    return float(var)


def _typed(value: Decimal, type_name: str, digits: int = 0) -> Any:
    if type_name in ("int8", "int4", "int2"):
        return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))
    if type_name in ("float8", "float4"):
        return float(value)
    if digits:
        return value.quantize(Decimal(1).scaleb(-digits))
    return value


def _order_cmp(plan: DPPlan, x: dict[str, Any], y: dict[str, Any]) -> int:
    for item in plan.order_by:
        a, b = evaluate(item.expr, x), evaluate(item.expr, y)
        if a == b:
            continue
        if a is None or b is None:
            # PostgreSQL: NULLS LAST by default for ASC, NULLS FIRST for DESC.
            first = item.nulls_first
            return (-1 if first else 1) if a is None else (1 if first else -1)
        c = -1 if a < b else 1
        return -c if item.descending else c
    return 0


@dataclass(frozen=True, slots=True)
class ErrorBound:
    """The 95% error bound of one analyst-visible aggregate, in its own units."""

    label: str
    text: str  # e.g. "±24", "±2878.8/n" (n: the group's count)


def error_bounds(plan: DPPlan, noise: list[NoiseSpec]) -> list[ErrorBound]:
    """Per-aggregate 95% error bounds (noise only; contribution bounding aside).

    A value derived from two primitives uses each one's 97.5% quantile, so that both
    hold together with probability >= 95% (union bound).
    """
    by_name = {s.primitive: s for s in noise}
    kinds = {p.name: p.kind for p in plan.primitives}
    dens = {p.name: p.denominator for p in plan.primitives}
    out = []
    for spec in plan.aggregates:
        if spec.func == AggFunc.COUNT:
            assert spec.count is not None
            c95 = Decimal(by_name[spec.count].error95) / dens[spec.count]
            out.append(ErrorBound(spec.label, f"±{_fmt(c95)}"))
            continue
        assert spec.sum is not None
        s = by_name[spec.sum]
        step = spec.step
        ds = dens[spec.sum]
        if spec.func in _VARIANCE:
            out.append(ErrorBound(spec.label, "see EXPLAIN (derived from count, sum and squares)"))
            continue
        if spec.func == AggFunc.QUANTILE:
            out.append(ErrorBound(spec.label, "data-dependent (exponential mechanism over "
                                  f"candidates every {_fmt(spec.stride * step)})"))  # fmt: skip
            continue
        if spec.func in (AggFunc.MIN, AggFunc.MAX):
            out.append(ErrorBound(spec.label, extreme_bound_text(spec, s, _fmt(spec.stride * step))))
            continue
        if kinds[spec.sum] == PrimitiveKind.SUM:
            out.append(ErrorBound(spec.label, f"±{_fmt(s.error95 * step / ds)}"))
            continue
        assert spec.count is not None
        c = by_name[spec.count]
        es = Decimal(discrete_laplace_quantile(s.scale, 0.975)) * step / ds
        ec = Decimal(discrete_laplace_quantile(c.scale, 0.975)) / dens[spec.count]
        if spec.func == AggFunc.AVG:
            half = Decimal(spec.upper - spec.lower) / 2 * step
            out.append(ErrorBound(spec.label, f"±({_fmt(es)} + {_fmt(half * ec)})/n"))
        else:
            out.append(ErrorBound(spec.label, f"±{_fmt(es + abs(spec.midpoint) * step * ec)}"))
    return out


def _fmt(d: Decimal | int) -> str:
    q = Decimal(d).quantize(Decimal("0.01")).normalize()
    return format(q, "f")
