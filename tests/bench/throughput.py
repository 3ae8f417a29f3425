"""Throughput benchmark: pgbench through dpproxy vs directly against PostgreSQL.

Run: .venv/bin/python -m tests.bench.throughput [--scale 0.1] [--seconds 10]

Both targets run in the same process tree on the same machine in the same run; the
printed ratios are dpproxy tps / direct tps for the same SQL (directly, the aggregate
is plain, non-private SQL). It prints figures only: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from proxy.pgcluster import PgCluster
from proxy.provision import AnalystSpec, provision
from tests.support.proxy_process import ProxyProcess, free_port

SCRIPTS = {
    # A parameterised DP aggregate: every execution is a new query (no answer reuse).
    "dp_param": "\\set p random(1, 400000)\n"
    "SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders "
    "WHERE o_totalprice > :p GROUP BY o_orderpriority;\n",
    # A parameterised DP aggregate over the unit table itself (one row per unit: no
    # contribution bounding, and a CHECK constraint enforces c_acctbal's bounds), so the
    # database does the same work both ways and the ratio is dpproxy's own cost.
    "dp_unit": "\\set p random(-99900, 999900)\n"
    "SELECT c_mktsegment, COUNT(*), SUM(c_acctbal) FROM customer "
    "WHERE c_acctbal > :p / 100.0 GROUP BY c_mktsegment;\n",
    # The same DP aggregate every time (served from the answer cache where enabled).
    "dp_fixed": "SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders "
    "WHERE o_totalprice > 1000 GROUP BY o_orderpriority;\n",
    # Pure protocol + catalog-mirror overhead.
    "select1": "SELECT 1;\n",
}


def pgbench(host: str, port: int, user: str, password: str, db: str, script: Path,
            mode: str, clients: int, seconds: int) -> float:  # fmt: skip
    """tps of one pgbench run (0.0 if it failed)."""
    exe = shutil.which("pgbench")
    assert exe, "pgbench is not installed"
    out = subprocess.run(
        [exe, "-n", "-h", host, "-p", str(port), "-U", user, "-f", str(script), "-M", mode,
         "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), db],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password,
                                             "PGSSLMODE": "disable"},
    )  # fmt: skip
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    if not m:
        print(f"  pgbench failed ({mode}, {clients}): {out.stderr.strip()[-300:]}")
        return 0.0
    return float(m.group(1))


def main() -> None:
    """Provision, start dpproxy, run every combination, print a table of ratios."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="dpproxy's listen.workers (default: one per CPU)")  # fmt: skip
    ap.add_argument("--scripts", default=",".join(SCRIPTS))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dpproxy-bench-"))
    with PgCluster.start(durable=False) as cluster:
        analyst = AnalystSpec("bench", "bench-pw", Decimal(10**12), Decimal(10**6))
        cfg = provision(cluster.dsn, work, args.scale, [analyst], free_port(), print)
        # Direct runs use the same SQL on the data database, as the superuser.
        for name, body in SCRIPTS.items():
            (work / f"{name}.sql").write_text(body)
        settings = yaml.safe_load(cfg.read_text())
        settings["listen"]["workers"] = args.workers
        cfg.write_text(yaml.safe_dump(settings))
        proxy = ProxyProcess(cfg).start()
        try:
            with psycopg.connect(proxy.dsn("bench", "bench-pw")) as c:
                c.execute("SELECT COUNT(*) FROM orders")  # warm the plan and pools
            rows = []
            for name in args.scripts.split(","):
                for mode in args.modes.split(","):
                    for clients in (int(x) for x in args.clients.split(",")):
                        script = work / f"{name}.sql"
                        direct = pgbench("127.0.0.1", cluster.port, cluster.superuser,
                                         cluster.password or "", "tpch", script, mode, clients,
                                         args.seconds)  # fmt: skip
                        via = pgbench("127.0.0.1", proxy.port, "bench", "bench-pw", "tpch",
                                      script, mode, clients, args.seconds)  # fmt: skip
                        ratio = via / direct if direct else 0.0
                        rows.append((name, mode, clients, direct, via, ratio))
                        print(f"{name:9} {mode:8} c={clients:<3} direct {direct:9.1f} tps  "
                              f"dpproxy {via:9.1f} tps  ratio {ratio:5.2f}", flush=True)  # fmt: skip
        finally:
            proxy.stop()
    print("\n| script | mode | clients | direct tps | dpproxy tps | ratio |")
    print("|---|---|---|---|---|---|")
    for name, mode, clients, direct, via, ratio in rows:
        print(f"| {name} | {mode} | {clients} | {direct:.0f} | {via:.0f} | {ratio:.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
