"""Statements the connection handles around the router: cursors, COPY TO, DEALLOCATE,
and the few SELECTs of session functions that drivers send and dpproxy answers itself.

`route` wraps `proxy.router.classify`: it recognises these forms first and hands every
query they contain (the query of a DECLARE or a COPY) to the router, so a cursor or a
COPY can never reach data the router would refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from proxy.cursors import DeclareSpec, FetchSpec, parse_close, parse_declare, parse_fetch
from proxy.errors import FEATURE_NOT_SUPPORTED, QUERY_NOT_ALLOWED, UNDEFINED_OBJECT, ProxyError
from proxy.router import Route, Routed, classify
from proxy.session import Session
from rewriter.metadata import Metadata
from rewriter.params import parameter_number
from rewriter.parse import Statement, split_statements

SYNTAX_ERROR = "42601"


@dataclass(frozen=True, slots=True)
class Declare:
    """DECLARE name CURSOR FOR <query>."""

    spec: DeclareSpec
    query: Routed


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH or MOVE."""

    spec: FetchSpec


@dataclass(frozen=True, slots=True)
class CloseCursor:
    """CLOSE name, or CLOSE ALL (name None)."""

    name: str | None


@dataclass(frozen=True, slots=True)
class Deallocate:
    """DEALLOCATE [PREPARE] name, or DEALLOCATE ALL (name None)."""

    name: str | None


@dataclass(frozen=True, slots=True)
class CopyOut:
    """COPY (<query>) TO STDOUT, text or CSV format."""

    query: Routed
    csv: bool
    header: bool
    delimiter: str
    null: str


@dataclass(frozen=True, slots=True)
class LocalSelect:
    """SELECT of session functions only (set_config, current_setting...), answered here."""

    statement: Statement
    items: tuple[tuple[str, str, tuple[exp.Expression, ...]], ...]  # (column, function, args)


Command = Routed | Declare | Fetch | CloseCursor | Deallocate | CopyOut | LocalSelect

# Functions a query may consist of and dpproxy evaluates against the session. asyncpg
# sends set_config('jit', ...) around type introspection and pg_advisory_unlock_all() in
# its pool reset; none of them can touch data.
LOCAL_FUNCTIONS = frozenset({"set_config", "current_setting", "pg_advisory_unlock_all"})

_COPY_RE = re.compile(r"^COPY\s*\((?P<query>.*)\)\s*TO\s+STDOUT\b(?P<opts>.*)$", re.I | re.S)
_DEALLOCATE_RE = re.compile(r'^DEALLOCATE\s+(?:PREPARE\s+)?(?P<name>"(?:[^"]|"")+"|[\w$]+)\s*;?$',
                            re.I | re.S)  # fmt: skip


def route(statement: Statement, meta: Metadata) -> Command:
    """Decide how one statement is answered, or raise ProxyError/RewriteError to refuse it."""
    kw = statement.keyword
    if kw == "DECLARE":
        spec = parse_declare(statement.text)
        return Declare(spec, _inner(spec.query, meta, "DECLARE"))
    if kw in ("FETCH", "MOVE"):
        return Fetch(parse_fetch(statement.text))
    if kw == "CLOSE":
        return CloseCursor(parse_close(statement.text))
    if kw == "DEALLOCATE":
        m = _DEALLOCATE_RE.match(statement.text.strip())
        if m is None:
            raise ProxyError(SYNTAX_ERROR, "syntax error in DEALLOCATE", hint="DEALLOCATE name | DEALLOCATE ALL")
        name = m.group("name")
        if name.upper() == "ALL":
            return Deallocate(None)
        return Deallocate(name[1:-1].replace('""', '"') if name.startswith('"') else name.lower())
    if kw == "COPY":
        return _copy(statement, meta)
    routed = classify(statement, meta)
    if routed.route == Route.CATALOG and routed.tree is not None:
        local = _local_select(statement, routed.tree)
        if local is not None:
            return local
    return routed


def _inner(text: str, meta: Metadata, what: str) -> Routed:
    inner = split_statements(text)
    if len(inner) != 1:
        raise ProxyError(SYNTAX_ERROR, f"{what} takes exactly one query")
    routed = classify(inner[0], meta)
    if routed.route not in (Route.DP, Route.CATALOG):
        raise ProxyError(QUERY_NOT_ALLOWED, f"{what} takes a SELECT query",
                         hint=f"for example {what} ... (SELECT COUNT(*) FROM some_table)")  # fmt: skip
    return routed


