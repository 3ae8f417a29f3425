"""Session fixtures: one throwaway PostgreSQL with TPC-H scale 0.01, shared by all tests.

Set DPPROXY_TEST_DSN (a superuser libpq URI) to run against an existing server instead;
the fixtures then work in uniquely named databases and drop them afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from proxy.pgcluster import TEST_DSN_ENV, PgCluster
from proxy.sampledata import load_tpch
from rewriter.metadata import Metadata, load_metadata

REPO_ROOT = Path(__file__).resolve().parent.parent
TPCH_METADATA_PATH = REPO_ROOT / "proxy" / "examples" / "tpch.yaml"
TPCH_SCALE = 0.01


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The PostgreSQL server of this test session (throwaway, or DPPROXY_TEST_DSN)."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        yield PgCluster.existing(dsn)
        return
    with PgCluster.start(durable=False) as cluster:
        yield cluster


def _unique_name(cluster: PgCluster, base: str) -> str:
    # Our own cluster is empty, so the plain name is free; a shared server may hold
    # other runs' objects, so suffix it there.
    return base if cluster.owned else f"{base}_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def tpch_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """Superuser URI of a database holding TPC-H scale 0.01 (loaded once per session)."""
    dbname = _unique_name(pg_cluster, "tpch")
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        dsn = pg_cluster.dsn(dbname)
        load_tpch(dsn, TPCH_SCALE, progress=lambda _msg: None)
        yield dsn
    finally:
        if not pg_cluster.owned:
            with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(dbname)))


@pytest.fixture(scope="session")
def tpch_metadata() -> Metadata:
    """The example metadata for the TPC-H dataset."""
    return load_metadata(TPCH_METADATA_PATH)


@pytest.fixture(scope="session")
def unique_name(pg_cluster: PgCluster) -> Callable[[str], str]:
    """A function giving cluster-wide names (roles, databases) that do not collide."""
    return lambda base: _unique_name(pg_cluster, base)
