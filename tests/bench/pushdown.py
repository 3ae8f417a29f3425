"""Pushdown cost: database time of dpproxy's rewritten SQL over the plain query's.

Run: .venv/bin/python -m tests.bench.pushdown [--scale 1] [--runs 5] [--dsn URI]
     [--work-mem 4MB] [--cluster-by unit|key]

(`--dsn`: a database that already holds TPC-H, instead of a fresh cluster; `--work-mem`:
another `backend.work_mem` than dpproxy's default, e.g. PostgreSQL's 4MB, to compare;
`--cluster-by unit`: first index each private table on its privacy-unit column and
CLUSTER it by that index, the physical design the README recommends and the demo loader
gives orders; `--cluster-by key`: CLUSTER each by its primary key instead, the order
TPC-H generates rows in, where each unit's rows are scattered. Both rewrite the tables,
so with `--dsn` only on a scratch copy.)

For each TPC-H DP query, the plain SQL (what an analyst would run without dpproxy) and
the bounded SQL the rewriter emits both run directly on the same PostgreSQL, in the
same run; the printed ratio is median(rewritten) / median(plain). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
import psycopg.sql

from proxy.pgcluster import PgCluster
from proxy.provision import example_metadata_path
from proxy.sampledata import load_tpch, single_column_index
from rewriter.metadata import Metadata, load_metadata
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.bench._settings import as_dpproxy_metadata, as_dpproxy_sessions

QUERIES = {
    "count": "SELECT COUNT(*) FROM orders",
    "grouped_avg": "SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders "
    "WHERE o_orderdate >= '1995-01-01' GROUP BY o_orderpriority",
    "sum_filter": "SELECT SUM(o_totalprice) FROM orders WHERE o_orderstatus = 'F'",
    "customer_sum": "SELECT c_mktsegment, SUM(c_acctbal) FROM customer GROUP BY c_mktsegment",
    "count_distinct_units": "SELECT COUNT(DISTINCT o_custkey) FROM orders",
    "lineitem_join": "SELECT l_returnflag, COUNT(*), SUM(l_quantity) FROM lineitem "
    "GROUP BY l_returnflag",
    # The same join written by the analyst (the plain query pays for it too).
    "lineitem_orders_join": "SELECT o_orderpriority, COUNT(*), SUM(l_quantity) FROM lineitem "
    "JOIN orders ON l_orderkey = o_orderkey GROUP BY o_orderpriority",
    "avg_ungrouped": "SELECT COUNT(*), AVG(o_totalprice) FROM orders "
    "WHERE o_orderdate >= '1995-01-01'",
    # The year of a date with declared bounds: a public domain (1992..1998).
    "year_declared_dates": "SELECT EXTRACT(YEAR FROM o_orderdate) AS y, COUNT(*) FROM orders GROUP BY 1",
    # The year as text: since TO_CHAR of declared dates lists its values, the pivot plan.
    "year_to_char": "SELECT to_char(o_orderdate, 'YYYY') AS y, COUNT(*) FROM orders GROUP BY 1",
    # ISO weeks as text: listed too (366 weeks).
    "week_to_char": "SELECT to_char(o_orderdate, 'IYYY-IW') AS w, COUNT(*) FROM orders GROUP BY 1",
    # Keys without a public domain: each unit's groups limited, then partition selection.
    "clerk_private_key": "SELECT o_clerk, COUNT(*), AVG(o_totalprice) FROM orders GROUP BY 1",
}


def _backend_cpu_ms(pid: int) -> float | None:
    """CPU time the backend process has used so far (Linux schedstat), or None."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e6
    except OSError:
        return None


def timed(conn: psycopg.Connection, sql: str, runs: int) -> tuple[float, float | None]:
    """Median wall time and median backend CPU time of `runs` executions (after one
    warm-up), in milliseconds. CPU time is the database's own work, which other load on
    a shared machine does not inflate; it is None where /proc is not readable."""
    pid = conn.info.backend_pid
    conn.execute(sql).fetchall()
    walls, cpus = [], []
    for _ in range(runs):
        c0 = _backend_cpu_ms(pid)
        t0 = time.perf_counter()
        conn.execute(sql).fetchall()
        walls.append((time.perf_counter() - t0) * 1000)
        c1 = _backend_cpu_ms(pid)
        if c0 is not None and c1 is not None:
            cpus.append(c1 - c0)
    return statistics.median(walls), (statistics.median(cpus) if cpus else None)


