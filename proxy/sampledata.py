"""TPC-H sample data: generate with `tpchgen-cli`, load with COPY, add keys and comments.

Used by the demo and by the test suite (scale 0.01 loads in a few seconds).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

_CHUNK_BYTES = 1 << 20
# The smallest scale whose generated keys are unique (partsupp repeats keys below it).
MIN_SCALE = 0.01


@dataclass(frozen=True)
class _Table:
    name: str
    comment: str
    # (column, SQL type, comment). Every TPC-H column is NOT NULL.
    columns: tuple[tuple[str, str, str], ...]
    primary_key: tuple[str, ...]
    # (columns, referenced table, referenced columns)
    foreign_keys: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = ()
    # Columns given a plain index of their own (the foreign key that leads to the privacy
    # unit, where no key's index starts with it).
    indexed: tuple[str, ...] = ()
    # The indexed column the rows are then stored in the order of (CLUSTER): the privacy
    # unit, so that each unit's rows lie together.
    clustered_by: str | None = None


# Types follow the TPC-H specification (clause 1.4), except that variable-width text
# columns the spec declares CHAR(n) (segments, priorities, names) are varchar here:
# bpchar pads with blanks, so clients would see 'BUILDING  ' and public-domain keys
# would not compare equal as text. Order keys are bigint because they exceed 2^31
# from scale 1000 on.
TPCH_TABLES: tuple[_Table, ...] = (
    _Table(
        "region", "The 5 world regions.",
        (
            ("r_regionkey", "integer", "Region key (0-4)."),
            ("r_name", "varchar(25)", "Region name."),
            ("r_comment", "varchar(152)", "Free text."),
        ),
        ("r_regionkey",),
    ),
    _Table(
        "nation", "The 25 nations.",
        (
            ("n_nationkey", "integer", "Nation key (0-24)."),
            ("n_name", "varchar(25)", "Nation name."),
            ("n_regionkey", "integer", "Region of the nation."),
            ("n_comment", "varchar(152)", "Free text."),
        ),
        ("n_nationkey",),
        ((("n_regionkey",), "region", ("r_regionkey",)),),
    ),
    _Table(
        "part", "Parts sold by suppliers.",
        (
            ("p_partkey", "integer", "Part key."),
            ("p_name", "varchar(55)", "Part name (five colour words)."),
            ("p_mfgr", "varchar(25)", "Manufacturer."),
            ("p_brand", "varchar(10)", "Brand."),
            ("p_type", "varchar(25)", "Part type."),
            ("p_size", "integer", "Size (1-50)."),
            ("p_container", "varchar(10)", "Container."),
            ("p_retailprice", "numeric(15,2)", "Retail price."),
            ("p_comment", "varchar(23)", "Free text."),
        ),
        ("p_partkey",),
    ),
    _Table(
        "supplier", "Suppliers of parts.",
        (
            ("s_suppkey", "integer", "Supplier key."),
            ("s_name", "varchar(25)", "Supplier name."),
            ("s_address", "varchar(40)", "Address."),
            ("s_nationkey", "integer", "Nation of the supplier."),
            ("s_phone", "char(15)", "Phone number."),
            ("s_acctbal", "numeric(15,2)", "Account balance."),
            ("s_comment", "varchar(101)", "Free text."),
        ),
        ("s_suppkey",),
        ((("s_nationkey",), "nation", ("n_nationkey",)),),
    ),
    _Table(
        "partsupp", "Which supplier offers which part, at what cost.",
        (
            ("ps_partkey", "integer", "Part."),
            ("ps_suppkey", "integer", "Supplier."),
            ("ps_availqty", "integer", "Available quantity."),
            ("ps_supplycost", "numeric(15,2)", "Supply cost."),
            ("ps_comment", "varchar(199)", "Free text."),
        ),
        ("ps_partkey", "ps_suppkey"),
        (
            (("ps_partkey",), "part", ("p_partkey",)),
            (("ps_suppkey",), "supplier", ("s_suppkey",)),
        ),
    ),
    _Table(
        "customer", "Customers (the privacy unit of the example dataset).",
        (
            ("c_custkey", "integer", "Customer key."),
            ("c_name", "varchar(25)", "Customer name."),
            ("c_address", "varchar(40)", "Address."),
            ("c_nationkey", "integer", "Nation of the customer."),
            ("c_phone", "char(15)", "Phone number."),
            ("c_acctbal", "numeric(15,2)", "Account balance."),
            ("c_mktsegment", "varchar(10)", "Market segment."),
            ("c_comment", "varchar(117)", "Free text."),
        ),
        ("c_custkey",),
        ((("c_nationkey",), "nation", ("n_nationkey",)),),
    ),
    _Table(
        "orders", "Orders placed by customers.",
        (
            ("o_orderkey", "bigint", "Order key."),
            ("o_custkey", "integer", "Customer who placed the order."),
            ("o_orderstatus", "char(1)", "F (fulfilled), O (open) or P (partial)."),
            ("o_totalprice", "numeric(15,2)", "Total price."),
            ("o_orderdate", "date", "Order date."),
            ("o_orderpriority", "varchar(15)", "Priority (1-URGENT ... 5-LOW)."),
            ("o_clerk", "varchar(15)", "Clerk who took the order."),
            ("o_shippriority", "integer", "Shipping priority (always 0)."),
            ("o_comment", "varchar(79)", "Free text."),
        ),
        ("o_orderkey",),
        ((("o_custkey",), "customer", ("c_custkey",)),),
        # The index every TPC-H kit for PostgreSQL gives this foreign key; for dpproxy it
        # is the privacy unit, so a count per unit reads the index alone, and the rows
        # stored in its order make the per-unit grouping of contribution bounding read
        # each unit's rows together (README, Performance: physical design).
        ("o_custkey",),
        "o_custkey",
    ),
    _Table(
        "lineitem", "Line items of orders.",
        (
            ("l_orderkey", "bigint", "Order."),
            ("l_partkey", "integer", "Part."),
            ("l_suppkey", "integer", "Supplier."),
            ("l_linenumber", "integer", "Line number within the order (1-7)."),
            ("l_quantity", "numeric(15,2)", "Quantity."),
            ("l_extendedprice", "numeric(15,2)", "Quantity times retail price."),
            ("l_discount", "numeric(15,2)", "Discount (0.00-0.10)."),
            ("l_tax", "numeric(15,2)", "Tax (0.00-0.08)."),
            ("l_returnflag", "char(1)", "Return flag: R, A or N."),
            ("l_linestatus", "char(1)", "Line status: O or F."),
            ("l_shipdate", "date", "Ship date."),
            ("l_commitdate", "date", "Commit date."),
            ("l_receiptdate", "date", "Receipt date."),
            ("l_shipinstruct", "varchar(25)", "Shipping instructions."),
            ("l_shipmode", "varchar(10)", "Shipping mode."),
            ("l_comment", "varchar(44)", "Free text."),
        ),
        ("l_orderkey", "l_linenumber"),
        (
            (("l_orderkey",), "orders", ("o_orderkey",)),
            (("l_partkey", "l_suppkey"), "partsupp", ("ps_partkey", "ps_suppkey")),
        ),
    ),
)

TPCH_TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TPCH_TABLES)


def find_tpchgen() -> Path:
    """Locate the `tpchgen-cli` executable: beside this interpreter first, then on PATH."""
    # A virtualenv's scripts are beside its python, but the venv need not be on PATH.
    beside = Path(sys.executable).parent / "tpchgen-cli"
    if beside.is_file():
        return beside
    found = shutil.which("tpchgen-cli")
    if found:
        return Path(found)
    raise FileNotFoundError("tpchgen-cli not found: `pip install tpchgen-cli`")


def _generate(out_dir: Path, scale: float) -> None:
    cmd = [
        str(find_tpchgen()), "csv", "--scale-factor", repr(scale),
        "--output-dir", str(out_dir), "--quiet", "--no-progress",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"tpchgen-cli failed ({result.returncode}): {result.stderr.strip()}")


def _create_tables(conn: psycopg.Connection) -> None:
    # Reverse dependency order with CASCADE: reloading replaces any earlier copy.
    for table in reversed(TPCH_TABLES):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS public.{} CASCADE").format(
            sql.Identifier(table.name)))
    for table in TPCH_TABLES:
        columns = sql.SQL(", ").join(
            sql.SQL("{} {} NOT NULL").format(sql.Identifier(col), sql.SQL(typ))
            for col, typ, _ in table.columns
        )
        conn.execute(sql.SQL("CREATE TABLE public.{} ({})").format(
            sql.Identifier(table.name), columns))


def _copy_file(conn: psycopg.Connection, table: _Table, path: Path) -> int:
    # FREEZE (the table was created in this transaction): the rows are loaded frozen and
    # their pages marked all-visible, so index-only scans need no VACUUM first and no
    # later query rewrites every page to set hint bits.
    stmt = sql.SQL("COPY public.{} ({}) FROM STDIN (FORMAT csv, HEADER true, FREEZE true)").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in table.columns),
    )
    with conn.cursor() as cur:
        with cur.copy(stmt) as copy, path.open("rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                copy.write(chunk)
        return cur.rowcount


# Value ranges the TPC-H specification guarantees, declared as CHECK constraints as a
# careful owner would: dpproxy finds them and leaves out clamps they make redundant
# (proxy/enforced_bounds.py). l_extendedprice is l_quantity (at most 50) times
# p_retailprice (at most 2,099.00 by the specification's formula).
SPEC_RANGES: dict[str, dict[str, tuple[str, str]]] = {
    "customer": {"c_acctbal": ("-999.99", "9999.99")},
    "supplier": {"s_acctbal": ("-999.99", "9999.99")},
    "lineitem": {"l_quantity": ("1", "50"), "l_extendedprice": ("0", "104950"),
                 "l_discount": ("0", "0.10"), "l_tax": ("0", "0.08")},
}


def _add_constraints_and_comments(conn: psycopg.Connection) -> None:
    # Keys are added after COPY: building an index once is much faster than row by row.
    for t in TPCH_TABLES:
        conn.execute(sql.SQL("ALTER TABLE public.{} ADD PRIMARY KEY ({})").format(
            sql.Identifier(t.name), sql.SQL(", ").join(map(sql.Identifier, t.primary_key))))
    for t in TPCH_TABLES:
        for col in t.indexed:
            conn.execute(sql.SQL("CREATE INDEX ON public.{} ({})").format(
                sql.Identifier(t.name), sql.Identifier(col)))
        for cols, ref, ref_cols in t.foreign_keys:
            conn.execute(sql.SQL("ALTER TABLE public.{} ADD FOREIGN KEY ({}) REFERENCES public.{} ({})").format(
                sql.Identifier(t.name), sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.Identifier(ref), sql.SQL(", ").join(map(sql.Identifier, ref_cols))))
        checks = [sql.SQL("ADD CHECK ({col} >= {lo} AND {col} <= {hi})").format(
                      col=sql.Identifier(col), lo=sql.Literal(Decimal(lo)), hi=sql.Literal(Decimal(hi)))
                  for col, (lo, hi) in SPEC_RANGES.get(t.name, {}).items()]  # fmt: skip
        if checks:  # one ALTER: the table is scanned once to validate them all
            conn.execute(sql.SQL("ALTER TABLE public.{} {}").format(
                sql.Identifier(t.name), sql.SQL(", ").join(checks)))
        conn.execute(sql.SQL("COMMENT ON TABLE public.{} IS {}").format(
            sql.Identifier(t.name), sql.Literal(t.comment)))
        for col, _, comment in t.columns:
            conn.execute(sql.SQL("COMMENT ON COLUMN public.{}.{} IS {}").format(
                sql.Identifier(t.name), sql.Identifier(col), sql.Literal(comment)))


def load_tpch(dsn: str, scale: float, progress: Callable[[str], None]) -> None:
    """Generate TPC-H at `scale` and load the 8 tables into schema public of `dsn`.

    Existing TPC-H tables in that schema are dropped and replaced. Adds primary and
    foreign keys, the index on orders' privacy-unit column (and stores orders in its
    order), CHECK constraints of the specification's ranges, table and column comments,
    then runs VACUUM ANALYZE. Reports each step through `progress`.
    """
    if scale < MIN_SCALE:
        # (tpchgen-cli's smaller scales repeat partsupp keys: 60 of 800 rows at 0.001)
        raise ValueError(f"the TPC-H scale factor must be at least {MIN_SCALE} (got {scale})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dpproxy-tpch-") as tmp:
        out_dir = Path(tmp)
        _generate(out_dir, scale)
        progress(f"tpchgen-cli scale {scale}: {time.monotonic() - started:.1f}s")
        with psycopg.connect(dsn) as conn:
            _create_tables(conn)
            for table in TPCH_TABLES:
                t0 = time.monotonic()
                rows = _copy_file(conn, table, out_dir / f"{table.name}.csv")
                progress(f"{table.name}: {rows} rows in {time.monotonic() - t0:.2f}s")
            t0 = time.monotonic()
            _add_constraints_and_comments(conn)
            conn.commit()
            progress(f"keys and comments: {time.monotonic() - t0:.2f}s")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in TPCH_TABLES:
                if table.clustered_by is not None:
                    t0 = time.monotonic()
                    _cluster(conn, table.name, table.clustered_by)
                    progress(f"{table.name} stored in {table.clustered_by} order: {time.monotonic() - t0:.2f}s")
            # Outside the loading transaction so it sees the committed rows; VACUUM marks
            # the rewritten tables' pages all-visible again (index-only scans).
            t0 = time.monotonic()
            conn.execute("VACUUM ANALYZE")
            progress(f"VACUUM ANALYZE: {time.monotonic() - t0:.2f}s")
    progress(f"TPC-H scale {scale} loaded in {time.monotonic() - started:.1f}s")


def single_column_index(conn: psycopg.Connection, table: str, column: str) -> str | None:
    """The name of an index of `table` (schema-qualified) on `column` alone, or None."""
    row = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = %s::regclass AND a.attname = %s AND i.indnatts = 1 ORDER BY 1",
        (table, column),
    ).fetchone()  # fmt: skip
    return None if row is None else str(row[0])


def _cluster(conn: psycopg.Connection, table: str, column: str) -> None:
    """CLUSTER public.`table` by its index on `column` alone (the loader made one)."""
    index = single_column_index(conn, f"public.{table}", column)
    if index is None:
        raise RuntimeError(f"public.{table} has no index on {column} to be clustered by")
    conn.execute(sql.SQL("CLUSTER public.{} USING {}").format(sql.Identifier(table), sql.Identifier(index)))


def create_reader_role(dsn: str, role: str, password: str, tables: list[str]) -> None:
    """Create (or reset) a login role that may only connect and SELECT the given tables.

    Idempotent: re-running revokes SELECT on tables of schema public that are no longer
    listed. Tables may be given as `name` (schema public) or `schema.name`. The role
    still has what PostgreSQL grants to PUBLIC by default (e.g. TEMPORARY on the database).
    """
    role_id = sql.Identifier(role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        # Utility statements take no bind parameters, hence the client-side literal.
        conn.execute(
            sql.SQL(
                "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS NOINHERIT PASSWORD {}"
            ).format(verb, role_id, sql.Literal(password))
        )
        with conn.transaction():
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), role_id))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role_id))
            conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role_id))
            for name in tables:
                schema, _, table = name.rpartition(".")
                conn.execute(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
                    sql.Identifier(schema or "public", table), role_id))
