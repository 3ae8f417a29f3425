"""SQL cursors (DECLARE / FETCH / MOVE / CLOSE) over results held in memory.

A DP query is answered, and charged, once, when its cursor is declared; FETCH then
serves rows from memory. This module is pure: statement parsing and PostgreSQL's
cursor-position arithmetic, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import ProxyError

INVALID_CURSOR_NAME = "34000"
DUPLICATE_CURSOR = "42P03"
OBJECT_NOT_IN_STATE = "55000"
SYNTAX_ERROR = "42601"

_NAME = r'"(?:[^"]|"")+"|[A-Za-z_][\w$]*'
_DECLARE_RE = re.compile(
    rf"^DECLARE\s+(?P<name>{_NAME})\s+"
    r"(?P<opts>(?:(?:BINARY|INSENSITIVE|ASENSITIVE|NO\s+SCROLL|SCROLL)\s+)*)"
    r"CURSOR\s+(?:(?P<hold>WITH|WITHOUT)\s+HOLD\s+)?FOR\s+(?P<query>.+?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_FETCH_RE = re.compile(
    rf"^(?P<verb>FETCH|MOVE)\s+(?P<dir>.*?)\s*(?:\b(?:FROM|IN)\s+)?(?P<name>{_NAME})\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CLOSE_RE = re.compile(rf"^CLOSE\s+(?P<name>{_NAME})\s*;?\s*$", re.IGNORECASE | re.DOTALL)
ALL = 1 << 62  # a count meaning "every remaining row" (never a real count)


def ident(text: str) -> str:
    """An identifier as PostgreSQL folds it: quoted kept verbatim, unquoted lower-cased."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text.lower()


@dataclass(frozen=True, slots=True)
class DeclareSpec:
    """A parsed DECLARE: the cursor's name and options, and the text of its query."""

    name: str
    query: str
    binary: bool
    scroll: bool | None  # None: not said (backward fetches allowed, as PG does for ours)
    hold: bool


@dataclass(frozen=True, slots=True)
class FetchSpec:
    """A parsed FETCH or MOVE: direction kind and count (ALL = every row)."""

    name: str
    move: bool
    kind: str  # "forward", "backward", "absolute" or "relative"
    count: int


def parse_declare(sql: str) -> DeclareSpec:
    """Parse a DECLARE statement, or raise 42601."""
    m = _DECLARE_RE.match(sql.strip())
    if m is None:
        raise ProxyError(SYNTAX_ERROR, "syntax error in DECLARE",
                         hint="DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH HOLD] FOR query")  # fmt: skip
    opts = " ".join(m.group("opts").upper().split())
    scroll = False if "NO SCROLL" in opts else (True if "SCROLL" in opts else None)
    return DeclareSpec(
        name=ident(m.group("name")),
        query=m.group("query"),
        binary="BINARY" in opts,
        scroll=scroll,
        hold=(m.group("hold") or "").upper() == "WITH",
    )


def _count(word: str) -> int:
    if word.upper() == "ALL":
        return ALL
    try:
        return int(word)
    except ValueError:
        raise ProxyError(SYNTAX_ERROR, f'syntax error at or near "{word}" in FETCH') from None


def parse_fetch(sql: str) -> FetchSpec:
    """Parse FETCH/MOVE [direction] [FROM|IN] name, or raise 42601."""
    m = _FETCH_RE.match(sql.strip())
    if m is None:
        raise ProxyError(SYNTAX_ERROR, "syntax error in FETCH",
                         hint="FETCH [NEXT | FORWARD n | n | ALL | PRIOR | ABSOLUTE n ...] FROM name")  # fmt: skip
    move = m.group("verb").upper() == "MOVE"
    words = m.group("dir").split()
    up = [w.upper() for w in words]
    name = ident(m.group("name"))
    kind, count = "forward", 1
    if not up or up == ["NEXT"]:
        pass
    elif up == ["PRIOR"]:
        kind = "backward"
    elif up == ["FIRST"]:
        kind = "absolute"
    elif up == ["LAST"]:
        kind, count = "absolute", -1
    elif len(up) == 2 and up[0] in ("ABSOLUTE", "RELATIVE"):
        kind, count = up[0].lower(), _count(words[1])
        if count == ALL:
            raise ProxyError(SYNTAX_ERROR, "ABSOLUTE and RELATIVE take a number")
    elif up[0] in ("FORWARD", "BACKWARD") and len(up) <= 2:
        kind = up[0].lower()
        count = _count(words[1]) if len(up) == 2 else 1
    elif len(up) == 1:
        count = _count(words[0])
    else:
        raise ProxyError(SYNTAX_ERROR, f'syntax error at or near "{words[0]}" in FETCH')
    if kind in ("forward", "backward") and count != ALL and count < 0:
        kind, count = ("backward" if kind == "forward" else "forward"), -count
    return FetchSpec(name=name, move=move, kind=kind, count=count)


def parse_close(sql: str) -> str | None:
    """The cursor name of CLOSE name, or None for CLOSE ALL."""
    m = _CLOSE_RE.match(sql.strip())
    if m is None:
        raise ProxyError(SYNTAX_ERROR, "syntax error in CLOSE", hint="CLOSE name | CLOSE ALL")
    if m.group("name").upper() == "ALL":
        return None
    return ident(m.group("name"))


@dataclass
class Cursor:
    """A materialized cursor: its columns, every row, and PostgreSQL's position.

    ``position`` runs from 0 (before the first row) to len(rows) + 1 (after the last).
    """

    name: str
    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]]
    binary: bool = False
    scroll: bool | None = None
    hold: bool = False
    position: int = 0
    formats: tuple[int, ...] = field(default_factory=tuple)

    def fetch(self, spec: FetchSpec) -> list[tuple[Any, ...]]:
        """Move as FETCH/MOVE would and return the rows it passes over (in fetch order)."""
        n = len(self.rows)
        if spec.kind in ("absolute", "relative"):
            target = spec.count if spec.kind == "absolute" else self.position + spec.count
            if spec.kind == "absolute" and spec.count < 0:
                target = n + 1 + spec.count
            if target < self.position and self.scroll is False:
                raise self._no_backward()
            self.position = min(max(target, 0), n + 1)
            return [self.rows[self.position - 1]] if 1 <= self.position <= n else []
        if spec.kind == "forward":
            start = self.position  # rows[start] is the next row
            count = n - start if spec.count == ALL else spec.count
            end = min(start + max(count, 0), n)
            out = self.rows[start:end] if start < n else []
            # Running out of rows leaves the cursor after the last one.
            self.position = end if spec.count != ALL and end - start == count else n + 1
            return out
        if self.scroll is False:
            raise self._no_backward()
        start = min(self.position, n + 1)
        count = start if spec.count == ALL else spec.count
        end = max(start - count, 0)
        out = [self.rows[i - 1] for i in range(start - 1, max(end, 1) - 1, -1) if 1 <= i <= n]
        self.position = end
        return out

    def _no_backward(self) -> ProxyError:
        return ProxyError(OBJECT_NOT_IN_STATE, "cursor can only scan forward",
                          hint="Declare it with SCROLL option to enable backward scan.")  # fmt: skip
