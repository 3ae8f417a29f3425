"""The throwaway cluster: starts, accepts logins, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from proxy.pgcluster import BINDIR_ENV, TEST_DSN_ENV, PgCluster, PgClusterError, find_pg_bindir

REPO_ROOT = Path(__file__).resolve().parents[2]


def _have_binaries() -> bool:
    try:
        find_pg_bindir()
    except PgClusterError:
        return False
    return True


# With DPPROXY_TEST_DSN set the suite may run where no server binaries exist; elsewhere
# a missing server is an error worth seeing, not a skip.
needs_binaries = pytest.mark.skipif(
    bool(os.environ.get(TEST_DSN_ENV)) and not _have_binaries(),
    reason="no PostgreSQL binaries (suite is using DPPROXY_TEST_DSN)",
)


def _alive(pid: int) -> bool:
    """True if the process runs; zombies (not yet reaped by init) count as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@needs_binaries
def test_start_connect_stop_leaves_nothing() -> None:
    cluster = PgCluster.start(durable=False)
    pid, base = cluster.pid, cluster.base_dir
    assert pid is not None and base is not None and base.is_dir()
    with psycopg.connect(cluster.dsn()) as conn:
        row = conn.execute("SELECT current_user, inet_server_port(), current_setting('fsync')").fetchone()
    assert row == (cluster.superuser, cluster.port, "off")
    cluster.stop()
    cluster.stop()  # a second stop is a no-op
    assert not _alive(pid)
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(), connect_timeout=2)


@needs_binaries
def test_context_manager_and_wrong_password() -> None:
    # Not pytest's tmp_path: it is 0700, which the server's OS user (when we are root)
    # could not traverse.
    with tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)
        _check_context_manager(Path(parent))


def _check_context_manager(parent: Path) -> None:
    with PgCluster.start(base_dir=parent, durable=True) as cluster:
        base = cluster.base_dir
        assert base is not None and base.parent == parent
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
        # scram-sha-256 everywhere: a wrong password is refused, even over TCP from localhost.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(password="wrong"), connect_timeout=5)
    assert not base.exists()


def _spawn_holder() -> tuple[subprocess.Popen[str], dict[str, object]]:
    """Run a Python process that starts a cluster and waits; return it and what it reported."""
    # Ctrl-C handled as in a terminal, whatever this run inherited: a shell starting
    # a job in the background (`cmd &`) ignores SIGINT, and children keep that.
    code = (
        "import json, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from proxy.pgcluster import PgCluster\n"
        "c = PgCluster.start(durable=False)\n"
        "print(json.dumps({'pid': c.pid, 'dir': str(c.base_dir), 'dsn': c.dsn()}), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the holder process did not start a cluster"
    return proc, json.loads(line)


@needs_binaries
def test_ctrl_c_leaves_nothing_running() -> None:
    proc, info = _spawn_holder()
    pid, base = int(info["pid"]), Path(str(info["dir"]))  # type: ignore[arg-type]
    assert _alive(pid)
    # What a terminal does on Ctrl-C: SIGINT to the foreground process group.
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    assert _wait_gone(pid)
    assert not base.exists()


@needs_binaries
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_killed_parent_takes_server_down() -> None:
    proc, info = _spawn_holder()
    pid = int(info["pid"])  # type: ignore[arg-type]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # No atexit ran, so the directory stays, but the server must not outlive its owner.
    assert _wait_gone(pid)
    base = Path(str(info["dir"]))
    shutil.rmtree(base, ignore_errors=True)


def test_existing_round_trips_dsn() -> None:
    cluster = PgCluster.existing("postgresql://al%40ice:p%2Fw@db.example:6543/app?sslmode=require")
    assert (cluster.host, cluster.port, cluster.superuser, cluster.password) == (
        "db.example", 6543, "al@ice", "p/w")
    assert not cluster.owned
    dsn = cluster.dsn("tpch")
    assert psycopg.conninfo.conninfo_to_dict(dsn) == {
        "host": "db.example", "port": "6543", "user": "al@ice", "password": "p/w",
        "dbname": "tpch", "sslmode": "require",
    }
    assert "password" not in psycopg.conninfo.conninfo_to_dict(cluster.dsn(user="reader"))
    cluster.stop()  # never touches a server it did not start


def test_bad_bindir_override_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    with pytest.raises(PgClusterError, match=BINDIR_ENV):
        find_pg_bindir()
