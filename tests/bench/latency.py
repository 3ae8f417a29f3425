"""Latency benchmark: what dpproxy adds to one query, stage by stage; and scale.

Run: .venv/bin/python -m tests.bench.latency [--runs 300] [--grouped-only]

1. Through dpproxy (psycopg, extended protocol) vs directly: p50/p99 of a DP query whose
   plan and noise calibration are cached but whose answer is new every run (the answer
   cache is off, so each run is charged and noised afresh), of the same
   plain aggregate directly, and of the rewritten (bounded) SQL directly. The added
   latency is dpproxy's p50 minus the rewritten SQL's p50 (the database work a DP
   answer needs); the stage split comes from dpproxy's own /metrics. Two queries: one
   whose bounded SQL takes ~10 ms (the ledger charge overlaps it) and one of ~0.5 ms.
2. Parse+rewrite of new typical queries, and of a 100-line BI-generated query.
3. Proxy time to release 10, 1,000 and 10,000 noisy groups.
Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from accounting.mechanisms import Mechanisms
from accounting.release import release
from proxy.pgcluster import PgCluster
from proxy.provision import AnalystSpec, example_metadata_path, provision
from proxy.results import encode_rows
from rewriter.metadata import Metadata, load_metadata
from rewriter.parse import parse_one
from rewriter.rewrite import rewrite
from tests.bench._settings import as_dpproxy_metadata, as_dpproxy_sessions
from tests.support.proxy_process import ProxyProcess, free_port

DP = "SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders WHERE o_totalprice > 1000 GROUP BY o_orderpriority"
# One row per unit (no bounding) and a short table scan: the database answers in ~0.5 ms,
# so the ledger charge and the proxy's own work are not hidden behind it.
DP_SHORT = "SELECT c_mktsegment, COUNT(*), AVG(c_acctbal) FROM customer WHERE c_acctbal > 100 GROUP BY c_mktsegment"


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of xs (nearest rank), in milliseconds."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def timed_runs(conn: psycopg.Connection, sql: str, runs: int, before: str | None = None) -> list[float]:
    """Wall times of `runs` executions of `sql` (plus `before` each time, untimed)."""
    out = []
    for i in range(runs):
        if before:
            conn.execute(before.format(i=i))
        t0 = time.perf_counter()
        conn.execute(sql).fetchall()
        out.append(time.perf_counter() - t0)
    return out


def stage_means(metrics_url: str) -> dict[str, float]:
    """Mean milliseconds per DP stage, from dpproxy's Prometheus histograms."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'dpproxy_stage_duration_seconds_(sum|count)\{.*stage="([^"]+)".*\} (\S+)', line)
        if m:
            (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {k: sums[k] / counts[k] * 1000 for k in sums if counts.get(k)}


def latencies(proxy: ProxyProcess, cluster: PgCluster, query: str, meta: Metadata,
              runs: int) -> tuple[list[float], list[float], list[float]]:  # fmt: skip
    """Wall times of `query` through dpproxy, of the plain query directly, and of its
    rewritten (bounded) SQL directly (`meta`: as dpproxy reads it at start-up):
    interleaved, one of each per round, so that a busy machine slows all three alike
    instead of whichever phase it happened to overlap."""
    with psycopg.connect(proxy.dsn("bench", "bench-pw"), autocommit=True) as via, \
         psycopg.connect(cluster.dsn("tpch"), autocommit=True) as direct:  # fmt: skip
        as_dpproxy_sessions(direct)
        bounded = rewrite(parse_one(query), meta).sql
        via.execute(query)  # warm: plan cache, pools
        through: list[float] = []
        plain: list[float] = []
        rewritten: list[float] = []
        for _ in range(runs):
            through += timed_runs(via, query, 1)
            plain += timed_runs(direct, query, 1)
            rewritten += timed_runs(direct, bounded, 1)
    return through, plain, rewritten


# A dashboard's date range, sent by a BI tool as new literal text for each new range.
DATE_RANGE = ("SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders WHERE o_orderdate >= "
              "DATE '{}' AND o_orderdate < DATE '{}' GROUP BY o_orderpriority")  # fmt: skip


def date_ranges(proxy: ProxyProcess, runs: int) -> tuple[list[float], list[float]]:
    """Wall times through dpproxy of DATE_RANGE with a new range each run: as sent (its
    learned shape, proxy/literal_shapes.py) and behind a comment, which the literal
    tokenizer leaves to the general path (parsed, routed and parameterized by sqlglot)."""
    start = date(1992, 1, 1)
    learned: list[float] = []
    general: list[float] = []
    with psycopg.connect(proxy.dsn("bench", "bench-pw"), autocommit=True) as via:
        for i in range(runs + 1):
            for prefix, out in (("", learned), ("/* general */ ", general)):
                first = start + timedelta(days=i % 2000)
                sql = prefix + DATE_RANGE.format(first.isoformat(), (first + timedelta(days=365)).isoformat())
                if i:  # (the first run learns the shape)
                    out += timed_runs(via, sql, 1)
                else:
                    via.execute(sql)  # type: ignore[call-overload]
    return learned, general


def bi_query(lines: int) -> str:
    """A BI-tool-style query: many CASE-bucketed filters and aliased aggregates."""
    conds = [f"(o_totalprice BETWEEN {i * 1000} AND {i * 1000 + 999} OR o_orderstatus = 'F')"
             for i in range(lines - 6)]  # fmt: skip
    return (
        'SELECT "o_orderpriority" AS "Priority",\n  COUNT(*) AS "Count",\n'
        '  SUM("o_totalprice") AS "Sum"\nFROM "public"."orders"\nWHERE '
        + "\n  OR ".join(conds)
        + '\nGROUP BY "o_orderpriority"\nORDER BY "Count" DESC'
    )


def grouped_release_ms(n_keys: int, mech: Mechanisms) -> float:
    """Proxy time to noise and post-process a grouped answer with n_keys public keys."""
    return grouped_release_cpu_ms(n_keys, mech)[0]


def grouped_release_cpu_ms(n_keys: int, mech: Mechanisms) -> tuple[float, float]:
    """Wall and CPU milliseconds (all threads of the process) of that release, from the
    exact rows the database returns to the DataRow bytes sent (noise, post-processing
    and text encoding: all of the proxy's work on the answer)."""
    meta = Metadata.model_validate({"dataset": "s", "tables": {"events": {
        "privacy_unit": "uid", "max_rows": 4,
        "columns": {"uid": {"type": "integer"}, "k": {"type": "integer", "domain": list(range(n_keys)), "nullable": False},
                    "v": {"type": "numeric", "lower": 0, "upper": 100}}}}})  # fmt: skip
    plan = rewrite(parse_one("SELECT k, COUNT(*), SUM(v) FROM events GROUP BY k"), meta)
    noise = mech.plan_noise(plan, Decimal(1))
    rows = [(i, 5, 1000) for i in range(0, n_keys, 2)]  # half the groups non-empty
    t0, c0 = time.perf_counter(), time.process_time()
    answer = release(plan, rows, noise, mech)
    encode_rows(answer.columns, answer.rows)
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


def main() -> None:
    """Run all three parts and print tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--grouped-only", action="store_true", help="run part 3 only (no database)")
    args = ap.parse_args()
    if args.grouped_only:
        print_grouped_release()
        return
    meta = load_metadata(example_metadata_path())
    # (the config, keys and logs are removed with the cluster's data at the end)
    with tempfile.TemporaryDirectory(prefix="dpproxy-lat-") as tmp, PgCluster.start(durable=False) as cluster:
        work = Path(tmp)
        analyst = AnalystSpec("bench", "bench-pw", Decimal(10**12), Decimal(10**6))
        cfg_path = provision(cluster.dsn, work, args.scale, [analyst], free_port(), print)
        cfg = yaml.safe_load(cfg_path.read_text())
        metrics_port = free_port()
        cfg["observability"] = {"metrics_port": metrics_port, "log_statements": False}
        cfg["cache"] = {"enabled": False}  # every run a new answer: charged, run, noised
        cfg_path.write_text(yaml.safe_dump(cfg))
        proxy = ProxyProcess(cfg_path).start()
        timings = []
        with psycopg.connect(cluster.dsn("tpch")) as conn:
            meta = as_dpproxy_metadata(conn, meta)  # rewritten as dpproxy rewrites
        try:
            for query in (DP, DP_SHORT):
                timings.append((query, *latencies(proxy, cluster, query, meta, args.runs)))
            stages = stage_means(f"http://127.0.0.1:{metrics_port}/metrics")
            learned, general = date_ranges(proxy, args.runs)
        finally:
            proxy.stop()
    for query, through, plain, rewritten in timings:
        print(f"\n1. Latency, {args.runs} runs, TPC-H scale {args.scale} (ms): {query}\n")
        print("| path | p50 | p99 |\n|---|---|---|")
        for name, xs in (("dpproxy, plan cached, answer new", through), ("direct, plain SQL", plain),
                         ("direct, rewritten SQL", rewritten)):  # fmt: skip
            print(f"| {name} | {pct(xs, 0.5):.2f} | {pct(xs, 0.99):.2f} |")
        print(f"\nadded by dpproxy (p50 through - p50 rewritten direct): "
              f"{pct(through, 0.5) - pct(rewritten, 0.5):.2f} ms; "
              f"over the plain query: {pct(through, 0.5) - pct(plain, 0.5):.2f} ms")  # fmt: skip
    print("\n| stage (both queries) | mean ms |\n|---|---|")
    for k, v in sorted(stages.items()):
        print(f"| {k} | {v:.3f} |")

    print(f"\n1b. A dashboard's date range, new dates each run ({args.runs} runs, p50 ms): as literal "
          f"text, answered as its learned shape {pct(learned, 0.5):.2f}; the same behind a comment "
          f"(the general path) {pct(general, 0.5):.2f}")  # fmt: skip

    print("\n2. Parse + rewrite of new queries (ms, median of 20)\n")
    typical = [
        "SELECT COUNT(*) FROM orders WHERE o_orderdate >= DATE '1996-01-01'",
        DP,
        "SELECT c_mktsegment, SUM(c_acctbal), AVG(c_acctbal) FROM customer GROUP BY 1",
        # A BI tool's time series: the declared dates list every month and day.
        "SELECT DATE_TRUNC('month', o_orderdate) AS m, COUNT(*) FROM orders GROUP BY 1 ORDER BY 1",
        "SELECT o_orderdate, SUM(o_totalprice) FROM orders GROUP BY 1",
        bi_query(100),
    ]
    print("| query | ms |\n|---|---|")
    for q in typical:
        ts = []
        for i in range(20):
            text = q + f" LIMIT {1000 + i}" if "ORDER BY" not in q else q.replace("DESC", f"DESC LIMIT {1000 + i}")
            t0 = time.perf_counter()
            rewrite(parse_one(text), meta)
            ts.append((time.perf_counter() - t0) * 1000)
        label = "100-line BI query" if q.count("\n") > 50 else q[:60]
        print(f"| {label} | {statistics.median(ts):.2f} |")

    print_grouped_release()


def print_grouped_release() -> None:
    """Part 3: proxy time to release 10, 1,000 and 10,000 groups (median of 7)."""
    print("\n3. Releasing noisy groups: noise, post-processing and encoding (proxy time, ms;"
          " CPU summed over the process's threads)\n")
    mech = Mechanisms()
    print("| public keys | wall ms | CPU ms |\n|---|---|---|")
    for n in (10, 1000, 10000):
        grouped_release_ms(n, mech)  # warm: measurements built, worker threads started
        runs = [grouped_release_cpu_ms(n, mech) for _ in range(7)]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {n} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
