"""A running proxy's lifecycle: start-up of the ops side, health, reload, graceful shutdown.

- **Start**: the audit table and writer, the metrics collectors and the HTTP server of
  /metrics and /health (when `observability.metrics_port` is set).
- **SIGHUP**: re-read the config file. Analysts and budgets (synced into the ledger),
  the default epsilon/delta, the global budget, statement logging and the shutdown
  timeout apply at once; every other changed field is named in the log as needing a
  restart (names only: values such as DSNs hold passwords). A file that does not
  validate changes nothing.
- **SIGTERM / SIGINT**: stop accepting connections and answer /health with 503; let
  running statements finish (up to `lifecycle.shutdown_timeout_seconds`); end idle
  sessions, and refuse any new statement, with FATAL 57P01 `terminating connection due
  to administrator command` (what PostgreSQL sends on shutdown, which poolers and
  drivers recognise); then flush the audit log, and close the pools (the ledger's group
  commit has no charge in flight once every session has ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accounting.pool import LeanPool
from proxy.audit import AuditWriter, ensure_audit_schema
from proxy.config import Config, ConfigError, load_config
from proxy.http import HttpServer, Response
from proxy.logging_json import configure_logging
from proxy.metrics import Metrics
from proxy.observe import ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE, Ops
from proxy.workers import WorkerSpec

if TYPE_CHECKING:
    from proxy.server import Server

log = logging.getLogger("dpproxy.lifecycle")

# How long a session must have been idle before a graceful shutdown ends it.
IDLE_GRACE_S = 0.1
# Fields SIGHUP applies; every other difference is reported as needing a restart.
RELOADABLE = frozenset({
    "analysts", "privacy.default_epsilon", "privacy.default_delta",
    "privacy.global_budget_epsilon", "privacy.global_budget_delta",
    "observability.log_format", "observability.log_statements", "observability.audit_sync",
    "lifecycle.shutdown_timeout_seconds",
})  # fmt: skip


async def open_ops(config: Config, ledger_pool: LeanPool) -> Ops:
    """The per-process Ops: metrics, and the audit writer on the ledger database."""
    metrics = Metrics()
    audit = None
    if config.observability.audit:
        await ensure_audit_schema(ledger_pool)
        audit = AuditWriter(
            ledger_pool, flush_ms=config.observability.audit_flush_ms,
            on_written=lambda n: metrics.audit_written.inc(n),
            on_error=lambda: metrics.audit_errors.inc(),
        )  # fmt: skip
        audit.start()
    return Ops(config, audit, metrics)


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dumps."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        name = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and name != "analysts":
            out += changed_fields(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def _dump(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude={"metadata"})


class Runtime:
    """The ops side of one running `dpproxy serve`."""

    def __init__(self, server: Server, config_path: Path | None) -> None:
        self.server = server
        self.config_path = config_path
        # The file as loaded (before --port and other overrides) is the baseline for
        # deciding what a reload changed.
        self.file_config = load_config(config_path) if config_path is not None else server.ctx.config
        self.http: HttpServer | None = None
        self.http_address: tuple[str, int] | None = None
        self._reloading = asyncio.Lock()

    @property
    def ops(self) -> Ops:
        """The server's Ops."""
        return self.server.ctx.ops

    async def start(self) -> None:
        """Register the metrics collectors and start the HTTP server if configured."""
        self.ops.metrics.add_collector(self._collect)
        obs = self.server.ctx.config.observability
        if obs.metrics_port is not None:
            self.http = HttpServer({"/metrics": self._metrics, "/health": self._health})
            self.http_address = await self.http.start(obs.metrics_host, obs.metrics_port)
            log.info("metrics and health on http://%s:%d/metrics", *self.http_address)

    # --- /metrics and /health -------------------------------------------------------------

    def _collect(self, m: Metrics) -> None:
        ctx = self.server.ctx
        m.gauge("dpproxy_client_connections", "Client sessions open now.").set(len(ctx.connections))
        m.gauge("dpproxy_shutting_down", "1 while a graceful shutdown drains sessions.").set(
            1 if self.ops.draining else 0)  # fmt: skip
        pools = m.gauge("dpproxy_backend_pool_connections",
                        "Backend pool connections by pool and state (busy, idle, max).")  # fmt: skip
        for name, pool in (("data", self.server._data), ("ledger", self.server._ledger.pool)):
            size, idle = pool.get_size(), pool.get_idle_size()
            pools.set(size - idle, pool=name, state="busy")
            pools.set(idle, pool=name, state="idle")
            pools.set(pool.get_max_size(), pool=name, state="max")
        if self.ops.audit is not None:
            m.gauge("dpproxy_audit_queue", "Audit entries accepted, not yet written.").set(
                self.ops.audit.pending)  # fmt: skip

    async def _budget_gauges(self) -> None:
        """Spent and remaining epsilon per analyst on this dataset, read from the shared ledger."""
        from accounting.budget import budget_rows

        m = self.ops.metrics
        spent = m.gauge("dpproxy_budget_spent_epsilon",
                        "Epsilon spent per analyst and dataset (whole ledger, all replicas).")  # fmt: skip
        remaining = m.gauge("dpproxy_budget_remaining_epsilon",
                            "Epsilon remaining per analyst and dataset.")  # fmt: skip
        timeout = self.server.ctx.config.observability.health_timeout_ms / 1000
        rows = await asyncio.wait_for(
            budget_rows(self.server._ledger.pool, None, self.ops.dataset), timeout)
        for r in rows:
            spent.set(float(r.spent_epsilon), analyst=r.analyst, dataset=r.dataset)
            remaining.set(float(r.remaining_epsilon), analyst=r.analyst, dataset=r.dataset)

    async def _metrics(self) -> Response:
        with contextlib.suppress(Exception):  # the budget gauges are best effort
            await self._budget_gauges()
        return Response(200, self.ops.metrics.expose(), "text/plain; version=0.0.4; charset=utf-8")

    async def _health(self) -> Response:
        if self.ops.draining:
            return _health_response(503, "shutting down", {})
        checks = await self.check_backends()
        ok = all(v == "ok" for v in checks.values())
        return _health_response(200 if ok else 503, "ok" if ok else "unavailable", checks)

    async def check_backends(self) -> dict[str, str]:
        """Whether the data and ledger databases answer (names of failures only, no texts)."""
        timeout = self.server.ctx.config.observability.health_timeout_ms / 1000
        out: dict[str, str] = {}
        for name, pool in (("data", self.server._data), ("ledger", self.server._ledger.pool)):
            if pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size():
                out[name] = "ok"  # every connection is running a query: the backend answers
                continue
            try:
                await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout)
                out[name] = "ok"
            except TimeoutError:
                out[name] = "timeout"
            except Exception as e:  # noqa: BLE001 - the type only, never the backend's text
                out[name] = f"error ({type(e).__name__})"
        return out

    # --- SIGHUP -----------------------------------------------------------------------------

    async def reload(self) -> list[str]:
        """Apply a changed config file (see the module doc); returns the fields needing a restart."""
        from accounting.budget import sync_config, sync_dataset
        from proxy.admin import _analyst_budget, dataset_policy

        async with self._reloading:
            if self.config_path is None:
                return []
            try:
                new = load_config(self.config_path)
            except ConfigError as e:
                self.ops.metrics.reloads.inc(result="error")
                log.error("reload: the configuration is invalid; nothing changed:\n%s", e)
                return []
            changed = changed_fields(_dump(self.file_config), _dump(new))
            fixed = [c for c in changed if c not in RELOADABLE]
            old = self.server.ctx.config
            effective = old.model_copy(update={
                "analysts": new.analysts,
                "privacy": old.privacy.model_copy(update={
                    k: getattr(new.privacy, k) for k in ("default_epsilon", "default_delta",
                                                         "global_budget_epsilon", "global_budget_delta")}),
                "observability": old.observability.model_copy(update={
                    k: getattr(new.observability, k) for k in ("log_format", "log_statements", "audit_sync")}),
                "lifecycle": new.lifecycle,
            })  # fmt: skip
            try:
                async with self.server._ledger.pool.acquire() as conn:
                    await sync_dataset(conn, dataset_policy(effective))
                    assert effective.metadata is not None
                    await sync_config(conn, effective.metadata.dataset,
                                      [_analyst_budget(a) for a in effective.analysts])  # fmt: skip
            except Exception as e:  # noqa: BLE001 - keep serving with the old settings
                self.ops.metrics.reloads.inc(result="error")
                log.error("reload: syncing analysts into the ledger failed (%s); nothing changed",
                          type(e).__name__)  # fmt: skip
                return fixed
            self.server.ctx.config = effective
            self.server.ctx.engine.default_delta = effective.privacy.default_delta
            self.ops.log_statements = effective.observability.log_statements
            self.ops.audit_sync = effective.observability.audit_sync
            if old.observability.log_format != effective.observability.log_format:
                configure_logging(effective.observability.log_format,
                                  logging.getLogger().level <= logging.DEBUG)  # fmt: skip
            self.file_config = new
            self.ops.metrics.reloads.inc(result="ok")
            applied = [c for c in changed if c in RELOADABLE]
            log.info("reload: applied %s (%d analysts synced)",
                     ", ".join(applied) or "no changes", len(effective.analysts))  # fmt: skip
            if fixed:
                log.warning("reload: changed but not reloadable (restart to apply): %s", ", ".join(fixed))
            return fixed

    # --- SIGTERM ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Drain sessions, flush the audit log, close everything (see the module doc)."""
        server, ops = self.server, self.ops
        ops.draining = True
        server.stop_accepting()  # the sessions already open keep running
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + server.ctx.config.lifecycle.shutdown_timeout_seconds
        while loop.time() < deadline:
            busy = 0
            for _pid, (_secret, conn) in list(server.ctx.connections.items()):
                # A session idle for a moment is between statements: it is ended. One that
                # just answered gets the moment to send its next statement, which is then
                # refused with 57P01 (and audited) rather than lost in the close.
                if getattr(conn, "idle", False) and time.monotonic() - conn.idle_since >= IDLE_GRACE_S:
                    _terminate(conn)
                else:
                    busy += 1
            # Sessions still logging in are not registered yet; give them a moment.
            if busy == 0 and (not server._tasks or loop.time() - start > 1.0):
                break
            await asyncio.sleep(0.02)
        left = sum(1 for _ in server._tasks)
        if left:
            log.warning("shutdown: %d sessions still running after the timeout are cancelled", left)
        if ops.audit is not None:
            # Close the sessions first (their final entries are queued), then flush.
            await _cancel_sessions(server)
            await ops.audit.close()
        if self.http is not None:
            await self.http.close()
        await server.close()


