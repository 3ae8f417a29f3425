"""pgjdbc 42.7 through dpproxy: a PreparedStatement executed 6 times (pgjdbc switches to
a named statement and binary results from the 5th), setFetchSize with autocommit off,
setQueryTimeout cancel, preferQueryMode=simple, an array parameter, and getTables' TABLE_CAT
agreeing with getCatalog(). Driven by a small Java program
compiled in the test."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import ANALYSTS, Env, truth
from tests.support.ops import wait_lock_waiters
from tests.support.proxy_process import ProxyProcess

JAVA, JAVAC = shutil.which("java"), shutil.which("javac")
JARS = sorted(Path.home().glob(".m2/repository/org/postgresql/postgresql/42.7.*/postgresql-42.7.*.jar")) + sorted(
    Path("/usr/share/java").glob("postgresql*.jar"))  # fmt: skip
pytestmark = [
    pytest.mark.skipif(JAVA is None or JAVAC is None, reason="java/javac (JDK 17) is not installed"),
    pytest.mark.skipif(not JARS, reason="no pgjdbc jar in ~/.m2 or /usr/share/java (libpostgresql-jdbc-java)"),
    pytest.mark.slow,
]

PROGRAM = r"""
import java.sql.*;
import java.util.Properties;

public class Probe {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", a[1]);
        p.setProperty("password", a[2]);
        String mode = a[3];
        try (Connection c = DriverManager.getConnection(a[0], p)) {
            if (mode.equals("prepared")) {
                PreparedStatement ps = c.prepareStatement(
                    "SELECT COUNT(*), SUM(o_totalprice) FROM orders WHERE o_totalprice > ?");
                c.createStatement().execute("SET dp.epsilon = 400");
                for (int i = 0; i < 6; i++) {
                    ps.setInt(1, 100000 + 50000 * i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        ResultSetMetaData md = rs.getMetaData();
                        System.out.println("row " + rs.getLong(1) + " " + rs.getBigDecimal(2) + " "
                            + md.getColumnTypeName(1) + " " + md.getColumnTypeName(2));
                    }
                }
            } else if (mode.equals("fetch")) {
                c.setAutoCommit(false);
                Statement st = c.createStatement();
                st.setFetchSize(2);
                try (ResultSet rs = st.executeQuery(
                        "SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority ORDER BY 1")) {
                    while (rs.next()) System.out.println("key " + rs.getString(1));
                }
                c.commit();
            } else if (mode.equals("timeout")) {
                Statement st = c.createStatement();
                st.setQueryTimeout(1);
                try {
                    st.executeQuery("SELECT COUNT(*) FROM orders WHERE o_totalprice > 19");
                    System.out.println("no timeout");
                } catch (SQLException e) {
                    System.out.println("sqlstate " + e.getSQLState());
                }
                try (ResultSet rs = c.createStatement().executeQuery("SHOW dp.epsilon")) {
                    rs.next();
                    System.out.println("after " + rs.getString(1));
                }
            } else if (mode.equals("arrays")) {
                c.createStatement().execute("SET dp.epsilon = 400");
                PreparedStatement ps = c.prepareStatement(
                    "SELECT COUNT(*) FROM orders WHERE o_orderstatus = ANY(?)");
                ps.setArray(1, c.createArrayOf("text", new String[] {"F", "P"}));
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    System.out.println("any " + rs.getLong(1));
                }
                System.out.println("catalog " + c.getCatalog());
                try (ResultSet rs = c.getMetaData().getTables(null, "public", "orders", null)) {
                    rs.next();
                    System.out.println("tablecat " + rs.getString("TABLE_CAT"));
                }
            } else {
                PreparedStatement ps = c.prepareStatement(
                    "SELECT COUNT(*) FROM orders WHERE o_orderpriority = ?");
                ps.setString(1, "2-HIGH");
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    System.out.println("simple " + rs.getLong(1));
                }
            }
        }
    }
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled Java probe (its directory)."""
    d = tmp_path_factory.mktemp("jdbc")
    (d / "Probe.java").write_text(PROGRAM)
    assert JAVAC is not None
    subprocess.run([JAVAC, "-cp", str(JARS[-1]), "-d", str(d), str(d / "Probe.java")], check=True, timeout=120)
    return d


def run_probe(probe: Path, proxy: ProxyProcess, mode: str, query: str = "") -> list[str]:
    """Run the probe in one mode; its output lines."""
    assert JAVA is not None
    url = f"jdbc:postgresql://127.0.0.1:{proxy.port}/tpch?sslmode=disable{query}"
    out = subprocess.run([JAVA, "-cp", f"{probe}:{JARS[-1]}", "Probe", url, "alice", ANALYSTS["alice"].password, mode],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_prepared_statement_six_times(probe: Path, proxy: ProxyProcess, env: Env) -> None:
    lines = run_probe(probe, proxy, "prepared")
    assert len(lines) == 6
    for i, line in enumerate(lines):
        _, count, _, t1, t2 = line.split()
        bounded = truth(env.tpch_dsn, f"""SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n FROM orders
            WHERE o_totalprice > {100000 + 50000 * i} GROUP BY o_custkey) c""")[0][0]
        # Epsilon 400, split over at most two primitives: each count has discrete Laplace noise
        # of scale 8/200, which is non-zero with probability 2e^-25/(1+e^-25) < 3e-11 (< 1e-6).
        assert int(count) == bounded
        assert (t1, t2) == ("int8", "numeric")


def test_array_parameter_and_the_catalog_of_table_lists(probe: Path, proxy: ProxyProcess, env: Env) -> None:
    lines = run_probe(probe, proxy, "arrays")
    bounded = truth(env.tpch_dsn, """SELECT sum(least(n, 8)) FROM (SELECT count(*) AS n FROM orders
        WHERE o_orderstatus IN ('F', 'P') GROUP BY o_custkey) c""")[0][0]
    # Epsilon 400: the count is exact but with probability < 3e-11 (as above).
    assert lines == [f"any {bounded}", "catalog tpch", "tablecat tpch"]


def test_fetch_size_with_autocommit_off(probe: Path, proxy: ProxyProcess) -> None:
    lines = run_probe(probe, proxy, "fetch")
    assert [ln.split(" ", 1)[1] for ln in lines] == ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]


def test_prefer_query_mode_simple(probe: Path, proxy: ProxyProcess) -> None:
    lines = run_probe(probe, proxy, "simple", "&preferQueryMode=simple")
    assert len(lines) == 1 and int(lines[0].split()[1]) > 100


def test_query_timeout_cancels(probe: Path, proxy: ProxyProcess, env: Env) -> None:
    with psycopg.connect(env.tpch_dsn) as lock:
        lock.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        result: list[list[str]] = []
        t = threading.Thread(target=lambda: result.append(run_probe(probe, proxy, "timeout")))
        t.start()
        assert wait_lock_waiters(env.tpch_dsn, True), "the DP query never reached the backend"
        t.join(60)
        lock.rollback()
    assert result and result[0] == ["sqlstate 57014", "after 1.0"]
