"""The router: what kind of statement is this, and which path answers it?

Session commands are answered by the proxy itself; statements that read a private
table go to the DP path; statements that read no private table go to the catalog
mirror; everything with effects is refused whatever it touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlglot import exp

from proxy.catalog import mentions_any
from proxy.errors import QUERY_NOT_ALLOWED, ProxyError
from rewriter.errors import SYNTAX_ERROR, RewriteError
from rewriter.metadata import Metadata
from rewriter.parse import Statement, parse_one, table_refs


class Route(Enum):
    """Where a statement is answered."""

    SESSION = "session"
    DP = "dp"
    EXPLAIN = "explain"
    CATALOG = "catalog"


# Statements the proxy answers itself: they change only session state.
SESSION_KEYWORDS = frozenset(
    {"SET", "SHOW", "RESET", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT",
     "SAVEPOINT", "RELEASE", "DISCARD", "DEALLOCATE", "UNLISTEN", "CLOSE"}
)  # fmt: skip

# Statements with effects (or that read raw rows in bulk); refused on every path.
FORBIDDEN_KEYWORDS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE",
     "GRANT", "REVOKE", "COPY", "VACUUM", "ANALYZE", "ANALYSE", "CLUSTER", "REINDEX", "LOCK",
     "NOTIFY", "LISTEN", "DO", "CALL", "PREPARE", "EXECUTE", "COMMENT", "SECURITY", "REFRESH",
     "IMPORT", "LOAD", "CHECKPOINT", "REASSIGN", "FETCH", "MOVE", "DECLARE"}
)  # fmt: skip

ALLOWED_SUMMARY = (
    "dpproxy answers SELECT queries with aggregates (COUNT, SUM, AVG) over the private "
    "tables, catalog queries, and session commands (SET, SHOW, BEGIN, COMMIT...)"
)


@dataclass(frozen=True, slots=True)
class Routed:
    """A statement and the path that answers it (with its parsed tree where parsed)."""

    route: Route
    statement: Statement
    tree: exp.Expression | None = None


def classify(statement: Statement, meta: Metadata) -> Routed:
    """Decide the path of one statement, or raise ProxyError/RewriteError to refuse it."""
    kw = statement.keyword
    if kw in SESSION_KEYWORDS:
        return Routed(Route.SESSION, statement)
    if kw in FORBIDDEN_KEYWORDS:
        raise ProxyError(
            QUERY_NOT_ALLOWED,
            f"{kw} statements are not allowed through dpproxy",
            hint=ALLOWED_SUMMARY,
        )
    if kw == "EXPLAIN":
        return Routed(Route.EXPLAIN, statement)
    if kw not in ("SELECT", "WITH", "VALUES", "TABLE", "("):
        raise ProxyError(
            QUERY_NOT_ALLOWED, f"{kw} statements are not allowed through dpproxy", ALLOWED_SUMMARY
        )
    try:
        tree = parse_one(statement.text)
    except RewriteError as e:
        # catalog: client introspection sqlglot cannot parse (asyncpg's type query) may
        # still run on the mirror, which holds no private rows, if it names no private table.
        if e.sqlstate != SYNTAX_ERROR or mentions_any(statement.text, meta.private_tables()):
            raise
        return Routed(Route.CATALOG, statement)
    _refuse_effects(tree)
    if _reads_private(tree, meta):
        return Routed(Route.DP, statement, tree)
    return Routed(Route.CATALOG, statement, tree)


def _refuse_effects(tree: exp.Expression) -> None:
    for node in tree.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create,
                             exp.Drop, exp.Alter, exp.Command, exp.TruncateTable)):  # fmt: skip
            raise ProxyError(
                QUERY_NOT_ALLOWED,
                f"{type(node).__name__.upper()} inside a query is not allowed",
                hint=ALLOWED_SUMMARY,
            )
        if isinstance(node, exp.Select) and node.args.get("into") is not None:
            raise ProxyError(QUERY_NOT_ALLOWED, "SELECT INTO is not allowed", ALLOWED_SUMMARY)
        if isinstance(node, exp.Select) and node.args.get("locks"):
            raise ProxyError(QUERY_NOT_ALLOWED, "FOR UPDATE/SHARE is not allowed", ALLOWED_SUMMARY)


def _reads_private(tree: exp.Expression, meta: Metadata) -> bool:
    private = meta.private_tables()
    for t in table_refs(tree):
        found = meta.find(t.name, t.db or None)
        if found is not None and found[0] in private:
            return True
        if found is None and not t.db and t.name.lower() in {p.lower() for p in private}:
            return True
    return False


def refusal_from(e: RewriteError) -> ProxyError:
    """A rewriter refusal as a client error."""
    return ProxyError(e.sqlstate, e.message, hint=e.hint)
