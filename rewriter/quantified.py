"""Quantified comparisons over a list of values: `x = ANY(ARRAY[...])` and its kin.

Drivers send a list parameter as an array (psycopg's `col = ANY(%s)`, JDBC's
`createArrayOf`), and some tools write `col <> ALL('{a,b}')`. Over a constant array these
mean exactly a chain of comparisons: `x op ANY(a, b)` is `x op a OR x op b` and
`x op ALL(a, b)` is `x op a AND x op b` under SQL's three-valued logic (an empty array
gives FALSE and TRUE), so the rewriter plans the chain it already knows. An array from a
subquery or a column stays refused.
"""

from __future__ import annotations

from sqlglot import exp

from rewriter.errors import RewriteError
from rewriter.parse import balanced_chain

_QUANTIFIERS = {"ANY": "ANY", "SOME": "ANY", "ALL": "ALL"}


def expand_quantified(n: exp.Expression) -> exp.Expression | None:
    """The plain comparisons `n` (a comparison whose right side is ANY/SOME/ALL over a
    constant array) stands for, or None when `n` is no such comparison."""
    found = _quantifier(n.expression)
    if found is None:
        return None
    quantifier, array = found
    values = _elements(array)
    if values is None:
        return None
    if not values:
        return exp.false() if quantifier == "ANY" else exp.true()
    if quantifier == "ANY" and isinstance(n, exp.EQ):
        return exp.In(this=n.this.copy(), expressions=values)
    if quantifier == "ALL" and isinstance(n, exp.NEQ):  # x <> ALL(...) is x NOT IN (...)
        return exp.Not(this=exp.Paren(this=exp.In(this=n.this.copy(), expressions=values)))
    parts = [type(n)(this=n.this.copy(), expression=v) for v in values]
    return exp.Paren(this=balanced_chain(parts, exp.Or if quantifier == "ANY" else exp.And, wrap=True))


def _quantifier(node: exp.Expression | None) -> tuple[str, exp.Expression] | None:
    if isinstance(node, exp.Any):
        inner = node.this
        return ("ANY", inner.this if isinstance(inner, exp.Paren) else inner)
    if isinstance(node, exp.All):
        inner = node.this
        return ("ALL", inner.this if isinstance(inner, exp.Paren) else inner)
    if isinstance(node, exp.Anonymous) and len(node.expressions) == 1:
        quantifier = _QUANTIFIERS.get(str(node.this).upper())
        if quantifier is not None:
            return (quantifier, node.expressions[0])
    return None


def _elements(array: exp.Expression) -> list[exp.Expression] | None:
    """The values of a constant one-dimensional array: `ARRAY[...]` or an array literal
    `'{...}'`, either cast to an array type or not; None for anything else."""
    element_type = None
    if isinstance(array, exp.Cast) and array.to.is_type(exp.DataType.Type.ARRAY):
        element_type = array.to.expressions[0] if array.to.expressions else None
        array = array.this
    if isinstance(array, exp.Null):
        # A NULL array (a NULL parameter; also how a statement is described before its
        # values are bound): every quantified comparison over it is NULL.
        return [exp.Null()]
    if isinstance(array, exp.Array):
        values = [e.copy() for e in array.expressions]
    elif isinstance(array, exp.Literal) and array.is_string:
        values = [exp.Null() if item is None else exp.Literal.string(item)
                  for item in parse_array_text(array.this)]  # fmt: skip
    else:
        return None
    if element_type is None:
        return values
    return [v if isinstance(v, exp.Null) else exp.cast(v, element_type.copy()) for v in values]


def parse_array_text(text: str) -> list[str | None]:
    """The elements of a one-dimensional PostgreSQL array literal (`{a,"b c",NULL}`);
    an unquoted NULL is None. Raises 22P02 on anything PostgreSQL would reject or that
    has more than one dimension."""
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise _malformed(text, 'array value must start with "{"')
    body = s[1:-1]
    out: list[str | None] = []
    if not body.strip():
        return out
    i, n = 0, len(body)
    while True:
        while i < n and body[i].isspace():
            i += 1
        if i < n and body[i] == "{":
            raise _malformed(text, "only one-dimensional arrays are supported here")
        if i < n and body[i] == '"':
            i += 1
            chars = []
            while i < n and body[i] != '"':
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(body[i])
                i += 1
            if i >= n:
                raise _malformed(text, "unexpected end of input")
            i += 1
            item: str | None = "".join(chars)
            while i < n and body[i].isspace():
                i += 1
        else:
            chars, escaped = [], False
            while i < n and body[i] not in ',"{}':
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                    escaped = True
                chars.append(body[i])
                i += 1
            raw = "".join(chars).strip()
            if not raw:
                raise _malformed(text, "unexpected delimiter")
            item = None if raw.upper() == "NULL" and not escaped else raw
        out.append(item)
        if i >= n:
            return out
        if body[i] != ",":
            raise _malformed(text, f'unexpected "{body[i]}" character')
        i += 1


def _malformed(text: str, detail: str) -> RewriteError:
    short = text if len(text) <= 40 else text[:37] + "..."
    return RewriteError("22P02", f'malformed array literal: "{short}" ({detail})')
