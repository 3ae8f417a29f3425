"""Declared unique keys are checked against the database at start-up
(proxy/declared_keys.py): `dpproxy serve` refuses metadata whose declared key the data
does not keep, since bounding, joins and unit paths would rest on it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from proxy.declared_keys import find_declared_keys
from rewriter.metadata import Metadata, TableMeta, with_key_constraints
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.e2e.conftest import Env
from tests.support.catalog_facts import catalog_facts


def test_every_key_the_example_metadata_declares_is_a_key_of_the_loaded_database(
    tpch_dsn: str, tpch_metadata: Metadata
) -> None:
    assert any(c.unique for t in tpch_metadata.tables.values() for c in t.columns.values())
    keys, problems = catalog_facts(tpch_dsn, tpch_metadata, find_declared_keys)
    assert problems == []
    declared = {(t, c) for t, tm in tpch_metadata.tables.items() for c, cm in tm.columns.items() if cm.unique}
    assert set(keys) == declared


@pytest.fixture
def scratch_visits(tpch_dsn: str) -> Iterator[str]:
    """scratch_keys.visits: an index on uid that is not unique, a UNIQUE constraint on a
    nullable column, and unique indexes that are no constraint (one of them partial)."""
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS scratch_keys CASCADE; CREATE SCHEMA scratch_keys")
        conn.execute("CREATE TABLE scratch_keys.visits (uid int NOT NULL, vid int, tag int NOT NULL, "
                     "code int NOT NULL)")
        conn.execute("CREATE UNIQUE INDEX ON scratch_keys.visits (code)")  # no constraint
        conn.execute("CREATE INDEX ON scratch_keys.visits (uid)")
        conn.execute("ALTER TABLE scratch_keys.visits ADD UNIQUE (vid)")
        conn.execute("CREATE UNIQUE INDEX ON scratch_keys.visits (tag) WHERE tag > 0")
        conn.execute("CREATE TABLE scratch_keys.parent (pid int PRIMARY KEY)")
        conn.execute("CREATE TABLE scratch_keys.child () INHERITS (scratch_keys.parent)")
    yield tpch_dsn
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA scratch_keys CASCADE")


@pytest.mark.parametrize(("unit", "declared", "problem"), [
    ("uid", "uid", "scratch_keys.visits.uid is declared unique, but the database has no primary key"),
    ("vid", "vid", "scratch_keys.visits.vid is a privacy unit declared unique, but the database lets it be NULL"),
    ("uid", "tag", "scratch_keys.visits.tag is declared unique, but the database has no primary key"),
    ("uid", "code", "scratch_keys.visits.code is declared unique, but the database has no primary key"),
])  # fmt: skip
def test_a_declared_key_the_database_does_not_keep_is_named(
    scratch_visits: str, unit: str, declared: str, problem: str
) -> None:
    keys, (found,) = catalog_facts(scratch_visits, _visits(unit, declared), find_declared_keys)
    assert found.startswith(problem) and keys == {}, found
    # A UNIQUE constraint on a column that is no privacy unit may hold NULLs (they join nothing).
    keys, problems = catalog_facts(scratch_visits, _visits("uid", "vid"), find_declared_keys)
    assert problems == [] and set(keys) == {("visits", "vid")}


def _visits(unit: str, declared: str) -> Metadata:
    """Metadata of scratch_keys.visits with `unit` its privacy unit, `declared` unique."""
    return Metadata(dataset="s", tables={"visits": TableMeta.model_validate({
        "schema": "scratch_keys", "privacy_unit": unit,
        "columns": {c: {"type": "integer", "unique": c == declared} for c in ("uid", "vid", "tag", "code")}})})  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_to_start_on_a_declared_key_the_database_lacks(env: Env, tmp_path: Path, workers: int) -> None:
    settings = yaml.safe_load(env.config.read_text())
    settings["listen"]["workers"] = workers
    metadata_path = (env.config.parent / settings["metadata_file"]).resolve()
    meta = yaml.safe_load(metadata_path.read_text())
    meta["tables"]["customer"]["columns"]["c_name"]["unique"] = True  # not a key of customer
    bad_meta = tmp_path / "metadata.yaml"
    bad_meta.write_text(yaml.safe_dump(meta))
    settings["metadata_file"] = str(bad_meta)
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(settings))
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(bad), "--port", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    # (with workers, the parent stops with 1 once a worker has failed at start-up)
    assert out.returncode == (2 if workers == 1 else 1), out.stdout + out.stderr
    said = out.stdout + out.stderr
    assert "public.customer.c_name is declared unique, but the database has no primary key" in said
    assert "Traceback" not in said


def test_a_dropped_key_makes_the_query_fail_instead_of_answering_unbounded(
    tpch_dsn: str, tpch_metadata: Metadata
) -> None:
    # customer's unit is its primary key: no contribution bounding. Without the key a
    # unit could have two rows, counted twice: the query must fail, not answer.
    with psycopg.connect(tpch_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS scratch_keys CASCADE; CREATE SCHEMA scratch_keys")
        conn.execute("CREATE TABLE scratch_keys.customer AS SELECT * FROM public.customer")
        conn.execute("ALTER TABLE scratch_keys.customer ADD PRIMARY KEY (c_custkey)")
    try:
        table = tpch_metadata.tables["customer"].model_copy(update={"schema_": "scratch_keys"})
        meta = tpch_metadata.model_copy(update={"tables": {"customer": table}})
        keys, problems = catalog_facts(tpch_dsn, meta, find_declared_keys)
        assert problems == [] and set(keys) == {("customer", "c_custkey")}
        plan = rewrite(parse_one("SELECT COUNT(*) FROM customer"), with_key_constraints(meta, keys))
        assert "GROUP BY" not in plan.sql  # one row per unit: nothing to bound
        with psycopg.connect(tpch_dsn, autocommit=True) as conn:
            (row,) = conn.execute(plan.sql).fetchall()
            assert row[0] is not None
            conn.execute("ALTER TABLE scratch_keys.customer DROP CONSTRAINT customer_pkey")
            conn.execute("INSERT INTO scratch_keys.customer SELECT * FROM scratch_keys.customer WHERE c_custkey = 1")
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(plan.sql).fetchall()
        # Read again from the catalog, the declaration is no longer backed: no start.
        assert catalog_facts(tpch_dsn, meta, find_declared_keys)[1] != []
    finally:
        with psycopg.connect(tpch_dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA scratch_keys CASCADE")


def test_a_key_of_a_table_with_inheritance_children_is_not_enough(scratch_visits: str) -> None:
    # Reading the parent reads its children's rows too; its primary key covers its own only.
    meta = Metadata(dataset="s", tables={"parent": TableMeta.model_validate({
        "schema": "scratch_keys", "privacy_unit": "pid",
        "columns": {"pid": {"type": "integer", "unique": True, "nullable": False}}})})  # fmt: skip
    keys, (problem,) = catalog_facts(scratch_visits, meta, find_declared_keys)
    assert keys == {} and "has inheritance children" in problem, problem
