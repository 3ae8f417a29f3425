"""Plans that keep filter parameters as bind parameters: one rewrite per statement.

A prepared DP statement executed with a new value (`WHERE o_totalprice > $1`, the shape
of every BI filter and of pgbench's parameterised scripts) used to be rewritten for each
value, because a value can change what the rewriter does: a constant divisor is checked
before charging, a literal pattern is validated, a constant's bounds feed arithmetic.
Measured under load, that rewrite was half of dpproxy's CPU per query.

A template is made only where no value can change the plan, and this is decided from
the statement's shape, never from a value:

- every `$n` sits in the outermost SELECT's WHERE clause (or the WHERE of a derived
  table or CTE its FROM reads, which the rewriter accepts only row-level), reached from its root through
  AND / OR / NOT / parentheses only, as a direct operand of a comparison (=, <>, <, <=,
  >, >=), a BETWEEN bound or an IN list item whose other operand is a bare column, or as
  `$n / <non-zero decimal literal>` there (numeric division of a constant: it cannot
  fail);
- each value has a kind whose comparison with any column cannot fail in PostgreSQL:
  an integer in int8's range, a finite numeric of at most 100 digits before the point,
  text without NUL, a date, a timestamp (see `value_kind`);
- the statement is rewritten twice, with two different marker values of those kinds,
  and the two plans must agree in everything but the markers' renderings, which must
  appear in the bounded SQL only (so no value reaches HAVING, the outputs, the keys
  or the cost) -- a second line of defence behind the shape rule.

The markers' renderings in the bounded SQL become `$n::type` (text: `$n`, typed by its
column as an unknown literal would be; an integer compared with a numeric or float
column `$n::numeric` / `$n::float8`, the type PostgreSQL casts the literal to; a divided
value `(SELECT $n::type / d)`), so that a generic plan neither casts nor divides for
every row; each execution binds its own values. Its
fingerprint (the ledger's label and the answer cache's key) is the one the statement
with its values as literals gets from `rewrite`, whichever way it is planned, so
different values are different queries and a repeat is the same one in every process.

Literal SQL gets the same treatment (`parameterize`): its filter literals in those
positions become the values of its shape's template, numbered in the order written; a
signed number (`-5000`) is one value, as PostgreSQL reads it, and so is a typed date or
timestamp written in its ISO form (`DATE '1995-01-01'`, `'1995-01-01'::date`,
`TIMESTAMP '1995-01-01 10:00:00'`: a BI tool's date filter), bound as a date or timestamp.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlglot import exp

from rewriter.errors import RewriteError
from rewriter.metadata import ColumnType, Metadata
from rewriter.params import bind_parameters, literal, parameter_number
from rewriter.plan import DPPlan
from rewriter.rewrite import canonical_sql, fingerprint_of, rewrite

_I8 = 1 << 63
MAX_NUMERIC = Decimal(10) ** 100
# More values than this are planned as literals: a template is rewritten twice, and a
# shape with hundreds of literals (a BI tool's long OR list) is rarely repeated.
MAX_PARAMETERS = 32
_COMPARE = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_LOGIC = (exp.And, exp.Or, exp.Not, exp.Paren)
# How a marker of each kind is bound and what replaces its rendering in the bounded SQL.
_PLACEHOLDER = {"int": "::int8", "numeric": "::numeric", "text": "", "date": "::date",
                "timestamp": "::timestamp", "timestamptz": "::timestamptz"}  # fmt: skip
_CAST_NAME = {"date": "DATE", "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ"}
_PARAMETER = re.compile(r"\$(\d+)(?!\d)")
# A marker divided by a decimal literal (the only arithmetic the shape rule lets a value
# into, as a whole comparison operand).
_DIVISOR = r"(?: / \d+\.\d*(?![\w.]))?"


def value_kind(value: Any) -> str | None:
    """The template kind of a bound value, or None if it must be planned as a literal."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return "int" if -_I8 <= value < _I8 else None
    if isinstance(value, Decimal):
        return "numeric" if value.is_finite() and abs(value) < MAX_NUMERIC else None
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return None
        return "text" if "\x00" not in value else None
    if isinstance(value, datetime):
        return "timestamptz" if value.tzinfo is not None else "timestamp"
    if isinstance(value, date):
        return "date"
    return None


def value_kinds(values: list[Any]) -> tuple[str, ...] | None:
    """Every value's kind, or None if any must be planned as a literal."""
    kinds = []
    for v in values:
        k = value_kind(v)
        if k is None:
            return None
        kinds.append(k)
    return tuple(kinds)


