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

from sqlglot import exp

from accounting.extremes import candidate_steps, extreme_bound_text, extreme_scores, rank_target
from accounting.mechanisms import Mechanisms, NoiseSpec, discrete_laplace_quantile
from rewriter.dates import from_epoch_days
from rewriter.plan import AggFunc, AggregateSpec, DPPlan, OrderItem, PrimitiveKind, WindowSpec
from rewriter.postprocess import PostProcessError, evaluate

AGG_PREFIX = "__a"
KEY_PREFIX = "__k"
WIN_PREFIX = "__w"


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
    groups, vectors, hist_vectors = _gather(plan, exact_rows, noise, mechanisms)
    jobs = [s for s in noise if s.primitive != plan.selection and s.primitive not in hist_vectors]
    sampled = mechanisms.sample_all([(s, vectors[s.primitive]) for s in jobs])
    noisy: dict[str, list[Any]] = {s.primitive: v for s, v in zip(jobs, sampled, strict=True)}
    specs = {a.sum: a for a in plan.aggregates if a.func in _SELECTED}
    for s in noise:
        if s.primitive in hist_vectors:
            agg = specs[s.primitive]
            scores = [candidate_scores(agg, _histogram(h), s) for h in hist_vectors[s.primitive]]
            noisy[s.primitive] = mechanisms.pick_min_all(s, scores)
    for p in plan.primitives:
        if p.denominator != 1:
            # Weighted bounding computed this primitive in units of 1/denominator.
            noisy[p.name] = [Decimal(v) / p.denominator for v in noisy[p.name]]
    kinds = {p.name: p.kind for p in plan.primitives}
    columns = [_aggregate_column(spec, noisy, kinds[spec.sum] if spec.sum else None)
               for spec in plan.aggregates]  # fmt: skip
    # One record per group: its key values, then its aggregates (the env's order).
    records = [k + a for k, a in zip(groups, zip(*columns, strict=True), strict=True)] if columns else groups
    out_columns = [(o.name, o.type_name) for o in plan.outputs]
    rows = _post_process(plan, records)
    _check_int_ranges(out_columns, rows)
    return Answer(columns=out_columns, rows=rows, noise=noise)


_INT_RANGES = {"int2": ("smallint", 1 << 15), "int4": ("integer", 1 << 31), "int8": ("bigint", 1 << 63)}