def _terminate(conn: Any) -> None:
    """End an idle session with FATAL 57P01 (anything buffered for it is sent first)."""
    from proxy.wire import codec

    if getattr(conn, "_ops_terminated", False):
        return
    conn._ops_terminated = True
    with contextlib.suppress(Exception):
        pending = b"".join(conn.out)
        conn.out.clear()
        conn.writer.write(pending + codec.error_response(
            codec.ErrorFields("FATAL", ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE)))  # fmt: skip
        conn.writer.close()


async def _cancel_sessions(server: Server) -> None:
    tasks = list(server._tasks)
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _health_response(status: int, text: str, checks: dict[str, str]) -> Response:
    return Response(status, json.dumps({"status": text, "backends": checks}) + "\n", "application/json")


def install_signals(stop: asyncio.Event, reload: Callable[[], None]) -> None:
    """SIGTERM/SIGINT set `stop`; SIGHUP calls `reload` (where the platform has signals)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, reload)


async def serve_until_stopped(
    config: Config, config_path: Path | None, ready: str | None, progress: Callable[[str], None],
    worker: WorkerSpec | None = None,
) -> None:  # fmt: skip
    """`dpproxy serve`: start, serve until SIGTERM/SIGINT, reload on SIGHUP, shut down gracefully."""
    from proxy.server import Server

    configure_logging(config.observability.log_format, logging.getLogger().level <= logging.DEBUG)
    server = await Server.create(config, worker)
    runtime = Runtime(server, config_path)
    try:
        await runtime.start()
        host, port = await server.start()
    except BaseException:
        await runtime.shutdown()
        raise
    stop = asyncio.Event()
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_hup() -> None:
        t = asyncio.ensure_future(runtime.reload())
        reloads.add(t)
        t.add_done_callback(reloads.discard)

    # Before "listening on": whoever waits for that line may signal at once, and until
    # then a worker's SIGHUP is the default action (it would end the worker).
    install_signals(stop, on_hup)
    meta = config.metadata
    # The event loop in use: uvloop when the `fast` extra is installed (see proxy/cli.py).
    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    progress(f"listening on {host}:{port} (dataset {meta.dataset if meta else '?'}, {loop} event loop)")
    if runtime.http_address is not None:
        progress(f"metrics on http://{runtime.http_address[0]}:{runtime.http_address[1]}/metrics")
    if ready:
        print(ready, flush=True)
    try:
        await stop.wait()
    finally:
        progress("shutting down")
        await runtime.shutdown()
        progress("stopped")