def _copy(statement: Statement, meta: Metadata) -> CopyOut:
    text = statement.text.strip().rstrip(";")
    m = _COPY_RE.match(text)
    if m is None:
        if re.search(r"\bFROM\s+(STDIN|'|PROGRAM)", text, re.I):
            what = "COPY FROM"
        else:
            what = "COPY of a table or to a file"
        raise ProxyError(QUERY_NOT_ALLOWED, f"{what} is not allowed through dpproxy",
                         hint="COPY (SELECT <aggregates> ...) TO STDOUT is allowed")  # fmt: skip
    opts = m.group("opts").strip()
    up = opts.upper()
    words = re.findall(r"'(?:[^']|'')*'|\w+", opts)
    uwords = [w.upper() for w in words]
    if "BINARY" in uwords:
        raise ProxyError(FEATURE_NOT_SUPPORTED, "COPY TO STDOUT in binary format is not supported",
                         hint="use FORMAT text or FORMAT csv")  # fmt: skip
    csv = "CSV" in uwords
    header = "HEADER" in uwords and not re.search(r"HEADER\s+(FALSE|OFF|0)\b", up)
    delimiter = _option(words, uwords, "DELIMITER") or ("," if csv else "\t")
    null = _option(words, uwords, "NULL")
    if null is None:
        null = "" if csv else "\\N"
    return CopyOut(_inner(m.group("query"), meta, "COPY"), csv, header, delimiter, null)


def _option(words: list[str], uwords: list[str], name: str) -> str | None:
    if name in uwords:
        i = uwords.index(name)
        if i + 1 < len(words) and words[i + 1].startswith("'"):
            return words[i + 1][1:-1].replace("''", "'")
    return None


def _local_select(statement: Statement, tree: exp.Expression) -> LocalSelect | None:
    if not isinstance(tree, exp.Select) or any(
        tree.args.get(k) for k in ("from", "where", "group", "having", "joins", "with")
    ):
        return None
    items = []
    for e in tree.expressions:
        alias = e.alias if isinstance(e, exp.Alias) else ""
        call = e.this if isinstance(e, exp.Alias) else e
        if not isinstance(call, exp.Anonymous) or str(call.this).lower() not in LOCAL_FUNCTIONS:
            return None
        fname = str(call.this).lower()
        items.append((alias or fname, fname, tuple(call.expressions)))
    return LocalSelect(statement, tuple(items)) if items else None


def _arg(e: exp.Expression, params: list[Any]) -> Any:
    if isinstance(e, exp.Parameter):
        n = parameter_number(e)
        if n is None or not 1 <= n <= len(params):
            raise ProxyError("08P01", f"there is no parameter {e.sql(dialect='postgres')}")
        return params[n - 1]
    if isinstance(e, exp.Literal):
        return e.this
    if isinstance(e, exp.Boolean):
        return e.this
    raise ProxyError(FEATURE_NOT_SUPPORTED, "session functions take constant arguments")


def local_columns(cmd: LocalSelect) -> list[tuple[str, str]]:
    """The result columns of a LocalSelect (every one text, as in PostgreSQL)."""
    return [(name, "text") for name, _, _ in cmd.items]


def run_local(cmd: LocalSelect, session: Session, params: list[Any]) -> tuple[Any, ...]:
    """Evaluate a LocalSelect against the session: the one row it returns."""
    row: list[Any] = []
    for _, fname, args in cmd.items:
        values = [_arg(a, params) for a in args]
        if fname == "pg_advisory_unlock_all":
            row.append("")  # dpproxy never takes advisory locks: nothing to unlock
        elif fname == "current_setting":
            name = str(values[0]) if values else ""
            value = session.get(name)
            if value is None and not (len(values) > 1 and values[1] in (True, "true", "t")):
                raise ProxyError(UNDEFINED_OBJECT, f'unrecognized configuration parameter "{name}"')
            row.append(value)
        else:  # set_config(name, value, is_local)
            if len(values) != 3:
                raise ProxyError(SYNTAX_ERROR, "set_config takes (name, value, is_local)")
            name, value, is_local = str(values[0]), str(values[1]), values[2] in (True, "true", "t")
            if name.lower().startswith("dp."):
                raise ProxyError(FEATURE_NOT_SUPPORTED, "dp.* settings are changed with SET",
                                 hint="for example SET dp.epsilon = 0.5")  # fmt: skip
            if is_local:
                session.set_local(name, value)
            else:
                session.set(name, value)
            row.append(session.get(name))
    return tuple(row)
