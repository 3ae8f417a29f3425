"""node-postgres (`pg` from npm) through dpproxy: simple, parameterised (unnamed, text,
no parameter types) and named queries. Installed into a temporary directory."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ANALYSTS
from tests.support.proxy_process import ProxyProcess

NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = [
    pytest.mark.skipif(NODE is None or NPM is None, reason="node and npm are not installed"),
    pytest.mark.slow,
]

SCRIPT = r"""
const { Client } = require('pg');
(async () => {
  const [port, user, password] = process.argv.slice(2);
  const c = new Client({ host: '127.0.0.1', port: +port, user, password, database: 'tpch',
                         application_name: 'node-test' });
  const notices = [];
  c.on('notice', (n) => notices.push(n.message));
  await c.connect();
  const out = {};
  out.simple = (await c.query(
    'SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority ORDER BY 1')).rows;
  out.param = (await c.query('SELECT COUNT(*) AS n FROM orders WHERE o_orderpriority = $1', ['2-HIGH'])).rows;
  out.named1 = (await c.query({ name: 'q1', text: 'SELECT SUM(o_totalprice) AS s FROM orders WHERE o_orderstatus = $1',
                                values: ['F'] })).rows;
  out.named2 = (await c.query({ name: 'q1', text: 'SELECT SUM(o_totalprice) AS s FROM orders WHERE o_orderstatus = $1',
                                values: ['O'] })).rows;
  out.array = (await c.query({ text: 'SHOW dp.epsilon', rowMode: 'array' })).rows;
  // A JavaScript array: node-postgres sends it as a text array literal with no type.
  out.any = (await c.query('SELECT COUNT(*) AS n FROM orders WHERE o_orderstatus = ANY($1)',
                           [['F', 'O', 'P']])).rows;
  out.none = (await c.query('SELECT COUNT(*) AS n FROM orders WHERE o_orderstatus = ANY($1)', [[]])).rows;
  try { await c.query('SELECT * FROM orders'); } catch (e) { out.refused = e.code; }
  out.after = (await c.query('SHOW application_name')).rows;
  out.notices = notices.length;
  await c.end();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with `pg` installed from npm (skips if the registry is unreachable)."""
    d = tmp_path_factory.mktemp("node")
    assert NPM is not None
    out = subprocess.run([NPM, "install", "--no-audit", "--no-fund", "--silent", "pg@8"], cwd=d,
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"npm install pg failed (registry unreachable?): {out.stderr.strip()[:200]}")
    (d / "probe.js").write_text(SCRIPT)
    return d


def test_node_postgres(node_dir: Path, proxy: ProxyProcess) -> None:
    assert NODE is not None
    out = subprocess.run([NODE, "probe.js", str(proxy.port), "alice", ANALYSTS["alice"].password],
                         cwd=node_dir, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [r["o_orderpriority"] for r in got["simple"]] == ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED",
                                                              "5-LOW"]  # fmt: skip
    assert int(got["param"][0]["n"]) > 100  # int8 arrives as a string in node-postgres
    assert float(got["named1"][0]["s"]) > 0 and float(got["named2"][0]["s"]) > 0
    assert got["array"] == [["1.0"]]
    assert got["refused"] == "42501"
    assert got["after"] == [{"application_name": "node-test"}]
    # An empty list counts nothing: a noisy 0 (epsilon 1, scale 8: |noise| >= 150 with
    # probability e^(-150/8) < 1e-8).
    assert int(got["any"][0]["n"]) > 1000 and abs(int(got["none"][0]["n"])) < 150
    assert got["notices"] == 6  # one cost notice per DP query
