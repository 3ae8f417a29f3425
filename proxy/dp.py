"""The DP path: rewrite, charge, run the bounded SQL, noise, post-process.

The order matters: the bounded SQL runs while the charge is committed in the ledger,
and its rows are noised and released only after the charge has committed, so no answer
can leave without being paid for; a refused charge discards the run, and a query that
fails in the database after its charge committed keeps the charge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncpg
from sqlglot import exp

from accounting.accountant import (
    ZERO,
    AccountantKind,
    Cost,
    as_fraction,
    epsilon_to_zcdp,
    gaussian_release,
    laplace_release,
)
from accounting.budget import budget_rows
from accounting.cache import AnswerCache, AnswerProbe, CachedAnswer, cache_key
from accounting.ledger import AlreadyAnswered, BudgetExhausted, Charge, Ledger
from accounting.mechanisms import (
    ZCDP_MECHANISMS,
    DeltaRequired,
    Mechanisms,
    NoiseSpec,
    total_delta,
    total_epsilon,
)
from accounting.memo import IdentityMemo
from accounting.pool import LeanPool
from accounting.release import Answer, error_bounds, release
from proxy.commands import Result
from proxy.config import AnalystConfig
from proxy.errors import BUDGET_EXHAUSTED, INVALID_PARAMETER_VALUE, QUERY_FAILED, ProxyError
from proxy.observe import lap, note  # issue #8: per-stage timings and cost, see proxy/observe.py
from proxy.router import refusal_from
from rewriter.errors import INVALID_PARAMETER, RewriteError
from rewriter.metadata import Metadata
from rewriter.nested import HINT as _NESTED_HINT
from rewriter.nested import (
    Nested,
    outer_template,
    post_values,
    split_scalar_subqueries,
    with_post_values,
)
from rewriter.parse import parse_one
from rewriter.plan import DPPlan
from rewriter.rewrite import rewrite
from rewriter.template import instantiate, make_template, parameterize, value_kinds
from rewriter.union import UnionQuery, coerce, order_keys, sort_rows, union_columns, union_query

# The backend's text may quote private values: it is never forwarded.
FAILED_IN_DATABASE = ("the query failed in the database (details are withheld because they could "
                      "reveal private data); its privacy cost has been charged")  # fmt: skip
PLAN_CACHE_SIZE = 1024
_UNSEEN = object()  # a statement shape not seen yet (`DPEngine.bound_plan`)
# Plans bound to values, remembered for a Describe's Execute (`DPEngine.bound_plan`).
BOUND_PLANS = 64
_SEEN_ONCE = object()  # seen once: planned as literals, a template the next time
STORED_KEYS = 4096

log = logging.getLogger("dpproxy.dp")


def fmt_decimal(d: Decimal, places: int = 6) -> str:
    """A short human rendering of an exact epsilon (trailing zeros dropped; a value too
    small for `places` decimals in three significant digits, not as 0)."""
    if d and abs(d) < Decimal(1).scaleb(-places):
        return format(d, ".3g")
    q = d.quantize(Decimal(1).scaleb(-places)).normalize()
    return format(q, "f")


class DPEngine:
    """Answers DP queries for every session of one proxy process."""

    def __init__(
        self,
        meta: Metadata,
        mechanisms: Mechanisms,
        ledger: Ledger,
        data: LeanPool,
        cache: AnswerCache | None = None,
        cache_shared: bool = False,
        data_version: str = "",
        default_delta: Decimal = Decimal("1e-7"),
    ) -> None:
        self.meta = meta
        self.mechanisms = mechanisms
        self.ledger = ledger
        self.data = data
        # Issue #5: the answer cache (None: off) and the session-independent delta.
        self.cache = cache
        self.cache_shared = cache_shared
        self.data_version = data_version
        self.default_delta = default_delta
        self._plans: OrderedDict[str, DPPlan] = OrderedDict()
        # Issue #7: plans that bind filter parameters, by (statement text, value kinds):
        # a template, None where values must be planned as literals, or _SEEN_ONCE.
        self._templates: OrderedDict[tuple[str, tuple[str, ...]], DPPlan | object | None] = OrderedDict()
        self._bound: OrderedDict[tuple[Any, ...], tuple[DPPlan, DPPlan]] = OrderedDict()
        # Calibrated noise and its price by what they depend on (issue #7): the same
        # statement at the same epsilon is calibrated once, whatever its values.
        self._calibrations: OrderedDict[tuple[Any, ...], tuple[list[NoiseSpec], Cost]] = OrderedDict()
        # Noise-bounds texts by calibration and aggregate list (held, so ids stay theirs).
        self._bounds: OrderedDict[tuple[int, int, Any], tuple[list[NoiseSpec], Any, str]] = OrderedDict()
        # The charge log's mechanism records of a calibration, made once per calibration
        # (shared, never changed; the ledger also renders their JSON once).
        self._mechanism_records: IdentityMemo[list[NoiseSpec], list[dict[str, object]]] = IdentityMemo(
            lambda noise: [_mech_record(n) for n in noise], PLAN_CACHE_SIZE)
        # Cache keys this process has seen stored: their next lookup is probably a hit,
        # so the bounded SQL waits for it instead of starting alongside (issue #7).
        self._stored: OrderedDict[str, None] = OrderedDict()
        # Answers being written to the cache after they were sent (issue #7), with the
        # write: a repeat in this process is answered from here, so it is a hit however
        # long the write takes; `flush` waits for the writes at shutdown.
        self._storing: dict[str, tuple[asyncio.Task[bool], CachedAnswer]] = {}
        self._writes: set[asyncio.Task[bool]] = set()  # every write not yet done

    def noise(self, plan: DPPlan, epsilon: Decimal, delta: Decimal | None) -> list[NoiseSpec]:
        """Calibrate the plan's noise; delta is spent only by plans that need it."""
        d = self.default_delta if delta is None else delta
        try:
            return self.mechanisms.plan_noise(plan, epsilon, d if plan.needs_delta else Decimal(0))
        except DeltaRequired as e:
            raise ProxyError(
                INVALID_PARAMETER,
                f"{e}: delta is {d}",
                hint="group by columns with a declared public domain, or SET dp.delta to a "
                "small positive number",
            ) from e

    def explain(self, text: str, epsilon: Decimal, delta: Decimal | None = None) -> Result:
        """EXPLAIN <query>: the plan, mechanisms and error bounds; runs and charges nothing."""
        body = _strip_explain(text)
        tree = parse_one(body)
        union = _union_query(tree)
        if union is not None:
            plans = self._union_plans(body, union.branches)
            share = Decimal(len(plans))
            d = (self.default_delta if delta is None else delta) / share
            lines = [f"UNION ALL of {len(plans)} releases, each with 1/{len(plans)} of epsilon and delta:"]
            for i, p in enumerate(plans, 1):
                lines += [f"[{i}] {ln}" for ln in self._explain_lines(p, epsilon / share, d)]
            return Result(tag="EXPLAIN", columns=[("QUERY PLAN", "text")], rows=[(ln,) for ln in lines])
        nested = _nested(tree, self.meta)
        if nested is not None:
            inner, template = self._nested_plans(body, nested)
            share = Decimal(len(inner) + 1)
            d = (self.default_delta if delta is None else delta) / share
            lines = [f"{len(inner)} scalar subquer{'y' if len(inner) == 1 else 'ies'} and the outer query: "
                     f"{len(inner) + 1} releases, each with 1/{len(inner) + 1} of epsilon and delta; "
                     "the outer query runs with the subqueries' noisy values as $1..$n:"]  # fmt: skip
            for i, p in enumerate([*inner, template], 1):
                lines += [f"[{i}] {ln}" for ln in self._explain_lines(p, epsilon / share, d)]
            return Result(tag="EXPLAIN", columns=[("QUERY PLAN", "text")], rows=[(ln,) for ln in lines])
        plan = self.plan(body, tree)
        return Result(tag="EXPLAIN", columns=[("QUERY PLAN", "text")],
                      rows=[(ln,) for ln in self._explain_lines(plan, epsilon, delta)])  # fmt: skip

    def _explain_lines(self, plan: DPPlan, epsilon: Decimal, delta: Decimal | None) -> list[str]:
        """What EXPLAIN says of one plan: cost, bounding, mechanisms, error bounds, SQL."""
        if plan.public_only:
            return [f'The declared public values of dataset "{plan.dataset}", from its metadata: '
                    "the database is not read and nothing is spent"]  # fmt: skip
        noise = self.noise(plan, epsilon, delta)
        lines = [
            f'DP query on dataset "{plan.dataset}": would cost epsilon '
            f"{fmt_decimal(total_epsilon(noise))}, delta {_fmt_delta(total_delta(noise))} "
            "(EXPLAIN runs nothing and spends nothing)",
            _bounding_line(plan),
        ]
        dens = {p.name: p.denominator for p in plan.primitives}
        if plan.selection is not None:
            sel = next(n for n in noise if n.primitive == plan.selection)
            lines.append(
                f"Partition selection: a group is released only if its noisy count of units "
                f"reaches {sel.threshold} (discrete Laplace, scale {sel.scale:g}, epsilon "
                f"{fmt_decimal(sel.epsilon)}, delta {_fmt_delta(sel.delta)})"
            )
        for n in noise:
            if n.primitive == plan.selection:
                continue
            lines.append(
                f"Primitive {n.primitive} {n.label}: {n.mechanism.replace('_', ' ')}, "
                f"sensitivity {n.sensitivity}, scale {n.scale:g}, epsilon "
                f"{fmt_decimal(n.epsilon)}, 95% error ±{n.error95} "
                + ("(integer units)" if dens[n.primitive] == 1 else
                   f"(units of 1/{dens[n.primitive]})")
            )
        for b in error_bounds(plan, noise):
            lines.append(f"Output {b.label}: 95% error {b.text}")
        lines.append(f"Rewritten SQL: {plan.sql}")
        if plan.sql_params:
            lines.append("Parameters: " + ", ".join(
                f"${i} = {_sql_value(v)}" for i, v in enumerate(plan.sql_params, 1)))  # fmt: skip
        return lines

    def columns(self, sql: str, tree: exp.Expression, plan: DPPlan | None = None) -> list[tuple[str, str]]:
        """The answer's (name, type) columns, for Describe: a plan's or a union's."""
        if plan is not None:
            return [(o.name, o.type_name) for o in plan.outputs]
        nested = _nested(tree, self.meta)
        if nested is not None:
            return [(o.name, o.type_name) for o in self._nested_plans(sql, nested)[1].outputs]
        union = _union_query(tree)
        if union is not None:
            try:
                return union_columns(self._union_plans(sql, union.branches))
            except RewriteError as e:
                raise refusal_from(e) from e
        return [(o.name, o.type_name) for o in self.plan(sql, tree).outputs]

    def _nested_plans(self, sql: str, nested: Nested) -> tuple[list[DPPlan], DPPlan]:
        """The plans of a statement's scalar subqueries, and its outer query's template
        with their values as $1..$n (rewriter/nested.py): both fixed before any value."""
        try:
            inner = [self.plan(f"{sql}\x00s{i}", s) for i, s in enumerate(nested.inner)]
        except ProxyError as e:
            if e.sqlstate not in ("42703", "42P01"):
                raise
            # A name the subquery alone does not have: most likely the outer query's.
            raise ProxyError("0A000", f"correlated scalar subqueries are not supported ({e.message})",
                             hint=_NESTED_HINT) from e  # fmt: skip
        for p in inner:
            if p.keys or len(p.outputs) != 1 or p.public_only or p.outputs[0].type_name not in _BOUND_KINDS:
                raise ProxyError("0A000", "a scalar subquery must return one number or date: one "
                                 "aggregate, no GROUP BY", hint=_NESTED_HINT)  # fmt: skip
        key = f"{sql}\x00outer"
        template = self._plans.get(key)
        if template is None:
            try:
                template = outer_template(nested, _kinds(inner), self.meta)
            except RewriteError as e:
                raise refusal_from(e) from e
            self._plans[key] = template
        return inner, template

    async def _answer_nested(
        self, sql: str, nested: Nested, analyst: AnalystConfig, epsilon: Decimal, delta: Decimal | None,
    ) -> Result:  # fmt: skip
        """Scalar subqueries: each a release with an equal share of epsilon and delta
        (the outer query one more), one charge for the whole statement; the subqueries'
        noisy values are bound into the outer query's template, which then runs."""
        inner, template = self._nested_plans(sql, nested)
        lap("parse_rewrite")  # issue #8
        whole = replace(template, fingerprint=_union_fingerprint([*inner, template]),
                        reads_clock=any(p.reads_clock for p in [*inner, template]))  # fmt: skip
        key, hit = await self._stored_answer(whole, analyst, epsilon, delta)
        if hit is not None:
            return hit
        share = Decimal(len(inner) + 1)
        d = (self.default_delta if delta is None else delta) / share
        noises = [self._noise(p, epsilon / share, d) for p in inner]
        outer_noise = self._noise(template, epsilon / share, d)
        backends = [self._run(p) for p in inner]
        try:
            flat = [n for ns in noises for n in ns] + outer_noise
            cost = price(flat)
            charge = await self._charge(analyst.name, whole, cost, flat)
            values = []
            for plan, noise, backend in zip(inner, noises, backends, strict=True):
                values.append(_bound_value(release(plan, await _fetched(backend), noise, self.mechanisms)))
            f = nested.filters
            outer = instantiate(template, values[:f]) if f else template
            if f < len(values):
                outer = with_post_values(outer, post_values(_kinds(inner), f, values))
            answer = release(outer, await _fetched(self._run(outer)), outer_noise, self.mechanisms)
            lap("backend")  # issue #8
        finally:
            for backend in backends:
                _discard(backend)
        lap("noise")  # issue #8
        bounds = [_bounds(n, p) for p, n in zip([*inner, outer], [*noises, outer_noise], strict=True) if n]
        if key is not None:
            self._store(key, whole, analyst, CachedAnswer(answer.columns, answer.rows, "; ".join(bounds)))
        notice = (
            f'dpproxy: {_cost_text(charge.epsilon, cost, self.ledger.accountant.kind)} spent on dataset '
            f'"{template.dataset}" over {len(inner) + 1} releases (the scalar subqueries\' noisy values: '
            f"{', '.join(_sql_value(v) for v in values)}), "
            f"{fmt_decimal(_dec(charge.remaining_epsilon))} of {fmt_decimal(_dec(charge.budget_epsilon))} "
            f"remaining (new answer{_CACHED if key else ''}). 95% noise bounds: {'; '.join(bounds)}"
        )
        return Result(tag=f"SELECT {len(answer.rows)}", columns=answer.columns, rows=answer.rows,
                      notices=[notice])  # fmt: skip

    def _union_plans(self, sql: str, branches: list[exp.Expression]) -> list[DPPlan]:
        try:
            return [self.plan(f"{sql}\x00{i}", b) for i, b in enumerate(branches)]
        except RewriteError as e:
            raise refusal_from(e) from e

    async def _answer_union(
        self, sql: str, union: UnionQuery, analyst: AnalystConfig, epsilon: Decimal,
        delta: Decimal | None,
    ) -> Result:  # fmt: skip
        """UNION ALL: each branch a release with an equal share of epsilon and delta, one
        charge for the whole statement, the branches' rows one after the other."""
        try:
            plans = self._union_plans(sql, union.branches)
            columns = union_columns(plans)
            order = order_keys(columns, union)
        except RewriteError as e:
            raise refusal_from(e) from e
        lap("parse_rewrite")  # issue #8
        whole = replace(plans[0], fingerprint=_union_fingerprint(plans), reads_clock=any(p.reads_clock for p in plans))
        key, hit = await self._stored_answer(whole, analyst, epsilon, delta)
        if hit is not None:
            return hit
        share = Decimal(len(plans))
        d = (self.default_delta if delta is None else delta) / share
        noises = [[] if p.public_only else self._noise(p, epsilon / share, d) for p in plans]
        backends = [None if p.public_only else self._run(p) for p in plans]
        try:
            flat = [n for ns in noises for n in ns]
            cost = price(flat)
            charge = await self._charge(analyst.name, whole, cost, flat)
            results = [await _fetched(backend) if backend is not None else [] for backend in backends]
            lap("backend")  # issue #8
        finally:
            for backend in backends:
                if backend is not None:
                    _discard(backend)
        rows = []
        bounds = []
        for plan, noise, exact in zip(plans, noises, results, strict=True):
            rows += [tuple(coerce(v, t) for v, (_, t) in zip(r, columns, strict=True))
                     for r in release(plan, exact, noise, self.mechanisms).rows]  # fmt: skip
            if noise:
                bounds.append(_bounds(noise, plan))
        rows = sort_rows(rows, order, union)
        lap("noise")  # issue #8
        if key is not None:
            self._store(key, whole, analyst, CachedAnswer(columns, rows, "; ".join(bounds)))
        notice = (
            f'dpproxy: {_cost_text(charge.epsilon, cost, self.ledger.accountant.kind)} spent on dataset '
            f'"{plans[0].dataset}" over {len(plans)} UNION ALL releases, '
            f"{fmt_decimal(_dec(charge.remaining_epsilon))} of {fmt_decimal(_dec(charge.budget_epsilon))} "
            f"remaining (new answer{_CACHED if key else ''}). 95% noise bounds: {'; '.join(bounds)}"
        )
        return Result(tag=f"SELECT {len(rows)}", columns=columns, rows=rows, notices=[notice])

    async def _stored_answer(
        self, whole: DPPlan, analyst: AnalystConfig, epsilon: Decimal, delta: Decimal | None
    ) -> tuple[str | None, Result | None]:
        """A statement of several releases: its answer-cache key (None when it is not
        cached) and its stored answer, if a repeat. (Looked up before the charge, not
        inside it as single releases are: a concurrent twin may then be charged too.)"""
        key = self._cache_key(whole, analyst.name, epsilon, self.default_delta if delta is None else delta)
        if key is None:
            return None, None
        assert self.cache is not None
        storing = self._storing.get(key)
        hit = storing[1] if storing is not None else await self.cache.get(key)
        lap("cache_lookup")  # issue #8
        note(cache_hit=hit is not None)  # issue #8
        if hit is None:
            return key, None
        self._remember(key)
        return key, await self._cached_result(hit, whole, analyst)

    def has_plan(self, key: str) -> bool:
        """Whether a plan is cached under this key (then `plan` ignores its tree)."""
        return key in self._plans

    def bound_plan(self, text: str, tree: exp.Expression, params: list[Any]) -> DPPlan | None:
        """The plan of a parameterised statement (`tree` unbound) for these values, from
        its template: made once per statement text and value kinds, then only bound.
        None when the values must be planned as literals (rewriter/template.py says when)."""
        kinds = value_kinds(params)
        if kinds is None:
            return None
        key = (text, kinds)
        entry = self._templates.get(key, _UNSEEN)
        if entry is _UNSEEN:
            # A statement seen once is planned as literals (one rewrite): a template costs
            # two, and pays off only when the statement comes back with other values.
            self._templates[key] = _SEEN_ONCE
            if len(self._templates) > PLAN_CACHE_SIZE:
                self._templates.popitem(last=False)
            return None
        if entry is _SEEN_ONCE:
            entry = self._templates[key] = make_template(tree, kinds, self.meta)
        self._templates.move_to_end(key)
        if not isinstance(entry, DPPlan):
            return None
        # Drivers Describe a portal and then Execute it: the same values, bound twice.
        # (`key` holds the values' kinds, so equal values of other types, 1 and
        # Decimal(1), which render differently, never share a plan.)
        bound_key = (key, tuple(params))
        plan = self._bound.get(bound_key)
        if plan is None or plan[0] is not entry:
            plan = self._bound[bound_key] = (entry, instantiate(entry, params))
            if len(self._bound) > BOUND_PLANS:
                self._bound.popitem(last=False)
        return plan[1]

    def _from_template(self, tree: exp.Expression) -> DPPlan | None:
        """A statement's plan from the template of its shape, its filter literals bound
        as parameters (rewriter/template.py `parameterize`); None if it has none."""
        found = parameterize(tree)
        if found is None:
            return None
        shape, values = found
        return self.bound_plan(shape.sql(dialect="postgres"), shape, values)

    def plan(self, sql: str, tree: exp.Expression) -> DPPlan:
        """The DP plan of a statement (cached by its text: rewriting is pure)."""
        cached = self._plans.get(sql)
        if cached is not None:
            self._plans.move_to_end(sql)
            return cached
        try:
            plan = self._from_template(tree) or rewrite(tree, self.meta)
        except RewriteError as e:
            raise refusal_from(e) from e
        self._plans[sql] = plan
        if len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    async def answer(
        self,
        sql: str,
        tree: exp.Expression,
        analyst: AnalystConfig,
        epsilon: Decimal,
        delta: Decimal | None = None,
        plan: DPPlan | None = None,
    ) -> Result:
        """Answer one DP query: from the cache for free, or charged, run and released.

        The bounded SQL runs on the database while the ledger commits the charge; its
        rows are used only once the charge has committed. A refused charge discards the
        run (and costs nothing); a run that fails after the charge committed keeps it.
        `plan`: the statement's plan when the caller has it (a template's, `bound_plan`).
        """
        if plan is None:
            union = _union_query(tree)
            if union is not None:
                return await self._answer_union(sql, union, analyst, epsilon, delta)
            nested = _nested(tree, self.meta)
            if nested is not None:
                return await self._answer_nested(sql, nested, analyst, epsilon, delta)
            plan = self.plan(sql, tree)
        lap("parse_rewrite")  # issue #8
        if plan.public_only:
            return _public_values(plan, self.mechanisms)
        delta = self.default_delta if delta is None else delta
        cache_key = self._cache_key(plan, analyst.name, epsilon, delta)
        # The bounded SQL starts at once, alongside the cache lookup, unless this process
        # knows the answer is stored (then a hit is likely, and the run would be wasted).
        storing = self._storing.get(cache_key) if cache_key is not None else None
        if storing is not None:
            # Released by this process a moment ago, its write still on its way: the
            # same answer again (if another replica stored one first, later repeats get
            # that one; both were charged).
            lap("cache_lookup")  # issue #8
            note(cache_hit=True, epsilon=ZERO.epsilon, delta=ZERO.delta)  # issue #8
            return await self._cached_result(storing[1], plan, analyst)
        backend = None if cache_key in self._stored else self._run(plan)
        charging: asyncio.Future[Charge] | None = None
        try:
            probe = None
            if cache_key is not None:
                assert self.cache is not None
                if cache_key in self._stored:
                    hit = await self.cache.get(cache_key)
                    lap("cache_lookup")  # issue #8
                    note(cache_hit=hit is not None, epsilon=ZERO.epsilon, delta=ZERO.delta)  # issue #8
                    if hit is not None:
                        self._remember(cache_key)
                        return await self._cached_result(hit, plan, analyst)
                else:
                    # Not known to be stored: looked up inside the charge, one round trip
                    # less (another replica's, or a previous process's, answer is rare).
                    probe = self.cache.probe(cache_key)
                    lap("cache_lookup")  # issue #8: ~0 here; the lookup's time is in ledger_charge
                    note(cache_hit=False, epsilon=ZERO.epsilon, delta=ZERO.delta)  # issue #8
            noise, cost = self._calibrated(plan, epsilon, delta)
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Queued at once: the batcher sends the write in the loop's next turn, right
            # after the bounded SQL (started above) is sent.
            charging = self._submit(analyst.name, plan, cost, noise, probe, sent)
            if backend is None:
                backend = self._run(plan)
            early = await self._release_while_charging(charging, sent, backend, plan, noise)
            try:
                charge = await self._outcome(charging)
            except (AlreadyAnswered, ProxyError) as e:
                # A stored answer, or a refusal decided before the probe ran: a repeat
                # is answered from the cache whatever budget is left.
                if probe is None or (isinstance(e, ProxyError) and e.sqlstate != BUDGET_EXHAUSTED):
                    raise
                assert self.cache is not None and cache_key is not None
                hit = await self.cache.get(cache_key)
                lap("cache_lookup")  # issue #8
                if hit is not None:
                    note(cache_hit=True)  # issue #8
                    self._remember(cache_key)
                    return await self._cached_result(hit, plan, analyst)
                if isinstance(e, ProxyError):
                    raise
                early = None  # its noise was drawn for a charge that was not made
                charge = await self._charge(analyst.name, plan, cost, noise)  # expired meanwhile
            if early is None:
                try:
                    rows = await backend
                    lap("backend")  # issue #8: the wait for the database after the charge
                except (asyncpg.PostgresError, OSError) as e:
                    # The backend's text may quote private values: never forward it.
                    raise ProxyError(QUERY_FAILED, FAILED_IN_DATABASE) from e
        finally:
            if backend is not None:
                _discard(backend)
            if charging is not None and not charging.done():  # cancelled: it commits or not alone
                charging.add_done_callback(_retrieve)
        answer = early if early is not None else release(plan, rows, noise, self.mechanisms)
        lap("noise")  # issue #8
        bounds = self._bounds_text(noise, plan)
        columns, out_rows = answer.columns, answer.rows
        if cache_key is not None:
            self._store(cache_key, plan, analyst, CachedAnswer(columns, out_rows, bounds))
        cost_text = _cost_text(charge.epsilon, cost, self.ledger.accountant.kind)
        notice = (
            f'dpproxy: {cost_text} spent on dataset "{plan.dataset}", '
            f"{fmt_decimal(_dec(charge.remaining_epsilon))} of "
            f"{fmt_decimal(_dec(charge.budget_epsilon))} remaining (new answer"
            f"{_CACHED if cache_key else ''}). 95% noise bounds: {bounds}"
        )
        return Result(
            tag=f"SELECT {len(out_rows)}", columns=columns, rows=out_rows, notices=[notice]
        )

    def _store(self, key: str, plan: DPPlan, analyst: AnalystConfig, answer: CachedAnswer) -> None:
        """Write a new answer to the cache without holding up its reply.

        The write goes with the others of the next ~20 ms in one statement (the cache's
        store window); repeats meanwhile are answered from `_storing`. Sending first is
        safe: the answer is released either way, and both it and any answer a concurrent
        identical query stored first were charged; the first one stored is what later
        repeats get.
        """
        assert self.cache is not None
        task = asyncio.ensure_future(self.cache.put(
            key, plan.dataset, None if self.cache_shared else analyst.name, plan.fingerprint, answer,
        ))  # fmt: skip
        self._storing[key] = (task, answer)
        self._writes.add(task)

        def stored(t: asyncio.Task[bool]) -> None:
            self._writes.discard(t)
            if key in self._storing and self._storing[key][0] is t:
                del self._storing[key]
            if t.cancelled():
                return
            if t.exception() is not None:  # a later repeat is then charged as new: no leak
                log.warning("answer cache: storing an answer failed (%s)", type(t.exception()).__name__)
                return
            self._remember(key)

        task.add_done_callback(stored)

    async def flush(self) -> None:
        """Wait for the answers still being written to the cache (at shutdown)."""
        if self._writes:
            await asyncio.wait(list(self._writes))

    def _run(self, plan: DPPlan) -> asyncio.Future[Any]:
        """Start the bounded SQL; its rows are read only after the charge has committed."""
        return asyncio.ensure_future(self.data.fetch(plan.sql, *plan.sql_params))

    def _remember(self, key: str) -> None:
        """Note that the shared cache holds an answer for `key` (a hint, never an answer)."""
        self._stored[key] = None
        self._stored.move_to_end(key)
        if len(self._stored) > STORED_KEYS:
            self._stored.popitem(last=False)

    async def _release_while_charging(
        self, charging: asyncio.Future[Charge], sent: asyncio.Future[None],
        backend: asyncio.Future[Any], plan: DPPlan, noise: list[NoiseSpec],
    ) -> Answer | None:  # fmt: skip
        """The noisy answer, computed while the ledger writes an accepted charge.

        Only once the ledger has decided to accept the charge and sent its write (`sent`)
        and the rows have arrived: the answer is then ready when the write commits, and is
        sent only if it does (its noise is discarded otherwise; no draw is used twice).
        Until then it only waits, so a refusal (decided before the write is sent) replies
        at once, never after the run. None if the charge ended first, or the run failed
        (the caller then goes the ordinary way and reports it after the charge).
        """
        while not charging.done():
            if sent.done() and backend.done():
                if backend.cancelled() or backend.exception() is not None:
                    return None
                lap("backend")  # issue #8: the rows came while the write was in flight
                try:
                    early = release(plan, backend.result(), noise, self.mechanisms)
                    lap("noise")  # issue #8
                    return early
                except Exception:  # noqa: BLE001 - raised again after the charge, in order
                    return None
            waiting = [f for f in (charging, sent, backend) if not f.done()]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        return None

    async def _charge(self, analyst: str, plan: DPPlan, cost: Cost, noise: list[NoiseSpec]) -> Charge:
        """Commit the query's cost in the ledger, or refuse it with 53Z01 (nothing charged)."""
        return await self._outcome(self._submit(analyst, plan, cost, noise))

    def _submit(self, analyst: str, plan: DPPlan, cost: Cost, noise: list[NoiseSpec],
                probe: AnswerProbe | None = None, sent: asyncio.Future[None] | None = None,
                ) -> asyncio.Future[Charge]:  # fmt: skip
        """Queue the query's charge (`Ledger.submit`); with `probe`, it is not made if its
        answer is stored; `sent` as in `Ledger.charge`."""
        return self.ledger.submit(
            analyst, plan.dataset, plan.fingerprint, cost,
            mechanisms=self._mechanism_records(noise), unless_answered=probe, sent=sent,
        )  # fmt: skip

    async def _outcome(self, charged: asyncio.Future[Charge]) -> Charge:
        """The committed charge; a refusal as 53Z01, AlreadyAnswered as it is."""
        try:
            charge = await charged
        except BudgetExhausted as e:
            raise ProxyError(
                BUDGET_EXHAUSTED,
                e.message,
                hint="lower dp.epsilon (SET dp.epsilon = ...), repeat an earlier query "
                "(repeats are answered from the cache for free), or ask an admin for more budget",
            ) from e
        lap("ledger_charge")  # issue #8: until the charge has committed
        note(epsilon=charge.epsilon, delta=charge.cost.delta)  # issue #8
        return charge

    # --- budgets and the answer cache (issue #5) --------------------------------------

    def _bounds_text(self, noise: list[NoiseSpec], plan: DPPlan) -> str:
        """`_bounds`, remembered per calibration and aggregate list (both shared by every
        execution of a template; ~0.05 ms of decimal formatting each time otherwise)."""
        key = (id(noise), id(plan.aggregates), plan.selection)
        hit = self._bounds.get(key)
        if hit is None or hit[0] is not noise or hit[1] is not plan.aggregates:
            hit = self._bounds[key] = (noise, plan.aggregates, _bounds(noise, plan))
            if len(self._bounds) > PLAN_CACHE_SIZE:
                self._bounds.popitem(last=False)
        return hit[2]

    def _calibrated(self, plan: DPPlan, epsilon: Decimal, delta: Decimal) -> tuple[list[NoiseSpec], Cost]:
        """`_noise` and its `price`, remembered by everything they read (the primitives,
        partition selection, epsilon and delta; the accountant is the process's). The
        specs are shared between queries: nothing may change them."""
        key = (plan.primitives, plan.selection, epsilon, delta)
        hit = self._calibrations.get(key)
        if hit is None:
            noise = self._noise(plan, epsilon, delta)
            hit = self._calibrations[key] = (noise, price(noise))
            if len(self._calibrations) > PLAN_CACHE_SIZE:
                self._calibrations.popitem(last=False)
        return hit

    def _noise(self, plan: DPPlan, epsilon: Decimal, delta: Decimal) -> list[NoiseSpec]:
        """Calibrate the plan's noise for the dataset's accountant."""
        acc = self.ledger.accountant
        if acc.kind == AccountantKind.ZCDP:
            # The analyst asks for epsilon at delta; the query gets the largest rho whose
            # (epsilon, delta) conversion stays within it, spent on discrete Gaussians.
            if not 0 < delta < 1:
                raise ProxyError(
                    INVALID_PARAMETER_VALUE,
                    f"dp.delta must be above 0 and below 1 on a zCDP dataset, not {delta}",
                    hint="for example SET dp.delta = 1e-7",
                )
            if plan.selection is not None:
                raise ProxyError(
                    "0A000",
                    "GROUP BY keys without a public domain need partition selection, which "
                    "this dataset's zCDP accountant does not offer",
                    hint="group by columns with a declared public domain",
                )
            rho = epsilon_to_zcdp(Fraction(epsilon), Fraction(delta))
            return self.mechanisms.plan_noise_gaussian(plan, _dec(rho))
        return self.noise(plan, epsilon, delta)

    def _cache_key(self, plan: DPPlan, analyst: str, epsilon: Decimal, delta: Decimal) -> str | None:
        # An answer relative to the clock (CURRENT_DATE - 30) would go stale in the cache.
        if self.cache is None or plan.reads_clock:
            return None
        return cache_key(
            plan.dataset, None if self.cache_shared else analyst, plan.fingerprint, epsilon,
            delta, self.ledger.accountant.kind.value, self.data_version,
        )  # fmt: skip

    async def _cached_result(self, hit: CachedAnswer, plan: DPPlan, analyst: AnalystConfig) -> Result:
        rows = await budget_rows(self.ledger.pool, analyst.name, plan.dataset, count_queries=False)
        tail = ""
        if rows:
            r = rows[0]
            tail = (f", {fmt_decimal(_dec(r.remaining_epsilon))} of "
                    f"{fmt_decimal(_dec(r.budget_epsilon))} remaining")  # fmt: skip
        notice = (
            f'dpproxy: cache hit, epsilon 0 spent on dataset "{plan.dataset}"{tail} '
            f"(this exact query was answered before; the same answer is returned). "
            f"95% noise bounds: {hit.bounds}"
        )
        return Result(
            tag=f"SELECT {len(hit.rows)}", columns=hit.columns, rows=hit.rows, notices=[notice]
        )


