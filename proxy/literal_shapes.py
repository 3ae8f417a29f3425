"""Literal SQL that differs from a statement seen before only in its filter values.

BI tools and client-side interpolating drivers (psycopg2, Superset, Tableau) send each
new filter value as new SQL text: `... WHERE o_totalprice > 1000`, then `> 2000`. Every
new text used to be parsed, routed and parameterized by sqlglot (~0.9 ms), although
the DP engine then ran it on the template of its shape (rewriter/template.py).

Here a fast tokenizer splits the text into its literal values and the rest (the
skeleton). The first time a skeleton is seen with the same values in its non-filter
places (LIMIT 10, `/ 100.0`, a CASE's strings), the statement takes the general path,
and then its mapping is learned: which literals became the template's $n. A later text
with that skeleton is answered as the parameterized statement with those values bound,
as the extended protocol does for a prepared statement, without sqlglot.

Learning is checked, never guessed. The text is parsed again with a unique marker in
place of every literal, to see which ones `parameterize` makes parameters; the values
read by the tokenizer must be the ones `parameterize` read from the real text; the
shape's SQL, parsed and bound with those values, must be the statement again; and the
audit log's normalized text must come out the same. Anything the tokenizer is not sure
of (comments, escapes, dollar quotes, $n, adjacent strings, several statements) is
never learned. A wrong mapping could only answer another filter than the one asked
(the bounded SQL is always dpproxy's own, its values bound as parameters), never
release anything else: the template is a DP plan for any values.
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlglot import exp

from proxy.observe import normalize, statement_hash
from proxy.router import Route, Routed
from proxy.statements import route
from rewriter.metadata import Metadata
from rewriter.params import bind_parameters
from rewriter.parse import split_statements
from rewriter.rewrite import canonical_sql
from rewriter.template import fill, number_value, parameterize, typed_value, value_kind

# ASCII classes only: PostgreSQL's whitespace and digits are ASCII (Python's \s and \d
# would take other Unicode spaces and digits, which PostgreSQL reads as name characters).
_TOKEN = re.compile(
    r"""(?P<ws>[ \t\n\r\f\v]+)
      | (?P<str>'(?:[^'\\]|'')*')
      | (?P<num>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<quoted>"(?:[^"]|"")*")
      | (?P<op>::|<=|>=|<>|!=|\|\||[-+*/%<>=(),.;\[\]])""",
    re.X,
)
# Sentinels in a skeleton: NUL cannot occur in a query string.
_NUM, _STR = "\x00n", "\x00s"
MAX_SHAPES = 1024  # skeletons; with MAX_CONSTANT_SETS mappings of ~2 kB each: at most ~16 MB
MAX_FAILURES = 3
# Tokens after which `-` followed by a number is a sign, not a subtraction (filter
# places only; anything else keeps the `-` in the skeleton and the number positive).
_UNARY_AFTER = {"=", "<", ">", "<=", ">=", "<>", "!=", "(", ",", "between", "and"}
MAX_CONSTANT_SETS = 8


@dataclass(frozen=True, slots=True)
class Tokens:
    """A text split into its skeleton and its literals (each the token as written)."""

    skeleton: str
    literals: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Mapping:
    params: tuple[int, ...]  # the literal behind each $n, in order
    readers: tuple[str, ...]  # how each is read: "" as written, "date"/"timestamp" typed
    shape: str  # the parameterized statement's SQL, routed like a prepared statement's
    audit: str  # the audit log's normalized text of the shape, filled with values


@dataclass(frozen=True, slots=True)
class ShapeHit:
    """A literal statement answered as its shape with bound values."""

    shape: str
    values: list[Any]
    normalized: tuple[str | None, str, int]  # as `proxy.observe.normalize` gives it


def tokenize(sql: str) -> Tokens | None:
    """`sql` as skeleton and literals, or None where the tokenizer is not sure of it."""
    if "--" in sql or "/*" in sql or "$" in sql or "\\" in sql:
        return None
    parts: list[str] = []
    literals: list[str] = []
    pos = 0
    previous = ""  # the kind of the last token that was not whitespace
    last = before = ""  # its text, and the text of the one before it
    spaced = False
    semicolon = False
    for m in _TOKEN.finditer(sql):
        if m.start() != pos:
            return None  # a character none of the tokens take
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            spaced = True
            parts.append(text)
            continue
        if semicolon:
            return None  # something after a `;`: several statements
        if kind == "str":
            # E'..', B'..', U&'..' prefixes and 'a' 'b' continuations read otherwise.
            if (previous == "word" and not spaced) or previous == "str":
                return None
            literals.append(text)
            parts.append(_STR)
        elif kind == "num":
            if previous in ("word", "num") and not spaced:
                return None  # `t1`-like names are words; a number glued to one is not
            if last == "-" and not spaced and before.lower() in _UNARY_AFTER:
                parts.pop()  # `> -5000`: one negative value, as `parameterize` reads it
                text = "-" + text
            literals.append(text)
            parts.append(_NUM)
        else:
            if kind == "word" and previous == "num" and not spaced:
                return None  # `10abc`
            semicolon = text == ";"
            parts.append(text)
        previous = kind or ""
        last, before = text, last
        spaced = False
    if pos != len(sql) or not literals:
        return None
    return Tokens("".join(parts), tuple(literals))


def literal_value(token: str, reader: str = "") -> Any:
    """The value `rewriter.template.parameterize` reads from this literal, or None where
    it would not take it as a parameter (`007`, `1e5`: they read back otherwise).
    `reader` "date" or "timestamp": a string typed so (`DATE '1995-01-01'`), whose
    type the skeleton around it holds."""
    if token[0] == "'":
        text = token[1:-1].replace("''", "'")
        return typed_value(text, reader) if reader else text
    value = number_value(token)
    return value if str(value) == token and not reader else None


_READERS = ("", "date", "timestamp")


def _reader(value: Any) -> str:
    """How a value `parameterize` read is read from its literal's token."""
    if isinstance(value, datetime):
        return "timestamp"
    return "date" if isinstance(value, date) else ""


