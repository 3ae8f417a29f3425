"""Benchmark: ledger charges per second, with and without group commit.

    python -m tests.bench.ledger [--charges 2000] [--concurrency 50] [--window-us 0,300,1000]

Starts a throwaway PostgreSQL with fsync ON (commit cost is what group commit saves),
then, in the same run, measures:

- direct: each of C concurrent tasks commits one one-row INSERT per charge on its own
  connection (what PostgreSQL itself does for one commit per charge; the reference);
- ledger without group commit: each charge is its own locked check-and-debit
  transaction (the dataset row lock serializes them);
- ledger with group commit: concurrent charges share transactions, for each window;
- one client alone at each window: what the window adds to one charge's latency.

It prints charges/second and ratios against the direct figure. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from decimal import Decimal
from fractions import Fraction

import asyncpg

from accounting.accountant import Accountant, AccountantKind, laplace_release
from accounting.budget import AnalystBudget, DatasetPolicy, sync_config, sync_dataset
from accounting.ledger import GroupCommit, Ledger
from proxy.pgcluster import PgCluster

VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"


async def _direct(dsn: str, charges: int, concurrency: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    await pool.execute("CREATE TABLE IF NOT EXISTS bench_direct (id bigserial, eps numeric)")
    per = charges // concurrency

    async def worker() -> None:
        async with pool.acquire() as conn:
            for _ in range(per):
                await conn.execute("INSERT INTO bench_direct (eps) VALUES (0.001)")

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    dt = time.perf_counter() - t
    await pool.close()
    return per * concurrency / dt


async def _ledger(dsn: str, charges: int, concurrency: int, group: bool, tag: str,
                  window_us: int = 0) -> tuple[float, float]:  # fmt: skip
    """(charges per second, median seconds per charge) of one configuration."""
    ledger = await Ledger.connect(
        dsn, size=concurrency if not group else 4,
        accountant=Accountant(AccountantKind.PURE),
        group=GroupCommit(enabled=group, window_us=window_us, max_batch=256),
    )  # fmt: skip
    async with ledger.pool.acquire() as conn:
        await sync_dataset(conn, DatasetPolicy("bench", AccountantKind.PURE, Decimal("1e-7")))
        await sync_config(conn, "bench", [
            AnalystBudget(f"{tag}{i}", VERIFIER, Decimal(10**9)) for i in range(concurrency)])  # fmt: skip
    cost = laplace_release(Fraction(1, 1000))
    per = charges // concurrency

    latencies: list[float] = []

    async def worker(i: int) -> None:
        for j in range(per):
            t0 = time.perf_counter()
            await ledger.charge(f"{tag}{i}", "bench", f"q{j}", cost)
            latencies.append(time.perf_counter() - t0)

    t = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    dt = time.perf_counter() - t
    n = await ledger.pool.fetchval("SELECT count(*) FROM dpproxy.charges WHERE analyst LIKE $1",
                                   f"{tag}%")  # fmt: skip
    assert n == per * concurrency, n
    await ledger.close()
    return per * concurrency / dt, statistics.median(latencies)


async def _main(charges: int, concurrency: int, windows: list[int]) -> None:
    with PgCluster.start(durable=True) as cluster:
        dsn = cluster.dsn()
        direct = await _direct(dsn, charges, concurrency)
        plain, plain_lat = await _ledger(dsn, charges, concurrency, group=False, tag="plain")
        grouped = [(w, *await _ledger(dsn, charges, concurrency, group=True, tag=f"group{w}_",
                                      window_us=w)) for w in windows]  # fmt: skip
        # One client alone: what the window adds to a single charge's latency.
        alone = [(w, *await _ledger(dsn, 200, 1, group=True, tag=f"alone{w}_", window_us=w))
                 for w in windows]  # fmt: skip
    print(f"{charges} charges, {concurrency} concurrent clients, fsync on")
    print(f"  direct PostgreSQL (one INSERT + COMMIT each): {direct:8.0f} commits/s  (1.00x)")
    print(f"  ledger, one transaction per charge:           {plain:8.0f} charges/s  ({plain / direct:.2f}x)"
          f"  p50 {plain_lat * 1000:.1f} ms")  # fmt: skip
    for w, tps, lat in grouped:
        print(f"  ledger, group commit, window {w:>5} us:      {tps:8.0f} charges/s  ({tps / direct:.2f}x)"
              f"  p50 {lat * 1000:.1f} ms  ({tps / plain:.1f}x one transaction per charge)")  # fmt: skip
    print("one client alone (latency of a single charge):")
    for w, _, lat in alone:
        print(f"  window {w:>5} us: p50 {lat * 1000:.2f} ms")


def main() -> None:
    """Run the benchmark and print its figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--charges", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--window-us", default="0,300,1000", help="group-commit windows to compare")
    a = p.parse_args()
    asyncio.run(_main(a.charges, a.concurrency, [int(w) for w in a.window_us.split(",")]))


if __name__ == "__main__":
    main()
