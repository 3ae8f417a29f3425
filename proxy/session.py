"""Per-connection session state: settings, transaction status, the analyst's DP settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from proxy.errors import ProxyError

NO_ACTIVE_TRANSACTION = "25P01"
ACTIVE_TRANSACTION = "25001"
INVALID_SAVEPOINT = "3B001"

# Settings PostgreSQL reports with ParameterStatus; a SET of one is reported again.
REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
)

_REPORTED_CANONICAL = {k.lower(): k for k in REPORTED}

FIXED = {
    # Clients refuse to work unless these hold, and dpproxy's encoders assume them.
    "client_encoding": "UTF8",
    "server_encoding": "UTF8",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "is_superuser": "off",
    "in_hot_standby": "off",
    "default_transaction_read_only": "on",
}


@dataclass
class _Snapshot:
    """Session-level settings as they were when a transaction or savepoint began."""

    settings: dict[str, str]
    local: dict[str, str]
    epsilon: Decimal


@dataclass
class Session:
    """What one client connection has set, and where its transaction stands."""

    user: str
    database: str
    server_version: str
    epsilon: Decimal
    settings: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    default_epsilon: Decimal = Decimal(0)  # what RESET dp.epsilon / RESET ALL restore
    tx_status: str = "I"  # 'I' idle, 'T' in a transaction block, 'E' failed transaction
    # SET LOCAL values: they shadow `settings` until the transaction ends.
    local: dict[str, str] = field(default_factory=dict)
    # An implicit transaction (a multi-statement Query, or an extended batch up to Sync)
    # is in progress while tx_status is still 'I'.
    implicit: bool = False
    _begin: _Snapshot | None = None
    # How the last transaction ended ("commit" or "rollback"); the connection reads and
    # clears it to close portals and cursors that do not outlive their transaction.
    ended: str | None = None
    _savepoints: list[tuple[str, _Snapshot]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        user: str,
        database: str,
        server_version: str,
        epsilon: Decimal,
        startup_params: dict[str, str],
    ) -> Session:
        """A new session with PostgreSQL's defaults and the client's startup parameters."""
        defaults = {
            "application_name": "",
            "DateStyle": "ISO, MDY",
            "IntervalStyle": "postgres",
            "TimeZone": "UTC",
            "server_version": server_version,
            "session_authorization": user,
            "search_path": '"$user", public',
            "extra_float_digits": "1",
            "transaction_isolation": "read committed",
            "transaction_read_only": "on",
            "statement_timeout": "0",
            "max_identifier_length": "63",
            "lc_messages": "C",
            # asyncpg switches JIT off around type introspection unless it already is.
            "jit": "off",
            **FIXED,
        }
        s = cls(user=user, database=database, server_version=server_version, epsilon=epsilon,
                defaults=defaults, default_epsilon=epsilon)  # fmt: skip
        for k, v in startup_params.items():
            if k in ("user", "database", "replication", "options") or k.startswith("_pq_."):
                continue
            s.apply_startup(k, v)
        return s

    def apply_startup(self, name: str, value: str) -> None:
        """Apply a startup-packet parameter (unknown ones are kept, like GUCs)."""
        canon = self.canonical(name)
        if canon in FIXED:
            return
        self.settings[canon] = value.strip("'") if canon == "client_encoding" else value

    def canonical(self, name: str) -> str:
        """The canonical spelling of a setting name (DateStyle, TimeZone...)."""
        lname = name.lower()
        canon = _REPORTED_CANONICAL.get(lname)
        if canon is not None:
            return canon
        for k in self.defaults:
            if k.lower() == lname:
                return k
        return lname

    def get(self, name: str) -> str | None:
        """The current value of a setting, or None if unknown."""
        canon = self.canonical(name)
        if canon in self.local:
            return self.local[canon]
        if canon in self.settings:
            return self.settings[canon]
        return self.defaults.get(canon)

    def set(self, name: str, value: str) -> str | None:
        """Set a setting; returns the canonical name if it is reported to the client."""
        canon = self.canonical(name)
        if canon in FIXED:
            return None
        self.settings[canon] = value
        self.local.pop(canon, None)  # a session-level SET overrides an earlier SET LOCAL
        return canon if canon in REPORTED else None

    def set_local(self, name: str, value: str) -> None:
        """SET LOCAL: effective until the end of the current transaction only."""
        canon = self.canonical(name)
        if canon not in FIXED and self.in_transaction:
            self.local[canon] = value

    def reset(self, name: str) -> str | None:
        """RESET one setting; returns its canonical name if reported."""
        canon = self.canonical(name)
        self.settings.pop(canon, None)
        self.local.pop(canon, None)
        return canon if canon in REPORTED else None

    def reset_all(self) -> None:
        """RESET ALL / DISCARD ALL: every setting back to its default, dp.epsilon included."""
        self.settings.clear()
        self.local.clear()
        self.epsilon = self.default_epsilon

    # --- transactions ---------------------------------------------------------------
    #
    # Nothing dpproxy answers writes data, so a transaction only scopes settings (SET
    # is rolled back with its transaction, as in PostgreSQL), cursors and portals.

    @property
    def in_transaction(self) -> bool:
        """True inside an explicit block (even a failed one) or an implicit transaction."""
        return self.tx_status != "I" or self.implicit

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(dict(self.settings), dict(self.local), self.epsilon)

    def _restore(self, snap: _Snapshot) -> None:
        self.settings = dict(snap.settings)
        self.local = dict(snap.local)
        self.epsilon = snap.epsilon

    def begin_implicit(self) -> None:
        """Start an implicit transaction (no-op inside one already)."""
        if not self.in_transaction:
            self._begin = self._snapshot()
            self.implicit = True

    def begin(self) -> str | None:
        """BEGIN: returns a warning text if a transaction block is already open."""
        if self.tx_status != "I":
            return "there is already a transaction in progress"
        if not self.implicit:
            self._begin = self._snapshot()
        self.implicit = False
        self.tx_status = "T"
        return None

    def commit(self) -> tuple[str, str | None]:
        """COMMIT: returns (command tag, warning text or None)."""
        if self.tx_status == "I" and not self.implicit:
            return "COMMIT", "there is no transaction in progress"
        if self.tx_status == "E":
            self._finish(commit=False)
            return "ROLLBACK", None
        self._finish(commit=True)
        return "COMMIT", None

    def rollback(self) -> str | None:
        """ROLLBACK: returns a warning text if no transaction was in progress."""
        if self.tx_status == "I" and not self.implicit:
            return "there is no transaction in progress"
        self._finish(commit=False)
        return None

    def fail(self) -> None:
        """An error happened: a block becomes failed, an implicit transaction rolls back."""
        if self.tx_status in ("T", "E"):
            self.tx_status = "E"
        elif self.implicit:
            self._finish(commit=False)

    def end_implicit(self) -> None:
        """End of a Query string or of an extended batch (Sync): commit an implicit transaction."""
        if self.implicit:
            self._finish(commit=True)

    def _finish(self, commit: bool) -> None:
        if not commit and self._begin is not None:
            self._restore(self._begin)
        self.local.clear()
        self.ended = "commit" if commit else "rollback"
        self._begin = None
        self._savepoints.clear()
        self.implicit = False
        self.tx_status = "I"

    def savepoint(self, name: str) -> None:
        """SAVEPOINT name (only inside a transaction block)."""
        if self.tx_status == "I" and not self.implicit:
            raise ProxyError(NO_ACTIVE_TRANSACTION, "SAVEPOINT can only be used in transaction blocks")
        self._savepoints.append((name, self._snapshot()))

    def _find_savepoint(self, name: str, what: str) -> int:
        if self.tx_status == "I" and not self.implicit:
            raise ProxyError(NO_ACTIVE_TRANSACTION, f"{what} can only be used in transaction blocks")
        for i in range(len(self._savepoints) - 1, -1, -1):
            if self._savepoints[i][0] == name:
                return i
        raise ProxyError(INVALID_SAVEPOINT, f'savepoint "{name}" does not exist')

    def release(self, name: str) -> None:
        """RELEASE [SAVEPOINT] name: forget it and every later savepoint."""
        i = self._find_savepoint(name, "RELEASE SAVEPOINT")
        del self._savepoints[i:]

    def rollback_to(self, name: str) -> None:
        """ROLLBACK TO [SAVEPOINT] name: undo settings since then; the savepoint stays."""
        i = self._find_savepoint(name, "ROLLBACK TO SAVEPOINT")
        self._restore(self._savepoints[i][1])
        del self._savepoints[i + 1 :]
        if self.tx_status == "E":
            self.tx_status = "T"

    def reported(self) -> list[tuple[str, str]]:
        """Every reported setting and its current value (sent after authentication).

        Comparing this before and after a statement gives the ParameterStatus messages
        to send, whatever changed the setting (SET, RESET, ROLLBACK, DISCARD).
        """
        # REPORTED names are canonical already: look them up without canonical().
        local, settings, defaults = self.local, self.settings, self.defaults
        out = []
        for k in REPORTED:
            v = local.get(k)
            if v is None:
                v = settings.get(k)
                if v is None:
                    v = defaults.get(k)
            if v is not None:
                out.append((k, v))
        return out
