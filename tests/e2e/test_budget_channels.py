"""Budget channels: the cost and the refusal decision never depend on the data.

The same queries go through two proxies that share everything but the data database:
one reads the real TPC-H rows, the other an empty copy of the schema (the catalog
mirror). Costs (from the NOTICE) and refusals (SQLSTATE) must be identical.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import ProxyProcess

QUERIES = [
    "SELECT COUNT(*) FROM orders",
    "SELECT o_orderstatus, COUNT(*), AVG(o_totalprice) FROM orders GROUP BY o_orderstatus",
    "SELECT SUM(c_acctbal) FROM customer WHERE c_mktsegment = 'BUILDING'",
    "SELECT COUNT(*) FROM orders WHERE o_totalprice > 1e9",
    "SELECT c_mktsegment, SUM(c_acctbal) FROM customer GROUP BY 1 HAVING SUM(c_acctbal) > 0",
    "SELECT * FROM orders",
    "SELECT o_custkey, COUNT(*) FROM orders GROUP BY 1",
    "SELECT COUNT(*) FROM orders WHERE o_orderdate > 'not-a-date'",
]


@pytest.fixture(scope="module")
def empty_data_proxy(env: Env) -> Iterator[ProxyProcess]:
    cfg = yaml.safe_load(env.config.read_text())
    cfg["backend"]["dsn"] = cfg["backend"]["catalog_dsn"]  # same schema, no rows
    path = Path(env.workdir) / "empty-data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = ProxyProcess(path).start()
    yield p
    p.stop()


def outcome(p: ProxyProcess, user: str, query: str) -> tuple[str, str]:
    notices: list[str] = []
    with psycopg.connect(p.dsn(user, ANALYSTS[user].password), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET dp.epsilon = 0.37")
        try:
            conn.execute(query)
            state = "00000"
        except psycopg.Error as e:
            state = e.sqlstate or "?"
    costs = [m.group(1) for n in notices if (m := re.search(r"epsilon ([\d.]+) spent", n))]
    return state, ",".join(costs)


def test_cost_and_refusals_are_data_independent(proxy: ProxyProcess,
                                                 empty_data_proxy: ProxyProcess) -> None:  # fmt: skip
    for q in QUERIES:
        real = outcome(proxy, "carol", q)
        empty = outcome(empty_data_proxy, "dave", q)
        assert real == empty, (q, real, empty)
