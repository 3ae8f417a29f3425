"""Replays of the catalog SQL that BI tools and drivers send at connect (quoted in
tests/e2e/replays/*.sql): each must succeed through dpproxy, over the extended protocol
(psycopg) and the simple protocol (psql), with the rows the mirror itself returns."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from proxy.catalog import prepare_catalog_sql
from proxy.config import load_config
from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import ProxyProcess

REPLAYS = Path(__file__).parent / "replays"
USER = "carol"


def _statements(path: Path) -> list[str]:
    blocks = path.read_text().split("-- statement\n")[1:]
    return [b.strip().rstrip(";") for b in blocks if b.strip()]


CASES = [
    pytest.param(p.stem, i, sql, id=f"{p.stem}-{i}")
    for p in sorted(REPLAYS.glob("*.sql"))
    for i, sql in enumerate(_statements(p))
]


def test_replay_files_cover_the_tools() -> None:
    assert {p.stem for p in REPLAYS.glob("*.sql")} >= {"metabase", "dbeaver", "grafana", "npgsql"}
    assert len(CASES) >= 15


@pytest.mark.parametrize(("tool", "index", "sql"), CASES)
def test_replay_matches_the_mirror(proxy: ProxyProcess, env: Env, tool: str, index: int, sql: str) -> None:
    mirror_dsn = load_config(env.config).backend.catalog_dsn
    assert mirror_dsn is not None
    with psycopg.connect(mirror_dsn, autocommit=True) as direct:
        # Directly, with the same neutralized statistics dpproxy redirects to.
        expected = direct.execute(prepare_catalog_sql(sql)).fetchall()  # type: ignore[arg-type]
    with psycopg.connect(proxy.dsn(USER, ANALYSTS[USER].password), autocommit=True) as conn:
        got = conn.execute(sql).fetchall()  # type: ignore[arg-type]
    if sql.lower().startswith("show "):
        return  # a session setting, answered by dpproxy itself: it only has to succeed
    assert got == expected
    psql = shutil.which("psql")
    if psql is not None:
        through = subprocess.run([psql, proxy.dsn(USER, ANALYSTS[USER].password), "-X", "-At", "-c", sql],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        mirrored = subprocess.run([psql, mirror_dsn, "-X", "-At", "-c", prepare_catalog_sql(sql)],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
        assert through.returncode == 0, through.stderr
        assert through.stdout == mirrored.stdout
