"""Session commands answered by the proxy: SET, SHOW, RESET, transactions, DISCARD..."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from proxy.config import MIN_EPSILON
from proxy.errors import (
    IN_FAILED_TRANSACTION,
    INVALID_PARAMETER_VALUE,
    UNDEFINED_OBJECT,
    ProxyError,
)
from proxy.session import ACTIVE_TRANSACTION, NO_ACTIVE_TRANSACTION, Session

if TYPE_CHECKING:
    from proxy.statements import CopyOut


@dataclass
class Result:
    """What one statement produced: rows (if any), a command tag, and extras."""

    tag: str
    columns: list[tuple[str, str]] | None = None  # (name, pg type name)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    reported: list[tuple[str, str]] = field(default_factory=list)  # ParameterStatus to send
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (SQLSTATE, text) WARNINGs
    copy: CopyOut | None = None  # send the rows as COPY ... TO STDOUT instead of DataRows
    binary: bool = False  # rows of a BINARY cursor: binary format even in the simple protocol


_SET_RE = re.compile(
    r"^SET\s+(?:(SESSION|LOCAL)\s+)?(?P<name>[A-Za-z_][\w.]*|\"[^\"]+\")\s*(?:=|\s+TO\s+|\s)\s*(?P<value>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_TIMEZONE_RE = re.compile(r"^SET\s+(?:(SESSION|LOCAL)\s+)?TIME\s+ZONE\s+(?P<value>.*)$", re.I | re.S)
DP_SETTINGS = ("dp.epsilon", "dp.delta")


def _ident(word: str) -> str:
    """An SQL identifier as PostgreSQL folds it: quoted kept, unquoted lower-cased."""
    w = word.strip().rstrip(";")
    if len(w) >= 2 and w[0] == w[-1] == '"':
        return w[1:-1].replace('""', '"')
    return w.lower()


def _unquote(value: str) -> str:
    v = value.strip().rstrip(";").strip()
    if len(v) >= 2 and v[0] == v[-1] == "'":
        return v[1:-1].replace("''", "'")
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def _value_list(value: str) -> str:
    # SET search_path = a, 'b' -> "a, b" (PostgreSQL joins list values with ", ").
    parts = [p for p in re.split(r",(?=(?:[^']*'[^']*')*[^']*$)", value) if p.strip()]
    return ", ".join(_unquote(p) for p in parts)


def parse_epsilon(text: str, cap: Decimal | None) -> Decimal:
    """Validate a per-query epsilon: a finite positive number within the analyst's cap."""
    try:
        eps = Decimal(text.strip())
    except InvalidOperation as e:
        raise ProxyError(INVALID_PARAMETER_VALUE, f'invalid value for dp.epsilon: "{text}"',
                         hint="dp.epsilon takes a positive number such as 0.5") from e  # fmt: skip
    if not eps.is_finite() or eps <= 0 or math.isnan(float(eps)):
        raise ProxyError(
            INVALID_PARAMETER_VALUE,
            f"dp.epsilon must be a finite number above 0, not {text}",
            hint="for example SET dp.epsilon = 0.5",
        )
    if eps < MIN_EPSILON:
        raise ProxyError(
            INVALID_PARAMETER_VALUE,
            f"dp.epsilon {text.strip()} is below the smallest dpproxy accepts, {MIN_EPSILON}",
            hint="below it the noise is over a million times the query's sensitivity: "
            "nothing of the answer would be left",
        )
    if cap is not None and eps > cap:
        raise ProxyError(
            INVALID_PARAMETER_VALUE,
            f"dp.epsilon {eps} is above your per-query limit of {cap}",
            hint=f"choose a value up to {cap}",
        )
    return eps


