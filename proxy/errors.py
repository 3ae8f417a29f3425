"""Errors sent to clients: each a SQLSTATE, a message, and where useful a hint."""

from __future__ import annotations

# SQLSTATEs dpproxy uses beyond the rewriter's (all listed in the README).
BUDGET_EXHAUSTED = "53Z01"  # implementation-defined subclass of 53 (insufficient resources)
INVALID_PARAMETER_VALUE = "22023"
UNDEFINED_OBJECT = "42704"
IN_FAILED_TRANSACTION = "25P02"
QUERY_FAILED = "XX000"  # a DP query failed in the database; the text is never forwarded
PROTOCOL_VIOLATION = "08P01"
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
INVALID_CATALOG_NAME = "3D000"
FEATURE_NOT_SUPPORTED = "0A000"
QUERY_NOT_ALLOWED = "42501"
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
TOO_MANY_CONNECTIONS = "53300"


class ProxyError(Exception):
    """An error answered to the client as an ErrorResponse."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        hint: str | None = None,
        detail: str | None = None,
        severity: str = "ERROR",
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint
        self.detail = detail
        self.severity = severity
