"""The catalog mirror at query time: checking and faithfully running catalog statements.

Statements that read no private table run on the mirror (see `proxy.mirror` for what it
holds), so clients' catalog queries get real PostgreSQL answers from a database that
holds no private rows and no statistics. The client's SQL text is sent unchanged (only
neutralized statistics are redirected, see `prepare_catalog_sql`), parameters are passed
through as the client sent them, and results come back as the mirror's own bytes with
its RowDescription attributes (type OIDs, modifiers, table OIDs, column numbers), so
clients that introspect (pgjdbc, asyncpg, psql's chained \\d queries) see a consistent
catalog. Cluster-wide statistics, activity, size and file functions are refused.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import generators, pq
from sqlglot.dialects.postgres import Postgres
from sqlglot.tokens import TokenType

from proxy.errors import QUERY_FAILED, QUERY_NOT_ALLOWED, ProxyError
from proxy.mirror import STUB_FUNCTIONS, STUB_SCHEMA, STUB_VIEWS, refresh_mirror
from proxy.wire import oids
from proxy.wire.codec import (
    FieldDescription,
    bind_complete,
    command_complete,
    data_row,
    parse_complete,
    row_description,
)
from proxy.wire.types import decode_param, encode_binary
from rewriter.metadata import Metadata
from rewriter.parse import token_start

# Names refused wherever they appear as identifiers (table, view or function names):
# (pg_statistic_ext holds extended-statistics *definitions*, which psql's \d reads; their
# values live in pg_statistic_ext_data, refused like pg_statistic and pg_stats.)
# cluster-wide statistics and activity, sizes, files, large objects, other databases,
# sleeping, signalling, locks and session state shared through the mirror's pool.
_FORBIDDEN_NAME = re.compile(
    r"^(pg_stat(?!istic_ext$).*|pg_.*_size|pg_ls_.*|pg_read_.*|"
    r"pg_file.*|pg_stat_file|lo_.*|loread|lowrite|pg_largeobject.*|dblink.*|postgres_fdw.*|"
    r"pg_sleep.*|pg_terminate_backend|pg_cancel_backend|pg_signal_backend|"
    r"pg_reload_conf|pg_rotate_logfile|set_config|pg_advisory.*|pg_try_advisory.*|"
    r"pg_notify|nextval|setval|currval|lastval|query_to_xml.*|table_to_xml.*|cursor_to_xml.*|"
    r"schema_to_xml.*|database_to_xml.*|query_to_xmlschema|"
    r"pg_current_logfile|pg_backend_pid|pg_blocking_pids|pg_safe_snapshot_blocking_pids|pg_locks|"
    r"pg_prepared_xacts|pg_shmem_allocations|pg_.*memory_contexts|pg_replication.*|"
    r"pg_hba_file_rules|pg_file_settings|pg_ident_file_mappings|pg_logical.*|"
    r"pg_import_system_collations|pg_switch_wal|pg_create.*|pg_drop.*|pg_promote|pg_wal.*|"
    r"pg_current_wal.*|pg_last_wal.*|pg_last_xact_replay_timestamp|pg_export_snapshot|"
    r"pg_control_.*|pg_current_snapshot|pg_snapshot_.*|txid_.*|pg_current_xact.*|pg_xact.*|"
    r"pg_visible_in_snapshot|pg_log_backend_memory_contexts|pg_stat_reset.*|"
    r"setseed|random|gen_random_uuid|pg_get_wal.*|pg_walfile_name.*|pg_backup.*|"
    r"pg_start_backup|pg_stop_backup|pg_partition_tree|pg_identify_object.*|"
    r"pg_event_trigger.*|pg_trigger_depth|pg_tablespace_location|pg_tablespace_databases)$",
    re.IGNORECASE,
)
_STRING_TOKENS = frozenset(
    {TokenType.STRING, TokenType.BYTE_STRING, TokenType.NATIONAL_STRING, TokenType.RAW_STRING,
     TokenType.HEREDOC_STRING, TokenType.BIT_STRING, TokenType.HEX_STRING, TokenType.NUMBER}
)  # fmt: skip
_STUB_NAMES = frozenset(STUB_VIEWS) | frozenset(STUB_FUNCTIONS)
_REFUSAL_HINT = (
    "catalog queries may read pg_catalog and information_schema; statistics, activity, size "
    "and file functions are withheld because they describe the real data or other sessions"
)

# Types whose text output dpproxy can re-encode in binary (proxy.wire.types); a client
# asking binary for another type gets that column in text (format 0 in RowDescription).
BINARY_CONVERTIBLE = frozenset(
    {oids.INT2, oids.INT4, oids.INT8, oids.OID, oids.FLOAT4, oids.FLOAT8, oids.NUMERIC,
     oids.BOOL, oids.BYTEA, oids.DATE, oids.TIME, oids.TIMESTAMP, oids.TIMESTAMPTZ,
     oids.TEXT, oids.VARCHAR, oids.BPCHAR, oids.NAME, oids.CHAR, oids.JSON}
)  # fmt: skip

# Settings of every mirror connection: read-only, and the text formats the value codecs
# parse; clients cannot change them (SET is answered by dpproxy, set_config is refused).
_MIRROR_OPTIONS = (
    "-c default_transaction_read_only=on -c DateStyle=ISO -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex "
    "-c client_encoding=UTF8 -c TimeZone=UTC -c statement_timeout={timeout} "
    "-c idle_in_transaction_session_timeout=60000"
)


# asyncpg turns JIT off around its type introspection with exactly these statements; on
# a pooled mirror connection they only change the JIT setting, so they are let through.
_ASYNCPG_JIT = re.compile(
    r"^\s*SELECT\s+current_setting\('jit'\)\s+AS\s+cur\s*,\s*set_config\('jit',\s*'off',\s*false\)"
    r"\s+AS\s+new\s*;?\s*$|^\s*SELECT\s+set_config\('jit',\s*\$1,\s*false\)\s*;?\s*$",
    re.IGNORECASE,
)


def _current_database_call(tokens: Sequence[Any], i: int) -> tuple[int, int] | None:
    """The source span of `[pg_catalog.]current_database()` or `current_catalog` starting
    at token i (the function name), or None."""
    tok = tokens[i]
    name = tok.text.lower()
    if i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.DOT:
        return None
    start = tok.start
    if i >= 2 and tokens[i - 1].token_type == TokenType.DOT:
        if tokens[i - 2].text.lower() != "pg_catalog":
            return None
        start = tokens[i - 2].start
    if name == "current_catalog" and tok.token_type != TokenType.IDENTIFIER:
        return (start, tok.end + 1)
    if name == "current_database" and tok.token_type != TokenType.IDENTIFIER and i + 2 < len(tokens) \
            and tokens[i + 1].token_type == TokenType.L_PAREN and tokens[i + 2].token_type == TokenType.R_PAREN:  # fmt: skip
        return (start, tokens[i + 2].end + 1)
    return None


def _names_database(tokens: Sequence[Any], i: int, database: str) -> bool:
    """Whether token i is the database part of a three-part table name right after FROM or
    JOIN (`FROM db.schema.table`) and names `database`."""
    if i == 0 or i + 4 >= len(tokens):
        return False
    tok = tokens[i]
    quoted = tok.token_type == TokenType.IDENTIFIER
    if (tok.text if quoted else tok.text.lower()) != (database if quoted else database.lower()):
        return False
    if tokens[i - 1].token_type not in (TokenType.FROM, TokenType.JOIN):
        return False
    shape = [t.token_type for t in tokens[i + 1 : i + 5]]
    if shape[0] != TokenType.DOT or shape[2] != TokenType.DOT or TokenType.DOT in (shape[1], shape[3]):
        return False
    return i + 5 >= len(tokens) or tokens[i + 5].token_type != TokenType.DOT


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def prepare_catalog_sql(sql: str, database: str | None = None) -> str:
    """Check a catalog statement and redirect neutralized statistics; return the SQL to run.

    Works on sqlglot's PostgreSQL tokens (strings, comments and dollar quotes follow
    PostgreSQL's lexer with standard_conforming_strings on), so every identifier is seen
    wherever it appears. Raises ProxyError 42501 naming the refused name. With `database`
    (the name clients connect to), `current_database()` and `current_catalog` answer it
    instead of the mirror's own name, as the connection's catalog (pgjdbc's getCatalog())
    and the TABLE_CAT of drivers' table lists must agree.
    """
    if _ASYNCPG_JIT.match(sql):
        return sql
    tokens = Postgres().tokenize(sql)
    out: list[str] = []
    pos = 0
    for i, tok in enumerate(tokens):
        if tok.token_type in _STRING_TOKENS:
            continue
        if tok.token_type == TokenType.AMP and i > 0 and tokens[i - 1].text.upper() == "U" \
                and tokens[i - 1].end + 1 == tok.start:  # fmt: skip
            # U&"..." identifiers can spell any name with escapes: never needed by catalogs.
            raise ProxyError(QUERY_NOT_ALLOWED, 'Unicode-escaped identifiers (U&"...") are not '
                             "allowed in catalog queries", hint=_REFUSAL_HINT)  # fmt: skip
        name = tok.text.lower()
        if database is not None and (span := _current_database_call(tokens, i)) is not None:
            start, end = span
            out.append(sql[pos:start])
            # A scalar subquery keeps the column name PostgreSQL gives the call.
            column = "current_catalog" if name == "current_catalog" else "current_database"
            out.append(f"(SELECT {_quote_literal(database)}::pg_catalog.name AS {column})")
            pos = end
            continue
        if database is not None and _names_database(tokens, i, database):
            # FROM tpch.public.nation: the mirror is another database, so the client's
            # database name (the dataset's) is dropped, leaving schema.table.
            out.append(sql[pos:token_start(sql, tok)])
            pos = tokens[i + 1].end + 1
            continue
        if not (_FORBIDDEN_NAME.match(name) or name in _STUB_NAMES):
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if nxt is not None and nxt.token_type == TokenType.DOT:
            continue  # a qualifier such as pg_stat_user_tables.relname: its FROM is checked
        qualifier = None
        start = tok.start
        if i >= 2 and tokens[i - 1].token_type == TokenType.DOT:
            qualifier = tokens[i - 2].text.lower()
            start = tokens[i - 2].start
        if name in _STUB_NAMES and qualifier in (None, "pg_catalog"):
            out.append(sql[pos:start])
            out.append(f"{STUB_SCHEMA}.{name}")
            pos = tok.end + 1
            continue
        if name in _STUB_NAMES and qualifier == STUB_SCHEMA:
            continue
        raise ProxyError(QUERY_NOT_ALLOWED, f'"{tok.text}" is not available through dpproxy',
                         hint=_REFUSAL_HINT)  # fmt: skip
    out.append(sql[pos:])
    return "".join(out)


def mentions_any(sql: str, names: Iterable[str]) -> bool:
    """Whether any identifier of `sql` (outside strings and comments) is one of `names`."""
    wanted = {n.lower() for n in names}
    try:
        tokens = Postgres().tokenize(sql)
    except Exception:  # noqa: BLE001 - untokenizable SQL is treated as naming everything
        return True
    return any(t.token_type not in _STRING_TOKENS and t.text.lower() in wanted for t in tokens)


_LITERALS = frozenset({TokenType.NUMBER, TokenType.STRING, TokenType.TRUE, TokenType.FALSE,
                       TokenType.NULL})  # fmt: skip
_ALIASES = frozenset({TokenType.VAR, TokenType.IDENTIFIER})


def is_constant_select(sql: str) -> bool:
    """Whether `sql` is a SELECT of plain literals only (`SELECT 1`, `SELECT 'a' AS x, -2`).

    Such a statement reads nothing and calls nothing: the mirror's answer depends only on
    its text and the mirror connections' fixed settings (see `_MIRROR_OPTIONS`), so it is
    the same every time and may be remembered. Anything else (functions, casts, operators
    other than a leading minus, escape strings, FROM...) is not constant by this test.
    """
    try:
        tokens = Postgres().tokenize(sql)
    except Exception:  # noqa: BLE001 - not tokenizable: certainly not a plain literal list
        return False
    if tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens = tokens[:-1]
    if len(tokens) < 2 or tokens[0].token_type != TokenType.SELECT:
        return False
    i, n = 1, len(tokens)
    while True:  # item := [-] literal [[AS] alias], items separated by commas
        if i < n and tokens[i].token_type == TokenType.DASH:
            i += 1
            if i >= n or tokens[i].token_type != TokenType.NUMBER:
                return False
        if i >= n or tokens[i].token_type not in _LITERALS:
            return False
        i += 1
        if i < n and tokens[i].token_type == TokenType.ALIAS:
            i += 1
            if i >= n or tokens[i].token_type not in _ALIASES:
                return False
            i += 1
        elif i < n and tokens[i].token_type in _ALIASES:
            i += 1
        if i == n:
            return True
        if tokens[i].token_type != TokenType.COMMA:
            return False
        i += 1


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogField:
    """One result column as the mirror described it."""

    name: str
    type_oid: int
    type_size: int
    type_modifier: int
    table_oid: int
    column_attnum: int


def output_formats(fields: Sequence[CatalogField], requested: Sequence[int]) -> list[int]:
    """The formats dpproxy will actually send for a Bind's requested result formats.

    All-binary requests are served in binary by the mirror itself; otherwise a column
    asked in binary is binary only if dpproxy can re-encode its type.
    """
    n = len(fields)
    req = [0] * n if not requested else [requested[0]] * n if len(requested) == 1 else list(requested)
    if n and all(f == 1 for f in req):
        return req
    return [1 if f == 1 and fd.type_oid in BINARY_CONVERTIBLE else 0 for f, fd in zip(req, fields, strict=True)]


def describe_fields(fields: Sequence[CatalogField], formats: Sequence[int] = ()) -> bytes:
    """RowDescription with the mirror's attributes and the formats dpproxy will send."""
    fmts = output_formats(fields, formats)
    return row_description(
        [FieldDescription(name=f.name, type_oid=f.type_oid, type_size=f.type_size,
                          table_oid=f.table_oid, column_attnum=f.column_attnum,
                          type_modifier=f.type_modifier, format=fmts[i])
         for i, f in enumerate(fields)]  # fmt: skip
    )


@dataclass
class CatalogResult:
    """What a catalog statement returned: the mirror's fields, raw rows and command tag.

    `rows` hold the values exactly as the mirror sent them, in `row_format` (0 text,
    1 binary: the mirror answers all-binary requests in binary itself).
    """

    tag: str
    fields: list[CatalogField] | None
    rows: list[list[bytes | None]] = field(default_factory=list)
    row_format: int = 0
    notices: list[str] = field(default_factory=list)
    reported: list[tuple[str, str]] = field(default_factory=list)
    # Encoded messages of a remembered constant answer, by (kind, formats): it is sent
    # again and again unchanged (None: this result is not remembered, encode each time).
    encoded: dict[tuple[str, tuple[int, ...]], bytes] | None = field(default=None, repr=False)

    def row_description(self, formats: Sequence[int] = ()) -> bytes:
        """RowDescription for this result in the formats a Bind requested."""
        assert self.fields is not None
        return self._memo("T", formats, lambda: describe_fields(self.fields or [], formats))

    def data_rows(self, formats: Sequence[int] = (), start: int = 0, stop: int | None = None) -> bytes:
        """DataRow messages for rows[start:stop], each value in the format announced."""
        if start == 0 and (stop is None or stop >= len(self.rows)):
            return self._memo("D", formats, lambda: self._data_rows(formats, 0, None))
        return self._data_rows(formats, start, stop)

    def reply(self, formats: Sequence[int] = ()) -> bytes:
        """The whole answer: RowDescription and DataRows (if it has rows), CommandComplete."""
        def encode() -> bytes:
            head = b"" if self.fields is None else self.row_description(formats) + self.data_rows(formats)
            return head + command_complete(self.tag)

        return self._memo("reply", formats, encode)

    def executed(self, formats: Sequence[int] = ()) -> bytes:
        """DataRows and CommandComplete of an Execute that sends every row (no row limit)."""
        def encode() -> bytes:
            if self.fields is None:
                return command_complete(self.tag)
            tag = self.tag if not self.tag.startswith("SELECT") else f"SELECT {len(self.rows)}"
            return self.data_rows(formats) + command_complete(tag)

        return self._memo("E", formats, encode)

    def extended_reply(self, parsed: bool, described: bool, formats: Sequence[int] = ()) -> bytes:
        """[ParseComplete] BindComplete [RowDescription] rows and tag, as one encoded reply.

        The answer of a whole [Parse] Bind [Describe] Execute batch (ReadyForQuery left
        out, it depends on the session), encoded once for a remembered constant.
        """
        def encode() -> bytes:
            return ((parse_complete() if parsed else b"") + bind_complete()
                    + (self.row_description(formats) if described else b"") + self.executed(formats))  # fmt: skip

        return self._memo("batch" + ("P" if parsed else "") + ("D" if described else ""), formats, encode)

    def _memo(self, kind: str, formats: Sequence[int], encode: Any) -> bytes:
        if self.encoded is None:
            return bytes(encode())
        key = (kind, tuple(formats))
        out = self.encoded.get(key)
        if out is None:
            out = self.encoded[key] = bytes(encode())
        return out

    def _data_rows(self, formats: Sequence[int], start: int, stop: int | None) -> bytes:
        assert self.fields is not None
        fmts = output_formats(self.fields, formats)
        out = []
        for row in self.rows[start:stop]:
            if self.row_format == 1 or not any(fmts):
                out.append(data_row(row))
                continue
            out.append(data_row([
                _to_binary(v, fd.type_oid) if f == 1 and v is not None else v
                for v, f, fd in zip(row, fmts, self.fields, strict=True)
            ]))  # fmt: skip
        return b"".join(out)


def _to_binary(text: bytes, oid: int) -> bytes:
    try:
        return encode_binary(decode_param(text, oid, 0), oid)
    except (ValueError, TypeError) as e:
        raise ProxyError(QUERY_FAILED, f"cannot send a value of type OID {oid} in binary",
                         hint="request this column in text format") from e  # fmt: skip


def _fields_of(res: pq.abc.PGresult) -> list[CatalogField] | None:
    if res.nfields == 0:
        return None
    return [
        CatalogField((res.fname(i) or b"").decode(), res.ftype(i), res.fsize(i), res.fmod(i),
                     res.ftable(i), res.ftablecol(i))  # fmt: skip
        for i in range(res.nfields)
    ]


# --- the pool and the catalog ------------------------------------------------------------


class _Pool:
    """A small pool of autocommit psycopg connections to the mirror.

    A connection that saw an error or a cancellation is closed, never reused: its
    protocol state is not worth reasoning about.
    """

    def __init__(self, dsn: str, size: int, timeout_ms: int) -> None:
        self._dsn = dsn
        self._options = _MIRROR_OPTIONS.format(timeout=timeout_ms)
        self._idle: list[psycopg.AsyncConnection] = []
        self._sem = asyncio.Semaphore(size)

    async def acquire(self) -> psycopg.AsyncConnection:
        await self._sem.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, options=self._options, application_name="dpproxy-catalog"
            )
            # The refusal check lexes strings as PostgreSQL does with this setting on.
            if conn.pgconn.parameter_status(b"standard_conforming_strings") != b"on":
                await conn.close()
                raise ProxyError(QUERY_FAILED, "the catalog mirror must run with "
                                 "standard_conforming_strings = on")  # fmt: skip
            return conn
        except BaseException:
            self._sem.release()
            raise

    def release(self, conn: psycopg.AsyncConnection, ok: bool) -> None:
        if ok and not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
            self._idle.append(conn)
        else:
            asyncio.ensure_future(conn.close())
        self._sem.release()

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


