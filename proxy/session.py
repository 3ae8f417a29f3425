"""Per-connection session state: settings, transaction status, the analyst's DP settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

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
class Session:
    """What one client connection has set, and where its transaction stands."""

    user: str
    database: str
    server_version: str
    epsilon: Decimal
    settings: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    tx_status: str = "I"  # 'I' idle, 'T' in a transaction block, 'E' failed transaction

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
            **FIXED,
        }
        s = cls(user=user, database=database, server_version=server_version, epsilon=epsilon,
                defaults=defaults)  # fmt: skip
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
        for k in (*REPORTED, *self.defaults):
            if k.lower() == lname:
                return k
        return lname

    def get(self, name: str) -> str | None:
        """The current value of a setting, or None if unknown."""
        canon = self.canonical(name)
        if canon in self.settings:
            return self.settings[canon]
        return self.defaults.get(canon)

    def set(self, name: str, value: str) -> str | None:
        """Set a setting; returns the canonical name if it is reported to the client."""
        canon = self.canonical(name)
        if canon in FIXED:
            return None
        self.settings[canon] = value
        return canon if canon in REPORTED else None

    def reset(self, name: str) -> str | None:
        """RESET one setting; returns its canonical name if reported."""
        canon = self.canonical(name)
        self.settings.pop(canon, None)
        return canon if canon in REPORTED else None

    def reported(self) -> list[tuple[str, str]]:
        """Every reported setting and its current value (sent after authentication)."""
        return [(k, v) for k in REPORTED if (v := self.get(k)) is not None]