def price(noise: list[NoiseSpec]) -> Cost:
    """A query's cost from its releases' own privacy maps (Laplace: epsilon, Gaussian: rho)."""
    total = ZERO
    for n in noise:
        if n.mechanism in ZCDP_MECHANISMS:
            total = total + gaussian_release(n.rho)
        else:
            # Partition selection is (epsilon, delta)-DP: its delta composes additively.
            total = total + replace(laplace_release(n.epsilon), delta=as_fraction(n.delta))
    return total


def _sql_value(v: Any) -> str:
    """A bound value as EXPLAIN shows it (SQL literal syntax)."""
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, (int, Decimal)):
        return str(v)
    return f"'{v.isoformat(sep=' ') if isinstance(v, datetime) else v.isoformat()}'"


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel a backend run whose rows will not be used (refused charge, cancellation).

    Nothing waits for it: the reply must not depend on how long the database takes to
    stop. Its outcome is retrieved so that asyncio does not log it.
    """
    if not task.done():
        task.cancel()
    task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished task's outcome that nothing awaits, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def _dec(f: Fraction) -> Decimal:
    return Decimal(f.numerator) / Decimal(f.denominator)


def _cost_text(epsilon: Fraction, cost: Cost, kind: AccountantKind) -> str:
    if kind == AccountantKind.ZCDP:
        return f"epsilon {fmt_decimal(_dec(epsilon))} (rho {fmt_decimal(_dec(cost.rho), 9)})"
    return f"epsilon {fmt_decimal(_dec(epsilon))}"


def _bounds(noise: list[NoiseSpec], plan: DPPlan) -> str:
    bars = [f"{b.label} {b.text}" for b in error_bounds(plan, noise)]
    if plan.selection is not None:
        sel = next(n for n in noise if n.primitive == plan.selection)
        bars.append(f"groups with fewer than about {sel.threshold} units are not shown")
    return "; ".join(bars)


def _union_query(tree: exp.Expression) -> UnionQuery | None:
    """The branches of a UNION ALL or grouping-sets statement (None for any other)."""
    try:
        return union_query(tree)
    except RewriteError as e:
        raise refusal_from(e) from e


_CACHED = ", cached for repeats"


def _nested(tree: exp.Expression, meta: Metadata) -> Nested | None:
    """The split of a statement with scalar subqueries in WHERE (None for any other)."""
    try:
        return split_scalar_subqueries(tree, frozenset(t.lower() for t in meta.public_tables()))
    except RewriteError as e:
        raise refusal_from(e) from e


# The template kind a subquery's released value is bound as, by its output type.
_BOUND_KINDS = {"int2": "int", "int4": "int", "int8": "int", "numeric": "numeric", "float4": "numeric",
                "float8": "numeric", "date": "date"}  # fmt: skip
def _kinds(inner: list[DPPlan]) -> tuple[str, ...]:
    """The kind each subquery's released value is bound as."""
    return tuple(_BOUND_KINDS[p.outputs[0].type_name] for p in inner)


