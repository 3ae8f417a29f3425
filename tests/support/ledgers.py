"""Fresh ledger databases and config variants for budget tests (issue #5)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from accounting.accountant import AccountantKind
from accounting.budget import DatasetPolicy, sync_dataset
from accounting.ledger import Ledger
from proxy.pgcluster import PgCluster
from tests.support.proxy_process import REPO_ROOT


def fresh_ledger_config(
    cluster: PgCluster, base_config: Path, name: str, unique: Any, **sections: dict[str, Any]
) -> Path:
    """A copy of `base_config` with its own empty ledger database and section overrides."""
    db = unique(f"ledger_{name}")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    cfg = yaml.safe_load(base_config.read_text())
    cfg["backend"]["ledger_dsn"] = cluster.dsn(db)
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = base_config.parent / f"dpproxy-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


@contextmanager
def ledger_database(
    cluster: PgCluster, name: str, setup: Callable[[Ledger], Awaitable[None]]
) -> Iterator[str]:
    """A fresh database with the ledger's schema and dataset "d" (pure accountant), plus
    whatever `setup` adds; its URI, and the database dropped afterwards."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = cluster.dsn(name)

    async def create() -> None:
        ledger = await Ledger.connect(dsn)
        try:
            async with ledger.pool.acquire() as conn:
                await sync_dataset(conn, DatasetPolicy("d", AccountantKind.PURE, Decimal("1e-7")))
            await setup(ledger)
        finally:
            await ledger.close()

    asyncio.run(create())
    try:
        yield dsn
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def ledger_dsn(config: Path) -> str:
    """The ledger URI of a config file."""
    return str(yaml.safe_load(config.read_text())["backend"]["ledger_dsn"])


def dpproxy_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `dpproxy ARGS` as a subprocess (as admins do)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=60, env=env,
    )  # fmt: skip


def add_analyst(config: Path, name: str, budget_epsilon: str, password: str = "pw") -> None:
    """`dpproxy analyst add` through the CLI, as an admin would; fails the test if it fails."""
    out = dpproxy_cli("analyst", "add", name, "--budget-epsilon", budget_epsilon,
                      "--config", str(config), stdin=f"{password}\n")  # fmt: skip
    assert out.returncode == 0, out.stderr
