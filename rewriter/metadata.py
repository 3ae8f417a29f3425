"""The metadata model: which tables are private, what a privacy unit is, column bounds.

Everything here is declared by the data owner and validated with pydantic; nothing is
ever inferred from the data (bounds computed from the data would themselves leak).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ColumnType(StrEnum):
    """The logical types the rewriter reasons about (PostgreSQL names map onto these)."""

    INTEGER = "integer"
    BIGINT = "bigint"
    SMALLINT = "smallint"
    NUMERIC = "numeric"
    FLOAT = "float"
    TEXT = "text"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    BOOLEAN = "boolean"

    @property
    def is_numeric(self) -> bool:
        """True for types that can be summed."""
        return self in _NUMERIC_TYPES

    @property
    def is_integer(self) -> bool:
        """True for exact integer types (their sums need no fixed-point scaling)."""
        return self in (ColumnType.INTEGER, ColumnType.BIGINT, ColumnType.SMALLINT)


_NUMERIC_TYPES = {
    ColumnType.INTEGER,
    ColumnType.BIGINT,
    ColumnType.SMALLINT,
    ColumnType.NUMERIC,
    ColumnType.FLOAT,
}

DomainValue = str | int | bool | None


class ColumnMeta(BaseModel):
    """One declared column: its type, bounds for numeric and date columns, a public
    domain for keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    # Numbers for numeric columns; ISO dates (1992-01-01) for date columns.
    lower: Decimal | date | None = None
    upper: Decimal | date | None = None
    precision: Decimal | None = Field(
        default=None,
        description="Fixed-point step used to sum decimals and floats exactly as integers.",
    )
    domain: list[DomainValue] | None = Field(
        default=None, description="The public list of every value this column may take."
    )
    nullable: bool = True
    unique: bool = Field(
        default=False,
        description="Declared unique (a key): public tables may be joined on it, and a "
        "foreign-key path may reference it.",
    )
    comment: str | None = None
    # Never read from a metadata file (see `_not_declared`): dpproxy sets it at start-up
    # (`with_enforced_bounds`) to the OID of a validated CHECK constraint through which the
    # database itself keeps the column within [lower, upper]. The clamp is then a no-op
    # and is left out; every query's SQL checks that the constraint still stands.
    enforced_by: int | None = Field(default=None, exclude=True)
    # Never read from a metadata file either: set at start-up (`with_numeric_types`) where
    # the column's SQL type is numeric(p, s), as (attrelid, attnum, atttypmod, p - s). No
    # value of it then has more than p - s digits before the point, so its whole steps
    # fit bigint, and the clamp can compare integers instead of numerics; every query's
    # SQL checks that the column's type is still the same.
    numeric_type: tuple[int, int, int, int] | None = Field(default=None, exclude=True)
    # Never read from a metadata file either: set at start-up (`with_key_constraints`), for
    # a column declared unique, to the OID of the PRIMARY KEY or UNIQUE constraint on it
    # alone that keeps it unique (dpproxy does not start without one: proxy/declared_keys.py).
    # Bounding, joins and unit paths rely on it; every query's SQL checks it still stands.
    key_constraint: int | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _not_declared(cls, data: Any) -> Any:
        for name in ("enforced_by", "numeric_type", "key_constraint"):
            if isinstance(data, dict) and name in data:
                raise ValueError(f"{name} is found by dpproxy in the database's catalog, "
                                 "never declared")  # fmt: skip
        return data

    @model_validator(mode="after")
    def _check_bounds(self) -> ColumnMeta:
        if (self.lower is None) != (self.upper is None):
            raise ValueError("give both 'lower' and 'upper', or neither")
        if self.type == ColumnType.DATE and self.lower is not None:
            if not all(type(v) is date for v in (self.lower, self.upper)):
                raise ValueError("bounds of a date column must be dates (1992-01-01)")
        elif self.lower is not None:
            if not self.type.is_numeric:
                raise ValueError(f"bounds are only allowed on numeric and date columns, not {self.type}")
            if not all(isinstance(v, Decimal) for v in (self.lower, self.upper)):
                raise ValueError("bounds of a numeric column must be numbers")
            if not (self.lower.is_finite() and self.upper is not None and self.upper.is_finite()):  # type: ignore[union-attr]
                raise ValueError("bounds must be finite numbers")
        if self.lower is not None and self.lower > self.upper:  # type: ignore[operator]
            raise ValueError(f"lower ({self.lower}) is above upper ({self.upper})")
        if self.precision is not None and not (self.precision.is_finite() and self.precision > 0):
            raise ValueError("precision must be a positive number")
        if self.domain is not None and len(self.domain) == 0:
            raise ValueError("a public domain must list at least one value")
        if self.domain is not None and len(set(map(repr, self.domain))) != len(self.domain):
            raise ValueError("the public domain lists a value twice")
        return self

    @property
    def bounded(self) -> bool:
        """True when the column declares finite numeric bounds."""
        return isinstance(self.lower, Decimal)

    @property
    def date_bounds(self) -> tuple[date, date] | None:
        """The declared first and last dates of a date column, or None."""
        if type(self.lower) is date and type(self.upper) is date:
            return self.lower, self.upper
        return None

    @property
    def step(self) -> Decimal:
        """The fixed-point step: integers are exact, decimals default to 0.01."""
        if self.type.is_integer:
            return Decimal(1)
        return self.precision if self.precision is not None else Decimal("0.01")


Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$", max_length=63)]