def main() -> None:
    """Load TPC-H, then time each plain/rewritten pair and print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dsn", help="an existing TPC-H database (no cluster is started)")
    ap.add_argument("--work-mem", help="work_mem for both queries (default: dpproxy's)")
    ap.add_argument("--cluster-by", choices=("unit", "key"),
                    help="CLUSTER private tables by their privacy unit or primary key first")  # fmt: skip
    args = ap.parse_args()
    meta = load_metadata(example_metadata_path())
    if args.dsn:
        if args.cluster_by:
            cluster_by(args.dsn, meta, args.cluster_by)
        rows = measure(args.dsn, meta, args.runs, args.work_mem)
    else:
        with PgCluster.start(durable=False, base_dir=Path(tempfile.gettempdir())) as cluster:
            with psycopg.connect(cluster.dsn(), autocommit=True) as c:
                c.execute("CREATE DATABASE tpch")
            dsn = cluster.dsn("tpch")
            load_tpch(dsn, args.scale, lambda m: print(m, flush=True))
            if args.cluster_by:
                cluster_by(dsn, meta, args.cluster_by)
            rows = measure(dsn, meta, args.runs, args.work_mem)
    where = "the database at --dsn" if args.dsn else f"TPC-H scale {args.scale}"
    if args.cluster_by:
        where += f", private tables clustered by {'privacy unit' if args.cluster_by == 'unit' else 'primary key'}"
    print(f"\n{where}, median of {args.runs} runs\n")
    print("| query | plain ms | rewritten ms | wall ratio | backend CPU ratio |")
    print("|---|---|---|---|---|")
    for name, plain, dp, ratio, cpu_ratio in rows:
        cpu = f"{cpu_ratio:.2f}" if cpu_ratio is not None else "n/a"
        print(f"| {name} | {plain:.1f} | {dp:.1f} | {ratio:.2f} | {cpu} |")


def cluster_by(dsn: str, meta: Metadata, by: str) -> None:
    """CLUSTER each private table with a privacy-unit column by an index on that column
    (`by` "unit": made unless one on it alone exists, as the demo loader makes for
    orders; then per-unit grouping reads each unit's rows together, and a count per unit
    can come from the index alone) or by its primary key (`by` "key": the order TPC-H
    generates rows in), then VACUUM ANALYZE. Tables whose unit is a declared key (one
    row per unit) are left as they are."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, table in meta.private_tables().items():
            unit = table.privacy_unit
            if unit is None or table.columns[unit].unique:
                continue
            target = psycopg.sql.Identifier(table.schema_, name)
            qualified = f"{table.schema_}.{name}"
            t0 = time.perf_counter()
            if by == "key":
                found = conn.execute("SELECT conindid::regclass::text FROM pg_constraint "
                                     "WHERE conrelid = %s::regclass AND contype = 'p'", (qualified,)).fetchone()  # fmt: skip
                if found is None:
                    print(f"{name}: no primary key, left as it is", flush=True)
                    continue
                index = psycopg.sql.SQL(found[0])
            else:
                existing = single_column_index(conn, qualified, unit)
                index = psycopg.sql.Identifier(existing or f"{name}_{unit}_unit")
                if existing is None:
                    conn.execute(psycopg.sql.SQL("CREATE INDEX {} ON {} ({})").format(
                        index, target, psycopg.sql.Identifier(unit)))  # fmt: skip
            conn.execute(psycopg.sql.SQL("CLUSTER {} USING {}").format(target, index))
            print(f"{name}: clustered by its {'primary key' if by == 'key' else unit} in "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
        conn.execute("VACUUM ANALYZE")


def measure(
    dsn: str, meta: Metadata, runs: int, work_mem: str | None = None
) -> list[tuple[str, float, float, float, float | None]]:
    """Time every plain/rewritten pair on `dsn`, printing each as it is measured."""
    rows = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        as_dpproxy_sessions(conn, work_mem)  # for both queries
        meta = as_dpproxy_metadata(conn, meta)  # as dpproxy reads the catalog at start-up
        for name, sql in QUERIES.items():
            try:
                bounded = rewrite(parse_one(sql), meta).sql
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{name}: not rewritten ({e})")
                continue
            plain, plain_cpu = timed(conn, sql, runs)
            dp, dp_cpu = timed(conn, bounded, runs)
            cpu_ratio = dp_cpu / plain_cpu if dp_cpu is not None and plain_cpu else None
            rows.append((name, plain, dp, dp / plain, cpu_ratio))
            print(f"{name:22} plain {plain:8.1f} ms  rewritten {dp:8.1f} ms  ratio {dp / plain:5.2f}"
                  + (f"  (backend CPU ratio {cpu_ratio:5.2f})" if cpu_ratio else ""),
                  flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
