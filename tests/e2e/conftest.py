"""End-to-end fixtures: a provisioned cluster and a running dpproxy subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from proxy.pgcluster import PgCluster
from proxy.provision import AnalystSpec, provision
from tests.support.ops import ops_proxy
from tests.support.proxy_process import ProxyProcess, free_port

# Each test that spends budget uses its own analyst so tests stay independent.
ANALYSTS = {
    "alice": AnalystSpec("alice", "alice-pw", Decimal(1_000_000), Decimal(10000)),
    "bob": AnalystSpec("bob", "bob-pw", Decimal(3), Decimal(1)),
    "carol": AnalystSpec("carol", "carol-pw", Decimal(1000), Decimal(100)),
    "dave": AnalystSpec("dave", "dave-pw", Decimal(1000), Decimal(100)),
    "erin": AnalystSpec("erin", "erin-pw", Decimal(2), Decimal(1)),
    "mallory": AnalystSpec("mallory", "mallory-pw", Decimal(1000), Decimal(100)),
}


@dataclass
class Env:
    """A provisioned backend and its config file."""

    config: Path
    tpch_dsn: str
    workdir: Path


@pytest.fixture(scope="session")
def env(pg_cluster: PgCluster, tpch_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Env:
    """Roles, ledger and catalog databases, and a config with the test analysts."""
    dbname = psycopg.conninfo.conninfo_to_dict(tpch_dsn)["dbname"]
    workdir = tmp_path_factory.mktemp("dpproxy")

    def dsn_for(db: str, user: str | None = None, password: str | None = None) -> str:
        return pg_cluster.dsn(db, user=user, password=password)

    cfg = provision(dsn_for, workdir, 0.01, list(ANALYSTS.values()), free_port(),
                    lambda _m: None, dataset_db=str(dbname), load=False)  # fmt: skip
    return Env(config=cfg, tpch_dsn=tpch_dsn, workdir=workdir)


@pytest.fixture(scope="session")
def proxy(env: Env) -> Iterator[ProxyProcess]:
    """One dpproxy process shared by the end-to-end tests."""
    p = ProxyProcess(env.config).start()
    yield p
    p.stop()


def truth(tpch_dsn: str, query: str) -> list[tuple[object, ...]]:
    """The exact answer, straight from PostgreSQL (for accuracy checks)."""
    with psycopg.connect(tpch_dsn) as conn:
        return conn.execute(sql.SQL(query)).fetchall()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def audited(
    request: pytest.FixtureRequest, pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> Iterator[tuple[ProxyProcess, Path]]:
    """A dpproxy on its own ledger (one per test module), with the default (asynchronous,
    batched) audit, so its audit rows can be counted; and its config."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with ops_proxy(pg_cluster, env.config, name, unique_name) as running:
        yield running


def spent(conn: psycopg.Connection) -> tuple[Decimal, int]:
    """The connected analyst's spent epsilon and charged query count (dp.budget)."""
    row = conn.execute("SELECT spent_epsilon, queries_charged FROM dp.budget").fetchone()
    assert row is not None
    return row[0], row[1]


def refused_free(conn: psycopg.Connection, query: str) -> str:
    """The SQLSTATE `query` is refused with, checking that nothing was spent on it."""
    before = spent(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query)
    assert spent(conn) == before, f"{query} was charged before it was refused"
    return str(info.value.sqlstate)
