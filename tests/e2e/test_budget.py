"""Budgets through real clients: cache, dp.budget, dp.delta, global budget, zCDP, admin CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from proxy.pgcluster import PgCluster
from tests.e2e.conftest import ANALYSTS, Env
from tests.support.ledgers import dpproxy_cli, fresh_ledger_config, ledger_dsn
from tests.support.proxy_process import ProxyProcess


def connect(proxy: ProxyProcess, user: str, password: str | None = None) -> psycopg.Connection:
    """A psycopg connection through the proxy, collecting NOTICEs in conn.notices."""
    pw = password if password is not None else ANALYSTS[user].password
    conn = psycopg.connect(proxy.dsn(user, pw), autocommit=True)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.notices = notices  # type: ignore[attr-defined]
    return conn


def charges(config: Path, analyst: str) -> list[tuple[str, Decimal]]:
    """(fingerprint, epsilon) of every charge of an analyst, from the ledger itself."""
    with psycopg.connect(ledger_dsn(config)) as c:
        return c.execute(
            "SELECT fingerprint, epsilon FROM dpproxy.charges WHERE analyst = %s ORDER BY id",
            (analyst,),
        ).fetchall()


@pytest.fixture(scope="module")
def budget_proxy(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> Iterator[tuple[ProxyProcess, Path]]:
    """A proxy with its own ledger and a global budget of 30 over all analysts."""
    cfg = fresh_ledger_config(pg_cluster, env.config, "budget", unique_name,
                              privacy={"global_budget_epsilon": "30"})  # fmt: skip
    p = ProxyProcess(cfg).start()
    yield p, cfg
    p.stop()


def test_cache_hit_is_free_identical_and_durable(
    budget_proxy: tuple[ProxyProcess, Path], env: Env
) -> None:
    proxy, cfg = budget_proxy
    q = "SELECT o_orderstatus, COUNT(*), AVG(o_totalprice) FROM orders GROUP BY o_orderstatus"
    with connect(proxy, "carol") as conn:
        conn.execute("SET dp.epsilon = 0.5")
        first = conn.execute(q).fetchall()
        assert "new answer" in conn.notices[-1] and "epsilon 0.5 spent" in conn.notices[-1]  # type: ignore[attr-defined]
        spent = conn.execute("SELECT spent_epsilon FROM dp.budget").fetchone()
        again = conn.execute(q).fetchall()
        assert "cache hit" in conn.notices[-1] and "epsilon 0 spent" in conn.notices[-1]  # type: ignore[attr-defined]
        assert again == first
        assert conn.execute("SELECT spent_epsilon FROM dp.budget").fetchone() == spent
        # Bound parameters are part of the canonical query: the same values hit.
        p1 = conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > %s", (1000,)).fetchall()
        p2 = conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > %s", (1000,)).fetchall()
        assert p1 == p2 and "cache hit" in conn.notices[-1]  # type: ignore[attr-defined]
        # An equivalent query written differently is a new query, charged again.
        conn.execute(q.replace("GROUP BY o_orderstatus", "GROUP BY 1")).fetchall()
        assert "new answer" in conn.notices[-1]  # type: ignore[attr-defined]
        # Another epsilon is another query.
        conn.execute("SET dp.epsilon = 0.25")
        conn.execute(q).fetchall()
        assert "new answer" in conn.notices[-1]  # type: ignore[attr-defined]
    assert len(charges(cfg, "carol")) == 4
    # Durable: a restarted proxy (and so any replica) serves the same answer for free.
    second = ProxyProcess(cfg).start()
    try:
        with connect(second, "carol") as conn:
            conn.execute("SET dp.epsilon = 0.5")
            assert conn.execute(q).fetchall() == first
            assert "cache hit" in conn.notices[-1]  # type: ignore[attr-defined]
            # A statement planned from a template keeps its fingerprint across processes.
            again_p = conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > %s", (1000,)).fetchall()
            assert again_p == p1 and "cache hit" in conn.notices[-1]  # type: ignore[attr-defined]
    finally:
        second.stop()
    # Answers are per analyst unless cache.shared: dave pays for the same query.
    with connect(proxy, "dave") as conn:
        conn.execute("SET dp.epsilon = 0.5")
        conn.execute(q).fetchall()
        assert "new answer" in conn.notices[-1]  # type: ignore[attr-defined]
    # `dpproxy cache clear`: repeats are charged again.
    out = dpproxy_cli("cache", "clear", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    with connect(proxy, "carol") as conn:
        conn.execute("SET dp.epsilon = 0.5")
        conn.execute(q).fetchall()
        assert "new answer" in conn.notices[-1]  # type: ignore[attr-defined]
    assert len(charges(cfg, "carol")) == 5


def test_an_answer_relative_to_the_clock_is_never_served_from_the_cache(
    budget_proxy: tuple[ProxyProcess, Path],
) -> None:
    proxy, cfg = budget_proxy
    # Metabase's relative filter; BI tools' TO_TIMESTAMP literal with it.
    q = ("SELECT COUNT(*) FROM orders WHERE o_orderdate >= CAST((CAST(now() AS timestamp) + "
         "(INTERVAL '-40 year')) AS date) AND o_orderdate < TO_TIMESTAMP('2000-01-01 00:00:00.000000', "
         "'YYYY-MM-DD HH24:MI:SS.US')")  # fmt: skip
    before = len(charges(cfg, "dave"))
    with connect(proxy, "dave") as conn:
        conn.execute("SET dp.epsilon = 0.1")
        for _ in range(2):
            (n,) = conn.execute(q).fetchone()  # type: ignore[misc]
            assert isinstance(n, int)
            assert "new answer" in conn.notices[-1] and "cached for repeats" not in conn.notices[-1]  # type: ignore[attr-defined]
        with pytest.raises(psycopg.Error) as bad:
            conn.execute("SELECT COUNT(*) FROM orders WHERE o_orderdate < TO_DATE('1995-13-01', 'YYYY-MM-DD')")
        assert bad.value.sqlstate == "22007"
    assert len(charges(cfg, "dave")) == before + 2  # each run is a new release; the bad literal costs nothing


def test_dp_budget_in_sql_and_dp_delta(budget_proxy: tuple[ProxyProcess, Path]) -> None:
    proxy, _cfg = budget_proxy
    with connect(proxy, "bob") as conn:
        row = conn.execute("SHOW dp.budget").fetchone()
        assert row is not None and row[0] == "tpch" and row[1] == 3
        cur = conn.execute("SELECT * FROM dp.budget")
        assert [d.name for d in cur.description][:4] == [
            "dataset", "budget_epsilon", "spent_epsilon", "remaining_epsilon"]  # fmt: skip
        assert conn.execute("SELECT remaining_epsilon, accountant FROM dp.budget").fetchone() == (
            Decimal(3) - row[2], "pure")  # fmt: skip
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT * FROM dp.budget WHERE dataset = 'x'")
        assert info.value.sqlstate == "0A000"
        assert conn.execute("SHOW dp.delta").fetchone() == ("1E-7",)
        conn.execute("SET dp.delta = 1e-9")
        assert conn.execute("SHOW dp.delta").fetchone() == ("1E-9",)
        for bad in ("1", "-0.1", "'nan'", "abc"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SET dp.delta = {bad}")
            assert info.value.sqlstate == "22023"
        conn.execute("SET dp.epsilon = 1")
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 7").fetchall()
        after = conn.execute("SHOW dp.budget").fetchone()
        assert after is not None and after[2] == row[2] + 1 and after[3] == row[3] - 1


def test_global_budget_limits_all_analysts_together(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg = fresh_ledger_config(pg_cluster, env.config, "global", unique_name,
                              privacy={"global_budget_epsilon": "2"})  # fmt: skip
    proxy = ProxyProcess(cfg).start()
    try:
        with connect(proxy, "carol") as c1, connect(proxy, "dave") as c2:
            c1.execute("SET dp.epsilon = 1")
            c2.execute("SET dp.epsilon = 1")
            c1.execute("SELECT COUNT(*) FROM orders").fetchall()
            c2.execute("SELECT COUNT(*) FROM customer").fetchall()
            with pytest.raises(psycopg.Error) as info:
                c1.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 7").fetchall()
            assert info.value.sqlstate == "53Z01"
            assert "global privacy budget" in (info.value.diag.message_primary or "")
            # A cached answer is still free (it releases nothing new).
            c1.execute("SELECT COUNT(*) FROM orders").fetchall()
        out = dpproxy_cli("dataset", "show", "--json", "--config", str(cfg))
        assert out.returncode == 0, out.stderr
        (ds,) = json.loads(out.stdout)
        assert ds["global_spent_epsilon"] == "2" and ds["global_remaining_epsilon"] == "0"
    finally:
        proxy.stop()


def test_zcdp_dataset_charges_rho_and_reports_epsilon(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    cfg = fresh_ledger_config(pg_cluster, env.config, "zcdp", unique_name,
                              privacy={"accountant": "zcdp", "accounting_delta": "1e-7"})  # fmt: skip
    proxy = ProxyProcess(cfg).start()
    try:
        with connect(proxy, "carol") as conn:
            conn.execute("SET dp.epsilon = 1")
            for i in range(10):
                conn.execute(f"SELECT COUNT(*) FROM orders WHERE o_totalprice > {i}").fetchall()
                assert "rho" in conn.notices[-1]  # type: ignore[attr-defined]
            budget, spent, remaining, acc = conn.execute(
                "SELECT budget_epsilon, spent_epsilon, remaining_epsilon, accountant FROM dp.budget"
            ).fetchone()  # type: ignore[misc]
        assert acc == "zcdp"
        # Ten queries at epsilon 1 (delta 1e-7) compose to far less than 10 under zCDP.
        assert 1 < spent < 5 and remaining == budget - spent
        with psycopg.connect(ledger_dsn(cfg)) as c:
            rows = c.execute("SELECT epsilon, rho, mechanisms FROM dpproxy.charges").fetchall()
        assert len(rows) == 10 and all(r[0] == 0 and r[1] > 0 for r in rows)
        assert all(m["mechanism"] == "discrete_gaussian" for r in rows for m in r[2])
    finally:
        proxy.stop()
    # The ledger refuses to switch this dataset to another accountant after charges.
    text = cfg.read_text().replace("accountant: zcdp", "accountant: pure")
    bad = cfg.with_name("dpproxy-zcdp-switched.yaml")
    bad.write_text(text)
    out = dpproxy_cli("dataset", "show", "--config", str(bad))
    assert out.returncode == 2 and "cannot switch" in out.stderr


def test_admin_cli_changes_apply_to_a_running_proxy(
    budget_proxy: tuple[ProxyProcess, Path]
) -> None:
    proxy, cfg = budget_proxy
    c = str(cfg)
    out = dpproxy_cli("analyst", "add", "frank", "--budget-epsilon", "2",
                      "--max-epsilon-per-query", "1", "--config", c, stdin="frank-pw\n")  # fmt: skip
    assert out.returncode == 0, out.stderr
    again = dpproxy_cli("analyst", "add", "frank", "--budget-epsilon", "2", "--config", c,
                        stdin="x\n")  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr
    # No restart: the running proxy knows frank at once.
    with connect(proxy, "frank", "frank-pw") as conn:
        conn.execute("SET dp.epsilon = 1")
        conn.execute("SELECT COUNT(*) FROM orders").fetchall()
        conn.execute("SELECT COUNT(*) FROM customer").fetchall()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 7").fetchall()
        assert info.value.sqlstate == "53Z01"
        assert dpproxy_cli("analyst", "set-budget", "frank", "--epsilon", "3", "--config",
                           c).returncode == 0  # fmt: skip
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 7").fetchall()
        assert conn.execute("SELECT remaining_epsilon FROM dp.budget").fetchone() == (0,)
    listing = dpproxy_cli("analyst", "list", "--config", c)
    assert listing.returncode == 0 and "frank" in listing.stdout and "budget_eps" in listing.stdout
    shown = dpproxy_cli("analyst", "show", "frank", "--json", "--config", c)
    assert json.loads(shown.stdout)[0]["spent_epsilon"] == "3"
    log = dpproxy_cli("ledger", "show", "--analyst", "frank", "--json", "--config", c)
    entries = json.loads(log.stdout)
    assert [e["epsilon"] for e in entries] == ["1", "1", "1"]
    assert all("result" not in json.dumps(e) for e in entries)
    assert "frank" in dpproxy_cli("ledger", "show", "--since", "2000-01-01", "--config", c).stdout
    bad = dpproxy_cli("ledger", "show", "--since", "yesterday", "--config", c)
    assert bad.returncode == 2 and "--since" in bad.stderr
    # passwd, then disable: the old password fails, then the analyst cannot log in at all.
    assert dpproxy_cli("analyst", "passwd", "frank", "--config", c, stdin="new-pw\n").returncode == 0
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, "frank", "frank-pw")
    connect(proxy, "frank", "new-pw").close()
    assert dpproxy_cli("analyst", "disable", "frank", "--config", c).returncode == 0
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, "frank", "new-pw")
    missing = dpproxy_cli("analyst", "set-budget", "nobody", "--epsilon", "1", "--config", c)
    assert missing.returncode == 2 and 'no analyst "nobody"' in missing.stderr
    # Nothing is ever deleted: the charge log refuses deletes even from the ledger owner.
    with psycopg.connect(ledger_dsn(cfg)) as conn, pytest.raises(psycopg.Error):
        conn.execute("DELETE FROM dpproxy.charges")


def test_the_first_answer_stored_is_the_one_repeats_get(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> None:
    # Two identical queries answered at the same moment both write their answer after
    # replying; the cache keeps the first, so every later repeat sees one answer.
    from accounting.cache import CachedAnswer
    from proxy.admin import open_ledger
    from proxy.config import load_config

    cfg = load_config(fresh_ledger_config(pg_cluster, env.config, "first_stored", unique_name))
    assert cfg.metadata is not None
    dataset = cfg.metadata.dataset

    async def race() -> tuple[bool, bool, CachedAnswer | None]:
        ledger, cache = await open_ledger(cfg)
        assert cache is not None
        try:
            first = CachedAnswer([("count", "int8")], [(101,)], "COUNT(*) ±5")
            second = CachedAnswer([("count", "int8")], [(97,)], "COUNT(*) ±5")
            a = await cache.put("k", dataset, None, "fp", first)
            b = await cache.put("k", dataset, None, "fp", second)
            return a, b, await cache.get("k")
        finally:
            await ledger.close()

    stored_first, stored_second, got = asyncio.run(race())
    assert (stored_first, stored_second) == (True, False)
    assert got is not None and got.rows == [(101,)]