def filter_wheres(tree: exp.Select) -> list[exp.Where]:
    """The outermost WHERE and those of the derived tables and CTEs the outermost FROM
    reads (the rewriter accepts those only row-level: their WHERE filters rows as the
    outermost one does)."""
    wheres = [tree.args.get("where")]
    from_ = tree.args.get("from_") or tree.args.get("from")
    items = ([from_.this] if from_ is not None else []) + [j.this for j in tree.args.get("joins") or []]
    bodies = [i.this for i in items if isinstance(i, exp.Subquery)]
    with_ = tree.args.get("with_") or tree.args.get("with")
    bodies += [cte.this for cte in (with_.expressions if with_ is not None else [])]
    wheres += [b.args.get("where") for b in bodies if isinstance(b, exp.Select)]
    return [w for w in wheres if w is not None]


def filter_only(tree: exp.Expression, n_params: int) -> bool:
    """True when every $1..$n is a filter operand of the outermost WHERE, or of a
    derived table's or CTE's that the outermost FROM reads (module doc)."""
    if not isinstance(tree, exp.Select) or n_params == 0:
        return False
    wheres = filter_wheres(tree)
    params = list(tree.find_all(exp.Parameter))
    if not wheres or not params:
        return False
    seen: set[int] = set()
    for p in params:
        n = parameter_number(p)
        if n is None or not any(_allowed_position(p, w) for w in wheres):
            return False
        seen.add(n)
    return seen == set(range(1, n_params + 1))


def parameterize(tree: exp.Expression) -> tuple[exp.Expression, list[Any]] | None:
    """A copy of `tree` with its filter literals (the positions `filter_only` accepts)
    as $1..$n, and their values; None if it has none, or has parameters already.

    BI tools send a dashboard filter's new value as new SQL text: its literals become
    a template's values, so the new text is parsed but not rewritten.
    """
    if not isinstance(tree, exp.Select) or tree.args.get("where") is None \
            or tree.find(exp.Parameter) is not None:  # fmt: skip
        return None
    # Positions are found on the statement first: most have no filter literal, and the
    # copy is only made for one that does.
    where = tree.args["where"]
    found = sum(_allowed_position(_operand(lit), where) for lit in where.find_all(exp.Literal))
    if not 0 < found <= MAX_PARAMETERS:
        return None
    copy = tree.copy()
    where = copy.args["where"]
    values: list[Any] = []
    # In the order they are written (depth first): a sign (`-5`, one level deeper in the
    # tree) does not change which value is $1.
    for lit in list(where.find_all(exp.Literal, bfs=False)):
        node = _operand(lit)
        if not _allowed_position(node, where):
            continue
        value = _literal_value(lit)
        if value is not None and node is not lit:
            # `-5000` is one value, as PostgreSQL reads it; `DATE '1995-01-01'` a date
            value = -value if _negative(lit) else _typed_value(value, node)  # type: ignore[arg-type]
        if value is None or literal(value).sql(dialect="postgres") != node.sql(dialect="postgres"):
            return None  # (`007`, `1e5`, `-0`: bound back, the statement would read differently)
        values.append(value)
        node.replace(exp.Parameter(this=exp.Literal.number(len(values))))
    return (copy, values) if values else None


def _negative(lit: exp.Expression) -> bool:
    """A number literal under a unary minus (`-5000`), which is one negative value."""
    return isinstance(lit, exp.Literal) and not lit.is_string and isinstance(lit.parent, exp.Neg)


