"""Setting up a PostgreSQL cluster for dpproxy: data, roles, ledger, catalog mirror, config.

Used by `dpproxy demo` and by the test suite, so both run the same set-up.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from proxy.auth.scram import make_verifier
from proxy.mirror import harden_mirror_database
from proxy.sampledata import create_reader_role, load_tpch
from rewriter.metadata import Metadata

READER_ROLE = "dpproxy_reader"
CATALOG_ROLE = "dpproxy_catalog"


@dataclass(frozen=True)
class AnalystSpec:
    """An analyst to create: clear-text password (only the verifier is written)."""

    name: str
    password: str
    budget_epsilon: Decimal = Decimal(10)
    max_epsilon_per_query: Decimal | None = Decimal(2)


def example_metadata_path() -> Path:
    """Where the shipped TPC-H example metadata lives."""
    return Path(str(resources.files("proxy") / "examples" / "tpch.yaml"))


def _create_database(admin_dsn: str, name: str, owner: str | None = None) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            owner_sql = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
            conn.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), owner_sql))


def _create_login_role(admin_dsn: str, role: str, password: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
            )
        )


def provision(
    dsn_for: Callable[..., str],
    workdir: Path,
    scale: float,
    analysts: list[AnalystSpec],
    port: int,
    progress: Callable[[str], None],
    dataset_db: str = "tpch",
    load: bool = True,
) -> Path:
    """Load TPC-H, create the backend roles and databases, and write a config file.

    `dsn_for(dbname, user=None, password=None)` builds URIs for the cluster (as the
    superuser by default). Returns the path of the written config file.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    meta_src = example_metadata_path()
    meta = Metadata.model_validate(yaml.safe_load(meta_src.read_text()))

    _create_database(dsn_for("postgres"), dataset_db)
    if load:
        load_tpch(dsn_for(dataset_db), scale, progress)

    reader_pw = secrets.token_urlsafe(18)
    tables = [f"{t.schema_}.{name}" for name, t in meta.tables.items()]
    create_reader_role(dsn_for(dataset_db), READER_ROLE, reader_pw, tables)

    ledger_db = f"{dataset_db}_ledger"
    _create_database(dsn_for("postgres"), ledger_db)

    catalog_pw = secrets.token_urlsafe(18)
    catalog_db = f"{dataset_db}_catalog"
    _create_login_role(dsn_for("postgres"), CATALOG_ROLE, catalog_pw)
    _create_database(dsn_for("postgres"), catalog_db, owner=CATALOG_ROLE)
    # Second layer behind dpproxy's own refusals: inside the mirror, revoke what reaches
    # other sessions, databases or files (advisory locks stay: the mirror build uses them); and no CONNECT to the data or ledger by default.
    harden_mirror_database(dsn_for(catalog_db), [dataset_db, ledger_db])
    progress("created the reader role, the ledger database and the catalog mirror")

    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "backend": {
            "dsn": dsn_for(dataset_db, user=READER_ROLE, password=reader_pw),
            "ledger_dsn": dsn_for(ledger_db),
            "catalog_dsn": dsn_for(catalog_db, user=CATALOG_ROLE, password=catalog_pw),
        },
        "privacy": {"default_epsilon": "1.0"},
        "metadata_file": str(meta_src),
        "analysts": [
            {
                "name": a.name,
                "password": make_verifier(a.password),
                "budget_epsilon": str(a.budget_epsilon),
                **(
                    {"max_epsilon_per_query": str(a.max_epsilon_per_query)}
                    if a.max_epsilon_per_query is not None
                    else {}
                ),
            }
            for a in analysts
        ],
    }
    path = workdir / "dpproxy.yaml"
    path.write_text(
        "# Written by dpproxy provision: passwords are stored as SCRAM verifiers only.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    path.chmod(0o600)
    return path
