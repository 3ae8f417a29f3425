"""One client connection: start-up, SCRAM authentication, and the message loop.

Messages are decoded by the pure codec; this module decides what to answer. Every
statement produces a `Result` that is encoded the same way for the simple and the
extended protocol.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.commands import Result, run_session_command
from proxy.config import AnalystConfig
from proxy.dp import fmt_decimal
from proxy.errors import (
    FEATURE_NOT_SUPPORTED,
    IN_FAILED_TRANSACTION,
    INVALID_AUTHORIZATION,
    INVALID_CATALOG_NAME,
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    QUERY_CANCELED,
    ProxyError,
)
from proxy.results import describe_columns, encode_rows, type_oid
from proxy.router import Route, Routed, classify
from proxy.session import Session
from proxy.wire import codec
from proxy.wire import messages as m
from proxy.wire.types import decode_param
from rewriter.errors import SYNTAX_ERROR, RewriteError
from rewriter.params import bind_parameters, count_parameters
from rewriter.parse import parse_one, split_statements
from rewriter.typing import infer_parameter_types

if TYPE_CHECKING:
    from proxy.server import ServerContext

log = logging.getLogger("dpproxy.connection")
PROTOCOL_3_0 = 196608


class _Close(Exception):
    """The connection must end (after a FATAL error or Terminate)."""


@dataclass
class _Prepared:
    sql: str
    param_oids: tuple[int, ...]
    routed: Routed | None


@dataclass
class _Portal:
    prepared: _Prepared
    params: list[Any]
    formats: tuple[int, ...]
    result: Result | None = None
    sent: int = 0
    described: bool = False


@dataclass
class _Extended:
    statements: dict[str, _Prepared] = field(default_factory=dict)
    portals: dict[str, _Portal] = field(default_factory=dict)
    failed: bool = False  # after an error, discard messages until Sync


class Connection:
    """Serves one client until it disconnects."""

    def __init__(
        self, ctx: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.decoder = codec.FrontendDecoder(ctx.config.listen.max_message_bytes)
        self.pending: list[Any] = []
        self.out: list[bytes] = []
        self.session: Session | None = None
        self.analyst: AnalystConfig | None = None
        self.ext = _Extended()
        self.pid = 0
        self.secret = b""
        self.running: asyncio.Task[Any] | None = None

    # --- plumbing -----------------------------------------------------------------------

    async def _next(self) -> Any:
        while not self.pending:
            data = await self.reader.read(1 << 16)
            if not data:
                raise _Close()
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def _send(self, data: bytes) -> None:
        self.out.append(data)

    async def _flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
        await self.writer.drain()

    def _error(self, e: ProxyError | RewriteError, severity: str | None = None) -> None:
        sev = severity or getattr(e, "severity", "ERROR")
        self._send(
            codec.error_response(
                codec.ErrorFields(
                    severity=sev,
                    sqlstate=e.sqlstate,
                    message=e.message,
                    detail=getattr(e, "detail", None),
                    hint=e.hint,
                )
            )
        )

    async def _fatal(self, sqlstate: str, message: str) -> None:
        self._send(codec.error_response(codec.ErrorFields("FATAL", sqlstate, message)))
        await self._flush()
        raise _Close()

    # --- lifecycle ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection to its end; never lets an exception escape."""
        try:
            if await self._startup():
                await self._loop()
        except codec.ProtocolViolation as e:
            try:
                self._send(codec.error_response(
                    codec.ErrorFields("FATAL", PROTOCOL_VIOLATION, f"protocol violation: {e}")))  # fmt: skip
                await self._flush()
            except (ConnectionError, OSError):
                pass
        except (_Close, ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception:
            # Log the type and place only: exception texts may quote private values.
            log.exception("internal error in a client connection")
            try:
                self._send(codec.error_response(
                    codec.ErrorFields("FATAL", "XX000", "internal error in dpproxy")))  # fmt: skip
                await self._flush()
            except (ConnectionError, OSError):
                pass
        finally:
            self.ctx.unregister(self.pid)
            try:
                self.writer.close()
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _startup(self) -> bool:
        while True:
            msg = await self._next()
            if isinstance(msg, (m.SSLRequest, m.GSSENCRequest)):
                self.writer.write(codec.ssl_no())
                await self.writer.drain()
                # The decoder pauses after these so that we answer first; resume it.
                self.pending.extend(self.decoder.feed(b""))
                continue
            if isinstance(msg, m.CancelRequest):
                self.ctx.cancel(msg.pid, msg.secret)
                return False
            if isinstance(msg, m.StartupMessage):
                break
            raise codec.ProtocolViolation("expected a startup message")
        params = msg.params
        unsupported = sorted(k for k in params if k.startswith("_pq_."))
        if msg.version != PROTOCOL_3_0 or unsupported:
            self._send(codec.negotiate_protocol_version(0, unsupported))
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            await self._fatal(FEATURE_NOT_SUPPORTED, "replication connections are not supported")
        user = params.get("user", "")
        if not user:
            await self._fatal(INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet")
        database = params.get("database") or user
        await self._authenticate(user)
        assert self.analyst is not None
        if database != self.ctx.meta.dataset:
            await self._fatal(INVALID_CATALOG_NAME, f'database "{database}" does not exist')
        self.session = Session.start(
            user, database, self.ctx.server_version, self._default_epsilon(), params
        )
        self.pid, self.secret = self.ctx.register(self)
        self._send(codec.auth_ok())
        for name, value in self.session.reported():
            self._send(codec.parameter_status(name, value))
        self._send(codec.backend_key_data(self.pid, self.secret))
        self._send(codec.ready_for_query("I"))
        await self._flush()
        return True

    def _default_epsilon(self) -> Any:
        eps = self.ctx.config.privacy.default_epsilon
        cap = self.analyst.max_epsilon_per_query if self.analyst else None
        return min(eps, cap) if cap is not None else eps

    async def _authenticate(self, user: str) -> None:
        from proxy.auth.scram import (
            AuthenticationFailed,
            ScramExchange,
            mock_verifier,
            parse_verifier,
        )

        analyst = self.ctx.config.analyst(user)
        usable = analyst is not None and analyst.enabled
        verifier = (
            parse_verifier(analyst.password) if usable and analyst else mock_verifier(user, self.ctx.mock_secret)
        )
        exchange = ScramExchange(verifier)
        self._send(codec.auth_sasl(exchange.mechanisms(False)))
        await self._flush()
        failed = f'password authentication failed for user "{user}"'
        try:
            first = await self._next()
            if not isinstance(first, m.PasswordData):
                raise codec.ProtocolViolation("expected SASLInitialResponse")
            mech, initial = codec.parse_sasl_initial(first.data)
            self._send(codec.auth_sasl_continue(exchange.handle_client_first(mech, initial)))
            await self._flush()
            final = await self._next()
            if not isinstance(final, m.PasswordData):
                raise codec.ProtocolViolation("expected SASLResponse")
            server_final = exchange.handle_client_final(final.data)
        except AuthenticationFailed:
            await self._fatal(INVALID_PASSWORD, failed)
        if not usable:
            await self._fatal(INVALID_PASSWORD, failed)
        self._send(codec.auth_sasl_final(server_final))
        self.analyst = analyst

    async def _loop(self) -> None:
        while True:
            msg = await self._next()
            if isinstance(msg, m.Query):
                await self._simple_query(msg.sql)
            elif isinstance(msg, m.Terminate):
                return
            elif isinstance(msg, (m.Parse, m.Bind, m.Describe, m.Execute, m.Close)):
                if not self.ext.failed:
                    try:
                        await self._extended(msg)
                    except (ProxyError, RewriteError) as e:
                        self._error(e)
                        self._fail_transaction()
                        self.ext.failed = True
            elif isinstance(msg, m.Sync):
                self.ext.failed = False
                self._drop_unnamed_portal()
                self._send(codec.ready_for_query(self._status()))
                await self._flush()
            elif isinstance(msg, m.Flush):
                await self._flush()
            elif isinstance(msg, m.FunctionCall):
                self._error(ProxyError(FEATURE_NOT_SUPPORTED, "the fast-path function call interface is not supported"))  # fmt: skip
                self._send(codec.ready_for_query(self._status()))
                await self._flush()
            elif isinstance(msg, (m.CopyData, m.CopyDone, m.CopyFail)):
                continue  # stray COPY messages outside a COPY are ignored, as PostgreSQL does
            else:
                raise codec.ProtocolViolation(f"unexpected message {type(msg).__name__}")

    def _status(self) -> str:
        return self.session.tx_status if self.session else "I"

    def _fail_transaction(self) -> None:
        if self.session and self.session.tx_status == "T":
            self.session.tx_status = "E"

    # --- simple query -------------------------------------------------------------------

    async def _simple_query(self, sql: str) -> None:
        try:
            statements = split_statements(sql)
            if not statements:
                self._send(codec.empty_query_response())
            else:
                # Every statement is checked before any runs: a string that contains
                # one refused statement is refused as a whole.
                routed = [classify(s, self.ctx.meta) for s in statements]
                for r in routed:
                    result = await self._execute(r)
                    self._send_result(result, ())
        except (ProxyError, RewriteError) as e:
            self._error(e)
            self._fail_transaction()
        self._send(codec.ready_for_query(self._status()))
        await self._flush()

    def _send_result(self, result: Result, formats: tuple[int, ...], max_rows: int = 0) -> None:
        for name, value in result.reported:
            self._send(codec.parameter_status(name, value))
        if result.columns is not None:
            self._send(describe_columns(result.columns, formats))
            self._send(encode_rows(result.columns, result.rows, formats))
        for text in result.notices:
            self._send(codec.notice_response(codec.ErrorFields("NOTICE", "00000", text)))
        self._send(codec.command_complete(result.tag))

    async def _execute(self, routed: Routed, params: list[Any] | None = None) -> Result:
        assert self.session is not None and self.analyst is not None
        st = routed.statement
        if routed.route == Route.SESSION:
            if st.keyword == "SHOW" and st.text.split()[-1].strip(";").lower() == "dp.budget":
                return await self._show_budget()
            return run_session_command(st.text, st.keyword, self.session, self.analyst.max_epsilon_per_query)
        if self.session.tx_status == "E":
            raise ProxyError(IN_FAILED_TRANSACTION, "current transaction is aborted, commands ignored until end of transaction block")  # fmt: skip
        if routed.route == Route.EXPLAIN:
            # engine: EXPLAIN is answered from the plan alone (never sent to PostgreSQL).
            return self.ctx.engine.explain(st.text, self.session.epsilon,
                                           getattr(self.session, "delta", None))  # fmt: skip
        tree = routed.tree if routed.tree is not None else parse_one(st.text)
        if params:
            tree = bind_parameters(tree, params)
        if routed.route == Route.DP:
            key = st.text if not params else tree.sql(dialect="postgres")
            return await self._cancellable(
                self.ctx.engine.answer(key, tree, self.analyst, self.session.epsilon,
                                       getattr(self.session, "delta", None))  # fmt: skip
            )
        return await self._cancellable(self.ctx.catalog.run(tree))

    async def _cancellable(self, coro: Any) -> Result:
        self.running = asyncio.ensure_future(coro)
        try:
            return await self.running
        except asyncio.CancelledError:
            if self.running.cancelled():
                raise ProxyError(QUERY_CANCELED, "canceling statement due to user request") from None
            raise
        finally:
            self.running = None

    def cancel_running(self) -> None:
        """Cancel the statement this connection is running (from a CancelRequest)."""
        if self.running is not None and not self.running.done():
            self.running.cancel()

    async def _show_budget(self) -> Result:
        assert self.analyst is not None
        spent = await self.ctx.engine.ledger.spent(self.analyst.name, self.ctx.meta.dataset)
        left = max(self.analyst.budget_epsilon - spent, 0)
        return Result(
            "SHOW",
            [("dataset", "text"), ("budget_epsilon", "numeric"), ("spent_epsilon", "numeric"),
             ("remaining_epsilon", "numeric")],  # fmt: skip
            [(self.ctx.meta.dataset, self.analyst.budget_epsilon, _round6(spent), _round6(left))],
        )

    # --- extended query -----------------------------------------------------------------

    async def _extended(self, msg: Any) -> None:
        if isinstance(msg, m.Parse):
            self._parse(msg)
        elif isinstance(msg, m.Bind):
            self._bind(msg)
        elif isinstance(msg, m.Describe):
            await self._describe(msg)
        elif isinstance(msg, m.Execute):
            await self._execute_portal(msg)
        elif isinstance(msg, m.Close):
            if msg.kind == "S":
                self.ext.statements.pop(msg.name, None)
            else:
                self.ext.portals.pop(msg.name, None)
            self._send(codec.close_complete())

    def _parse(self, msg: m.Parse) -> None:
        if msg.name and msg.name in self.ext.statements:
            raise ProxyError("42P05", f'prepared statement "{msg.name}" already exists')
        statements = split_statements(msg.query)
        if len(statements) > 1:
            raise ProxyError(SYNTAX_ERROR, "cannot insert multiple commands into a prepared statement")
        routed = classify(statements[0], self.ctx.meta) if statements else None
        self.ext.statements[msg.name] = _Prepared(msg.query, msg.param_oids, routed)
        self._send(codec.parse_complete())

    def _bind(self, msg: m.Bind) -> None:
        prepared = self.ext.statements.get(msg.statement)
        if prepared is None:
            raise ProxyError("26000", f'prepared statement "{msg.statement}" does not exist')
        oids = self._param_oids(prepared)
        fmts = msg.param_formats
        params = []
        for i, raw in enumerate(msg.params):
            fmt = fmts[0] if len(fmts) == 1 else (fmts[i] if fmts else 0)
            oid = oids[i] if i < len(oids) else 0
            try:
                params.append(None if raw is None else decode_param(raw, oid, fmt))
            except ValueError as e:
                raise ProxyError("22P02", f"invalid value for parameter ${i + 1}: {e}") from e
        if msg.portal and msg.portal in self.ext.portals:
            raise ProxyError("42P03", f'cursor "{msg.portal}" already exists')
        self.ext.portals[msg.portal] = _Portal(prepared, params, msg.result_formats)
        self._send(codec.bind_complete())

    def _param_oids(self, prepared: _Prepared) -> tuple[int, ...]:
        routed = prepared.routed
        if routed is None or routed.tree is None:
            return prepared.param_oids
        n = count_parameters(routed.tree)
        inferred = infer_parameter_types(routed.tree, self.ctx.meta)
        out = []
        for i in range(n):
            given = prepared.param_oids[i] if i < len(prepared.param_oids) else 0
            out.append(given or type_oid(inferred.get(i + 1, "text")))
        return tuple(out)

    async def _describe(self, msg: m.Describe) -> None:
        if msg.kind == "S":
            prepared = self.ext.statements.get(msg.name)
            if prepared is None:
                raise ProxyError("26000", f'prepared statement "{msg.name}" does not exist')
            self._send(codec.parameter_description(self._param_oids(prepared)))
            await self._describe_result(prepared, None, ())
        else:
            portal = self.ext.portals.get(msg.name)
            if portal is None:
                raise ProxyError("34000", f'portal "{msg.name}" does not exist')
            portal.described = True
            await self._describe_result(portal.prepared, portal.params, portal.formats)

    async def _describe_result(self, prepared: _Prepared, params: list[Any] | None, formats: tuple[int, ...]) -> None:
        columns = await self._columns_of(prepared, params)
        if columns is None:
            self._send(codec.no_data())
        else:
            self._send(describe_columns(columns, formats))

    async def _columns_of(self, prepared: _Prepared, params: list[Any] | None) -> list[tuple[str, str]] | None:
        routed = prepared.routed
        if routed is None:
            return None
        if routed.route == Route.DP and routed.tree is not None:
            n = count_parameters(routed.tree)
            tree = bind_parameters(routed.tree, params if params else [None] * n)
            plan = self.ctx.engine.plan(tree.sql(dialect="postgres"), tree)
            return [(o.name, o.type_name) for o in plan.outputs]
        if routed.route == Route.SESSION and routed.statement.keyword == "SHOW":
            name = routed.statement.text.split()[-1].strip(";").lower()
            if name == "dp.budget":
                return [("dataset", "text"), ("budget_epsilon", "numeric"),
                        ("spent_epsilon", "numeric"), ("remaining_epsilon", "numeric")]  # fmt: skip
            return [(name, "text")]
        if routed.route == Route.CATALOG and routed.tree is not None:
            return await self.ctx.catalog.describe(routed.statement.text)
        if routed.route == Route.EXPLAIN:
            return [("QUERY PLAN", "text")]  # engine: EXPLAIN answers one text column
        return None

    async def _execute_portal(self, msg: m.Execute) -> None:
        portal = self.ext.portals.get(msg.portal)
        if portal is None:
            raise ProxyError("34000", f'portal "{msg.portal}" does not exist')
        routed = portal.prepared.routed
        if routed is None:
            self._send(codec.empty_query_response())
            return
        if portal.result is None:
            portal.result = await self._execute(routed, portal.params)
            for name, value in portal.result.reported:
                self._send(codec.parameter_status(name, value))
        result = portal.result
        if result.columns is None:
            for text in result.notices:
                self._send(codec.notice_response(codec.ErrorFields("NOTICE", "00000", text)))
            self._send(codec.command_complete(result.tag))
            return
        rows = result.rows[portal.sent :]
        if msg.max_rows > 0 and len(rows) > msg.max_rows:
            self._send(encode_rows(result.columns, rows[: msg.max_rows], portal.formats))
            portal.sent += msg.max_rows
            self._send(codec.portal_suspended())
            return
        self._send(encode_rows(result.columns, rows, portal.formats))
        portal.sent += len(rows)
        for text in result.notices:
            self._send(codec.notice_response(codec.ErrorFields("NOTICE", "00000", text)))
        tag = result.tag if not result.tag.startswith("SELECT") else f"SELECT {portal.sent}"
        self._send(codec.command_complete(tag))

    def _drop_unnamed_portal(self) -> None:
        self.ext.portals.pop("", None)


def _round6(d: Any) -> Any:
    from decimal import Decimal

    return Decimal(fmt_decimal(Decimal(d)))


def new_secret() -> bytes:
    """A fresh BackendKeyData secret (4 bytes in protocol 3.0)."""
    return secrets.token_bytes(4)