class Catalog:
    """Runs statements that read no private table on the catalog mirror database."""

    def __init__(self, pool: _Pool | None, tables: list[str] | None = None,
                 database: str | None = None) -> None:  # fmt: skip
        self.pool = pool
        self.tables = tables or []
        self.database = database  # the name clients connect to (the dataset's)
        self._prepared: OrderedDict[str, tuple[str, bool]] = OrderedDict()  # -> (checked SQL, constant)
        # Text answers of constant statements (`is_constant_select`), by (SQL, binary).
        self._constants: OrderedDict[tuple[str, bool], CatalogResult] = OrderedDict()

    @classmethod
    async def open(
        cls, dsn: str | None, meta: Metadata, data_dsn: str | None = None,
        pool_size: int = 4, statement_timeout_ms: int = 30_000,
    ) -> Catalog:  # fmt: skip
        """Bring the mirror up to date with the data database's schema, and connect to it."""
        tables = sorted(meta.tables)
        if dsn is None:
            return cls(None, tables, meta.dataset)
        if data_dsn is not None:
            await asyncio.to_thread(refresh_mirror, data_dsn, dsn, meta, False)
        return cls(_Pool(dsn, pool_size, statement_timeout_ms), tables, meta.dataset)

    async def close(self) -> None:
        """Close the pool."""
        if self.pool is not None:
            await self.pool.close()

    def _require(self) -> _Pool:
        if self.pool is None:
            raise ProxyError(
                "0A000",
                "queries that read no private table need the catalog mirror, which is not configured",
                hint="set backend.catalog_dsn in the configuration",
            )
        return self.pool

    def check(self, sql: str) -> str:
        """The SQL to send for a client's catalog statement (refusals raise ProxyError)."""
        return self._check(sql)[0]

    def _check(self, sql: str) -> tuple[str, bool]:
        """(SQL to send, whether its answer is constant), remembered per client text."""
        entry = self._prepared.get(sql)
        if entry is None:
            checked = prepare_catalog_sql(sql, self.database)
            entry = (checked, is_constant_select(checked))
            self._prepared[sql] = entry
            if len(self._prepared) > 512:
                self._prepared.popitem(last=False)
        return entry

    async def _run(self, send: list[tuple[str, tuple[object, ...]]]) -> list[pq.abc.PGresult]:
        """Send libpq requests in order on one pooled connection; the last one's results."""
        pool = self._require()
        conn = await pool.acquire()
        ok = False
        try:
            results: list[pq.abc.PGresult] = []
            for method, args in send:
                getattr(conn.pgconn, method)(*args)
                results = await conn.wait(generators.execute(conn.pgconn))
                self._raise_error(results)
            ok = True
            return results
        except psycopg.OperationalError as e:
            raise ProxyError("08006", "the catalog mirror connection failed") from e
        finally:
            pool.release(conn, ok)

    def remembered(self, sql: str) -> CatalogResult | None:
        """The remembered answer of a constant statement without parameters, if any.

        Lets the connection answer `SELECT 1` without starting a task; refusals and
        unknown statements return None (`execute` then checks and runs them).
        """
        entry = self._prepared.get(sql)
        if entry is None or not entry[1]:
            return None
        return self._constants.get((entry[0], False))

    async def execute(
        self, sql: str, params: Sequence[bytes | None] = (), param_oids: Sequence[int] = (),
        param_formats: Sequence[int] = (), result_formats: Sequence[int] = (),
    ) -> CatalogResult:  # fmt: skip
        """Run one catalog statement with the client's raw parameters.

        Rows come back as the mirror's text output, or in binary straight from the mirror
        when every column is requested in binary (`result_formats`, optional).
        """
        checked, constant = self._check(sql)
        n = len(params)
        fmts = list(param_formats) if len(param_formats) != 1 else [param_formats[0]] * n
        types = [param_oids[i] if i < len(param_oids) else 0 for i in range(n)]
        want_binary = bool(result_formats) and all(f == 1 for f in result_formats)
        if constant and not n and not want_binary:
            # `SELECT 1` (pgbench, pool pings): the mirror's first answer, remembered.
            known = self._constants.get((checked, False))
            if known is not None:
                return known
            result = await self._execute(checked, [], [], [], result_formats, False)
            result.encoded = {}
            self._constants[(checked, False)] = result
            if len(self._constants) > 256:
                self._constants.popitem(last=False)
            return result
        return await self._execute(checked, params, types, fmts, result_formats, want_binary)

    async def _execute(
        self, checked: str, params: Sequence[bytes | None], types: list[int], fmts: list[int],
        result_formats: Sequence[int], want_binary: bool,
    ) -> CatalogResult:  # fmt: skip
        results = await self._run([("send_query_params", (
            checked.encode(), list(params), types or None, fmts or None, 1 if want_binary else 0))])  # fmt: skip
        res = results[-1]
        fields = _fields_of(res)
        tag = (res.command_status or b"").decode() or "SELECT 0"
        if fields is None:
            return CatalogResult(tag, None)
        if want_binary and len(result_formats) not in (1, len(fields)):
            raise ProxyError("08P01", f"bind message has {len(result_formats)} result formats "
                             f"but query has {len(fields)} columns")  # fmt: skip
        rows = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
        return CatalogResult(tag, fields, rows, 1 if want_binary else 0)

    async def describe(
        self, sql: str, param_oids: Sequence[int] = ()
    ) -> tuple[list[int], list[CatalogField] | None]:
        """Parameter type OIDs and result fields of a catalog statement, without running it."""
        checked, constant = self._check(sql)
        if constant and not param_oids:
            # A constant statement takes no parameters, and running it has no effect: its
            # remembered answer describes it (pool pings Describe `SELECT 1` every time).
            return [], (await self.execute(sql)).fields
        results = await self._run([
            ("send_prepare", (b"", checked.encode(), list(param_oids) or None)),
            ("send_describe_prepared", (b"",)),
        ])  # fmt: skip
        res = results[-1]
        return [res.param_type(i) for i in range(res.nparams)], _fields_of(res)

    def _raise_error(self, results: list[pq.abc.PGresult]) -> None:
        for res in results:
            if res.status != pq.ExecStatus.FATAL_ERROR:
                continue
            # The mirror holds no private rows, so its messages are safe to pass on.
            state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or QUERY_FAILED
            msg = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"query failed").decode()
            hint_b = res.error_field(pq.DiagnosticField.MESSAGE_HINT)
            hint = hint_b.decode() if hint_b else None
            if state == "42P01":
                hint = "declared tables: " + ", ".join(self.tables)
            if state == "42501" and "permission denied" in msg:
                hint = _REFUSAL_HINT
            raise ProxyError(state, msg, hint)


def catalog_to_result(result: Any) -> Any:
    """A mirror result as decoded rows, for cursors and COPY (which re-encode values).

    Values of types dpproxy encodes keep their type; anything else becomes text, as
    PostgreSQL printed it. A `Result` (answered by dpproxy itself) passes unchanged.
    """
    if not isinstance(result, CatalogResult):
        return result
    from proxy.commands import Result
    from proxy.results import TYPE_OIDS

    names = {oid: name for name, oid in TYPE_OIDS.items()}
    if result.fields is None:
        return Result(result.tag, notices=list(result.notices))
    columns = [(f.name, names.get(f.type_oid, "text")) for f in result.fields]
    rows = []
    for raw_row in result.rows:
        row = []
        for (_, tname), f, raw in zip(columns, result.fields, raw_row, strict=True):
            if raw is None:
                row.append(None)
            elif result.row_format == 0 and tname != "text":
                row.append(decode_param(raw, f.type_oid, 0))
            else:
                row.append(raw.decode("utf-8", "replace") if result.row_format == 0 else raw)
        rows.append(tuple(row))
    return Result(result.tag, columns, rows, notices=list(result.notices))