# A typed literal is a value where its text reads back as itself: the ISO forms, which
# mean one day and time under every DateStyle (`literal` writes dates and timestamps so).
_TYPED_TEXT = {"date": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
               "timestamp": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?")}  # fmt: skip
_TYPED_CAST = {exp.DataType.Type.DATE: "date", exp.DataType.Type.TIMESTAMP: "timestamp"}


def _operand(lit: exp.Literal) -> exp.Expression:
    """The filter operand a literal is part of: a signed number (`-5000`) or a typed
    literal (`DATE '1995-01-01'`, `'...'::timestamp`, one Cast node to sqlglot), else itself."""
    parent = lit.parent
    if _negative(lit):
        return parent  # type: ignore[return-value]
    # (a typed value is never divided: `DATE '...' / 2.0` is no value, only an error)
    if lit.is_string and isinstance(parent, exp.Cast) and parent.this is lit \
            and not isinstance(parent.parent, exp.Div) \
            and _typed_value(str(lit.this), parent) is not None:  # fmt: skip
        return parent
    return lit


def _typed_value(text: str, cast: exp.Cast) -> date | None:
    """The value of a typed literal (`typed_value`), None for other casts."""
    kind = _TYPED_CAST.get(cast.to.this) if not cast.to.expressions else None
    return typed_value(text, kind) if kind is not None else None


def typed_value(text: str, kind: str) -> date | None:
    """The date (`kind` "date") or timestamp ("timestamp") a typed literal's text
    stands for, or None: another spelling (`'1995-1-1'`, `'today'`, `.000000`) reads
    back otherwise, so such a literal is no filter value and is planned as written."""
    pattern = _TYPED_TEXT.get(kind)
    if pattern is None or not pattern.fullmatch(text):
        return None
    try:
        value = date.fromisoformat(text) if kind == "date" else datetime.fromisoformat(text)
    except ValueError:
        return None
    rendered = value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    return value if rendered == text else None


def _literal_value(lit: exp.Literal) -> Any:
    """The value `rewriter.params.literal` turns back into this literal (None: none)."""
    return str(lit.this) if lit.is_string else number_value(str(lit.this))


def number_value(text: str) -> int | Decimal | None:
    """A number literal's value as the row-expression analyzer reads it (digits alone
    are an integer), or None for text that is no finite number."""
    try:
        v = Decimal(text)
    except ArithmeticError:
        return None
    if not v.is_finite():
        return None
    return int(v) if "." not in text and "e" not in text.lower() else v


def make_template(tree: exp.Expression, kinds: tuple[str, ...], meta: Metadata) -> DPPlan | None:
    """The plan of `tree` with its parameters kept as bind parameters, or None when it
    cannot be made (the caller then plans each execution's values as literals)."""
    if len(kinds) > MAX_PARAMETERS or not filter_only(tree, len(kinds)):
        return None
    casts = _placeholder_casts(tree, kinds, meta)
    plans = []
    for seed in (1, 2):
        markers = [_marker(kind, j, seed) for j, kind in enumerate(kinds, 1)]
        try:
            plan = rewrite(bind_parameters(tree, [v for v, _ in markers]), meta)
        except RewriteError:
            return None  # e.g. a text marker cast to a date: each value is then checked as a literal
        sql = _placeholders(plan.sql, {r: f"${j}{casts[j - 1]}" for j, (_, r) in enumerate(markers, 1)})
        if sql is None:
            return None
        rest = repr(replace(plan, sql="", fingerprint=""))
        if any(_bare(rendering) in rest for _, rendering in markers) or plan.public_only:
            return None
        plans.append((replace(plan, sql=sql), rest))
    (first, rest1), (second, rest2) = plans
    if first.sql != second.sql or rest1 != rest2:
        return None
    # The fingerprint of an execution is the one the statement with its values as
    # literals gets (`rewrite`'s), whichever way it was planned, in every process: the
    # canonical SQL with each $n filled in. Checked here on the markers' values.
    shape = canonical_sql(tree)
    values = [v for v, _ in markers]
    if fill(shape, values) != canonical_sql(bind_parameters(tree, values)):
        return None
    return replace(first, fingerprint=shape)


def instantiate(template: DPPlan, values: list[Any]) -> DPPlan:
    """The template's plan for one execution's values (bound, not rewritten). A
    template's `fingerprint` holds its canonical SQL with $n (`make_template`)."""
    return replace(template, sql_params=tuple(values), fingerprint=fingerprint_of(fill(template.fingerprint, values)))


def fill(canonical: str, values: list[Any]) -> str:
    """Canonical SQL with each $n replaced by its value's literal, as `canonical_sql`
    renders the statement with those literals (`make_template` checks that it does)."""
    rendered = [_render(v) for v in values]
    return _PARAMETER.sub(lambda m: rendered[int(m.group(1)) - 1], canonical)


def _render(value: Any) -> str:
    """A value's literal as `canonical_sql` writes it; an integer's or a finite
    decimal's is its `str` (a test checks this against sqlglot), the rest go through
    sqlglot (~30 us each)."""
    if type(value) is int or (type(value) is Decimal and value.is_finite()):
        return str(value)
    return literal(value).sql(dialect="postgres", normalize=True)


def _placeholders(sql: str, placeholder: dict[str, str]) -> str | None:
    """`sql` with each marker rendering replaced by its placeholder, in one pass; None
    unless every marker was found. A marker divided by a decimal literal becomes a scalar
    sub-select, `(SELECT $n::type / d)`: an InitPlan, computed once per execution, where a
    generic plan would divide for every row (it cannot fold a parameter into a constant)."""
    alternatives = "|".join(re.escape(r) for r in sorted(placeholder, key=len, reverse=True))
    found: set[str] = set()

    def swap(m: re.Match[str]) -> str:
        found.add(m.group(1))
        bound = placeholder[m.group(1)]
        return f"(SELECT {bound}{m.group(2)})" if m.group(2) else bound

    out = re.sub(rf"(?<![\w.'])({alternatives})(?![\w.'])({_DIVISOR})", swap, sql)
    return out if len(found) == len(placeholder) else None


def _placeholder_casts(tree: exp.Expression, kinds: tuple[str, ...], meta: Metadata) -> list[str]:
    """Each parameter's cast in the bounded SQL (`_PLACEHOLDER`), except that an integer
    compared directly with a column declared numeric or float is cast to that type.

    The comparison is the same either way (PostgreSQL casts an integer literal compared
    with a numeric column to numeric); but a generic plan cannot fold `($1::int8)::numeric`
    and would cast it for every row. A value used more than once keeps its kind's cast
    unless every use agrees."""
    tables = {t.alias_or_name: t.name for t in tree.find_all(exp.Table)}
    found: dict[int, set[str]] = {}
    for p in tree.find_all(exp.Parameter):
        j = parameter_number(p)
        if j is None or kinds[j - 1] != "int":
            continue
        found.setdefault(j, set()).add(_wider_cast(p, tables, meta))
    casts = [_PLACEHOLDER[kind] for kind in kinds]
    for j, wanted in found.items():
        if len(wanted) == 1 and (cast := next(iter(wanted))):
            casts[j - 1] = cast
    return casts


_WIDER = {ColumnType.NUMERIC: "::numeric", ColumnType.FLOAT: "::float8"}


def _wider_cast(param: exp.Expression, tables: dict[str, str], meta: Metadata) -> str:
    """`::numeric` or `::float8` when `param` is compared directly with a column declared
    so (in one of the statement's tables, by its qualifier or its name alone); else ""."""
    parent = param.parent
    if isinstance(parent, _COMPARE):
        column = parent.expression if parent.this is param else parent.this
    elif isinstance(parent, (exp.Between, exp.In)):
        column = parent.this
    else:
        return ""  # e.g. `$1 / 100.0`: the division's own type decides
    if not isinstance(column, exp.Column):
        return ""
    names = [tables.get(column.table)] if column.table else list(tables.values())
    types = {meta.tables[n].columns[column.name].type for n in names
             if n in meta.tables and column.name in meta.tables[n].columns}  # fmt: skip
    return _WIDER.get(types.pop(), "") if len(types) == 1 else ""


def _allowed_position(operand: exp.Expression, where: exp.Expression) -> bool:
    """`operand` (a parameter or literal) is a filter operand (module doc) of `where`'s
    boolean tree."""
    node: exp.Expression = operand
    parent = node.parent
    if isinstance(parent, exp.Div) and parent.this is node:
        d = parent.expression
        if not (isinstance(d, exp.Literal) and not d.is_string and "." in d.this
                and Decimal(d.this) != 0):  # fmt: skip
            return False
        node, parent = parent, parent.parent
    if isinstance(parent, _COMPARE):
        other = parent.expression if parent.this is node else parent.this
        ok = isinstance(other, exp.Column) and not other.is_star
    elif isinstance(parent, exp.Between):
        ok = node is not parent.this and isinstance(parent.this, exp.Column)
    elif isinstance(parent, exp.In):
        ok = (node in parent.expressions and isinstance(parent.this, exp.Column)
              and parent.args.get("query") is None)  # fmt: skip
    else:
        return False
    if not ok:
        return False
    up = parent.parent
    while isinstance(up, _LOGIC):
        up = up.parent
    return isinstance(up, exp.Where) and up is where


def _marker(kind: str, j: int, seed: int) -> tuple[Any, str]:
    """A value of `kind` and its rendering in generated SQL, unique to (j, seed)."""
    tag = uuid.uuid4().int
    if kind in ("int", "numeric"):
        # int8-sized, so the rewriter types it as any large integer constant.
        n = 7_000_000_000_000_000_000 + (tag % 10**15) * 1000 + j * 10 + seed
        if kind == "int":
            return n, str(n)
        return Decimal(f"{n}.5"), f"{n}.5"
    if kind == "text":
        text = f"dpproxy_param_{tag:032x}"
        return text, f"'{text}'"
    day = date(2100 + (tag % 7000), 1 + j % 12, 1 + seed)
    if kind == "date":
        return day, f"CAST('{day.isoformat()}' AS {_CAST_NAME[kind]})"
    when = datetime(day.year, day.month, day.day, 13, 17, 29, 123457)
    if kind == "timestamptz":
        when = when.replace(tzinfo=UTC)
    return when, f"CAST('{when.isoformat(sep=' ')}' AS {_CAST_NAME[kind]})"


def _bare(rendering: str) -> str:
    """The part of a marker's rendering any other use of its value would contain."""
    return rendering.split("'")[1] if "'" in rendering else rendering
