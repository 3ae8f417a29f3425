"""Declared unique keys must be keys of the database (checked at start-up).

A column declared `unique: true` is what three privacy decisions rest on: a private
table whose privacy-unit column is unique needs no contribution bounding (each unit
has one row), a public table joined on its unique key cannot fan a private row out
into several, and a `unit_path` through a unique column gives each row one unit. A
declaration the data does not keep would quietly break each of them: a unit with two
rows would count twice, unbounded. So `dpproxy serve` starts only when every declared
unique column has a unique index of its own in the data database (a primary key or a
UNIQUE constraint on that column alone: valid, not partial, not on an expression), and
a privacy-unit column declared unique is also NOT NULL there (a unique index lets any
number of rows be NULL, which would make them one unbounded unit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from accounting.pool import LeanPool
from rewriter.metadata import Metadata

# Single-column unique indexes that hold for every row, with the column's NOT NULL.
UNIQUE_KEYS_SQL = """
SELECT n.nspname AS schema, r.relname AS table, a.attname AS column, a.attnotnull AS not_null
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
   AND i.indpred IS NULL AND i.indexprs IS NULL
"""


def unbacked_keys(meta: Metadata, rows: Iterable[dict[str, Any]]) -> list[str]:
    """What is wrong with each declared unique column the rows of UNIQUE_KEYS_SQL do
    not back (pure: the rows are the catalog's answer); empty when every one is a key."""
    keys = {(r["schema"], r["table"], r["column"]): bool(r["not_null"]) for r in rows}
    problems = []
    for tname, table in sorted(meta.tables.items()):
        for cname, column in sorted(table.columns.items()):
            if not column.unique:
                continue
            where = f"{table.schema_}.{tname}.{cname}"
            not_null = keys.get((table.schema_, tname, cname))
            if not_null is None:
                problems.append(f"{where} is declared unique, but the database has no primary key "
                                "or UNIQUE constraint on it alone")  # fmt: skip
            elif cname == table.privacy_unit and not not_null:
                problems.append(f"{where} is a privacy unit declared unique, but the database "
                                "lets it be NULL (any number of NULL rows)")  # fmt: skip
    return problems


async def find_unbacked_keys(pool: LeanPool, meta: Metadata) -> list[str]:
    """`unbacked_keys` of the data database behind `pool`."""
    return unbacked_keys(meta, [dict(r) for r in await pool.fetch(UNIQUE_KEYS_SQL)])
