"""The DP plan: what the rewriter hands to accounting and the proxy.

A plan is pure data. It holds the bounded SQL to run, the noisy primitives that SQL
computes (exact integers per group), how each analyst-visible aggregate is derived from
them, and the post-processing (expressions, HAVING, ORDER BY, LIMIT) over noisy values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlglot import exp


class PrimitiveKind(StrEnum):
    """What a noisy primitive measures, per group, as an exact integer."""

    COUNT = "count"  # rows (or non-NULL values) after contribution bounding
    SUM = "sum"  # sum of clamped fixed-point values
    NORMALIZED_SUM = "normalized_sum"  # sum of (value - midpoint), for AVG and friends
    SUM_SQUARES = "sum_squares"  # sum of ((value - midpoint) / scale)^2, for VAR/STDDEV
    COUNT_DISTINCT = "count_distinct"  # distinct non-NULL values (or distinct units)
    UNIT_COUNT = "unit_count"  # distinct units per group: partition selection only
    # Per-group histogram over candidate cells, released by noisy max (quantiles, MIN, MAX).
    QUANTILE = "quantile"


@dataclass(frozen=True, slots=True)
class NoisyPrimitive:
    """One integer quantity per group, computed exactly by the database, noised by us.

    `sensitivity` is the L1 distance between its group vectors on neighbouring
    datasets (one privacy unit added or removed), in integer units. The integers are
    in units of `1 / denominator` (weighted contribution bounding computes fractions
    of rows exactly that way); the released value is divided back.
    """

    name: str
    kind: PrimitiveKind
    sensitivity: int
    label: str
    sql: str = ""  # the aggregate over the bounded rows that computes it exactly
    # For UNIT_COUNT: how many groups one unit can touch (the l0 sensitivity).
    groups_per_unit: int = 1
    denominator: int = 1


class AggFunc(StrEnum):
    """The aggregate functions analysts may write."""

    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    VAR_POP = "var_pop"
    VAR_SAMP = "var_samp"
    STDDEV_POP = "stddev_pop"
    STDDEV_SAMP = "stddev_samp"
    QUANTILE = "quantile"  # PERCENTILE_CONT/PERCENTILE_DISC/MEDIAN
    # Estimates of the t-th smallest (largest) value, t a data-independent rank target
    # fixed at release time from the noise scale (accounting/extremes.py).
    MIN = "min"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    """An aggregate as written by the analyst, derived from noisy primitives.

    Values are in fixed-point steps: the released value is `steps * step`.
    `lower`/`upper`/`midpoint` are in steps too.
    """

    func: AggFunc
    label: str
    count: str | None
    sum: str | None
    step: Decimal = Decimal(1)
    lower: int = 0
    upper: int = 0
    midpoint: int = 0
    result_type: str = "int8"
    sumsq: str | None = None  # SUM_SQUARES primitive (variance and standard deviation)
    sq_scale: int = 1  # squares are summed in units of sq_scale steps, squared
    # Quantiles: alpha = alpha_num / alpha_den; candidates lower + j * stride (steps),
    # also for MIN and MAX (which have no alpha).
    alpha_num: int = 0
    alpha_den: int = 1
    stride: int = 1
    candidates: int = 0


@dataclass(frozen=True, slots=True)
class GroupKey:
    """A GROUP BY key.

    With a public domain (declared, or derived such as EXTRACT(MONTH ...)), every value
    is released, empty groups included. A private key (`domain` empty) takes its values
    from the data, and its groups pass DP partition selection.
    """

    label: str
    column: str
    type_name: str
    domain: tuple[Any, ...]
    private: bool = False
    # A key read from a public table: its domain is every value of that table, listed
    # by this SQL when the query runs (public data), so every value is released.
    domain_sql: str | None = None


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One column of the answer: a post-processing expression over keys and aggregates."""

    name: str
    type_name: str
    expr: exp.Expression


@dataclass(frozen=True, slots=True)
class OrderItem:
    """An ORDER BY item over the post-processed values."""

    expr: exp.Expression
    descending: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A window function over the released groups (post-processing: `SUM(COUNT(*)) OVER ()`).

    `func` is sum, avg, count, min, max, row_number, rank, dense_rank, ntile,
    percent_rank, cume_dist, lag, lead, first_value or last_value; `arg` its argument
    over keys and aggregates (None for COUNT(*), the rankings and distributions).
    `offset`: LAG's and LEAD's row offset, NTILE's bucket count; `default`: LAG's and
    LEAD's value past the partition's edge (None: NULL).
    """

    func: str
    arg: exp.Expression | None
    partition: tuple[exp.Expression, ...]
    order: tuple[OrderItem, ...]
    type_name: str
    offset: int = 1
    default: exp.Expression | None = None


@dataclass(frozen=True, slots=True)
class DPPlan:
    """Everything needed to answer one DP query, independent of epsilon and of the data."""

    dataset: str
    tables: tuple[str, ...]
    sql: str
    keys: tuple[GroupKey, ...]
    primitives: tuple[NoisyPrimitive, ...]
    aggregates: tuple[AggregateSpec, ...]
    outputs: tuple[OutputColumn, ...]
    having: exp.Expression | None = None
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None
    offset: int = 0
    fingerprint: str = ""
    notes: tuple[str, ...] = field(default=())
    # The UNIT_COUNT primitive whose noisy value decides which private groups are released.
    selection: str | None = None
    max_rows: int = 1  # rows per unit after contribution bounding
    max_groups: int = 1  # groups per unit after contribution bounding
    # How contributions are bounded: "weighted" rows, "sampled" rows, or "none" needed
    # (one row per unit, or distinct units counted without groups).
    # How contributions are bounded: "none", "weighted" (rows weighted by max_rows / n),
    # "weighted_groups" (max_groups groups kept per unit, then weighted), "sampled".
    bounding: str = "sampled"
    # The answer depends on when it runs (CURRENT_DATE, now()): never a cached answer.
    reads_clock: bool = False
    # Window functions over the released groups, read by outputs as __w<i>.
    windows: tuple[WindowSpec, ...] = ()
    # SELECT DISTINCT: repeated output rows are dropped (after windows, before ORDER BY).
    distinct: bool = False
    # No aggregate, only keys with declared public domains: answered from the metadata
    # (every declared value), without the database or the ledger.
    public_only: bool = False
    # The values of the bounded SQL's $n parameters (a template's plan, rewriter/template.py).
    sql_params: tuple[Any, ...] = ()

    @property
    def group_count(self) -> int:
        """How many groups the answer has before HAVING/LIMIT (product of domain sizes).

        For private keys this is the number of groups the data has: unknown here (0).
        """
        if self.keys_from_rows:
            return 0
        n = 1
        for k in self.keys:
            n *= len(k.domain)
        return n

    @property
    def keys_from_rows(self) -> bool:
        """True when the groups are the rows the database returns (not a domain product)."""
        return self.selection is not None or any(k.domain_sql for k in self.keys)

    @property
    def needs_delta(self) -> bool:
        """True when answering costs delta (partition selection)."""
        return self.selection is not None