class ForeignKeyHop(BaseModel):
    """One step of a path from a table to its privacy unit: `column` references
    `table`.`references` (a declared unique column of another private table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: Identifier
    table: Identifier
    references: Identifier


class TableMeta(BaseModel):
    """One declared table. Private unless `public: true`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Identifier = Field(default="public", alias="schema")
    public: bool = False
    privacy_unit: Identifier | None = Field(
        default=None,
        description="Column that identifies the privacy unit; none means each row is a unit.",
    )
    unit_path: list[ForeignKeyHop] | None = Field(
        default=None,
        description="Foreign-key path to a table whose privacy unit this table's rows "
        "belong to (e.g. lineitem -> orders); exclusive with privacy_unit.",
    )
    max_rows: int = Field(default=1, ge=1, le=100_000, description="Rows kept per unit.")
    max_groups: int = Field(default=1, ge=1, le=100_000, description="Groups a unit may touch.")
    columns: dict[Identifier, ColumnMeta]
    comment: str | None = None

    @model_validator(mode="after")
    def _check_unit(self) -> TableMeta:
        if self.privacy_unit is not None and self.privacy_unit not in self.columns:
            raise ValueError(f"privacy_unit '{self.privacy_unit}' is not a declared column")
        if self.unit_path is not None:
            if self.privacy_unit is not None:
                raise ValueError("give privacy_unit or unit_path, not both")
            if self.public:
                raise ValueError("a public table has no privacy unit path")
            if len(self.unit_path) != 1:
                # One hop per table: a longer path is the referenced table's own unit_path.
                raise ValueError("unit_path lists exactly one hop; chain tables instead")
            if self.unit_path[0].column not in self.columns:
                raise ValueError(f"unit_path column '{self.unit_path[0].column}' is not declared")
        if not self.columns:
            raise ValueError("declare at least one column")
        return self

    @property
    def row_level(self) -> bool:
        """True when each row is its own privacy unit."""
        return self.privacy_unit is None


