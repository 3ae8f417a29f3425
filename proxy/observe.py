"""Per-statement observation: metrics, the JSON statement log and the audit log.

The connection calls `Ops.begin` when a statement starts, `Ops.end` when its answer is
encoded, and `Ops.failed` when it is refused or fails. In between, the DP engine marks
the end of each stage with `lap(stage)` and reports the cost with `note(...)`; both
find the statement through a context variable, so the engine needs no new parameters
(the statement runs in a task created from the connection's context, which carries the
variable). Outside a statement (tests, the CLI), `lap` and `note` do nothing.

What is recorded is decided here: analyst, dataset, route, decision, SQLSTATE, cost,
durations, and the statement normalized from its parsed tree (audit) or its
fingerprint (logs). Never the client's raw text, parameters' values, results, or
backend error texts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from proxy.audit import AuditEntry, AuditWriter, statement_hash
from proxy.logging_json import StatementLog, log_statement
from proxy.metrics import Labels, Metrics, series_key
from proxy.router import Routed
from proxy.statements import CopyOut, Declare

if TYPE_CHECKING:
    from proxy.config import Config

log = logging.getLogger("dpproxy.ops")

_CURRENT: ContextVar[Observation | None] = ContextVar("dpproxy_observation", default=None)

ADMIN_SHUTDOWN = "57P01"
ADMIN_SHUTDOWN_MESSAGE = "terminating connection due to administrator command"


def lap(stage: str) -> None:
    """End the current stage of the statement being observed (no-op outside one)."""
    obs = _CURRENT.get()
    if obs is not None:
        obs.lap(stage)


def note(
    epsilon: Fraction | Decimal | None = None, delta: Fraction | Decimal | None = None,
    cache_hit: bool | None = None,
) -> None:  # fmt: skip
    """Report the statement's privacy cost and cache outcome (no-op outside a statement)."""
    obs = _CURRENT.get()
    if obs is None:
        return
    if epsilon is not None:
        obs.epsilon = _decimal(epsilon)
    if delta is not None:
        obs.delta = _decimal(delta)
    if cache_hit is not None:
        obs.cache_hit = cache_hit


def _decimal(x: Fraction | Decimal) -> Decimal:
    if isinstance(x, Decimal):
        return x
    return Decimal(x.numerator) / Decimal(x.denominator)


def normalize(raw: str | None, tree: exp.Expression | None) -> tuple[str | None, str, int]:
    """(normalized SQL or None, hash, length): SQL regenerated from the parsed tree.

    Text that does not parse (or parses only as an opaque command) is kept as its hash
    and length only, so nothing the parser did not understand is stored.
    """
    if tree is None and raw:
        try:
            parsed = sqlglot.parse_one(raw, dialect="postgres")
            tree = None if isinstance(parsed, exp.Command) else parsed
        except Exception:  # noqa: BLE001 - any parse failure means "unparseable"
            tree = None
    if tree is not None:
        try:
            text = tree.sql(dialect="postgres")
            return text, statement_hash(text), len(text)
        except Exception:  # noqa: BLE001
            pass
    raw = raw or ""
    return None, statement_hash(raw), len(raw)


def describe_command(command: Any, raw: str | None) -> tuple[str, exp.Expression | None]:
    """The route label and parsed tree of a routed command (see proxy.statements)."""
    if isinstance(command, Routed):
        return command.route.value, command.tree
    if isinstance(command, (Declare, CopyOut)):
        return command.query.route.value, command.query.tree
    return "session", None