@dataclass(slots=True)
class _Skeleton:
    mappings: dict[tuple[str, ...], _Mapping]  # by the literals that are not parameters
    failures: int = 0


class LiteralShapes:
    """The learned mappings of one process, by skeleton and non-filter literals."""

    def __init__(self, meta: Metadata, size: int = MAX_SHAPES) -> None:
        self.meta = meta
        self.size = size
        self._skeletons: OrderedDict[str, _Skeleton] = OrderedDict()

    def lookup(self, sql: str) -> ShapeHit | None:
        """The shape and values of a literal statement whose mapping is known, or None."""
        tokens = tokenize(sql)
        if tokens is None:
            return None
        known = self._skeletons.get(tokens.skeleton)
        if known is None:
            return None
        for constants, mapping in known.mappings.items():
            if not _constants_match(tokens.literals, mapping.params, constants):
                continue
            values = [literal_value(tokens.literals[i], r) for i, r in zip(mapping.params, mapping.readers, strict=True)]
            if any(v is None or value_kind(v) is None for v in values):
                return None
            self._skeletons.move_to_end(tokens.skeleton)
            text = fill(mapping.audit, values)
            return ShapeHit(mapping.shape, values, (text, statement_hash(text), len(text)))
        return None

    def learn(self, sql: str, routed: Routed) -> None:
        """Learn the mapping of `sql`, a statement the general path has just routed to
        the DP engine (see the module doc for the checks); nothing if any check fails.
        A skeleton that fails MAX_FAILURES times is not tried again; one that comes with
        new non-filter literals again and again (beyond MAX_CONSTANT_SETS) counts each
        as a failure, since learning costs two more parses."""
        if routed.route != Route.DP or routed.tree is None:
            return
        tokens = tokenize(sql)
        if tokens is None:
            return
        known = self._skeletons.get(tokens.skeleton)
        if known is not None and (known.failures >= MAX_FAILURES or any(
                _constants_match(tokens.literals, m.params, c) for c, m in known.mappings.items())):  # fmt: skip
            return
        if known is not None and len(known.mappings) >= MAX_CONSTANT_SETS:
            known.failures += 1
            return
        mapping = _mapping(tokens, routed.tree, self.meta)
        if known is None:
            known = self._skeletons[tokens.skeleton] = _Skeleton({})
            if len(self._skeletons) > self.size:
                self._skeletons.popitem(last=False)
        if mapping is None:
            known.failures += 1
            return
        known.mappings[tuple(t for i, t in enumerate(tokens.literals) if i not in mapping.params)] = mapping