def _bound_value(answer: Answer) -> Any:
    """A subquery's released value, as the outer template binds it (floats as numerics).

    NULL (a post-processed value, `NULLIF(COUNT(*), 0)`) is bound as NULL, as PostgreSQL
    substitutes a scalar subquery's NULL: a comparison with it holds for no row."""
    value = answer.rows[0][0]
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal) and not value.is_finite():
        raise ProxyError("22004", "the scalar subquery's noisy value is not finite; its "
                         "privacy cost has been charged")  # fmt: skip
    return value


async def _fetched(backend: asyncio.Future[Any]) -> Any:
    """The rows of a bounded SQL run (the database's error text withheld)."""
    try:
        return await backend
    except (asyncpg.PostgresError, OSError) as e:
        raise ProxyError(QUERY_FAILED, FAILED_IN_DATABASE) from e


def _union_fingerprint(plans: list[DPPlan]) -> str:
    """The ledger's fingerprint of a UNION ALL: its branches' fingerprints, hashed."""
    return hashlib.sha256("|".join(p.fingerprint for p in plans).encode()).hexdigest()[:32]


def _public_values(plan: DPPlan, mechanisms: Mechanisms) -> Result:
    """A query that only lists declared public values: answered from the metadata."""
    answer = release(plan, [], [], mechanisms)
    notice = (f'dpproxy: the declared public values of dataset "{plan.dataset}" (every value '
              "the metadata lists, whether or not the data holds it): nothing spent")  # fmt: skip
    return Result(tag=f"SELECT {len(answer.rows)}", columns=answer.columns, rows=answer.rows,
                  notices=[notice])  # fmt: skip