class Metadata(BaseModel):
    """A dataset: its name and declared tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Identifier
    tables: dict[Identifier, TableMeta]

    @field_validator("tables")
    @classmethod
    def _nonempty(cls, v: dict[str, TableMeta]) -> dict[str, TableMeta]:
        if not v:
            raise ValueError("declare at least one table")
        return v

    @model_validator(mode="after")
    def _check_unit_paths(self) -> Metadata:
        for tname, table in self.tables.items():
            seen = {tname}
            current = table
            while current.unit_path is not None:
                hop = current.unit_path[0]
                target = self.tables.get(hop.table)
                if target is None:
                    raise ValueError(f"{tname}: unit_path table '{hop.table}' is not declared")
                if target.public:
                    raise ValueError(f"{tname}: unit_path leads to the public table '{hop.table}'")
                ref = target.columns.get(hop.references)
                if ref is None or not ref.unique:
                    # A non-unique reference would attribute one row to several units.
                    raise ValueError(
                        f"{tname}: unit_path references '{hop.table}.{hop.references}', "
                        "which must be a declared column with unique: true"
                    )
                if hop.table in seen:
                    raise ValueError(f"{tname}: unit_path has a cycle through '{hop.table}'")
                seen.add(hop.table)
                current = target
            if current.privacy_unit is None and table.unit_path is not None:
                raise ValueError(f"{tname}: unit_path ends at a table without a privacy_unit")
        return self

    def find(self, name: str, schema: str | None = None) -> tuple[str, TableMeta] | None:
        """Look a table up by (case-insensitive) name and optional schema."""
        lname = name.lower()
        for tname, table in self.tables.items():
            if tname.lower() == lname and (schema is None or table.schema_.lower() == schema.lower()):
                return tname, table
        return None

    def private_tables(self) -> dict[str, TableMeta]:
        """The tables whose rows may only leave as DP aggregates."""
        return {k: v for k, v in self.tables.items() if not v.public}

    def public_tables(self) -> dict[str, TableMeta]:
        """The tables declared public (read freely inside a query's SQL)."""
        return {k: v for k, v in self.tables.items() if v.public}

    def enforced_checks_of(self, tables: Iterable[str]) -> tuple[int, ...]:
        """The CHECK constraints (OIDs, sorted) that a missing clamp of a column of
        `tables` relies on."""
        return self._oids_of(tables, "enforced_by")

    def key_constraints_of(self, tables: Iterable[str]) -> tuple[int, ...]:
        """The PRIMARY KEY / UNIQUE constraints (OIDs, sorted) behind the declared unique
        columns of `tables`."""
        return self._oids_of(tables, "key_constraint")

    def _oids_of(self, tables: Iterable[str], fact: str) -> tuple[int, ...]:
        """The catalog OIDs (sorted, distinct) the columns of `tables` hold in `fact`."""
        return tuple(sorted({oid for t in self._named(tables) for c in t.columns.values()
                             if (oid := getattr(c, fact)) is not None}))  # fmt: skip

    def numeric_types_of(self, tables: Iterable[str]) -> tuple[tuple[int, int, int], ...]:
        """The (attrelid, attnum, atttypmod) of every column of `tables` whose numeric
        type some query's clamp relies on (sorted; a column a CHECK constraint bounds has
        no clamp)."""
        return tuple(sorted({c.numeric_type[:3] for t in self._named(tables) for c in t.columns.values()
                             if c.numeric_type is not None and c.enforced_by is None}))  # fmt: skip

    def _named(self, tables: Iterable[str]) -> list[TableMeta]:
        return [self.tables[name] for name in tables if name in self.tables]


def with_enforced_bounds(meta: Metadata, checks: Mapping[tuple[str, str], int]) -> Metadata:
    """`meta` with `enforced_by` set from `checks` ((table, column) -> constraint OID) and
    cleared everywhere else."""
    return _with_catalog_facts(meta, "enforced_by", checks)


def with_numeric_types(meta: Metadata, types: Mapping[tuple[str, str], tuple[int, int, int, int]]) -> Metadata:
    """`meta` with `numeric_type` set from `types` ((table, column) -> (attrelid, attnum,
    atttypmod, digits before the point)) and cleared everywhere else."""
    return _with_catalog_facts(meta, "numeric_type", types)


def with_key_constraints(meta: Metadata, keys: Mapping[tuple[str, str], int]) -> Metadata:
    """`meta` with `key_constraint` set from `keys` ((table, column) -> constraint OID)
    and cleared everywhere else."""
    return _with_catalog_facts(meta, "key_constraint", keys)


def _with_catalog_facts(meta: Metadata, name: str, facts: Mapping[tuple[str, str], Any]) -> Metadata:
    tables = {}
    for tname, table in meta.tables.items():
        columns = {c: m.model_copy(update={name: facts.get((tname, c))})
                   for c, m in table.columns.items()}  # fmt: skip
        tables[tname] = table.model_copy(update={"columns": columns})
    return meta.model_copy(update={"tables": tables})


def load_metadata(path: Path) -> Metadata:
    """Read and validate a metadata YAML file (raises ValueError naming the file)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read metadata: {e}") from e
    return Metadata.model_validate(raw)
