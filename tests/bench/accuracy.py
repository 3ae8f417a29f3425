"""Accuracy benchmark: dpproxy's engine vs SmartNoise SQL, same data, same total epsilon.

    /work/main/.venv/bin/python -m tests.bench.accuracy --smartnoise-python /tmp/snvenv/bin/python

Starts a throwaway PostgreSQL, loads TPC-H (scale 0.01) and a synthetic PUMS-like census
table (age 0-100, income 0-500000, sex, race, educ, married), and runs a fixed set of
queries at a total epsilon of 1 per query, `--trials` times each, with both systems.
Prints the median relative error per query (over every released cell and trial) side by
side, and the ratio SmartNoise / dpproxy (above 1: dpproxy is more accurate).

SmartNoise runs in its own virtualenv (smartnoise-sql pins opendp < 0.15; dpproxy needs
0.16): create it with `python3 -m venv /tmp/snvenv && /tmp/snvenv/bin/pip install
smartnoise-sql psycopg2-binary`. Without --smartnoise-python only dpproxy's column is
printed. This is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml

from accounting.mechanisms import Mechanisms
from accounting.release import release
from proxy.pgcluster import PgCluster
from proxy.sampledata import load_tpch
from rewriter.metadata import Metadata
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite

ROOT = Path(__file__).resolve().parents[2]
PUMS_ROWS = 20_000
EPSILON = Decimal(1)

# name, kind, number of leading key columns, dpproxy SQL, SmartNoise SQL (None: same)
QUERIES: list[tuple[str, str, int, str, str | None]] = [
    ("pums count", "COUNT", 0, "SELECT COUNT(*) FROM public.pums", None),
    ("pums sum income", "SUM", 0, "SELECT SUM(income) FROM public.pums", None),
    ("pums avg income", "AVG", 0, "SELECT AVG(income) FROM public.pums", None),
    ("pums avg age", "AVG", 0, "SELECT AVG(age) FROM public.pums", None),
    ("pums sex: count, sum, avg income", "multi", 1,
     "SELECT sex, COUNT(*), SUM(income), AVG(income) FROM public.pums GROUP BY sex", None),
    ("pums educ: avg income", "AVG", 1,
     "SELECT educ, AVG(income) FROM public.pums GROUP BY educ", None),
    ("pums race, married: count", "COUNT", 2,
     "SELECT race, married, COUNT(*) FROM public.pums GROUP BY race, married", None),
    ("pums married: count, avg age, avg income", "multi", 1,
     "SELECT married, COUNT(*), AVG(age), AVG(income) FROM public.pums GROUP BY married", None),
    ("pums variance age", "VAR", 0, "SELECT VARIANCE(age) FROM public.pums",
     "SELECT VAR(age) FROM public.pums"),
    ("pums median income", "quantile", 0,
     "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY income) FROM public.pums", None),
    ("pums sum of income in thousands (expression)", "SUM", 0,
     "SELECT SUM(income / 1000) FROM public.pums", None),
    ("pums min income", "MIN", 0, "SELECT MIN(income) FROM public.pums", None),
    ("pums max age", "MAX", 0, "SELECT MAX(age) FROM public.pums", None),
    ("pums educ: min, max income", "MIN/MAX", 1,
     "SELECT educ, MIN(income), MAX(income) FROM public.pums GROUP BY educ", None),
    ("tpch orders count", "COUNT", 0, "SELECT COUNT(*) FROM public.orders", None),
    ("tpch orders sum price", "SUM", 0, "SELECT SUM(o_totalprice) FROM public.orders", None),
    ("tpch orders status: count, avg price", "multi", 1,
     "SELECT o_orderstatus, COUNT(*), AVG(o_totalprice) FROM public.orders "
     "GROUP BY o_orderstatus", None),
    ("tpch customer segment: avg balance", "AVG", 1,
     "SELECT c_mktsegment, AVG(c_acctbal) FROM public.customer GROUP BY c_mktsegment", None),
    ("tpch customer segment: min, max balance", "MIN/MAX", 1,
     "SELECT c_mktsegment, MIN(c_acctbal), MAX(c_acctbal) FROM public.customer "
     "GROUP BY c_mktsegment", None),
    ("tpch orders max price", "MAX", 0, "SELECT MAX(o_totalprice) FROM public.orders", None),
]  # fmt: skip


def make_pums(conn: psycopg.Connection, n: int, seed: int = 7) -> None:
    """A synthetic census table with PUMS's schema and bounds (fixed seed)."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(42, 18, n).round(), 0, 100).astype(int)
    sex = rng.integers(1, 3, n)
    race = rng.choice(np.arange(1, 7), n, p=[0.6, 0.13, 0.06, 0.05, 0.01, 0.15])
    educ = np.clip(rng.normal(10, 3, n).round(), 1, 16).astype(int)
    married = (rng.random(n) < 0.5).astype(int)
    income = np.clip(np.exp(rng.normal(10.2 + 0.06 * educ, 0.8)), 0, 500_000).round().astype(int)
    conn.execute("CREATE TABLE public.pums (pid integer PRIMARY KEY, age integer NOT NULL, "
                 "sex integer NOT NULL, race integer NOT NULL, educ integer NOT NULL, "
                 "married integer NOT NULL, income integer NOT NULL)")  # fmt: skip
    buf = io.StringIO()
    for i in range(n):
        buf.write(f"{i}\t{age[i]}\t{sex[i]}\t{race[i]}\t{educ[i]}\t{married[i]}\t{income[i]}\n")
    with conn.cursor().copy("COPY public.pums FROM STDIN") as cp:
        cp.write(buf.getvalue())


