"""What observability costs: pgbench through dpproxy with the audit/logs off, async, and sync.

Run: .venv/bin/python -m tests.bench.ops [--scale 0.01] [--seconds 5] [--clients 1,8]

One run, one machine: direct PostgreSQL, then dpproxy with (a) no audit and no
statement logs, (b) the default (asynchronous batched audit, JSON statement logs),
(c) `audit_sync: true` (each answer waits for its audit row's commit). Prints tps and
ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from proxy.pgcluster import PgCluster
from proxy.provision import AnalystSpec, provision
from tests.bench.throughput import SCRIPTS, pgbench
from tests.support.proxy_process import ProxyProcess, free_port

VARIANTS = {
    "off": {"audit": False, "log_statements": False},
    "async (default)": {"log_format": "json"},
    "sync": {"log_format": "json", "audit_sync": True},
}


def main() -> None:
    """Provision once, run each variant, print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", default="1,8")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dpproxy-bench-ops-"))
    rows = []
    with PgCluster.start(durable=True) as cluster:
        analyst = AnalystSpec("bench", "bench-pw", Decimal(10**12), Decimal(10**6))
        base = provision(cluster.dsn, work, args.scale, [analyst], free_port(), print)
        for name in ("dp_param", "select1"):
            (work / f"{name}.sql").write_text(SCRIPTS[name])
        for clients in (int(x) for x in args.clients.split(",")):
            for name in ("dp_param", "select1"):
                script = work / f"{name}.sql"
                direct = pgbench("127.0.0.1", cluster.port, cluster.superuser, cluster.password or "",
                                 "tpch", script, "simple", clients, args.seconds)  # fmt: skip
                for variant, obs in VARIANTS.items():
                    cfg_data = yaml.safe_load(base.read_text())
                    cfg_data["observability"] = obs
                    cfg = work / f"ops-{len(rows)}.yaml"
                    cfg.write_text(yaml.safe_dump(cfg_data))
                    proxy = ProxyProcess(cfg).start()
                    try:
                        with psycopg.connect(proxy.dsn("bench", "bench-pw")) as c:
                            c.execute("SELECT COUNT(*) FROM orders")  # warm plans and pools
                        via = pgbench("127.0.0.1", proxy.port, "bench", "bench-pw", "tpch", script,
                                      "simple", clients, args.seconds)  # fmt: skip
                    finally:
                        proxy.stop()
                    ratio = via / direct if direct else 0.0
                    rows.append((name, clients, variant, direct, via, ratio))
                    print(f"{name:9} c={clients:<3} {variant:16} direct {direct:8.1f} tps  "
                          f"dpproxy {via:8.1f} tps  ratio {ratio:5.2f}", flush=True)  # fmt: skip
    print("\n| script | clients | audit/logs | direct tps | dpproxy tps | ratio |")
    print("|---|---|---|---|---|---|")
    for name, clients, variant, direct, via, ratio in rows:
        print(f"| {name} | {clients} | {variant} | {direct:.0f} | {via:.0f} | {ratio:.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
