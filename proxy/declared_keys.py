"""Declared unique keys must be keys of the database (checked at start-up).

A column declared `unique: true` is what three privacy decisions rest on: a private
table whose privacy-unit column is unique needs no contribution bounding (each unit
has one row), a public table joined on its unique key cannot fan a private row out
into several, and a `unit_path` through a unique column gives each row one unit. A
declaration the data does not keep would quietly break each of them: a unit with two
rows would count twice, unbounded. So `dpproxy serve` starts only when every declared
unique column is the whole of a PRIMARY KEY or UNIQUE constraint in the data database,
and a privacy-unit column declared unique is also NOT NULL there (a UNIQUE constraint
lets any number of rows be NULL, which would make them one unbounded unit). Each query's
SQL then checks that those constraints still stand (`rewriter.rewrite._guarded`, with
`ColumnMeta.key_constraint`): once one is dropped, queries fail instead of answering.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from accounting.pool import LeanPool
from rewriter.metadata import Metadata

# Single-column PRIMARY KEY and UNIQUE constraints, with their column's NOT NULL. (A
# unique index without a constraint is not counted: the per-query check reads
# pg_constraint, in the subquery that already checks CHECK constraints.)
KEYS_SQL = """
SELECT c.oid, n.nspname AS schema, r.relname AS table, a.attname AS column, a.attnotnull AS not_null,
       r.relkind = 'r' AND r.relhassubclass AS inherited
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_class r ON r.oid = c.conrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
 WHERE c.contype IN ('p', 'u') AND cardinality(c.conkey) = 1
"""


def declared_keys(meta: Metadata, rows: Iterable[dict[str, Any]]) -> tuple[dict[tuple[str, str], int], list[str]]:
    """The constraint behind each declared unique column ((table, column) -> OID), and
    what is wrong with each one the rows of KEYS_SQL do not back (pure: the rows are
    the catalog's answer); no problems when every declared key is a key."""
    found = {(r["schema"], r["table"], r["column"]): (int(r["oid"]), bool(r["not_null"]), bool(r["inherited"]))
             for r in rows}  # fmt: skip
    keys: dict[tuple[str, str], int] = {}
    problems = []
    for tname, table in sorted(meta.tables.items()):
        for cname, column in sorted(table.columns.items()):
            if not column.unique:
                continue
            where = f"{table.schema_}.{tname}.{cname}"
            key = found.get((table.schema_, tname, cname))
            if key is None:
                problems.append(f"{where} is declared unique, but the database has no primary key "
                                "or UNIQUE constraint on it alone")  # fmt: skip
            elif key[2]:
                # (a scan of the table reads its children's rows too, which its key does not cover)
                problems.append(f"{where} is declared unique, but its table has inheritance "
                                "children, which its key does not cover")  # fmt: skip
            elif cname == table.privacy_unit and not key[1]:
                problems.append(f"{where} is a privacy unit declared unique, but the database "
                                "lets it be NULL (any number of NULL rows)")  # fmt: skip
            else:
                keys[(tname, cname)] = key[0]
    return keys, problems


async def find_declared_keys(pool: LeanPool, meta: Metadata) -> tuple[dict[tuple[str, str], int], list[str]]:
    """`declared_keys` of the data database behind `pool`."""
    return declared_keys(meta, [dict(r) for r in await pool.fetch(KEYS_SQL)])