def dpproxy_metadata() -> Metadata:
    """tpch.yaml plus the PUMS table (one row per person)."""
    raw = yaml.safe_load((ROOT / "proxy" / "examples" / "tpch.yaml").read_text())
    raw["tables"]["pums"] = {
        "privacy_unit": "pid", "max_rows": 1, "max_groups": 1,
        "columns": {
            "pid": {"type": "integer", "nullable": False, "unique": True},
            "age": {"type": "integer", "nullable": False, "lower": 0, "upper": 100},
            "sex": {"type": "integer", "nullable": False, "domain": [1, 2]},
            "race": {"type": "integer", "nullable": False, "domain": [1, 2, 3, 4, 5, 6]},
            "educ": {"type": "integer", "nullable": False, "domain": list(range(1, 17))},
            "married": {"type": "integer", "nullable": False, "domain": [0, 1]},
            "income": {"type": "integer", "nullable": False, "lower": 0, "upper": 500000},
        },
    }  # fmt: skip
    return Metadata.model_validate(raw)


SMARTNOISE_METADATA = """
Collection:
  public:
    pums:
      max_ids: 1
      row_privacy: False
      censor_dims: False
      pid: {type: int, private_id: True}
      age: {type: int, lower: 0, upper: 100}
      sex: {type: int}
      race: {type: int}
      educ: {type: int}
      married: {type: int}
      income: {type: int, lower: 0, upper: 500000}
    orders:
      max_ids: 8
      row_privacy: False
      censor_dims: False
      o_custkey: {type: int, private_id: True}
      o_orderstatus: {type: string}
      o_totalprice: {type: float, lower: 0, upper: 600000}
    customer:
      max_ids: 1
      row_privacy: False
      censor_dims: False
      c_custkey: {type: int, private_id: True}
      c_mktsegment: {type: string}
      c_acctbal: {type: float, lower: -1000, upper: 10000}
"""


def run_dpproxy(dsn: str, meta: Metadata, sql: str, trials: int) -> list[list[list[Any]]]:
    """Answer `sql` `trials` times with dpproxy's engine (rewrite, run, noise, release)."""
    mech = Mechanisms()
    plan = rewrite(parse_one(sql), meta)
    noise = mech.plan_noise(plan, EPSILON, Decimal("1e-7"))
    out = []
    with psycopg.connect(dsn) as conn:
        for _ in range(trials):
            rows = conn.execute(plan.sql).fetchall()  # type: ignore[arg-type]
            ans = release(plan, rows, noise, mech)
            out.append([list(r) for r in ans.rows])
    return out


def median_relative_error(truth: list[tuple[Any, ...]], trials: list[list[list[Any]]],
                          nkeys: int) -> float:  # fmt: skip
    """Median over cells and trials of |noisy - true| / |true| (rows matched on keys)."""
    exact = {tuple(str(x) for x in r[:nkeys]): r[nkeys:] for r in truth}
    errs = []
    for rows in trials:
        for r in rows:
            key = tuple(str(_key(x)) for x in r[:nkeys])
            want = exact.get(key)
            if want is None:
                continue
            for got, w in zip(r[nkeys:], want, strict=False):
                if w is None or got is None or float(w) == 0:
                    continue
                errs.append(abs(float(got) - float(w)) / abs(float(w)))
    return statistics.median(errs) if errs else float("nan")


def _key(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smartnoise-python", help="python of a virtualenv with smartnoise-sql")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--only", default="", help="run only the queries whose name matches this regex")
    args = ap.parse_args()
    queries = [q for q in QUERIES if re.search(args.only, q[0])]
    meta = dpproxy_metadata()
    with PgCluster.start(durable=False) as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = cluster.dsn("bench")
        load_tpch(dsn, 0.01, progress=lambda _m: None)
        with psycopg.connect(dsn, autocommit=True) as conn:
            make_pums(conn, PUMS_ROWS)
            conn.execute("ANALYZE")
        sn: dict[str, Any] = {}
        if args.smartnoise_python:
            job = {"dsn": dsn, "metadata": SMARTNOISE_METADATA, "trials": args.trials,
                   "queries": [[q[0], q[4] or q[3]] for q in queries]}  # fmt: skip
            proc = subprocess.run(
                [args.smartnoise_python, str(Path(__file__).with_name("_smartnoise_runner.py"))],
                input=json.dumps(job), capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit("the SmartNoise runner failed")
            sn = json.loads(proc.stdout)
        print(f"total epsilon 1 per query, {args.trials} trials, PUMS-like n={PUMS_ROWS}, "
              "TPC-H SF0.01; median relative error (lower is better)\n")  # fmt: skip
        print("| query | kind | dpproxy | SmartNoise | SmartNoise / dpproxy |")
        print("|---|---|---|---|---|")
        with psycopg.connect(dsn) as conn:
            for name, kind, nkeys, sql, _ in queries:
                truth = conn.execute(sql).fetchall()  # type: ignore[arg-type]
                ours = median_relative_error(truth, run_dpproxy(dsn, meta, sql, args.trials), nkeys)
                if name in sn and "error" in sn[name]:
                    print(f"| {name} | {kind} | {ours:.2e} | refused: {sn[name]['error']} | |")
                    continue
                theirs = (median_relative_error(truth, sn[name]["trials"], nkeys)
                          if name in sn else float("nan"))  # fmt: skip
                ratio = theirs / ours if ours > 0 else float("inf")
                cost = f" ({sn[name]['cost']:g} mechanisms)" if name in sn else ""
                print(f"| {name} | {kind} | {ours:.2e} | {theirs:.2e}{cost} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