def _constants_match(literals: tuple[str, ...], params: tuple[int, ...], constants: tuple[str, ...]) -> bool:
    return tuple(t for i, t in enumerate(literals) if i not in params) == constants


def _mapping(tokens: Tokens, tree: exp.Expression, meta: Metadata) -> _Mapping | None:
    """Which literals of `tokens` are the template's parameters, checked (module doc)."""
    found = parameterize(tree)
    if found is None:
        return None
    shape_tree, values = found
    # Only a literal that reads as one of the values can be a parameter; the others keep
    # their text (`GROUP BY 1` stays an ordinal).
    wanted = {(type(v), v) for v in values}
    candidates = {i: kind for i, t in enumerate(tokens.literals)
                  for kind in _READERS if (v := literal_value(t, kind)) is not None and (type(v), v) in wanted}  # fmt: skip
    if len(candidates) >= 1000:
        return None
    marked_text, marker_of = _marker_text(tokens, candidates)
    marked = _route_one(marked_text, meta)
    if marked is None:
        return None
    marked_found = parameterize(marked.tree)
    if marked_found is None:
        return None
    params: list[int] = []
    for v in marked_found[1]:
        i = marker_of.get(str(v))
        if i is None or i in params:
            return None
        params.append(i)
    # The real text's parameters are these literals, read the same way (a date-shaped
    # marker read as a date was typed by the text around it).
    readers = tuple(_reader(v) for v in marked_found[1])
    read = [literal_value(tokens.literals[i], r) for i, r in zip(params, readers, strict=True)]
    if [(type(v), v) for v in read] != [(type(v), v) for v in values]:
        return None
    shape = shape_tree.sql(dialect="postgres")
    again = _route_one(shape, meta)
    if again is None:
        return None
    if canonical_sql(bind_parameters(again.tree, values)) != canonical_sql(tree):
        return None
    audit_shape = normalize(None, shape_tree)[0]
    if audit_shape is None or fill(audit_shape, values) != normalize(None, tree)[0]:
        return None
    return _Mapping(tuple(params), readers, shape, audit_shape)


def _route_one(sql: str, meta: Metadata) -> Routed | None:
    """`sql`'s one statement routed to the DP engine with its tree, or None."""
    try:
        statements = split_statements(sql)
        if len(statements) != 1:
            return None
        routed = route(statements[0], meta)
    except Exception:  # noqa: BLE001 - what does not route is not learned
        return None
    if not isinstance(routed, Routed) or routed.route != Route.DP or routed.tree is None:
        return None
    return routed


def _marker_text(tokens: Tokens, candidates: dict[int, str]) -> tuple[str, dict[str, int]]:
    """The text with a unique marker of its kind in place of each candidate literal, and
    the literal index of each marker's value (as `parameterize` would read it: `str` of
    it). A literal that reads as a date or timestamp gets a marker of that shape, which
    reads as text where the literal is untyped."""
    tag = uuid.uuid4().int % 10**12
    marker_of: dict[str, int] = {}
    pieces = tokens.skeleton.split("\x00")
    out = [pieces[0]]
    first_day = date(2100 + tag % 7000, 1, 1)
    for i, (piece, literal) in enumerate(zip(pieces[1:], tokens.literals, strict=True)):
        kind, rest = piece[0], piece[1:]
        if i not in candidates:
            out.append(literal + rest)
            continue
        if kind == "s" and candidates[i]:
            day = first_day + timedelta(days=i)  # (fewer than 1,000 candidates)
            value = day.isoformat() if candidates[i] == "date" else f"{day.isoformat()} 13:17:29"
            text = f"'{value}'"
        elif kind == "s":
            value = f"dpproxy_literal_{tag:012d}_{i}"
            text = f"'{value}'"
        else:
            n = 7_000_000_000_000_000_000 + tag * 1000 + i
            decimal = "." in literal or "e" in literal.lower()
            value = f"{n}.5" if decimal else str(n)
            text = value
        marker_of[value] = i
        out.append(text + rest)
    return "".join(out), marker_of