def run_session_command(
    sql: str, keyword: str, session: Session, epsilon_cap: Decimal | None
) -> Result:
    """Execute one session command against the session state."""
    if session.tx_status == "E" and keyword not in ("ROLLBACK", "ABORT", "COMMIT", "END"):
        raise ProxyError(
            IN_FAILED_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    words = sql.split()
    up = [w.upper().rstrip(";") for w in words]
    if keyword in ("BEGIN", "START"):
        # Isolation levels and READ WRITE are accepted: nothing dpproxy answers writes.
        warning = session.begin()
        res = Result("BEGIN" if keyword == "BEGIN" else "START TRANSACTION")
        if warning:
            res.warnings.append((ACTIVE_TRANSACTION, warning))
        return res
    if keyword in ("COMMIT", "END"):
        tag, warning = session.commit()
        return Result(tag, warnings=[(NO_ACTIVE_TRANSACTION, warning)] if warning else [])
    if keyword in ("ROLLBACK", "ABORT"):
        if len(up) > 2 and up[1] == "TO":
            name = words[3] if up[2] == "SAVEPOINT" and len(words) > 3 else words[2]
            session.rollback_to(_ident(name))
            return Result("ROLLBACK")
        warning = session.rollback()
        return Result("ROLLBACK", warnings=[(NO_ACTIVE_TRANSACTION, warning)] if warning else [])
    if keyword == "SAVEPOINT":
        if len(words) < 2:
            raise ProxyError("42601", "syntax error at end of input")
        session.savepoint(_ident(words[1]))
        return Result("SAVEPOINT")
    if keyword == "RELEASE":
        if len(words) < 2:
            raise ProxyError("42601", "syntax error at end of input")
        name = words[2] if up[1] == "SAVEPOINT" and len(words) > 2 else words[1]
        session.release(_ident(name))
        return Result("RELEASE")
    if keyword == "DISCARD":
        session.reset_all()
        return Result("DISCARD " + (up[1] if len(up) > 1 else "ALL"))
    if keyword == "DEALLOCATE":
        return Result("DEALLOCATE ALL" if "ALL" in up else "DEALLOCATE")
    if keyword == "UNLISTEN":
        return Result("UNLISTEN")
    if keyword == "CLOSE":
        return Result("CLOSE CURSOR ALL" if "ALL" in up else "CLOSE CURSOR")
    if keyword == "SHOW":
        return _show(words, session)
    if keyword == "RESET":
        return _reset(up, words, session)
    if keyword == "SET":
        return _set(sql, up, session, epsilon_cap)
    raise ProxyError("0A000", f"{keyword} is not supported")


def _show(words: list[str], session: Session) -> Result:
    if len(words) < 2:
        raise ProxyError("42601", "syntax error at end of input")
    name = _unquote(" ".join(words[1:]))
    if name.upper() == "ALL":
        rows = [(k, v, "") for k, v in sorted({**session.defaults, **session.settings}.items())]
        return Result("SHOW", [("name", "text"), ("setting", "text"), ("description", "text")], rows)
    if name.lower() == "dp.epsilon":
        return Result("SHOW", [("dp.epsilon", "text")], [(str(session.epsilon),)])
    if name.lower().replace(" ", "") in ("timezone", "time zone"):
        name = "TimeZone"
    value = session.get(name)
    if value is None:
        raise ProxyError(UNDEFINED_OBJECT, f'unrecognized configuration parameter "{name}"')
    return Result("SHOW", [(name.lower() if name != "TimeZone" else "TimeZone", "text")], [(value,)])


def _reset(up: list[str], words: list[str], session: Session) -> Result:
    if len(up) < 2:
        raise ProxyError("42601", "syntax error at end of input")
    if up[1] == "ALL":
        session.reset_all()
        return Result("RESET")
    name = _unquote(words[1])
    if name.lower() == "dp.epsilon":
        session.epsilon = session.default_epsilon
        return Result("RESET")
    canon = session.reset(name)
    reported = [(canon, session.get(canon) or "")] if canon else []
    return Result("RESET", reported=reported)


def _set(sql: str, up: list[str], session: Session, epsilon_cap: Decimal | None) -> Result:
    body = sql.strip().rstrip(";")
    if len(up) > 1 and up[1] in ("TRANSACTION", "CONSTRAINTS") or up[1:3] == ["SESSION", "CHARACTERISTICS"]:
        # Transactions through dpproxy are read-only snapshots of nothing; accept the
        # modes clients set (Metabase sets READ UNCOMMITTED) without effect.
        return Result("SET")
    tz = _TIMEZONE_RE.match(body)
    if tz:
        value = _unquote(tz.group("value"))
        canon = session.set("TimeZone", "UTC" if value.upper() in ("LOCAL", "DEFAULT") else value)
        return Result("SET", reported=[(canon, session.get(canon) or "")] if canon else [])
    m = _SET_RE.match(body)
    if not m:
        raise ProxyError("42601", "syntax error in SET")
    name = _unquote(m.group("name"))
    raw = m.group("value").strip()
    if name.lower() == "dp.delta":  # issue #5: validated in proxy/budget_sql.py
        from proxy.budget_sql import parse_delta

        if raw.upper() == "DEFAULT":
            session.reset("dp.delta")
        else:
            session.settings["dp.delta"] = parse_delta(_unquote(raw))
        return Result("SET")
    is_local = (m.group(1) or "").upper() == "LOCAL"
    if name.lower() in DP_SETTINGS:
        # SET dp.epsilon = DEFAULT / TO DEFAULT is RESET, as for any setting.
        default = raw.upper() == "DEFAULT"
        session.epsilon = session.default_epsilon if default else parse_epsilon(_unquote(raw), epsilon_cap)
        return Result("SET")
    if name.lower().startswith("dp."):
        raise ProxyError(UNDEFINED_OBJECT, f'unrecognized configuration parameter "{name}"',
                         hint="dpproxy settings: dp.epsilon, dp.delta")  # fmt: skip
    if is_local:
        # Outside a transaction PostgreSQL warns and ignores SET LOCAL; so do we.
        if not session.in_transaction:
            return Result("SET", warnings=[(NO_ACTIVE_TRANSACTION,
                                            "SET LOCAL can only be used in transaction blocks")])  # fmt: skip
        default = session.defaults.get(session.canonical(name), "")
        session.set_local(name, default if raw.upper() == "DEFAULT" else _value_list(raw))
        return Result("SET")
    if raw.upper() == "DEFAULT":
        canon = session.reset(name)
    else:
        canon = session.set(name, _value_list(raw))
    return Result("SET", reported=[(canon, session.get(canon) or "")] if canon else [])
