"""A per-process cache of routing decisions, keyed by the exact statement text.

Splitting and routing are pure functions of the text and the metadata, and parsing is
the largest cost of a small query, so a repeated statement (a BI tool's catalog probe,
a dashboard's query, a driver's prepared statement) skips sqlglot entirely. Refusals
are cached too, as their SQLSTATE and text, and raised anew each time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from proxy.errors import ProxyError
from proxy.router import Routed
from proxy.statements import Command, route
from rewriter.errors import RewriteError
from rewriter.metadata import Metadata
from rewriter.params import count_parameters
from rewriter.parse import Statement, split_statements
from rewriter.typing import infer_parameter_types

MAX_CACHED_TEXT = 64 * 1024  # longer statements are routed every time, not kept


@dataclass(frozen=True, slots=True)
class _Refusal:
    sqlstate: str
    message: str
    hint: str | None
    detail: str | None

    def error(self) -> ProxyError:
        return ProxyError(self.sqlstate, self.message, hint=self.hint, detail=self.detail)


class RouteCache:
    """`split_statements` + `route` for a whole query string, remembered by its text."""

    def __init__(self, meta: Metadata, size: int = 4096) -> None:
        self.meta = meta
        self.size = size
        self._entries: OrderedDict[str, tuple[tuple[Statement, Command], ...] | _Refusal] = (
            OrderedDict()
        )
        self._parameters: OrderedDict[str, tuple[int, dict[int, str]]] = OrderedDict()

    def commands(self, sql: str) -> tuple[tuple[Statement, Command], ...]:
        """Each statement of a query string with its routed command, or the refusal."""
        entry = self._entries.get(sql)
        if entry is None:
            try:
                entry = tuple((s, route(s, self.meta)) for s in split_statements(sql))
            except (ProxyError, RewriteError) as e:
                entry = _Refusal(e.sqlstate, e.message, e.hint, getattr(e, "detail", None))
            if len(sql) <= MAX_CACHED_TEXT:
                self._entries[sql] = entry
                if len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(sql)
        if isinstance(entry, _Refusal):
            raise entry.error()
        return entry

    def knows(self, sql: str) -> bool:
        """Whether `sql` has been routed (so `commands` will not parse it)."""
        return sql in self._entries

    def parameters(self, routed: Routed) -> tuple[int, dict[int, str]]:
        """A parsed statement's highest $n and the types inferred for its parameters,
        remembered by its text (a driver sends Parse and Describe for every execution)."""
        assert routed.tree is not None
        text = routed.statement.text
        facts = self._parameters.get(text)
        if facts is None:
            facts = (count_parameters(routed.tree), infer_parameter_types(routed.tree, self.meta))
            if len(text) <= MAX_CACHED_TEXT:
                self._parameters[text] = facts
                if len(self._parameters) > self.size:
                    self._parameters.popitem(last=False)
        return facts
