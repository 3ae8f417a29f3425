"""The `dpproxy` command line: serve, demo, mirror refresh, passwd."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proxy.config import Config, ConfigError, load_config
from proxy.workers import WorkerSpec


def _progress(msg: str) -> None:
    print(f"dpproxy: {msg}", flush=True)


async def _serve(config: Config, ready: str | None = None, config_path: Path | None = None,
                 worker: WorkerSpec | None = None) -> None:  # fmt: skip
    # Issue #8: metrics/health, SIGHUP reload and graceful shutdown live in proxy/lifecycle.py.
    from proxy.lifecycle import serve_until_stopped

    prefix = "" if worker is None else f"worker {worker.index}: "
    await serve_until_stopped(config, config_path, ready, lambda msg: _progress(prefix + msg), worker)


def _run(coro: object) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy with a config file."""
    try:
        config = load_config(Path(args.config))
    except ConfigError as e:
        print(f"dpproxy: {e}", file=sys.stderr)
        return 2
    if args.port is not None:
        config.listen.port = args.port
    path = Path(args.config)
    if config.listen.workers > 1:
        from proxy.workers import serve_workers, worker_config

        return serve_workers(
            config,
            lambda spec: _run(_serve(worker_config(config, spec), config_path=path, worker=spec)),
            _progress,
        )
    try:
        _run(_serve(config, config_path=path))
    except ConfigError as e:  # found at start-up against the databases (e.g. a declared key)
        print(f"dpproxy: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_mirror_refresh(args: argparse.Namespace) -> int:
    """Rebuild the catalog mirror from the data database's schema (see proxy/mirror.py)."""
    from proxy.mirror import MirrorError, refresh_mirror

    try:
        config = load_config(Path(args.config))
    except ConfigError as e:
        print(f"dpproxy: {e}", file=sys.stderr)
        return 2
    if config.backend.catalog_dsn is None or config.metadata is None:
        print("dpproxy: backend.catalog_dsn is not set: there is no mirror to refresh", file=sys.stderr)
        return 2
    try:
        refresh_mirror(config.backend.dsn, config.backend.catalog_dsn, config.metadata,
                       force=True, progress=_progress)  # fmt: skip
    except (MirrorError, OSError, Exception) as e:  # noqa: BLE001 - one message, no traceback
        print(f"dpproxy: mirror refresh failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    """Print a SCRAM-SHA-256 verifier for a password (read from the terminal or stdin)."""
    from proxy.auth.scram import make_verifier

    if sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("dpproxy: passwords differ", file=sys.stderr)
            return 2
    else:
        pw = sys.stdin.readline().rstrip("\n")
    if not pw:
        print("dpproxy: empty password", file=sys.stderr)
        return 2
    print(make_verifier(pw))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a throwaway PostgreSQL with TPC-H data behind dpproxy."""
    from proxy.pgcluster import PgCluster, PgClusterError
    from proxy.provision import AnalystSpec, provision

    password = secrets.token_urlsafe(12)
    analyst = AnalystSpec(name="analyst", password=password)
    dsn = args.dsn or os.environ.get("DPPROXY_DEMO_DSN")
    try:
        if dsn:
            _progress("using the existing PostgreSQL server given by --dsn")
            cluster = PgCluster.existing(dsn)
        else:
            _progress("starting a throwaway PostgreSQL")
            cluster = PgCluster.start(log=_progress)
    except PgClusterError as e:
        print(f"dpproxy: {e}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="dpproxy-demo-"))
    try:
        _progress(f"PostgreSQL is up on port {cluster.port}; loading TPC-H at scale {args.scale}")
        # With --dsn, the server is someone else's: the demo only adds its databases.
        cfg_path = provision(
            cluster.dsn, workdir, args.scale, [analyst], args.port, _progress
        )
        config = load_config(cfg_path)
        conninfo = f"host=127.0.0.1 port={args.port} dbname=tpch user=analyst password={password}"
        banner = "\n".join(
            [
                "",
                "dpproxy demo is ready. Connect with:",
                "",
                f'    psql "{conninfo}"',
                "",
                "and try, for example:",
                "    SELECT COUNT(*) FROM orders;",
                "    SELECT o_orderpriority, COUNT(*), SUM(o_totalprice), AVG(o_totalprice)",
                "      FROM orders WHERE o_orderdate >= '1995-01-01' GROUP BY o_orderpriority;",
                "    SHOW dp.budget;",
                "",
                f"The analyst's budget is epsilon {analyst.budget_epsilon} "
                f"(at most {analyst.max_epsilon_per_query} per query). Press Ctrl-C to stop.",
                "",
            ]
        )
        _run(_serve(config, ready=banner))
    except KeyboardInterrupt:
        pass
    finally:
        _progress("stopping PostgreSQL and removing the demo data")
        cluster.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _scale(text: str) -> float:
    """A TPC-H scale factor argument, checked before anything starts."""
    from proxy.sampledata import MIN_SCALE

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= MIN_SCALE:  # (NaN included)
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SCALE} (smaller TPC-H scales repeat keys)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `dpproxy` command."""
    p = argparse.ArgumentParser(prog="dpproxy", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the proxy with a configuration file")
    s.add_argument("--config", required=True, help="path to dpproxy.yaml")
    s.add_argument("--port", type=int, default=None, help="override listen.port")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="PostgreSQL + TPC-H sample data behind dpproxy")
    d.add_argument("--port", type=int, default=6432, help="port for dpproxy (default 6432)")
    d.add_argument("--scale", type=_scale, default=0.1, help="TPC-H scale factor (default 0.1, at least 0.01)")
    d.add_argument(
        "--dsn",
        default=None,
        help="superuser URI of an existing PostgreSQL to use instead of a throwaway one "
        "(also DPPROXY_DEMO_DSN)",
    )
    d.set_defaults(func=cmd_demo)

    from proxy.metadata_tools import add_metadata_commands

    add_metadata_commands(sub)
    mi = sub.add_parser("mirror", help="manage the catalog mirror")
    mi_sub = mi.add_subparsers(dest="mirror_command", required=True)
    mr = mi_sub.add_parser("refresh", help="rebuild the catalog mirror from the data database's schema")
    mr.add_argument("--config", required=True, help="path to dpproxy.yaml")
    mr.set_defaults(func=cmd_mirror_refresh)

    pw = sub.add_parser("passwd", help="print a SCRAM verifier for an analyst's password")
    pw.set_defaults(func=cmd_passwd)

    # Issue #5: analyst, ledger, dataset and cache admin commands.
    from proxy.admin import add_admin_parsers

    add_admin_parsers(sub)
    # Issue #8: status, audit and explain.
    from proxy.ops_cli import add_ops_parsers

    add_ops_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dpproxy` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # sqlglot reports its own parsing decisions at INFO; they are noise in our logs.
    logging.getLogger("sqlglot").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
