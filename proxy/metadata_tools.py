"""Metadata tooling: a starter file from the live catalog, checks, SmartNoise import.

Nothing here reads table rows: bounds and domains are declarations of the data owner
and are never computed from the data (that would leak it). `init` leaves them for the
admin to fill in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.rows import dict_row
from pydantic import ValidationError

from proxy.declared_keys import KEYS_SQL, declared_keys
from rewriter.metadata import ColumnType, Metadata

# The leading column of every index (the column an index scan returns rows in order of).
INDEX_LEADS_SQL = """
SELECT n.nspname AS schema, r.relname AS table, a.attname AS column
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
"""


def unit_index_warnings(meta: Metadata, rows: list[dict[str, Any]]) -> list[str]:
    """A warning for each private table whose privacy-unit column (or first unit-path
    hop) starts no index (pure: `rows` are INDEX_LEADS_SQL's answer). Contribution
    bounding groups every query's rows by that column; an index on it lets a count per
    unit read the index alone, and clustering the table by it keeps each unit's rows
    together (README, Performance)."""
    leads = {(r["schema"], r["table"], r["column"]) for r in rows}
    warnings = []
    for tname, table in sorted(meta.private_tables().items()):
        if table.unit_path is not None:
            column = table.unit_path[0].column
        elif table.privacy_unit is not None and not table.columns[table.privacy_unit].unique:
            column = table.privacy_unit
        else:
            continue  # one row per unit (or per row): nothing is grouped by unit
        if (table.schema_, tname, column) not in leads:
            warnings.append(
                f"{table.schema_}.{tname}.{column}: no index starts with this privacy-unit "
                f"column; every query's rows are grouped by it (CREATE INDEX ON "
                f"{table.schema_}.{tname} ({column}), and CLUSTER by it, make that several "
                "times cheaper)"
            )
    return warnings


# PostgreSQL type names (format_type / udt_name) -> the metadata's logical types.
_PG_TO_META = {
    "smallint": ColumnType.SMALLINT,
    "int2": ColumnType.SMALLINT,
    "integer": ColumnType.INTEGER,
    "int4": ColumnType.INTEGER,
    "bigint": ColumnType.BIGINT,
    "int8": ColumnType.BIGINT,
    "numeric": ColumnType.NUMERIC,
    "real": ColumnType.FLOAT,
    "double precision": ColumnType.FLOAT,
    "float4": ColumnType.FLOAT,
    "float8": ColumnType.FLOAT,
    "text": ColumnType.TEXT,
    "character varying": ColumnType.TEXT,
    "varchar": ColumnType.TEXT,
    "character": ColumnType.TEXT,
    "bpchar": ColumnType.TEXT,
    "date": ColumnType.DATE,
    "timestamp without time zone": ColumnType.TIMESTAMP,
    "timestamp with time zone": ColumnType.TIMESTAMPTZ,
    "boolean": ColumnType.BOOLEAN,
}

_COLUMNS_SQL = """
SELECT c.table_name, c.column_name, c.data_type, c.is_nullable = 'YES',
       col_description(format('%%I.%%I', c.table_schema, c.table_name)::regclass, c.ordinal_position)
  FROM information_schema.columns c
  JOIN information_schema.tables t USING (table_schema, table_name)
 WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE'
 ORDER BY c.table_name, c.ordinal_position
"""

# pg_catalog, not information_schema: the constraint views of information_schema hide
# the keys of tables on which the role has only SELECT (the reader role's case).
_KEYS_SQL = """
SELECT cl.relname, con.conname, con.contype, a.attname, fcl.relname, fa.attname
  FROM pg_constraint con
  JOIN pg_class cl ON cl.oid = con.conrelid
  JOIN pg_namespace n ON n.oid = cl.relnamespace
 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
  LEFT JOIN pg_class fcl ON fcl.oid = con.confrelid
  LEFT JOIN pg_attribute fa ON fa.attrelid = con.confrelid AND fa.attnum = con.confkey[k.ord]
 WHERE n.nspname = %s AND con.contype IN ('p', 'f')
 ORDER BY cl.relname, con.conname, k.ord
"""


@dataclass
class LiveTable:
    """A table as the live catalog describes it."""

    columns: dict[str, tuple[str, bool, str | None]] = field(default_factory=dict)
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[tuple[str, str, str]] = field(default_factory=list)


def read_schema(dsn: str, schema: str) -> dict[str, LiveTable]:
    """Tables, columns (type, nullable, comment), primary and foreign keys of a schema."""
    tables: dict[str, LiveTable] = {}
    with psycopg.connect(dsn) as conn:
        for tname, cname, dtype, nullable, comment in conn.execute(_COLUMNS_SQL, (schema,)):
            tables.setdefault(tname, LiveTable()).columns[cname] = (dtype, nullable, comment)
        # (declared unique keys are checked by `declared_keys`, as `dpproxy serve` does)
        for tname, _conname, kind, col, ref_t, ref_c in conn.execute(_KEYS_SQL, (schema,)):
            t = tables.setdefault(tname, LiveTable())
            if kind == "p":
                t.primary_key.append(col)
            else:
                t.foreign_keys.append((col, ref_t, ref_c))
    return tables


def starter_metadata(dataset: str, schema: str, tables: dict[str, LiveTable]) -> str:
    """A commented YAML starter file: types and keys filled in, privacy decisions left open."""
    lines = [
        f"# Starter metadata for schema {schema!r}, written by `dpproxy metadata init`.",
        "# Types, nullability and comments come from the live catalog. Everything that is a",
        "# privacy decision is left to you: mark tables public or declare their privacy_unit,",
        "# choose max_rows, declare lower/upper bounds for every column you want to SUM/AVG",
        "# and a public domain for every column you want to GROUP BY. These are DECLARATIONS,",
        "# never computed from the data: bounds read off the data would themselves leak it.",
        f"dataset: {dataset}",
        "tables:",
    ]
    for tname, t in sorted(tables.items()):
        lines.append(f"  {tname}:")
        lines.append(f"    schema: {schema}")
        fks = ", ".join(f"{c} -> {rt}.{rc}" for c, rt, rc in t.foreign_keys)
        if t.primary_key:
            lines.append(f"    # primary key: {', '.join(t.primary_key)}")
        if fks:
            lines.append(f"    # foreign keys: {fks}")
        lines.append("    # TODO: `public: true`, or the column identifying the privacy unit:")
        lines.append("    privacy_unit: null")
        lines.append("    max_rows: 1")
        lines.append("    columns:")
        for cname, (dtype, nullable, comment) in t.columns.items():
            mtype = _PG_TO_META.get(dtype)
            if mtype is None:
                lines.append(f"      # {cname}: type {dtype} is not supported by dpproxy; left out")
                continue
            entry: dict[str, Any] = {"type": mtype.value}
            if not nullable:
                entry["nullable"] = False
            if comment:
                entry["comment"] = comment
            flow = yaml.safe_dump(entry, default_flow_style=True, width=1000).strip()
            todo = ""
            if mtype.is_numeric:
                todo = "  # TODO: lower/upper to SUM or AVG it"
            elif mtype in (ColumnType.TEXT, ColumnType.BOOLEAN):
                todo = "  # TODO: domain: [...] to GROUP BY it"
            elif mtype == ColumnType.DATE:
                todo = "  # TODO: lower/upper dates (1992-01-01) for MIN/MAX and year/month keys"
            lines.append(f"      {cname}: {flow}{todo}")
    return "\n".join(lines) + "\n"


@dataclass
class CheckReport:
    """Problems found comparing a metadata file with the live schema."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_metadata(meta: Metadata, dsn: str) -> CheckReport:
    """Every declared table and column must exist with a compatible type."""
    report = CheckReport()
    schemas = {t.schema_ for t in meta.tables.values()}
    live = {s: read_schema(dsn, s) for s in schemas}
    for tname, table in meta.tables.items():
        lt = live[table.schema_].get(tname)
        if lt is None:
            report.errors.append(f"{table.schema_}.{tname}: table not found (or not readable)")
            continue
        for cname, cmeta in table.columns.items():
            if cname not in lt.columns:
                report.errors.append(f"{tname}.{cname}: column not found")
                continue
            dtype, nullable, _ = lt.columns[cname]
            live_type = _PG_TO_META.get(dtype)
            if live_type is None:
                report.errors.append(f"{tname}.{cname}: live type {dtype} is not supported")
            elif live_type != cmeta.type and not (live_type.is_numeric and cmeta.type.is_numeric):
                report.errors.append(
                    f"{tname}.{cname}: declared {cmeta.type.value}, live type is {dtype}"
                )
            if nullable and not cmeta.nullable:
                report.errors.append(
                    f"{tname}.{cname}: declared NOT NULL but the live column allows NULL "
                    "(COUNT(col) would be computed wrongly)"
                )
        if table.privacy_unit is None and not table.public:
            report.warnings.append(f"{tname}: no privacy_unit, so each row is a unit")
    # Declared keys as `dpproxy serve` checks them at start-up (it does not start otherwise).
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        report.errors += declared_keys(meta, cur.execute(KEYS_SQL).fetchall())[1]
        report.warnings += unit_index_warnings(meta, cur.execute(INDEX_LEADS_SQL).fetchall())
    return report


# --- SmartNoise SQL metadata --------------------------------------------------------------

_SN_TYPES = {
    "int": ColumnType.BIGINT,
    "float": ColumnType.FLOAT,
    "string": ColumnType.TEXT,
    "boolean": ColumnType.BOOLEAN,
    "datetime": ColumnType.TIMESTAMP,
}
_SN_TABLE_OPTIONS = {
    "max_ids", "row_privacy", "sample_max_ids", "censor_dims", "clamp_counts",
    "clamp_columns", "use_dpsu", "rows", "tau", "max_contrib",
}  # fmt: skip


def import_smartnoise(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Convert SmartNoise SQL metadata (collection -> schema -> table) to ours.

    Returns the metadata as a plain dict (validate it with `Metadata`) and notes about
    options that have no exact counterpart.
    """
    notes: list[str] = []
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError("expected one top-level collection (database) name")
    (dataset, schemas), = raw.items()
    tables: dict[str, Any] = {}
    for schema, schema_tables in (schemas or {}).items():
        for tname, spec in (schema_tables or {}).items():
            columns: dict[str, Any] = {}
            unit = None
            for key, value in spec.items():
                if key in _SN_TABLE_OPTIONS:
                    continue
                if not isinstance(value, dict):
                    notes.append(f"{tname}.{key}: not a column description; skipped")
                    continue
                ctype = _SN_TYPES.get(str(value.get("type", "")).lower())
                if ctype is None:
                    notes.append(f"{tname}.{key}: type {value.get('type')!r} unknown; skipped")
                    continue
                col: dict[str, Any] = {"type": ctype.value}
                if "lower" in value and "upper" in value:
                    col["lower"], col["upper"] = value["lower"], value["upper"]
                if value.get("nullable") is False:
                    col["nullable"] = False
                if value.get("private_id"):
                    unit = key
                columns[value.get("name", key)] = col
            table: dict[str, Any] = {"schema": schema, "columns": columns}
            row_privacy = bool(spec.get("row_privacy", False))
            if not row_privacy:
                if unit is None:
                    notes.append(f"{tname}: no private_id column and row_privacy is off; "
                                 "treated as row-level")  # fmt: skip
                table["privacy_unit"] = unit
            table["max_rows"] = int(spec.get("max_ids", 1))
            if spec.get("censor_dims") is False:
                notes.append(f"{tname}: censor_dims: false has no counterpart — dpproxy always "
                             "releases non-public group keys through partition selection")  # fmt: skip
            if spec.get("clamp_columns") is False:
                notes.append(f"{tname}: clamp_columns: false ignored — dpproxy always clamps")
            tables[tname] = table
    return {"dataset": _identifier(str(dataset)), "tables": tables}, notes


def _identifier(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out and (out[0].isalpha() or out[0] == "_") else f"d_{out}"


def load_smartnoise_file(path: Path) -> tuple[Metadata, list[str]]:
    """Read a SmartNoise YAML file and return validated metadata plus notes."""
    raw = yaml.safe_load(path.read_text())
    converted, notes = import_smartnoise(raw)
    try:
        return Metadata.model_validate(converted), notes
    except ValidationError as e:
        raise ValueError(f"{path}: converted metadata is invalid:\n{e}") from e


# --- command line -------------------------------------------------------------------------


def _dsn_from(args: Any) -> str:
    if args.dsn:
        return str(args.dsn)
    if args.config:
        from proxy.config import load_config

        return load_config(Path(args.config)).backend.dsn
    raise SystemExit("dpproxy: give --dsn or --config")


def _cmd_init(args: Any) -> int:
    text = starter_metadata(args.dataset, args.schema, read_schema(_dsn_from(args), args.schema))
    if args.output:
        Path(args.output).write_text(text)
        print(f"dpproxy: wrote {args.output}; fill in the TODOs before using it")
    else:
        print(text, end="")
    return 0


def _cmd_check(args: Any) -> int:
    from rewriter.metadata import load_metadata

    try:
        meta = load_metadata(Path(args.file))
    except (ValidationError, ValueError) as e:
        print(f"dpproxy: {args.file}: invalid metadata:\n{e}")
        return 1
    report = check_metadata(meta, _dsn_from(args))
    for w in report.warnings:
        print(f"warning: {w}")
    for e in report.errors:
        print(f"error: {e}")
    print(f"dpproxy: {args.file}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return 1 if report.errors else 0


def _cmd_import(args: Any) -> int:
    try:
        meta, notes = load_smartnoise_file(Path(args.file))
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"dpproxy: {e}")
        return 1
    text = yaml.safe_dump(meta.model_dump(mode="json", by_alias=True, exclude_none=True),
                          sort_keys=False)  # fmt: skip
    header = "".join(f"# note: {n}\n" for n in notes)
    if args.output:
        Path(args.output).write_text(header + text)
        print(f"dpproxy: wrote {args.output}")
    else:
        print(header + text, end="")
    for n in notes:
        print(f"note: {n}", file=__import__("sys").stderr)
    return 0


def add_metadata_commands(sub: Any) -> None:
    """Register `dpproxy metadata init|check|import-smartnoise` on a subparsers object."""
    md = sub.add_parser("metadata", help="write, check or import metadata files")
    mds = md.add_subparsers(dest="metadata_command", required=True)
    for name, func, helptext in (
        ("init", _cmd_init, "write a starter metadata file from the live catalog"),
        ("check", _cmd_check, "validate a metadata file against the live schema"),
    ):
        p = mds.add_parser(name, help=helptext)
        if name == "check":
            p.add_argument("file")
        else:
            p.add_argument("--schema", default="public")
            p.add_argument("--dataset", default="mydata")
            p.add_argument("-o", "--output")
        p.add_argument("--dsn", help="libpq URI of the data database")
        p.add_argument("--config", help="take the data database from this config file")
        p.set_defaults(func=func)
    imp = mds.add_parser("import-smartnoise", help="convert SmartNoise SQL metadata (YAML)")
    imp.add_argument("file")
    imp.add_argument("-o", "--output")
    imp.set_defaults(func=_cmd_import)
