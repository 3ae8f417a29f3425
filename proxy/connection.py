"""One client connection: start-up (TLS, SCRAM), and the simple and extended protocols.

Messages are decoded by the pure codec; this module decides what to answer. Every
statement produces a `Result` that is encoded the same way for the simple and the
extended protocol. Named objects and their lifetimes live in `proxy.extended`, cursor
arithmetic in `proxy.cursors`, statement recognition in `proxy.statements`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from proxy.admin import lookup_analyst
from proxy.audit import AuditEntry
from proxy.budget_sql import (
    BUDGET_COLUMNS,
    budget_result,
    budget_select_columns,
    select_budget,
    session_delta,
)
from proxy.catalog import CatalogResult, catalog_to_result, describe_fields
from proxy.commands import Result, run_session_command
from proxy.config import AnalystConfig
from proxy.cursors import Cursor
from proxy.errors import (
    FEATURE_NOT_SUPPORTED,
    IN_FAILED_TRANSACTION,
    INVALID_AUTHORIZATION,
    INVALID_CATALOG_NAME,
    INVALID_PARAMETER_VALUE,
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    QUERY_CANCELED,
    UNDEFINED_OBJECT,
    ProxyError,
)
from proxy.extended import Portal, Prepared, ProtocolState
from proxy.limits import pad_to_quantum
from proxy.observe import ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE, message_text, portal_command
from proxy.results import describe_columns, encode_copy_rows, encode_rows, type_oid
from proxy.router import Route, Routed
from proxy.session import NO_ACTIVE_TRANSACTION, Session
from proxy.statements import (
    CloseCursor,
    Command,
    CopyOut,
    Deallocate,
    Declare,
    Fetch,
    LocalSelect,
    local_columns,
    run_local,
)
from proxy.wire import codec
from proxy.wire import messages as m
from proxy.wire.types import decode_param
from rewriter.errors import SYNTAX_ERROR, RewriteError
from rewriter.params import bind_parameters
from rewriter.parse import parse_one

if TYPE_CHECKING:

    from proxy.server import ServerContext

log = logging.getLogger("dpproxy.connection")
PROTOCOL_3_0 = 196608
_EXTENDED = (m.Parse, m.Bind, m.Describe, m.Execute, m.Close)



# Exceptions that end the connection itself (the client left, or broke the protocol).
_CONNECTION_ENDS = (OSError, asyncio.IncompleteReadError, codec.ProtocolViolation)


def _statement_error(raised: Exception) -> ProxyError | RewriteError:
    """The ERROR a statement ends with: a refusal as raised; an unexpected exception as
    XX000 with a fixed text (logged by type and place only: exception texts may quote
    private values), so that it ends this statement, not the connection, as PostgreSQL's
    internal errors do. Connection-level exceptions are raised again."""
    if isinstance(raised, (ProxyError, RewriteError)):
        return raised
    if isinstance(raised, (_Close, *_CONNECTION_ENDS)):
        raise raised
    log.exception("internal error in a statement")
    return ProxyError("XX000", "internal error in dpproxy")


class _Close(Exception):
    """The connection must end (after a FATAL error or Terminate)."""


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
        self.state = ProtocolState()
        self.failed = False  # extended protocol: after an error, discard messages until Sync
        self.tls = False
        self.reported: dict[str, str] = {}  # ParameterStatus values the client last saw
        self._reported_list: list[tuple[str, str]] = []  # the same, as Session.reported() lists them
        self.pid = 0
        self.secret = b""
        self.running: asyncio.Task[Any] | None = None
        self.admitted = ""  # the analyst counted in by the connection limits
        self.idle = False  # issue #8: blocked reading the next message (see proxy/lifecycle.py)
        self.idle_since = 0.0  # time.monotonic() when it last became idle
        # True right after a ReadyForQuery was written: nothing is buffered in `out`, every
        # ParameterStatus change has been reported and no extended batch is open. Only
        # then may a statement take a fast path (see `_fast_query`, `_fast_batch`).
        self._synced = False

    # --- plumbing -----------------------------------------------------------------------

    async def _next(self) -> Any:
        while not self.pending:
            timeout, state, text = self._idle_limit()
            self.idle = True  # issue #8: a graceful shutdown may end a session waiting here
            self.idle_since = time.monotonic()
            try:
                # (wait_for costs a coroutine and a timer per message: only with a limit)
                if timeout is None:
                    data = await self.reader.read(1 << 16)
                else:
                    data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
            except TimeoutError:
                await self._fatal(state, text)
            finally:
                self.idle = False
            if not data:
                raise _Close()
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def _idle_limit(self) -> tuple[float | None, str, str]:
        """How long the client may stay silent now, with PostgreSQL's error if it does."""
        limits = self.ctx.config.limits
        if self.session is None or self.out:
            return None, "", ""
        if self.session.tx_status in ("T", "E") and limits.idle_in_transaction_timeout_s > 0:
            return (limits.idle_in_transaction_timeout_s, "25P03",
                    "terminating connection due to idle-in-transaction timeout")  # fmt: skip
        if limits.idle_session_timeout_s > 0:
            return (limits.idle_session_timeout_s, "57P05",
                    "terminating connection due to idle-session timeout")  # fmt: skip
        return None, "", ""

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
            if self.admitted:
                self.ctx.admission.release(self.admitted)
            self.ctx.unregister(self.pid)
            try:
                self.writer.close()
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _startup(self) -> bool:
        while True:
            msg = await self._next()
            if isinstance(msg, m.SSLRequest) and self.ctx.tls is not None and not self.tls:
                await self._start_tls()
                continue
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
            # We speak 3.0: tell a 3.2 client (or one with protocol options) so.
            self._send(codec.negotiate_protocol_version(0, unsupported))
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            await self._fatal(FEATURE_NOT_SUPPORTED, "replication connections are not supported")
        user = params.get("user", "")
        if not user:
            await self._fatal(INVALID_AUTHORIZATION, "no PostgreSQL user name specified in startup packet")
        database = params.get("database") or user
        if self.ctx.config.listen.require_tls and not self.tls:
            # PostgreSQL's wording for a hostssl-only pg_hba.conf, which tools recognise.
            peer = self.writer.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) else "[local]"
            await self._fatal(INVALID_AUTHORIZATION,
                              f'no pg_hba.conf entry for host "{host}", user "{user}", '
                              f'database "{database}", no encryption')  # fmt: skip
        await self._authenticate(user)
        assert self.analyst is not None
        try:
            self.ctx.admission.admit(user)
        except ProxyError as e:
            await self._fatal(e.sqlstate, e.message)
        self.admitted = user
        if database != self.ctx.meta.dataset:
            await self._fatal(INVALID_CATALOG_NAME, f'database "{database}" does not exist')
        self.session = Session.start(
            user, database, self.ctx.server_version, self._default_epsilon(), params
        )
        self.session.defaults["dp.delta"] = str(self.ctx.engine.default_delta)  # issue #5
        self.pid, self.secret = self.ctx.register(self)
        self._send(codec.auth_ok())
        for name, value in self.session.reported():
            self._send(codec.parameter_status(name, value))
        self._reported_list = self.session.reported()
        self.reported = dict(self._reported_list)
        self._send(codec.backend_key_data(self.pid, self.secret))
        self._send(codec.ready_for_query("I"))
        await self._flush()
        self._synced = True
        return True

    async def _start_tls(self) -> None:
        assert self.ctx.tls is not None
        # Bytes sent after the SSLRequest but before our 'S' were sent in plaintext; they
        # must never be read as if they came through TLS (CVE-2021-23222).
        stream_buffered = len(getattr(self.reader, "_buffer", b""))
        if self.decoder.buffered or self.pending or stream_buffered:
            await self._fatal(PROTOCOL_VIOLATION, "received unencrypted data after SSL request")
        self.writer.write(codec.ssl_yes())
        await self.writer.drain()
        await self.writer.start_tls(self.ctx.tls.context)
        self.tls = True
        self.decoder.reset_to_startup()

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

        analyst = await lookup_analyst(self.ctx.engine.ledger, user, self.ctx.meta.dataset)  # issue #5
        usable = analyst is not None and analyst.enabled
        verifier = (
            parse_verifier(analyst.password) if usable and analyst else mock_verifier(user, self.ctx.mock_secret)
        )
        binding = self.ctx.tls.end_point_hash if self.tls and self.ctx.tls is not None else None
        exchange = ScramExchange(verifier, channel_binding=binding)
        self._send(codec.auth_sasl(exchange.mechanisms(self.tls)))
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
        assert self.session is not None
        while True:
            msg = await self._next()
            if self.ctx.ops.draining and not isinstance(msg, m.Terminate):  # issue #8: shutdown
                await self.ctx.ops.failed(self, ProxyError(ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE),
                                          msg.sql if isinstance(msg, m.Query) else message_text(self, msg),
                                          "simple" if isinstance(msg, m.Query) else "extended")  # fmt: skip
                await self._fatal(ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE)
            if type(msg) is m.Query:
                # Only a text routed before can be a remembered constant: a new one (a DP
                # query's new filter value) is not routed twice, here and in the general path.
                known = self._synced and self.ctx.routes.knows(msg.sql)
                fast = self._try_fast(self._fast_query, msg.sql) if known else None
                if fast is None:
                    self._synced = False
                    await self._simple_query(msg.sql)
                else:
                    await self._send_fast(*fast)
                continue
            if self._synced and (type(msg) is m.Bind or type(msg) is m.Parse):
                fast = self._try_fast(self._fast_batch, msg)
                if fast is not None:
                    await self._send_fast(*fast)
                    continue
            self._synced = False
            if isinstance(msg, _EXTENDED):
                if self.failed:
                    continue
                try:
                    # An extended batch runs in an implicit transaction up to Sync.
                    self.session.begin_implicit()
                    await self._extended(msg)
                except Exception as raised:  # noqa: BLE001 - see _statement_error
                    e = _statement_error(raised)
                    await self.ctx.ops.failed(self, e, message_text(self, msg), "extended")  # issue #8
                    self._error(e)
                    self.session.fail()
                    self.failed = True
                self._transaction_ended()
            elif isinstance(msg, m.Sync):
                self.failed = False
                self.session.end_implicit()
                self._transaction_ended()
                await self._ready()
            elif isinstance(msg, m.Flush):
                await self._flush()
            elif isinstance(msg, m.Terminate):
                return
            elif isinstance(msg, m.FunctionCall):
                self._error(ProxyError(FEATURE_NOT_SUPPORTED, "the fast-path function call interface is not supported",
                                       hint="call functions with SELECT"))  # fmt: skip
                await self._ready()
            elif isinstance(msg, (m.CopyData, m.CopyDone, m.CopyFail)):
                continue  # stray COPY messages outside a COPY are ignored, as PostgreSQL does
            else:
                raise codec.ProtocolViolation(f"unexpected message {type(msg).__name__}")

    async def _ready(self) -> None:
        """ParameterStatus for every reported setting that changed, then ReadyForQuery."""
        assert self.session is not None
        listed = self.session.reported()
        if listed != self._reported_list:  # (one list comparison when nothing changed)
            now = dict(listed)
            for name, value in now.items():
                if self.reported.get(name) != value:
                    self._send(codec.parameter_status(name, value))
            self.reported = now
            self._reported_list = listed
        self._send(codec.ready_for_query(self.session.tx_status))
        await self._flush()
        self._synced = True

    # --- fast paths -----------------------------------------------------------------------
    #
    # A statement whose answer is a remembered constant (`SELECT 1`: pool pings, pgbench)
    # is answered here in one plain call, with the same bytes, state changes, metrics and
    # audit entry as the general path, which every other case (and every error) takes.
    # Only statements the router sent to the catalog mirror qualify, so a statement that
    # touches a private table never does; `Catalog.remembered` knows only constant
    # SELECTs without parameters.

    @staticmethod
    def _try_fast(path: Any, arg: Any) -> tuple[bytes, AuditEntry | None] | None:
        """Run a fast path's checks; a refusal they meet (e.g. an unsupported `dp.budget`
        filter) is left to the general path, which reports it as an ErrorResponse."""
        try:
            return path(arg)  # type: ignore[no-any-return]
        except (ProxyError, RewriteError):
            return None

    def _constant(self, sql: str) -> tuple[Routed, CatalogResult] | None:
        """The routed statement and remembered answer of a one-statement constant text."""
        try:
            routed = self.ctx.routes.commands(sql)
        except (ProxyError, RewriteError):
            return None  # a refusal: the general path raises and records it
        if len(routed) != 1:
            return None
        command = routed[0][1]
        if not _is_catalog(command):
            return None
        assert isinstance(command, Routed)
        known = self.ctx.catalog.remembered(command.statement.text)
        if known is None or known.fields is None:
            return None
        return command, known

    def _fast_query(self, sql: str) -> tuple[bytes, AuditEntry | None] | None:
        """A simple Query answered from memory: (reply, audit entry left to write), or None."""
        session = self.session
        assert session is not None
        if session.tx_status == "E" or session.implicit:
            return None  # 25P02 or an open batch: the general path
        found = self._constant(sql)
        if found is None:
            return None
        command, known = found
        ops = self.ctx.ops
        obs = ops.observe(self, command, command.statement.text, "simple")
        # A simple Query ends the unnamed statement and the unnamed portal.
        self.state.statements.pop("", None)
        self.state.portals.pop("", None)
        reply = known.reply(()) + codec.ready_for_query(session.tx_status)
        return reply, ops.record(obs)

    def _fast_batch(self, first: m.Parse | m.Bind) -> tuple[bytes, AuditEntry | None] | None:
        """[Parse] Bind [Describe portal] Execute Sync of a constant, answered from memory.

        Text results on the unnamed portal, no parameters, no row limit below the row
        count; anything else (binary results, named portals, errors) returns None and the
        messages go through the general path one by one.
        """
        session = self.session
        assert session is not None
        if self.failed or session.tx_status == "E" or session.implicit:
            return None
        pending = self.pending
        n = len(pending)
        i = 0
        parse = first if type(first) is m.Parse else None
        bind: Any = first
        if parse is not None:
            if n < 3:
                return None
            bind = pending[0]
            i = 1
        if type(bind) is not m.Bind or bind.portal or bind.params:
            return None
        if i >= n:
            return None
        msg = pending[i]
        describe = type(msg) is m.Describe
        if describe:
            if msg.kind != "P" or msg.name or i + 1 >= n:
                return None
            i += 1
            msg = pending[i]
        if type(msg) is not m.Execute or msg.portal or i + 1 >= n or type(pending[i + 1]) is not m.Sync:
            return None
        max_rows = msg.max_rows
        if parse is not None:
            if parse.param_oids or bind.statement != parse.name or (parse.name and parse.name in self.state.statements):
                return None
            if not self.ctx.routes.knows(parse.query):
                return None  # only a text routed before can be a remembered constant
            found = self._constant(parse.query)
            if found is None:
                return None
            command, known = found
            prepared = Prepared(parse.query, command, ())
        else:
            prepared_or_none = self.state.statements.get(bind.statement)
            if prepared_or_none is None or prepared_or_none.param_oids:
                return None
            prepared = prepared_or_none
            if not _is_catalog(prepared.command):
                return None
            assert isinstance(prepared.command, Routed)
            command = prepared.command
            known_or_none = self.ctx.catalog.remembered(command.statement.text)
            if known_or_none is None or known_or_none.fields is None:
                return None
            known = known_or_none
        formats = bind.result_formats
        for code in bind.param_formats:
            if code not in (0, 1):
                return None
        if any(formats):
            return None  # binary results come from the mirror, not from memory
        if 0 < max_rows < len(known.rows):
            return None  # a suspended portal
        described = known
        if describe and prepared.sql != command.statement.text:
            # Describe looks the answer up by the Parse's whole text (`SELECT 1;`), Execute
            # by the routed statement's (`SELECT 1`): two remembered answers, as there.
            found_d = self.ctx.catalog.remembered(prepared.sql)
            if found_d is None or found_d.fields is None:
                return None
            described = found_d
        ops = self.ctx.ops
        obs = ops.observe(self, command, prepared.sql, "extended")
        if parse is not None:
            self.state.statements[parse.name] = prepared
        if session.tx_status == "I":
            # Sync commits the batch's implicit transaction, which closes every portal.
            self.state.end_transaction(True)
        else:
            self.state.portals[""] = Portal(prepared, [], formats, raw_formats=bind.param_formats,
                                            catalog=known, sent=len(known.rows))  # fmt: skip
        del pending[: i + 2]
        if described is known:
            reply = known.extended_reply(parse is not None, describe, formats)
        else:
            reply = ((codec.parse_complete() if parse is not None else b"") + codec.bind_complete()
                     + described.row_description(formats) + known.executed(formats))  # fmt: skip
        return reply + codec.ready_for_query(session.tx_status), ops.record(obs)

    async def _send_fast(self, reply: bytes, entry: AuditEntry | None) -> None:
        """Write a fast path's reply, after its audit entry if that must be awaited."""
        if entry is not None:
            await self.ctx.ops.audit_wait(entry)
        self.writer.write(reply)
        await self.writer.drain()

    def _transaction_ended(self) -> None:
        """Close portals and cursors whose transaction just ended."""
        assert self.session is not None
        if self.session.ended is not None:
            self.state.end_transaction(self.session.ended == "commit")
            self.session.ended = None

    # --- simple query -------------------------------------------------------------------

    async def _simple_query(self, sql: str) -> None:
        assert self.session is not None
        # A simple Query ends the unnamed statement and the unnamed portal.
        self.state.statements.pop("", None)
        self.state.portals.pop("", None)
        try:
            # Issue #7: new filter values in a known literal statement run as its shape
            # with the values bound, as a prepared statement does (proxy/literal_shapes.py).
            shaped = self.ctx.shapes.lookup(sql)
            # Every statement is checked before any runs: a string that contains one
            # refused statement is refused as a whole.
            routed = self.ctx.routes.commands(sql if shaped is None else shaped.shape)
            if not routed:
                self._send(codec.empty_query_response())
            else:
                if len(routed) > 1:
                    # PostgreSQL runs a multi-statement string as one implicit transaction.
                    self.session.begin_implicit()
                for s, c in routed:
                    obs = self.ctx.ops.begin(self, c, s.text, "simple", shaped and shaped.normalized)  # issue #8
                    result = await self._run(c, shaped.values if shaped else None)
                    binary = isinstance(result, Result) and result.binary
                    self._send_result(result, (1,) if binary else ())
                    await self.ctx.ops.end(obs)  # issue #8
                    self._transaction_ended()
                self.session.end_implicit()
                if shaped is None and len(routed) == 1 and isinstance(routed[0][1], Routed):
                    self.ctx.shapes.learn(sql, routed[0][1])
        except Exception as raised:  # noqa: BLE001 - see _statement_error
            e = _statement_error(raised)
            await self.ctx.ops.failed(self, e, sql, "simple")  # issue #8
            self._error(e)
            self.session.fail()
        self._transaction_ended()
        await self._ready()

    def _send_result(self, result: Result | CatalogResult, formats: tuple[int, ...]) -> None:
        if isinstance(result, CatalogResult):  # the mirror's fields and raw rows
            self._send(result.reply(formats))
            return
        for sqlstate, text in result.warnings:
            self._send(codec.notice_response(codec.ErrorFields("WARNING", sqlstate, text)))
        if result.copy is not None and result.columns is not None:
            spec = result.copy
            self._send(codec.copy_out_response(len(result.columns)))
            self._send(encode_copy_rows(result.columns, result.rows, spec.csv, spec.header,
                                        spec.delimiter, spec.null))  # fmt: skip
            self._send(codec.copy_done())
        elif result.columns is not None:
            self._send(describe_columns(result.columns, formats))
            self._send(encode_rows(result.columns, result.rows, formats))
        for text in result.notices:
            self._send(codec.notice_response(codec.ErrorFields("NOTICE", "00000", text)))
        self._send(codec.command_complete(result.tag))

    # --- running one statement ------------------------------------------------------------

    async def _run(self, cmd: Command, params: list[Any] | None = None) -> Result | CatalogResult:
        """Run one routed statement (simple or extended protocol) and return its result."""
        assert self.session is not None
        if isinstance(cmd, Routed):
            return await self._execute(cmd, params)
        if self.session.tx_status == "E":
            raise ProxyError(IN_FAILED_TRANSACTION, "current transaction is aborted, commands ignored until end of transaction block")  # fmt: skip
        if isinstance(cmd, Declare):
            return await self._declare(cmd, params)
        if isinstance(cmd, Fetch):
            if cmd.spec.name not in self.state.cursors and cmd.spec.name in self.state.portals:
                return await self._fetch_portal(cmd)
            cursor = self.state.cursor(cmd.spec.name)
            rows = cursor.fetch(cmd.spec)
            if cmd.spec.move:
                return Result(f"MOVE {len(rows)}")
            return Result(f"FETCH {len(rows)}", cursor.columns, rows, binary=cursor.binary)
        if isinstance(cmd, CloseCursor):
            self.state.close_cursor(cmd.name)
            return Result("CLOSE CURSOR ALL" if cmd.name is None else "CLOSE CURSOR")
        if isinstance(cmd, Deallocate):
            self.state.deallocate(cmd.name)
            return Result("DEALLOCATE ALL" if cmd.name is None else "DEALLOCATE")
        if isinstance(cmd, CopyOut):
            inner = catalog_to_result(await self._execute(cmd.query, params))
            return Result(f"COPY {len(inner.rows)}", inner.columns or [], inner.rows,
                          notices=inner.notices, copy=cmd)  # fmt: skip
        assert isinstance(cmd, LocalSelect)
        row = run_local(cmd, self.session, params or [])
        return Result("SELECT 1", local_columns(cmd), [row])

    async def _fetch_portal(self, cmd: Fetch) -> Result:
        """FETCH/MOVE on a protocol portal: PostgreSQL shares one namespace (asyncpg MOVEs)."""
        portal = self.state.portal(cmd.spec.name)
        if portal.prepared.command is None:
            raise ProxyError("55000", f'portal "{cmd.spec.name}" cannot be run')
        if portal.result is None:
            portal.result = catalog_to_result(await self._run(portal.prepared.command, portal.params))
        result = portal.result
        view = Cursor(cmd.spec.name, result.columns or [], result.rows, scroll=False, position=portal.sent)
        rows = view.fetch(cmd.spec)
        portal.sent = min(view.position, len(result.rows))
        if cmd.spec.move:
            return Result(f"MOVE {len(rows)}")
        return Result(f"FETCH {len(rows)}", view.columns, rows)

    async def _declare(self, cmd: Declare, params: list[Any] | None) -> Result:
        assert self.session is not None
        spec = cmd.spec
        if not spec.hold and not self.session.in_transaction:
            raise ProxyError(NO_ACTIVE_TRANSACTION, "DECLARE CURSOR can only be used in transaction blocks",
                             hint="use BEGIN first, or DECLARE ... CURSOR WITH HOLD")  # fmt: skip
        if spec.name in self.state.cursors or spec.name in self.state.portals:
            self.state.add_cursor(Cursor(spec.name, [], []), False)  # raises 42P03
        # The query is answered (and a DP query charged) now; FETCH serves from memory.
        inner = catalog_to_result(await self._execute(cmd.query, params))
        cursor = Cursor(spec.name, inner.columns or [], inner.rows, binary=spec.binary,
                        scroll=spec.scroll, hold=spec.hold)  # fmt: skip
        self.state.add_cursor(cursor, self.session.in_transaction)
        return Result("DECLARE CURSOR", notices=inner.notices)

    async def _execute(
        self, routed: Routed, params: list[Any] | None = None, portal: Portal | None = None
    ) -> Result | CatalogResult:
        assert self.session is not None and self.analyst is not None
        st = routed.statement
        if routed.route == Route.SESSION:
            if self.session.tx_status != "E" and st.keyword == "SHOW" and st.text.split()[-1].strip(";").lower() == "dp.budget":
                return await budget_result(self.ctx.engine, self.analyst.name, self.ctx.meta.dataset)
            if st.keyword == "DISCARD":
                self._discard(st.text)
            try:
                return run_session_command(st.text, st.keyword, self.session, self.analyst.max_epsilon_per_query)
            except ProxyError as e:
                # Server settings dpproxy does not track (SHOW transaction isolation level,
                # SHOW max_identifier_length) are read from the mirror.
                if st.keyword != "SHOW" or e.sqlstate != UNDEFINED_OBJECT or "dp." in st.text.lower():
                    raise
                return await self._cancellable(self.ctx.catalog.execute(st.text))
        if self.session.tx_status == "E":
            raise ProxyError(IN_FAILED_TRANSACTION, "current transaction is aborted, commands ignored until end of transaction block")  # fmt: skip
        if routed.route == Route.CATALOG and routed.tree is None:
            # Introspection sqlglot cannot parse (asyncpg's type query) that names no
            # private table: the mirror answers it as it is.
            return await self._on_mirror(st.text, portal)
        if routed.route == Route.EXPLAIN:
            # EXPLAIN is answered from the plan alone (never sent to PostgreSQL).
            return self.ctx.engine.explain(st.text, self.session.epsilon,
                                           session_delta(self.session.get("dp.delta")))  # fmt: skip
        tree = routed.tree if routed.tree is not None else parse_one(st.text)
        # A prepared DP statement's plan is cached under its text and parameter values,
        # so repeated executions skip binding and SQL regeneration.
        key = _plan_key(st.text, params)
        # Issue #7: a statement whose parameters only filter is planned once, not per value.
        bound = (self.ctx.engine.bound_plan(st.text, tree, params)
                 if params and routed.route == Route.DP else None)  # fmt: skip
        if params and bound is None and not (routed.route == Route.DP and self.ctx.engine.has_plan(key)):
            tree = bind_parameters(tree, params)
        if routed.route == Route.DP:
            started = time.monotonic()
            try:
                async with self.ctx.admission.query_slot(self.analyst.name):
                    return await self._cancellable(
                        self.ctx.engine.answer(key, tree, self.analyst, self.session.epsilon,
                                               session_delta(self.session.get("dp.delta")), bound)  # fmt: skip
                    )
            finally:
                # Success, refusal, error and timeout all reply on the quantum's grid.
                await pad_to_quantum(started, self._reply_quantum())
        if (picked := budget_select_columns(tree)) is not None:  # issue #5: SELECT FROM dp.budget
            return await select_budget(self.ctx.engine, self.analyst.name, self.ctx.meta.dataset, picked)
        # The catalog mirror gets the client's text and raw parameters, unchanged.
        return await self._on_mirror(st.text, portal)

    async def _on_mirror(self, sql: str, portal: Portal | None) -> CatalogResult:
        """Run a statement on the catalog mirror with the client's raw parameters."""
        if portal is None or not portal.raw_params:
            known = self.ctx.catalog.remembered(sql)
            if known is not None and (portal is None or not any(portal.formats)):
                return known
        if portal is None:
            return await self._cancellable(self.ctx.catalog.execute(sql))
        return await self._cancellable(self.ctx.catalog.execute(
            sql, portal.raw_params, portal.prepared.param_oids, portal.raw_formats, portal.formats
        ))  # fmt: skip

    def _discard(self, text: str) -> None:
        assert self.session is not None
        what = text.split()[1].upper().rstrip(";") if len(text.split()) > 1 else ""
        if what == "ALL" and self.session.tx_status != "I":
            raise ProxyError("25001", "DISCARD ALL cannot run inside a transaction block")
        if what == "ALL":
            self.state.discard_all()
        elif what == "PLANS":
            self.state.statements.clear()

    async def _cancellable(self, coro: Any) -> Any:
        self.running = asyncio.ensure_future(coro)
        try:
            return await self.running
        except asyncio.CancelledError:
            if self.running.cancelled():
                raise ProxyError(QUERY_CANCELED, "canceling statement due to user request") from None
            raise
        finally:
            self.running = None

    def _reply_quantum(self) -> float:
        assert self.analyst is not None
        own = self.ctx.config.analyst(self.analyst.name)
        ms = own.reply_quantum_ms if own is not None and own.reply_quantum_ms is not None else None
        return (ms if ms is not None else self.ctx.config.limits.reply_quantum_ms) / 1000

    def cancel_running(self) -> None:
        """Cancel the statement this connection is running (from a CancelRequest)."""
        if self.running is not None and not self.running.done():
            self.running.cancel()

    # --- extended query -----------------------------------------------------------------

    async def _extended(self, msg: Any) -> None:
        if isinstance(msg, m.Parse):
            self._parse(msg)
        elif isinstance(msg, m.Bind):
            self._bind(msg)
        elif isinstance(msg, m.Describe):
            await self._describe(msg)
        elif isinstance(msg, m.Execute):
            started = portal_command(self, msg.portal)  # issue #8: None when a portal resumes
            obs = self.ctx.ops.begin(self, started[0], started[1], "extended", started[2]) if started else None
            await self._execute_portal(msg)
            await self.ctx.ops.end(obs)
        elif isinstance(msg, m.Close):
            self.state.close(msg.kind, msg.name)
            self._send(codec.close_complete())

    def _parse(self, msg: m.Parse) -> None:
        if msg.name and msg.name in self.state.statements:
            self.state.add_statement(msg.name, self.state.statements[msg.name])  # raises 42P05
        # Issue #7: a literal text whose shape is learned runs as the shape with its
        # values bound at every Bind (proxy/literal_shapes.py); the client binds none.
        shaped = None if msg.param_oids else self.ctx.shapes.lookup(msg.query)
        routed = self.ctx.routes.commands(msg.query if shaped is None else shaped.shape)
        if len(routed) > 1:
            raise ProxyError(SYNTAX_ERROR, "cannot insert multiple commands into a prepared statement")
        command = routed[0][1] if routed else None
        if shaped is not None:
            prepared = Prepared(msg.query, command, (), shaped.values, shaped.normalized)
        else:
            prepared = Prepared(msg.query, command, self._param_oids(command, msg.param_oids))
            if isinstance(command, Routed) and not msg.param_oids:
                self.ctx.shapes.learn(msg.query, command)
        self.state.add_statement(msg.name, prepared)
        self._send(codec.parse_complete())

    def _param_oids(self, command: Command | None, given: tuple[int, ...]) -> tuple[int, ...]:
        """Parameter types: the client's where given (non-zero), else inferred, else text."""
        routed = _query_of(command)
        if routed is None or routed.tree is None or _is_catalog(command):
            return given  # the mirror infers catalog statements' parameter types itself
        highest, inferred = self.ctx.routes.parameters(routed)
        n = max(highest, len(given))
        out = []
        for i in range(n):
            oid = given[i] if i < len(given) else 0
            out.append(oid or type_oid(inferred.get(i + 1, "text")))
        return tuple(out)

    def _bind(self, msg: m.Bind) -> None:
        prepared = self.state.statement(msg.statement)
        oids = prepared.param_oids
        if _is_catalog(prepared.command):
            for code in (*msg.param_formats, *msg.result_formats):
                if code not in (0, 1):
                    raise ProxyError(INVALID_PARAMETER_VALUE, f"unsupported format code: {code}")
            self.state.add_portal(msg.portal, Portal(prepared, [], msg.result_formats,
                                                     raw_params=list(msg.params),
                                                     raw_formats=msg.param_formats))  # fmt: skip
            self._send(codec.bind_complete())
            return
        if len(msg.params) != len(oids):
            shown = msg.statement or "unnamed"
            raise ProxyError(PROTOCOL_VIOLATION, f'bind message supplies {len(msg.params)} parameters, '
                             f'but prepared statement "{shown}" requires {len(oids)}')  # fmt: skip
        for code in (*msg.param_formats, *msg.result_formats):
            if code not in (0, 1):
                raise ProxyError(INVALID_PARAMETER_VALUE, f"unsupported format code: {code}")
        fmts = msg.param_formats
        params = []
        for i, raw in enumerate(msg.params):
            fmt = fmts[0] if len(fmts) == 1 else (fmts[i] if fmts else 0)
            try:
                params.append(None if raw is None else decode_param(raw, oids[i], fmt))
            except ValueError as e:
                raise ProxyError("22P02", f"invalid value for parameter ${i + 1}: {e}") from e
        if prepared.values is not None:
            params = list(prepared.values)
        self.state.add_portal(msg.portal, Portal(prepared, params, msg.result_formats))
        self._send(codec.bind_complete())

    async def _describe(self, msg: m.Describe) -> None:
        if msg.kind == "S" and _is_catalog(self.state.statement(msg.name).command):
            # Parameter types and fields as the mirror describes them.
            prepared = self.state.statement(msg.name)
            oids, fields = await self.ctx.catalog.describe(prepared.sql, prepared.param_oids)
            self._send(codec.parameter_description(oids))
            self._send(codec.no_data() if fields is None else describe_fields(fields))
        elif msg.kind == "S":
            prepared = self.state.statement(msg.name)
            self._send(codec.parameter_description(prepared.param_oids))
            self._send_description(await self._columns_of(prepared.command, prepared.values), ())
        elif msg.name in self.state.cursors:
            # A SQL cursor is a portal too (psycopg describes its DECLAREd cursors).
            cursor = self.state.cursor(msg.name)
            self._send_description(cursor.columns, (1,) if cursor.binary else ())
        elif _is_catalog(self.state.portal(msg.name).prepared.command):
            portal = self.state.portal(msg.name)
            known = (None if portal.raw_params or portal.prepared.param_oids
                     else self.ctx.catalog.remembered(portal.prepared.sql))
            if known is not None and known.fields is not None:
                # A pool ping's portal (`SELECT 1`): its remembered answer's encoded description.
                self._send(known.row_description(portal.formats))
                return
            _, fields = await self.ctx.catalog.describe(portal.prepared.sql, portal.prepared.param_oids)
            self._send(codec.no_data() if fields is None else describe_fields(fields, portal.formats))
        else:
            portal = self.state.portal(msg.name)
            if portal.result is not None:
                columns = portal.result.columns if portal.result.copy is None else None
            else:
                columns = await self._columns_of(portal.prepared.command, portal.params)
            self._send_description(columns, portal.formats)

    def _send_description(self, columns: list[tuple[str, str]] | None, formats: tuple[int, ...]) -> None:
        if columns is None:
            self._send(codec.no_data())
        else:
            _check_result_formats(formats, len(columns))
            self._send(describe_columns(columns, formats))

    async def _columns_of(self, command: Command | None, params: list[Any] | None) -> list[tuple[str, str]] | None:
        if command is None:
            return None
        if isinstance(command, LocalSelect):
            return local_columns(command)
        if isinstance(command, Fetch):
            if command.spec.move or command.spec.name not in self.state.cursors:
                return None
            return self.state.cursor(command.spec.name).columns
        if not isinstance(command, Routed):
            return None  # DECLARE, CLOSE, DEALLOCATE and COPY return no rows
        routed = command
        if routed.route == Route.DP and routed.tree is not None:
            # The same plan key as execution: a Describe before each Execute (psycopg,
            # pgjdbc) then neither binds parameters nor regenerates SQL again.
            if params and (plan := self.ctx.engine.bound_plan(routed.statement.text, routed.tree, params)):
                return self.ctx.engine.columns(routed.statement.text, routed.tree, plan)
            n = self.ctx.routes.parameters(routed)[0]
            bound = params if params else [None] * n
            key = _plan_key(routed.statement.text, bound)
            tree = routed.tree if self.ctx.engine.has_plan(key) or not n else bind_parameters(routed.tree, bound)
            return self.ctx.engine.columns(key, tree)
        if routed.route == Route.SESSION and routed.statement.keyword == "SHOW":
            name = routed.statement.text.split()[-1].strip(";").lower()
            if name == "dp.budget":
                return list(BUDGET_COLUMNS)  # issue #5
            return [(name, "text")]
        if routed.route == Route.CATALOG and (picked := budget_select_columns(routed.tree)) is not None:
            return [BUDGET_COLUMNS[i] for i in picked]  # issue #5
        if routed.route == Route.EXPLAIN:
            return [("QUERY PLAN", "text")]  # EXPLAIN answers one text column
        return None

    async def _execute_portal(self, msg: m.Execute) -> None:
        portal = self.state.portal(msg.portal)
        command = portal.prepared.command
        if command is None:
            self._send(codec.empty_query_response())
            return
        if portal.catalog is not None:
            self._send_catalog_rows(portal.catalog, portal, msg.max_rows)
            return
        if _is_catalog(command) and portal.result is None:
            assert isinstance(command, Routed)
            if portal.catalog is None:
                ran = await self._execute(command, None, portal)
                if isinstance(ran, Result):  # answered by dpproxy (e.g. dp.budget)
                    portal.result = ran
                else:
                    portal.catalog = ran
            if portal.catalog is not None:
                self._send_catalog_rows(portal.catalog, portal, msg.max_rows)
                return
        if portal.result is None:
            ran = await self._run(command, portal.params)
            if isinstance(ran, CatalogResult):  # e.g. SHOW of a setting the mirror knows
                portal.catalog = ran
                self._send_catalog_rows(ran, portal, msg.max_rows)
                return
            portal.result = ran
            for sqlstate, text in portal.result.warnings:
                self._send(codec.notice_response(codec.ErrorFields("WARNING", sqlstate, text)))
        result = portal.result
        if result.columns is None or result.copy is not None:
            if portal.sent == 0 and result.copy is not None:
                portal.sent = len(result.rows)
                self._send_result(Result(result.tag, result.columns, result.rows, copy=result.copy), ())
                return
            for text in result.notices:
                self._send(codec.notice_response(codec.ErrorFields("NOTICE", "00000", text)))
            self._send(codec.command_complete(result.tag))
            return
        _check_result_formats(portal.formats, len(result.columns))
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
        tag = result.tag
        if tag.startswith("SELECT "):
            tag = f"SELECT {portal.sent}"
        elif tag.startswith("FETCH "):
            tag = f"FETCH {portal.sent}"
        self._send(codec.command_complete(tag))

    def _send_catalog_rows(self, result: CatalogResult, portal: Portal, max_rows: int) -> None:
        """The mirror's raw rows, with the same row-limit rules as computed results."""
        if result.fields is None:
            self._send(codec.command_complete(result.tag))
            return
        stop = len(result.rows) if max_rows <= 0 else min(len(result.rows), portal.sent + max_rows)
        self._send(result.data_rows(portal.formats, portal.sent, stop))
        portal.sent = stop
        if stop < len(result.rows):
            self._send(codec.portal_suspended())
            return
        tag = result.tag if not result.tag.startswith("SELECT") else f"SELECT {portal.sent}"
        self._send(codec.command_complete(tag))


def _plan_key(text: str, params: list[Any] | None) -> str:
    """The DP plan cache key of a statement's text with its parameter values."""
    return text if not params else f"{text}\x00{params!r}"


def _is_catalog(command: Command | None) -> bool:
    """A statement answered by the catalog mirror (not dp.budget, which dpproxy answers)."""
    return (
        isinstance(command, Routed)
        and command.route == Route.CATALOG
        and budget_select_columns(command.tree) is None
    )


def _query_of(command: Command | None) -> Routed | None:
    """The parsed query whose $n parameters a statement takes, if any."""
    if isinstance(command, Routed):
        return command
    if isinstance(command, (Declare, CopyOut)):
        return command.query
    return None


def _check_result_formats(formats: tuple[int, ...], ncols: int) -> None:
    if len(formats) > 1 and len(formats) != ncols:
        raise ProxyError(PROTOCOL_VIOLATION,
                         f"bind message has {len(formats)} result formats but query has {ncols} columns")  # fmt: skip

