"""Resource limits, idle timeouts and the reply-time quantum, on a dedicated proxy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import ProxyProcess

QUANTUM_MS = 250


@pytest.fixture(scope="module")
def limited(env: Env) -> Iterator[ProxyProcess]:
    cfg = yaml.safe_load(env.config.read_text())
    cfg["backend"]["statement_timeout_ms"] = 800
    cfg["limits"] = {
        "max_connections_per_analyst": 2,
        "idle_session_timeout_s": 1.5,
        "idle_in_transaction_timeout_s": 1.0,
        "reply_quantum_ms": QUANTUM_MS,
    }
    path = Path(env.workdir) / "limited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = ProxyProcess(path).start()
    yield p
    p.stop()


def connect(p: ProxyProcess, user: str = "carol") -> psycopg.Connection:
    return psycopg.connect(p.dsn(user, ANALYSTS[user].password), autocommit=True)


def test_connections_per_analyst(limited: ProxyProcess) -> None:
    a, b = connect(limited), connect(limited)
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            connect(limited)
        assert 'too many connections for role "carol"' in str(info.value)
        # Another analyst is not affected, and a slot frees when a session ends.
        connect(limited, "dave").close()
        a.close()
        connect(limited).close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("opener", "wait", "message"),
    [("SELECT 1", 2.0, "idle-session timeout"), ("BEGIN", 1.4, "idle-in-transaction timeout")],
)
def test_idle_timeouts(limited: ProxyProcess, opener: str, wait: float, message: str) -> None:
    # Idle 1.5 s allowed outside a transaction block, 1.0 s inside one.
    with connect(limited, "dave") as conn:
        conn.execute(opener)
        time.sleep(wait)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT 1")
        assert message in str(info.value)


def test_reply_quantum_hides_success_error_and_refusal_times(limited: ProxyProcess) -> None:
    queries = [
        "SELECT COUNT(*) FROM orders WHERE o_totalprice > 1000",  # answered
        "SELECT COUNT(*) FROM orders WHERE o_orderdate > 'not-a-date'",  # refused: bad literal
        "SELECT MAX(o_comment) FROM orders",  # refused by the rewriter
    ]
    times: list[float] = []
    with connect(limited, "dave") as conn:
        conn.execute("SET dp.epsilon = 0.01")
        for i in range(4):
            for q in queries:
                t0 = time.monotonic()
                try:
                    conn.execute(f"{q} AND {i} = {i}" if "WHERE" in q else q)
                except psycopg.Error:
                    pass
                times.append(time.monotonic() - t0)
    quantum = QUANTUM_MS / 1000
    # Every reply lands one quantum after the query, whatever happened; the slack covers
    # scheduling on a loaded 2-core machine (a query longer than the quantum would land
    # on 2x, which these small queries never approach).
    assert all(quantum <= t < quantum * 1.8 for t in times), times


def test_backend_failure_gets_the_fixed_message_and_keeps_the_charge(
    limited: ProxyProcess, env: Env
) -> None:
    # Hold a lock on orders so the DP query hits the backend statement timeout: the
    # analyst sees one fixed message (never PostgreSQL's text) and the charge stays.
    with psycopg.connect(env.tpch_dsn) as locker, connect(limited, "dave") as conn:
        locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        before = conn.execute("SHOW dp.budget").fetchone()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT COUNT(*) FROM orders WHERE o_totalprice > 7.25")
        locker.rollback()
        after = conn.execute("SHOW dp.budget").fetchone()
    assert info.value.sqlstate == "XX000"
    assert "withheld" in str(info.value) and "statement timeout" not in str(info.value)
    assert before is not None and after is not None and after[2] > before[2]
