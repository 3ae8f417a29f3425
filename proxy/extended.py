"""Prepared statements, portals and SQL cursors of one session, with their lifetimes.

PostgreSQL's rules: named statements live until closed, DEALLOCATE or DISCARD; the
unnamed statement until the next Parse of "" or the next simple Query. Portals (and the
unnamed portal) end with their transaction; SQL cursors too unless WITH HOLD, which
survive a commit but not the rollback of the transaction that declared them. Cursors
and portals share one namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.cursors import DUPLICATE_CURSOR, Cursor
from proxy.errors import ProxyError

if TYPE_CHECKING:
    from proxy.catalog import CatalogResult
    from proxy.commands import Result
    from proxy.statements import Command

UNDEFINED_STATEMENT = "26000"
UNDEFINED_PORTAL = "34000"
DUPLICATE_STATEMENT = "42P05"


@dataclass
class Prepared:
    """A parsed statement: its text, routed command (None if empty), parameter types."""

    sql: str
    command: Command | None
    param_oids: tuple[int, ...]  # complete: given by the client or inferred
    # A literal text run as its learned shape (proxy/literal_shapes.py): the values every
    # Bind binds (the client binds none), and the audit's normalized text of the literal.
    values: list[Any] | None = None
    normalized: tuple[str | None, str, int] | None = None


@dataclass
class Portal:
    """A bound statement; its result is computed on the first Execute and then streamed."""

    prepared: Prepared
    params: list[Any]
    formats: tuple[int, ...]
    result: Result | None = None
    sent: int = 0
    # Catalog statements: the client's raw parameters go to the mirror as they came,
    # and the mirror's raw rows come back (see proxy/catalog.py).
    raw_params: list[bytes | None] = field(default_factory=list)
    raw_formats: tuple[int, ...] = ()
    catalog: CatalogResult | None = None


@dataclass
class _HeldCursor:
    cursor: Cursor
    new: bool  # declared in the current transaction (removed if it rolls back)


@dataclass
class ProtocolState:
    """Everything named in one session."""

    statements: dict[str, Prepared] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    cursors: dict[str, _HeldCursor] = field(default_factory=dict)

    def add_statement(self, name: str, prepared: Prepared) -> None:
        """Parse: the unnamed statement is replaced, a named one must be new."""
        if name and name in self.statements:
            raise ProxyError(DUPLICATE_STATEMENT, f'prepared statement "{name}" already exists')
        self.statements[name] = prepared

    def statement(self, name: str) -> Prepared:
        """The named (or unnamed) statement, or 26000."""
        prepared = self.statements.get(name)
        if prepared is None:
            shown = name or "unnamed"
            raise ProxyError(UNDEFINED_STATEMENT, f'prepared statement "{shown}" does not exist')
        return prepared

    def deallocate(self, name: str | None) -> None:
        """DEALLOCATE name (26000 if unknown) or DEALLOCATE ALL (name None)."""
        if name is None:
            self.statements.clear()
            return
        self.statement(name)
        del self.statements[name]

    def add_portal(self, name: str, portal: Portal) -> None:
        """Bind: the unnamed portal is replaced; a named one must not exist (as a cursor either)."""
        if name and (name in self.portals or name in self.cursors):
            raise ProxyError(DUPLICATE_CURSOR, f'cursor "{name}" already exists')
        self.portals[name] = portal

    def portal(self, name: str) -> Portal:
        """The portal, or 34000."""
        portal = self.portals.get(name)
        if portal is None:
            raise ProxyError(UNDEFINED_PORTAL, f'portal "{name}" does not exist')
        return portal

    def add_cursor(self, cursor: Cursor, in_transaction: bool) -> None:
        """DECLARE: the name must be free among cursors and portals."""
        if cursor.name in self.cursors or cursor.name in self.portals:
            raise ProxyError(DUPLICATE_CURSOR, f'cursor "{cursor.name}" already exists')
        self.cursors[cursor.name] = _HeldCursor(cursor, new=in_transaction)

    def cursor(self, name: str) -> Cursor:
        """The SQL cursor, or 34000."""
        held = self.cursors.get(name)
        if held is None:
            raise ProxyError(UNDEFINED_PORTAL, f'cursor "{name}" does not exist')
        return held.cursor

    def close_cursor(self, name: str | None) -> None:
        """CLOSE name (34000 if unknown) or CLOSE ALL (name None)."""
        if name is None:
            self.cursors.clear()
            return
        self.cursor(name)
        del self.cursors[name]

    def close(self, kind: str, name: str) -> None:
        """The Close message: closing something that does not exist is not an error."""
        if kind == "S":
            self.statements.pop(name, None)
        else:
            self.portals.pop(name, None)
            self.cursors.pop(name, None)

    def end_transaction(self, committed: bool) -> None:
        """Close the portals and cursors that do not outlive a transaction."""
        self.portals.clear()
        for name, held in list(self.cursors.items()):
            if not held.cursor.hold or (not committed and held.new):
                del self.cursors[name]
            else:
                held.new = False

    def discard_all(self) -> None:
        """DISCARD ALL: every statement, portal and cursor goes."""
        self.statements.clear()
        self.portals.clear()
        self.cursors.clear()