def _check_int_ranges(columns: list[tuple[str, str]], rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL's `22003` for a noisy integer beyond its column's type (a SUM of an
    int4 column with wide bounds at a tiny epsilon; `AVG(x)::int`), which would
    otherwise fail in the wire encoding."""
    for j, (_, type_name) in enumerate(columns):
        limit = _INT_RANGES.get(type_name)
        if limit is None:
            continue
        for row in rows:
            v = row[j]
            if type(v) is int and not -limit[1] <= v < limit[1]:
                raise PostProcessError("22003", f"{limit[0]} out of range")


def _gather(
    plan: DPPlan,
    exact_rows: Iterable[Sequence[Any]],
    noise: list[NoiseSpec],
    mechanisms: Mechanisms,
) -> tuple[list[tuple[Any, ...]], dict[str, list[int]], dict[str, list[Any]]]:
    """The released groups' key values, and each primitive's exact vector over them.

    Integer primitives become int vectors; quantile primitives keep their raw histograms.
    With private keys, partition selection (one OpenDP call) decides the groups first.
    """
    nkeys = len(plan.keys)
    names = [p.name for p in plan.primitives]
    quantile = {p.name for p in plan.primitives if p.kind == PrimitiveKind.QUANTILE}
    if not plan.keys_from_rows:
        sizes = [len(k.domain) for k in plan.keys]
        n_groups = plan.group_count
        vectors = {name: [0] * n_groups for name in names if name not in quantile}
        hist_vectors: dict[str, list[Any]] = {name: [{}] * n_groups for name in quantile}
        targets = [(nkeys + j, hist_vectors[name] if name in quantile else vectors[name],
                    name not in quantile) for j, name in enumerate(names)]  # fmt: skip
        for row in exact_rows:
            idx = 0
            for i in range(nkeys):
                idx = idx * sizes[i] + int(row[i])
            for col, target, is_int in targets:
                target[idx] = int(row[col]) if is_int else row[col]
        # Row-major over the key domains, matching the index computed above.
        groups = list(itertools.product(*(k.domain for k in plan.keys)))
        return groups, vectors, hist_vectors
    rows = [tuple(r) for r in exact_rows]
    if plan.selection is not None:
        # Private keys: only groups whose noisy unit count passes the threshold are
        # released; the other primitives are noised on those groups only.
        sel = next(s for s in noise if s.primitive == plan.selection)
        j_sel = nkeys + names.index(plan.selection)
        order = sorted(mechanisms.select(sel, {g: int(r[j_sel]) for g, r in enumerate(rows)}))
    else:
        # Keys from public tables: the database returned every group of the public
        # domains (empty ones with zeros), so every row is released.
        order = list(range(len(rows)))
    groups = [
        tuple(k.domain[int(v)] if not k.domain_sql and not k.private else v
              for k, v in zip(plan.keys, rows[g][:nkeys], strict=True))
        for g in order
    ]  # fmt: skip
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
    return groups, vectors, hist_vectors


def _post_process(plan: DPPlan, records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """HAVING, ORDER BY, OFFSET/LIMIT and the output expressions over the group records.

    Outputs that are a bare key or aggregate are read straight from the record; anything
    else is evaluated over the same placeholder environment as before, and only where
    it was before (outputs only on the rows kept, ORDER BY terms only when compared).
    """
    names = [f"{KEY_PREFIX}{i}" for i in range(len(plan.keys))]
    names += [f"{AGG_PREFIX}{a}" for a in range(len(plan.aggregates))]
    position = {n: i for i, n in enumerate(names)}
    direct = [_placeholder(o.expr, position) for o in plan.outputs]
    end = None if plan.limit is None else plan.offset + plan.limit
    if plan.having is None and not plan.order_by and None not in direct and not plan.distinct:
        # The common shape: no per-group expression at all.
        return [tuple([r[i] for i in direct]) for r in records[plan.offset : end]]  # type: ignore[index]
    envs: list[dict[str, Any]] = []
    for r in records:
        env = dict(zip(names, r, strict=True))
        if plan.having is not None and evaluate(plan.having, env) is not True:
            continue
        envs.append(env)
    for i, w in enumerate(plan.windows):  # after HAVING, before ORDER BY, as in SQL
        for env, value in zip(envs, window_values(w, envs), strict=True):
            env[f"{WIN_PREFIX}{i}"] = value
    def output(env: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(env[names[d]] if d is not None else evaluate(o.expr, env)
                     for d, o in zip(direct, plan.outputs, strict=True))  # fmt: skip

    if plan.distinct:
        # The first row of each distinct output; ORDER BY reads outputs only (42P10
        # otherwise), so the kept row sorts where any of its repeats would.
        kept: dict[tuple[Any, ...], tuple[dict[str, Any], tuple[Any, ...]]] = {}
        for env in envs:
            row = output(env)
            kept.setdefault(tuple(_hashable(v) for v in row), (env, row))
        pairs = list(kept.values())
        if plan.order_by:
            pairs = [pairs[r] for r in _order(plan.order_by, [env for env, _ in pairs])]
        return [row for _, row in pairs[plan.offset : end]]
    if plan.order_by:
        envs = _sorted(plan, envs)
    return [output(env) for env in envs[plan.offset : end]]


def _placeholder(expr: exp.Expression, position: dict[str, int]) -> int | None:
    """The record position an output reads, if it is a bare placeholder (else None)."""
    if isinstance(expr, exp.Column) and not expr.table and expr.name in position:
        return position[expr.name]
    return None


def _sorted(plan: DPPlan, envs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`envs` in ORDER BY order; each term is evaluated at most once per row, lazily."""
    return [envs[r] for r in _order(plan.order_by, envs)]


def _order(items: Sequence[OrderItem], envs: list[dict[str, Any]]) -> list[int]:
    """The positions of `envs` sorted by `items` (stable; terms evaluated lazily, once)."""
    terms = [item.expr for item in items]
    memo: list[list[Any]] = [[_UNSET] * len(terms) for _ in envs]

    def value(r: int, t: int) -> Any:
        v = memo[r][t]
        if v is _UNSET:
            v = memo[r][t] = evaluate(terms[t], envs[r])
        return v

    def cmp(x: int, y: int) -> int:
        for t, item in enumerate(items):
            a, b = value(x, t), value(y, t)
            if a == b:
                continue
            if a is None or b is None:
                # PostgreSQL: NULLS LAST by default for ASC, NULLS FIRST for DESC.
                first = item.nulls_first
                return (-1 if first else 1) if a is None else (1 if first else -1)
            c = -1 if a < b else 1
            return -c if item.descending else c
        return 0

    return sorted(range(len(envs)), key=cmp_to_key(cmp))


def window_values(w: WindowSpec, envs: list[dict[str, Any]]) -> list[Any]:
    """A window function's value on each released row (PostgreSQL's default frame:
    the whole partition without ORDER BY, else up to the current row and its peers)."""
    out: list[Any] = [None] * len(envs)
    parts: dict[tuple[Any, ...], list[int]] = {}
    for i, env in enumerate(envs):
        key = tuple(_hashable(evaluate(p, env)) for p in w.partition)
        parts.setdefault(key, []).append(i)
    for members in parts.values():
        rows = [envs[i] for i in members]
        ordered = [members[j] for j in _order(w.order, rows)] if w.order else members
        order_keys = [tuple(_hashable(evaluate(o.expr, envs[i])) for o in w.order) for i in ordered]
        args = {i: evaluate(w.arg, envs[i]) if w.arg is not None else 1 for i in ordered}
        frame = _GrowingFrame(w, [args[k] for k in ordered])
        rank = dense = 0
        for pos, i in enumerate(ordered):
            new_peer_group = pos == 0 or order_keys[pos] != order_keys[pos - 1]
            if new_peer_group:
                rank, dense = pos + 1, dense + 1
            if w.func == "row_number":
                out[i] = pos + 1
            elif w.func == "rank":
                out[i] = rank
            elif w.func == "dense_rank":
                out[i] = dense
            elif w.func in ("lag", "lead"):
                at = pos - w.offset if w.func == "lag" else pos + w.offset
                if 0 <= at < len(ordered):
                    out[i] = args[ordered[at]]
                else:
                    out[i] = evaluate(w.default, envs[i]) if w.default is not None else None
            elif w.func == "ntile":
                out[i] = _ntile(pos, len(ordered), w.offset)
            elif w.func == "percent_rank":
                out[i] = (rank - 1) / (len(ordered) - 1) if len(ordered) > 1 else 0.0
            else:
                # The frame: the whole partition, or (with ORDER BY) through the last peer.
                end = len(ordered)
                if w.order:
                    end = pos + 1
                    while end < len(ordered) and order_keys[end] == order_keys[pos]:
                        end += 1
                if w.func == "cume_dist":
                    out[i] = end / len(ordered)
                elif w.func == "first_value":
                    out[i] = args[ordered[0]]
                elif w.func == "last_value":
                    out[i] = args[ordered[end - 1]]
                else:
                    out[i] = frame.through(end)
    return out


def _ntile(pos: int, n: int, buckets: int) -> int:
    """PostgreSQL's NTILE: `n` rows in `buckets` buckets as even as can be, the first
    `n % buckets` one row larger (0-based `pos`; 1-based bucket)."""
    size, extra = divmod(n, buckets)
    if pos < extra * (size + 1):
        return pos // (size + 1) + 1
    return extra + (pos - extra * (size + 1)) // size + 1


class _GrowingFrame:
    """SUM/AVG/COUNT/MIN/MAX over a partition's first rows (NULLs ignored, as in SQL).

    The default frame only grows along the partition, so each value is added once: a
    running total over 10,000 groups is 10,000 additions, not 50 million."""

    def __init__(self, w: WindowSpec, values: list[Any]) -> None:
        self.w, self.values = w, values
        self.end = self.count = 0
        self.total: Any = 0.0 if w.type_name == "float8" else 0
        self.best: Any = None

    def through(self, end: int) -> Any:
        """The aggregate over the first `end` values (`end` never decreases)."""
        func = self.w.func
        for v in self.values[self.end : end]:
            if v is None:
                continue
            self.count += 1
            if func == "min":
                self.best = v if self.best is None or v < self.best else self.best
            elif func == "max":
                self.best = v if self.best is None or v > self.best else self.best
            elif func != "count":
                self.total += v
        self.end = max(self.end, end)
        if func == "count":
            return self.count
        if not self.count:
            return None
        if func in ("min", "max"):
            return self.best
        total = Decimal(self.total) if self.w.type_name == "numeric" else self.total
        if func == "sum":
            return total
        return evaluate(exp.Div(this=exp.column("s"), expression=exp.column("n")), {"s": total, "n": self.count})


def _hashable(v: Any) -> Any:
    return v if not isinstance(v, list) else tuple(v)


_UNSET = object()
_VARIANCE = (AggFunc.VAR_POP, AggFunc.VAR_SAMP, AggFunc.STDDEV_POP, AggFunc.STDDEV_SAMP)
# Aggregates released by noisy max over the candidates of a QUANTILE histogram.
_SELECTED = (AggFunc.QUANTILE, AggFunc.MIN, AggFunc.MAX)
_INT_TYPES = ("int8", "int4", "int2")
_EXACT_DECIMAL_INT = 10**27  # below the default Decimal precision (28 digits)
_EXACT_DIGITS = 27


def _aggregate_column(
    spec: AggregateSpec, noisy: dict[str, list[Any]], sum_kind: PrimitiveKind | None
) -> list[Any]:
    """One aggregate's released value in every group, from the noisy primitives.

    Post-processing only. Per-aggregate constants are derived once, and integer results
    of integer steps stay in int arithmetic; every value equals what the Decimal formula
    (`_typed(Decimal(steps) * step, ...)`) gives.
    """
    counts = noisy[spec.count] if spec.count is not None else None
    if spec.func == AggFunc.COUNT:
        assert counts is not None
        # A count below zero is impossible; clamping (and rounding a count of weighted
        # rows to a whole number) are post-processing.
        return [(c if type(c) is int else _typed(c, "int8")) if c > 0 else 0 for c in counts]
    assert spec.sum is not None
    sums = noisy[spec.sum]
    step, rtype = spec.step, spec.result_type
    if spec.func in _SELECTED:
        return [_typed(Decimal(candidate_steps(spec, s)) * step, rtype) for s in sums]
    if spec.func in _VARIANCE:
        sq = noisy[spec.sumsq] if spec.sumsq else [0] * len(sums)
        cs = counts if counts is not None else [0] * len(sums)
        return [_variance(spec, c or 0, s, s2) for c, s, s2 in zip(cs, sums, sq, strict=True)]
    if sum_kind == PrimitiveKind.NORMALIZED_SUM:
        assert counts is not None
        if spec.func == AggFunc.AVG:
            lo, hi, mid = Decimal(spec.lower), Decimal(spec.upper), spec.midpoint
            return [_typed(min(max(Decimal(s) / max(1, c) + mid, lo), hi) * step, rtype, digits=6)
                    for s, c in zip(sums, counts, strict=True)]  # fmt: skip
        totals = [s + spec.midpoint * (c if c > 0 else 0) for s, c in zip(sums, counts, strict=True)]
    else:
        totals = sums
    if rtype in _INT_TYPES and step == step.to_integral_value() and all(
        type(t) is int for t in totals
    ):
        # Decimal(t) * step is then an exact integer (within the Decimal context's 28
        # digits): rounding it to an int gives t * step.
        k = int(step)
        if max(map(abs, totals), default=0) * abs(k) < _EXACT_DECIMAL_INT:
            return [t * k for t in totals]
    return [_typed(Decimal(t) * step, rtype) for t in totals]


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
    if type_name == "date":  # a date's days since 1970-01-01 (rewriter/dates.py)
        return from_epoch_days(int(value.to_integral_value(rounding=ROUND_HALF_EVEN)))
    if type_name in ("int8", "int4", "int2"):
        return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))
    if type_name in ("float8", "float4"):
        return float(value)
    if digits and value.is_finite() and value.adjusted() < _EXACT_DIGITS - digits:
        # (Past the context's 28 digits quantize cannot keep `digits` places: a value that
        # large keeps the places it has.)
        return value.quantize(Decimal(1).scaleb(-digits))
    return value


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
    """An error bound to two decimals; past what two decimals can carry (an aggregate of
    astronomically wide bounds), in scientific notation."""
    v = Decimal(d)
    if v.adjusted() > 24:
        return format(v, ".3e")
    q = v.quantize(Decimal("0.01")).normalize()
    return format(q, "f")
