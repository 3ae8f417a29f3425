"""Operations (issue #8): /metrics, /health, JSON statement logs, `dpproxy status`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.pgcluster import PgCluster
from tests.e2e.conftest import Env
from tests.support.ledgers import dpproxy_cli
from tests.support.ops import http_get, metrics, ops_config
from tests.support.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def ops_proxy(
    pg_cluster: PgCluster, env: Env, unique_name: Callable[[str], str]
) -> Iterator[tuple[ProxyProcess, int, Path]]:
    """A dpproxy with /metrics and JSON logs, on its own ledger."""
    cfg, port = ops_config(pg_cluster, env.config, "ops", unique_name)
    p = ProxyProcess(cfg).start()
    yield p, port, cfg
    p.stop()


def _sum(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def test_metrics_count_statements_refusals_stages_and_budget(
    ops_proxy: tuple[ProxyProcess, int, Path],
) -> None:
    p, port, _cfg = ops_proxy
    before = metrics(port)
    with psycopg.connect(p.dsn("carol", "carol-pw"), autocommit=True) as conn:
        conn.execute("SET dp.epsilon = 0.5")
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 1234").fetchall()
        conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 1234").fetchall()  # cache hit
        for bad in ("SELECT * FROM orders", "DROP TABLE orders", "SELECT COUNT(*) FROM orders WHERE"):
            with pytest.raises(psycopg.Error):
                conn.execute(bad)
        conn.execute("SELECT 1").fetchall()  # catalog mirror
        during = metrics(port)
    after = metrics(port)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('dpproxy_statements_total{outcome="answered",route="dp"}') == 2
    assert delta('dpproxy_statements_total{outcome="answered",route="session"}') == 1
    assert delta('dpproxy_statements_total{outcome="answered",route="catalog"}') == 1
    assert delta('dpproxy_refusals_total{sqlstate="42501"}') == 2
    assert delta('dpproxy_refusals_total{sqlstate="42601"}') == 1
    assert delta('dpproxy_cache_lookups_total{result="hit"}') == 1
    assert delta('dpproxy_cache_lookups_total{result="miss"}') == 1
    # One new answer: each stage of the DP path was timed once; the hit skipped the charge.
    for stage, n in (("parse_rewrite", 2), ("cache_lookup", 2), ("ledger_charge", 1),
                     ("backend", 1), ("noise", 1), ("encode", 2)):  # fmt: skip
        assert delta(f'dpproxy_stage_duration_seconds_count{{stage="{stage}"}}') == n, stage
    assert delta('dpproxy_epsilon_charged_total{analyst="carol",dataset="tpch"}') == pytest.approx(0.5)
    assert after['dpproxy_budget_spent_epsilon{analyst="carol",dataset="tpch"}'] >= 0.5
    assert during["dpproxy_client_connections"] >= 1
    assert after['dpproxy_backend_pool_connections{pool="data",state="max"}'] >= 1
    assert 0 < after["dpproxy_cache_hit_ratio"] <= 1


def test_health_and_unknown_paths(ops_proxy: tuple[ProxyProcess, int, Path]) -> None:
    _p, port, _cfg = ops_proxy
    code, body = http_get(port, "/health")
    assert code == 200
    assert json.loads(body) == {"status": "ok", "backends": {"data": "ok", "ledger": "ok"}}
    assert http_get(port, "/nope")[0] == 404


def test_status_command_summarizes_a_running_proxy(ops_proxy: tuple[ProxyProcess, int, Path]) -> None:
    p, _port, cfg = ops_proxy
    with psycopg.connect(p.dsn("carol", "carol-pw"), autocommit=True) as conn:
        conn.execute("SELECT COUNT(*) FROM customer").fetchall()
    out = dpproxy_cli("status", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "health:       ok (HTTP 200)" in out.stdout
    assert "answered" in out.stdout and "carol on tpch" in out.stdout


def test_status_reports_an_unreachable_proxy(tmp_path: Path) -> None:
    from tests.support.proxy_process import free_port

    out = dpproxy_cli("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "no proxy answers" in out.stderr


def test_statement_logs_are_json_and_never_hold_private_values(
    ops_proxy: tuple[ProxyProcess, int, Path], env: Env
) -> None:
    p, _port, _cfg = ops_proxy
    # Values known to be in the private tables: names, phones, comments, exact prices.
    with psycopg.connect(env.tpch_dsn) as c:
        secrets = [str(v) for row in c.execute(
            "SELECT c_name, c_phone, c_address, c_comment FROM customer ORDER BY c_custkey LIMIT 20"
        ).fetchall() for v in row]  # fmt: skip
        secrets += [str(r[0]) for r in c.execute(
            "SELECT o_totalprice FROM orders ORDER BY o_orderkey LIMIT 20").fetchall()]  # fmt: skip
        secrets += [str(c.execute("SELECT sum(o_totalprice) FROM orders").fetchone()[0])]  # type: ignore[index]
    released: list[str] = []
    with psycopg.connect(p.dsn("carol", "carol-pw"), autocommit=True) as conn:
        # The analyst's own statements quote private values; refusals and failures too.
        for sql in (
            f"SELECT COUNT(*) FROM customer WHERE c_name = '{secrets[0]}'",
            f"SELECT SUM(o_totalprice) FROM orders WHERE o_totalprice < {secrets[-2]}",
            f"SELECT c_phone FROM customer WHERE c_phone = '{secrets[1]}'",
            "SELECT o_orderpriority, SUM(o_totalprice), AVG(o_totalprice) FROM orders GROUP BY o_orderpriority",
            f"SELECT COUNT(*) FROM orders WHERE o_comment = '{secrets[3]}' AND",
        ):
            try:
                released += [str(v) for row in conn.execute(sql).fetchall() for v in row]  # type: ignore[arg-type]
            except psycopg.Error:
                pass
        # Extended protocol with a parameter holding a private value.
        try:
            conn.execute("SELECT COUNT(*) FROM customer WHERE c_name = %s", (secrets[4],)).fetchall()
        except psycopg.Error:
            pass
    log = p.log.read_text()
    statement_lines = []
    for line in log.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec["logger"] == "dpproxy.statement":
                statement_lines.append(rec)
    assert len(statement_lines) >= 6
    for rec in statement_lines:
        assert set(rec) >= {"analyst", "fingerprint", "route", "decision", "sqlstate", "epsilon",
                            "duration_ms", "stages_ms"}  # fmt: skip
    assert {r["sqlstate"] for r in statement_lines} >= {"00000", "42501", "42601"}
    long_released = [v for v in released if len(v) >= 6]
    assert long_released, "expected some released numbers to look for"
    for value in secrets + long_released:
        assert value not in log, f"a private or released value appears in the log: {value!r}"
