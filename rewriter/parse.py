"""Parsing: SQL text to exactly one checked sqlglot tree, and statement splitting."""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from rewriter.errors import SYNTAX_ERROR, RewriteError, not_allowed, unsupported

DIALECT = "postgres"
MAX_SQL_LENGTH = 1 << 20
MAX_TREE_DEPTH = 200


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a simple-query string: its text and first keyword (upper case)."""

    text: str
    keyword: str


def split_statements(sql: str) -> list[Statement]:
    """Split a query string on top-level semicolons (quotes, comments and $$ respected).

    Empty statements are dropped; a string of only whitespace/comments yields [].
    """
    if len(sql) > MAX_SQL_LENGTH:
        raise RewriteError("54000", f"query text is longer than {MAX_SQL_LENGTH} bytes")
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(sql)
    except TokenError as e:
        raise RewriteError(SYNTAX_ERROR, f"syntax error: {_first_line(e)}") from e
    out: list[Statement] = []
    start_tok = None
    start_pos = 0
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if start_tok is not None:
                out.append(Statement(sql[start_pos : tok.start].strip(), start_tok.text.upper()))
            start_tok = None
            continue
        if start_tok is None:
            start_tok = tok
            start_pos = token_start(sql, tok)
    if start_tok is not None:
        out.append(Statement(sql[start_pos:].strip(), start_tok.text.upper()))
    return out


def token_start(sql: str, tok: object) -> int:
    """Where token `tok` starts in `sql`, its opening quote included: sqlglot reports the
    start of quoted tokens after the quote."""
    start: int = tok.start  # type: ignore[attr-defined]
    while start > 0 and sql[start - 1] in "\"'$":
        start -= 1
    return start


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def syntax_error(e: ParseError) -> RewriteError:
    """PostgreSQL's wording for a statement sqlglot cannot parse: where it stopped, and
    sqlglot's reason only where it is written for people (not its class names)."""
    first = e.errors[0] if e.errors else {}
    near = str(first.get("highlight") or "")
    at_end = not first.get("end_context") and str(first.get("description", "")).startswith("Required")
    message = "syntax error at end of input" if at_end or not near else f'syntax error at or near "{near}"'
    reason = str(first.get("description") or "")
    where = f"line {first['line']}, column {first['col']}" if "line" in first and "col" in first else ""
    hint = "; ".join(part for part in (where, "" if "<class" in reason else reason) if part)
    return RewriteError(SYNTAX_ERROR, message, hint or None)


def parse_one(sql: str) -> exp.Expression:
    """Parse exactly one statement; refuse anything sqlglot cannot represent precisely."""
    try:
        trees = sqlglot.parse(sql, read=DIALECT)
    except ParseError as e:
        raise syntax_error(e) from e
    except TokenError as e:
        raise RewriteError(SYNTAX_ERROR, f"syntax error: {_first_line(e)}") from e
    except RecursionError as e:
        raise unsupported("the query is nested too deeply") from e
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise not_allowed(
            "only one statement per query is allowed here",
            "send each statement separately",
        )
    tree = trees[0]
    if isinstance(tree, exp.Command):
        raise unsupported(
            f"the statement '{str(tree.this).upper()}' is not supported",
            "write a SELECT with aggregates over the private tables",
        )
    if _depth(tree) > MAX_TREE_DEPTH:
        _balance_chains(tree)  # (only deep trees pay for the walk)
        if _depth(tree) > MAX_TREE_DEPTH:
            raise unsupported("the query is nested too deeply")
    return tree


def _balance_chains(tree: exp.Expression) -> None:
    """Rebuild each long AND / OR chain as a balanced tree, in place.

    sqlglot parses `a = 1 OR a = 2 OR ...` one level per operand, so a filter listing a
    few hundred values (as some BI tools write them) was refused as nested too deeply.
    The operands and their order are kept, and the SQL renders the same."""
    tops = [n for n in tree.find_all(exp.And, exp.Or) if type(n.parent) is not type(n)]
    for top in tops:
        parts = list(top.flatten(unnest=False))
        if len(parts) > 8:
            top.replace(balanced_chain(parts, type(top)))


def balanced_chain(parts: list[exp.Expression], join: type[exp.Connector], *, wrap: bool = False) -> exp.Expression:
    """`parts` joined by `join` (AND / OR) as a balanced tree: thousands of operands stay
    a few dozen levels deep for recursive analysis, not one level per operand. `wrap`
    parenthesizes each half (for operands built by dpproxy rather than parsed)."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    left = balanced_chain(parts[:mid], join, wrap=wrap)
    right = balanced_chain(parts[mid:], join, wrap=wrap)
    if wrap:
        left, right = exp.Paren(this=left), exp.Paren(this=right)
    return join(this=left, expression=right)


def _depth(tree: exp.Expression) -> int:
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        for child in node.iter_expressions():
            stack.append((child, d + 1))
    return deepest


def table_refs(tree: exp.Expression) -> list[exp.Table]:
    """Every table reference in the tree, CTE names excluded."""
    cte_names = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    out = []
    for t in tree.find_all(exp.Table):
        if not t.name:
            continue
        if not t.db and t.name.lower() in cte_names:
            continue
        out.append(t)
    return out
