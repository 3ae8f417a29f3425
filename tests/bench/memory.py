"""Memory benchmark: dpproxy's resident memory with 32 concurrent connections.

Run: .venv/bin/python -m tests.bench.memory
Prints VmRSS of the proxy process idle, then while 32 connections each run DP and
catalog queries. Figures only: nothing is asserted.
"""

from __future__ import annotations

import tempfile
import threading
from decimal import Decimal
from pathlib import Path

import psycopg

from proxy.pgcluster import PgCluster
from proxy.provision import AnalystSpec, provision
from tests.support.proxy_process import ProxyProcess, free_port


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Start everything, load 32 clients, print RSS figures."""
    work = Path(tempfile.mkdtemp(prefix="dpproxy-mem-"))
    with PgCluster.start(durable=False) as cluster:
        analyst = AnalystSpec("bench", "bench-pw", Decimal(10**12), Decimal(10**6))
        cfg = provision(cluster.dsn, work, 0.01, [analyst], free_port(), lambda _m: None)
        proxy = ProxyProcess(cfg).start()
        assert proxy.proc is not None
        try:
            print(f"idle: {rss_mb(proxy.proc.pid):.1f} MB")
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
                peak[0] = max(peak[0], rss_mb(proxy.proc.pid))
                threads[0].join(0.05)
            for t in threads:
                t.join()
            print(f"32 connections, peak while busy: {peak[0]:.1f} MB; after: "
                  f"{rss_mb(proxy.proc.pid):.1f} MB")  # fmt: skip
            for c in conns:
                c.close()
        finally:
            proxy.stop()


if __name__ == "__main__":
    main()
