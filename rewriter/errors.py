"""Refusals raised by the rewriter, each with the SQLSTATE the client receives."""

from __future__ import annotations

# One SQLSTATE per kind of refusal (documented in the README).
QUERY_NOT_ALLOWED = "42501"  # the statement may not run against private data
NOT_SUPPORTED = "0A000"  # valid SQL the DP engine does not support (yet)
SYNTAX_ERROR = "42601"
UNDEFINED_TABLE = "42P01"
UNDEFINED_COLUMN = "42703"
INVALID_PARAMETER = "22023"  # e.g. a bad dp.epsilon value
GROUPING_ERROR = "42803"


class RewriteError(Exception):
    """A statement the rewriter refuses: what was refused, and what would be allowed."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


def not_allowed(message: str, hint: str | None = None) -> RewriteError:
    """A refusal for a construct that may never run on private data."""
    return RewriteError(QUERY_NOT_ALLOWED, message, hint)


def unsupported(message: str, hint: str | None = None) -> RewriteError:
    """A refusal for valid SQL that the DP engine does not handle."""
    return RewriteError(NOT_SUPPORTED, message, hint)