@dataclass
class Observation:
    """One statement in flight."""

    analyst: str
    dataset: str
    protocol: str
    route: str
    statement: str | None
    hash: str
    length: int
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    epsilon: Decimal | None = None
    delta: Decimal | None = None
    cache_hit: bool | None = None

    def lap(self, stage: str) -> None:
        """Attribute the time since the previous lap (or the start) to `stage`."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - (self.last or self.started)
        self.last = now


def decision_of(sqlstate: str) -> str:
    """answered / cancelled / failed / refused, from a SQLSTATE."""
    if sqlstate == "00000":
        return "answered"
    if sqlstate == "57014":
        return "cancelled"
    if sqlstate.startswith(("XX", "08", "57", "58")):
        return "failed"
    return "refused"


class Ops:
    """What one proxy process records about statements, and its shutdown state."""

    def __init__(self, config: Config | None = None, audit: AuditWriter | None = None,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        obs = config.observability if config is not None else None
        self.metrics = metrics or Metrics()
        self.audit = audit
        self.audit_sync = bool(obs and obs.audit_sync)
        self.log_statements = bool(obs.log_statements) if obs is not None else False
        self.instance = (obs.instance if obs and obs.instance else f"{socket.gethostname()}:{os.getpid()}")
        self.dataset = config.metadata.dataset if config is not None and config.metadata else ""
        self.draining = False  # set by graceful shutdown: new statements get 57P01
        self._normalized: OrderedDict[str, tuple[str | None, str, int]] = OrderedDict()
        self._series: dict[tuple[str, str], tuple[Labels, Labels]] = {}

    def begin(self, conn: Any, command: Any, raw: str | None, protocol: str,
              normalized: tuple[str | None, str, int] | None = None) -> Observation:  # fmt: skip
        """A statement starts (it becomes the connection's current statement).
        `normalized`: its `normalize` triple where the caller has it already."""
        route, tree = describe_command(command, raw)
        text, digest, length = normalized or self.normalized(raw, tree)
        analyst = conn.analyst.name if getattr(conn, "analyst", None) is not None else ""
        obs = Observation(analyst, self.dataset, protocol, route, text, digest, length)
        _CURRENT.set(obs)
        return obs

    def observe(self, conn: Any, command: Any, raw: str, protocol: str) -> Observation:
        """A statement answered without awaiting anything (see `Connection._fast_query`).

        Like `begin`, but the observation does not become the context's current one:
        nothing can `lap`, `note` or fail in between, and `record` ends it at once.
        """
        route, tree = describe_command(command, raw)
        text, digest, length = self.normalized(raw, tree)
        return Observation(conn.analyst.name, self.dataset, protocol, route, text, digest, length)

    async def end(self, obs: Observation | None, error: Any = None) -> None:
        """A statement ended: answered (error None) or refused/failed with `error`."""
        if obs is None:
            return
        _CURRENT.set(None)
        entry = self.record(obs, error)
        if entry is not None:
            await self.audit_wait(entry)

    def normalized(self, raw: str | None, tree: exp.Expression | None) -> tuple[str | None, str, int]:
        """`normalize(raw, tree)`, remembered per statement text (it regenerates SQL)."""
        key = raw if raw is not None and len(raw) <= 65536 else None
        norm = self._normalized.get(key) if key is not None else None
        if norm is None:
            norm = normalize(raw, tree)
            if key is not None:
                self._normalized[key] = norm
                if len(self._normalized) > 4096:
                    self._normalized.popitem(last=False)
        return norm

    async def audit_wait(self, entry: AuditEntry) -> None:
        """Hand an entry `record` could not queue to the audit writer, waiting as configured."""
        assert self.audit is not None
        await self.audit.write(entry, wait=self.audit_sync)

    def record(self, obs: Observation, error: Any = None) -> AuditEntry | None:
        """Metrics, statement log and audit entry of an ended statement, without awaiting.

        Returns the audit entry when it still has to be written with `audit_wait`
        (`audit_sync`, or the writer's queue is full); None when nothing is left to do.
        A plain call, so that a statement answered from memory needs no coroutine here.
        """
        now = time.perf_counter()
        total = now - obs.started
        if obs.route in ("dp", "explain") and error is None and obs.stages:
            # The time after the engine's last stage is spent encoding the answer.
            obs.stages["encode"] = obs.stages.get("encode", 0.0) + now - (obs.last or obs.started)
        sqlstate = "00000" if error is None else str(getattr(error, "sqlstate", "XX000"))
        decision = decision_of(sqlstate)
        m = self.metrics
        keys = self._series.get((obs.route, decision))
        if keys is None:  # (the label sets of each route and outcome, computed once)
            keys = self._series[(obs.route, decision)] = (
                series_key(route=obs.route, outcome=decision), series_key(route=obs.route))
        m.statements.inc_series(keys[0])
        if error is not None:
            m.refusals.inc(sqlstate=sqlstate)
        m.statement_seconds.observe_series(total, keys[1])
        for stage, seconds in obs.stages.items():
            m.stage_seconds.observe(seconds, stage=stage)
        if obs.cache_hit is not None:
            m.cache_lookups.inc(result="hit" if obs.cache_hit else "miss")
        if obs.epsilon:
            m.epsilon_charged.inc(float(obs.epsilon), analyst=obs.analyst, dataset=obs.dataset)
        if self.log_statements:
            log_statement(StatementLog(
                analyst=obs.analyst, dataset=obs.dataset, fingerprint=obs.hash, route=obs.route,
                decision=decision, sqlstate=sqlstate,
                epsilon=None if obs.epsilon is None else str(obs.epsilon), cache_hit=obs.cache_hit,
                duration_ms=round(total * 1000, 3),
                stages_ms={k: round(v * 1000, 3) for k, v in obs.stages.items()},
                protocol=obs.protocol, instance=self.instance,
            ))  # fmt: skip
        if self.audit is not None:
            entry = AuditEntry(
                at=obs.at, instance=self.instance, analyst=obs.analyst, dataset=obs.dataset,
                protocol=obs.protocol, route=obs.route, statement=obs.statement,
                statement_hash=obs.hash, statement_length=obs.length, decision=decision,
                sqlstate=sqlstate, epsilon=obs.epsilon, delta=obs.delta, cache_hit=obs.cache_hit,
                duration_ms=total * 1000,
            )  # fmt: skip
            # (a plain call, not a coroutine, for the usual case: the queue has room)
            if self.audit_sync or not self.audit.offer(entry):
                return entry
        return None

    async def failed(self, conn: Any, error: Any, raw: str | None, protocol: str) -> None:
        """A statement was refused or failed: end the current one, or record `raw` alone."""
        obs = _CURRENT.get()
        if obs is None:
            if getattr(conn, "analyst", None) is None or raw is None:
                return  # not a statement (a Sync, a Close...) or before login
            obs = self.begin(conn, None, raw, protocol)
            obs.route = "unrouted"
        await self.end(obs, error)


def message_text(conn: Any, msg: Any) -> str | None:
    """The SQL an extended-protocol message refers to, if any (for `Ops.failed`)."""
    from proxy.wire import messages as m

    try:
        if isinstance(msg, m.Parse):
            return str(msg.query)
        if isinstance(msg, m.Bind):
            return str(conn.state.statement(msg.statement).sql)
        if isinstance(msg, m.Describe):
            if msg.kind == "S":
                return str(conn.state.statement(msg.name).sql)
            return str(conn.state.portal(msg.name).prepared.sql)
        if isinstance(msg, m.Execute):
            return str(conn.state.portal(msg.portal).prepared.sql)
    except Exception:  # noqa: BLE001 - the name was unknown: that was the error itself
        return None
    return None


def portal_command(conn: Any, name: str) -> tuple[Any, str | None, tuple[str | None, str, int] | None] | None:
    """The command, SQL and (for a literal text run as its shape) normalized text of a
    portal about to run, or None if it continues an earlier run."""
    try:
        portal = conn.state.portal(name)
    except Exception:  # noqa: BLE001 - unknown portal: _execute_portal reports it
        return None
    if portal.result is not None or portal.catalog is not None:
        return None  # a later Execute of a suspended portal: the statement already ran
    return portal.prepared.command, portal.prepared.sql, portal.prepared.normalized