def _strip_explain(text: str) -> str:
    """The query of an EXPLAIN statement (options such as ANALYZE or (...) dropped)."""
    rest = text.strip()
    rest = rest[len("explain"):].lstrip() if rest.lower().startswith("explain") else rest
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                rest = rest[i + 1 :].lstrip()
                break
    words = ("analyze", "analyse", "verbose", "costs", "buffers", "timing", "summary")
    while rest.split(None, 1) and rest.split(None, 1)[0].lower() in words:
        rest = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
    return rest


def _bounding_line(plan: DPPlan) -> str:
    """How the plan bounds each unit's contribution, in words."""
    if plan.bounding == "none":
        return ("Contribution bounding: none needed (each privacy unit has one row, or "
                "adds at most one to a count of distinct units)")  # fmt: skip
    if plan.bounding == "weighted_groups":
        return (f"Contribution bounding: each privacy unit keeps at most {plan.max_groups} of "
                f"its groups (chosen at random); a unit with n > {plan.max_rows} rows in them "
                f"has each row weighted by {plan.max_rows}/n")  # fmt: skip
    if plan.bounding == "weighted":
        return (f"Contribution bounding: a privacy unit with n > {plan.max_rows} rows (after "
                f"joins) has each row weighted by {plan.max_rows}/n")  # fmt: skip
    return (f"Contribution bounding: each privacy unit keeps at most {plan.max_rows} rows "
            f"(after joins), in at most {plan.max_groups} groups")  # fmt: skip


def _fmt_delta(d: Decimal) -> str:
    return "0" if d == 0 else f"{float(d):.3g}"


def _mech_record(n: NoiseSpec) -> dict[str, object]:
    return {
        "primitive": n.label,
        "mechanism": n.mechanism,
        "sensitivity": n.sensitivity,
        "scale": n.scale,
        "epsilon": str(n.epsilon),
        "rho": str(n.rho),
        "delta": str(n.delta),
    }
