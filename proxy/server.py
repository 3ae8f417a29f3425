"""The asyncio server: shared resources for all connections, and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accounting.ledger import Ledger
from accounting.mechanisms import Mechanisms
from accounting.pool import LeanPool, create_pool
from proxy.admin import open_ledger
from proxy.catalog import Catalog
from proxy.config import Config, ConfigError
from proxy.declared_keys import find_declared_keys
from proxy.dp import DPEngine
from proxy.enforced_bounds import find_enforced_bounds, find_numeric_types
from proxy.limits import Admission
from proxy.literal_shapes import LiteralShapes
from proxy.observe import Ops
from proxy.route_cache import RouteCache
from proxy.tls import TLSSetup, load_tls
from proxy.workers import (
    WorkerSpec,
    forward_cancel,
    open_cancel_socket,
    read_cancels,
    receive_clients,
)
from rewriter.metadata import (
    Metadata,
    with_enforced_bounds,
    with_key_constraints,
    with_numeric_types,
)

if TYPE_CHECKING:
    from proxy.connection import Connection

log = logging.getLogger("dpproxy.server")


@dataclass
class ServerContext:
    """What every connection of one proxy process shares."""

    config: Config
    meta: Metadata
    engine: DPEngine
    catalog: Catalog
    server_version: str
    tls: TLSSetup | None = None  # set when listen.tls_cert/tls_key are configured
    admission: Admission = field(default_factory=lambda: Admission(1000, 100, 16))
    routes: RouteCache = field(init=False)  # routing decisions, remembered by text
    shapes: LiteralShapes = field(init=False)  # literal statements answered as their shapes
    mock_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    connections: dict[int, tuple[bytes, Connection]] = field(default_factory=dict)
    ops: Ops = field(default_factory=Ops)  # issue #8: metrics, statement log, audit, draining
    worker: WorkerSpec | None = None  # one of `listen.workers` processes (proxy/workers.py)
    cancel_socket: socket.socket | None = None  # where sibling workers forward cancels

    def __post_init__(self) -> None:
        self.routes = RouteCache(self.meta)
        self.shapes = LiteralShapes(self.meta)

    def register(self, conn: Connection) -> tuple[int, bytes]:
        """Give a connection a (pid, secret) pair for BackendKeyData and cancels."""
        while True:
            if self.worker is None:
                pid = secrets.randbelow(2**31 - 2) + 1
            else:  # the worker's index in the high bits routes a cancel back to it
                pid = self.worker.session_pid(secrets.randbelow(2**24 - 1) + 1)
            if pid not in self.connections:
                break
        secret = secrets.token_bytes(4)
        self.connections[pid] = (secret, conn)
        return pid, secret

    def unregister(self, pid: int) -> None:
        """Forget a closed connection."""
        self.connections.pop(pid, None)

    def cancel(self, pid: int, secret: bytes) -> None:
        """Handle a CancelRequest: a wrong key is ignored silently, as in PostgreSQL."""
        if self.worker is not None and self.cancel_socket is not None and not self.worker.owns(pid):
            forward_cancel(self.cancel_socket, self.worker, pid, secret)
            return
        entry = self.connections.get(pid)
        if entry is not None and secrets.compare_digest(entry[0], secret):
            entry[1].cancel_running()


class Server:
    """A running dpproxy: listening socket plus backend pools."""

    def __init__(self, ctx: ServerContext, data_pool: LeanPool, ledger: Ledger) -> None:
        self.ctx = ctx
        self._data = data_pool
        self._ledger = ledger
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False  # a worker reading client sockets from its channel
        self._adopting: set[asyncio.Future[Any]] = set()

    @classmethod
    async def create(cls, config: Config, worker: WorkerSpec | None = None) -> Server:
        """Connect to the backends, prepare the ledger and the catalog mirror."""
        assert config.metadata is not None
        listen = config.listen
        # Load the certificate first: a bad one should stop start-up before any pool opens.
        tls = load_tls(listen.tls_cert, listen.tls_key) if listen.tls_cert and listen.tls_key else None
        data = await create_pool(
            config.backend.dsn, min_size=1, max_size=config.backend.pool_size,
            server_settings=config.backend.session_settings(),
        )  # fmt: skip
        version = await data.fetchval("SHOW server_version")
        # Bounding, joins and unit paths rely on every declared unique key.
        keys, unbacked = await find_declared_keys(data, config.metadata)
        if unbacked:
            await data.close()
            raise ConfigError("metadata: " + "; ".join(unbacked) + ". Contribution bounding, joins "
                              "and unit paths rely on declared keys: add the key to the database, "
                              "or remove `unique: true`")  # fmt: skip
        # Issue #5: the ledger (accountant, group commit, analysts synced from the
        # config) and the answer cache come from proxy/admin.py.
        ledger, cache = await open_ledger(config)
        # The mirror is brought up to date from the data database's schema at start-up.
        catalog = await Catalog.open(config.backend.catalog_dsn, config.metadata, config.backend.dsn,
                                     pool_size=config.backend.pool_size,
                                     statement_timeout_ms=config.backend.statement_timeout_ms)
        # Declared bounds the database enforces itself need no clamp (issue #7).
        dp_meta = with_key_constraints(with_numeric_types(
            with_enforced_bounds(config.metadata, await find_enforced_bounds(data, config.metadata)),
            await find_numeric_types(data, config.metadata),
        ), keys)  # fmt: skip
        engine = DPEngine(dp_meta, Mechanisms(), ledger, data, cache=cache,
                          cache_shared=config.cache.shared, data_version=config.cache.data_version,
                          default_delta=config.privacy.default_delta)  # fmt: skip
        from proxy.lifecycle import open_ops  # issue #8

        ops = await open_ops(config, ledger.pool)  # issue #8: audit table and writer, metrics
        ctx = ServerContext(
            worker=worker,
            ops=ops,
            config=config,
            meta=config.metadata,
            engine=engine,
            catalog=catalog,
            server_version=str(version),
            tls=tls,
            admission=Admission(
                config.limits.max_connections,
                config.limits.max_connections_per_analyst,
                config.limits.max_concurrent_queries_per_analyst,
            ),
        )
        return cls(ctx, data, ledger)

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the bound (host, port)."""
        listen = self.ctx.config.listen
        worker = self.ctx.worker
        if worker is None:
            self._server = await asyncio.start_server(self._handle, listen.host, listen.port)
            sock = self._server.sockets[0].getsockname()
            return sock[0], sock[1]
        # A worker: the parent accepts and hands the client sockets over.
        loop = asyncio.get_running_loop()
        cancels = open_cancel_socket(worker)
        self.ctx.cancel_socket = cancels
        loop.add_reader(cancels.fileno(), self._forwarded_cancels)
        loop.add_reader(worker.channel.fileno(), self._adopt_clients)
        self._accepting = True
        return listen.host, listen.port

    def _adopt_clients(self) -> None:
        """Serve the client sockets the parent handed to this worker."""
        assert self.ctx.worker is not None
        loop = asyncio.get_running_loop()
        for client in receive_clients(self.ctx.worker.channel):
            client.setblocking(False)
            reader = asyncio.StreamReader(limit=2**16)
            protocol = asyncio.StreamReaderProtocol(reader, self._handle)
            adopt = asyncio.ensure_future(loop.connect_accepted_socket(lambda p=protocol: p, client))
            self._adopting.add(adopt)
            adopt.add_done_callback(self._adopting.discard)

    def stop_accepting(self) -> None:
        """Take no new client connections (sessions already open go on)."""
        if self._server is not None:
            self._server.close()
        if self._accepting and self.ctx.worker is not None:
            asyncio.get_running_loop().remove_reader(self.ctx.worker.channel.fileno())
            self._accepting = False

    def _forwarded_cancels(self) -> None:
        """Cancels a sibling worker accepted for sessions of this one."""
        assert self.ctx.cancel_socket is not None
        for pid, secret in read_cancels(self.ctx.cancel_socket):
            if self.ctx.worker is not None and self.ctx.worker.owns(pid):
                self.ctx.cancel(pid, secret)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from proxy.connection import Connection

        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        self.ctx.ops.metrics.connections_total.inc()  # issue #8
        try:
            await Connection(self.ctx, reader, writer).serve()
        finally:
            if task is not None:
                self._tasks.discard(task)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Stop listening, end client connections, close backend pools."""
        self.stop_accepting()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self.ctx.cancel_socket is not None:
            asyncio.get_running_loop().remove_reader(self.ctx.cancel_socket.fileno())
            self.ctx.cancel_socket.close()
            self.ctx.cancel_socket = None
        await self.ctx.catalog.close()
        await self.ctx.engine.flush()  # answers still being written to the cache
        await self._ledger.close()
        await self._data.close()
