"""Memory benchmark: dpproxy's resident memory with 32 concurrent connections.

Run: .venv/bin/python -m tests.bench.memory [--workers N]
Prints VmRSS of dpproxy idle, then while 32 connections each run DP and catalog
queries: of the process, or with `listen.workers` > 1 of the parent and every worker
together. Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import yaml

from proxy.pgcluster import PgCluster
from proxy.provision import AnalystSpec, provision
from tests.support.proxy_process import ProxyProcess, free_port


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def total_rss_mb(pid: int) -> float:
    """RSS of a process and its children (dpproxy's workers), in MB."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return rss_mb(pid) + sum(rss_mb(int(k)) for k in kids)


def main() -> None:
    """Start everything, load 32 clients, print RSS figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=1, help="dpproxy's listen.workers")
    args = ap.parse_args()
    # (the config, keys and logs are removed with the cluster's data at the end)
    with tempfile.TemporaryDirectory(prefix="dpproxy-mem-") as tmp, PgCluster.start(durable=False) as cluster:
        work = Path(tmp)
        analyst = AnalystSpec("bench", "bench-pw", Decimal(10**12), Decimal(10**6))
        cfg = provision(cluster.dsn, work, 0.01, [analyst], free_port(), lambda _m: None)
        settings = yaml.safe_load(cfg.read_text())
        settings["listen"]["workers"] = args.workers
        cfg.write_text(yaml.safe_dump(settings))
        proxy = ProxyProcess(cfg).start()
        assert proxy.proc is not None
        try:
            time.sleep(2)  # (workers start after the parent accepts)
            print(f"{args.workers} worker(s); idle: {total_rss_mb(proxy.proc.pid):.1f} MB")
            peak = [0.0]
            conns = [psycopg.connect(proxy.dsn("bench", "bench-pw"), autocommit=True) for _ in range(32)]

            def work_on(i: int, c: psycopg.Connection) -> None:
                for j in range(20):
                    c.execute(f"SELECT o_orderpriority, COUNT(*), AVG(o_totalprice) FROM orders "
                              f"WHERE o_totalprice > {i * 100 + j} GROUP BY 1").fetchall()  # fmt: skip
                    c.execute("SELECT relname FROM pg_class LIMIT 50").fetchall()

            threads = [threading.Thread(target=work_on, args=(i, c)) for i, c in enumerate(conns)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak[0] = max(peak[0], total_rss_mb(proxy.proc.pid))
                threads[0].join(0.05)
            for t in threads:
                t.join()
            print(f"32 connections, peak while busy: {peak[0]:.1f} MB; after: "
                  f"{total_rss_mb(proxy.proc.pid):.1f} MB")  # fmt: skip
            for c in conns:
                c.close()
        finally:
            proxy.stop()


if __name__ == "__main__":
    main()
