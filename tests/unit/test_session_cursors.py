"""Session transactions (settings scoped by BEGIN/ROLLBACK/SAVEPOINT/SET LOCAL) and the
cursor position arithmetic, checked without a server."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.commands import run_session_command
from proxy.cursors import ALL, Cursor, FetchSpec, parse_close, parse_declare, parse_fetch
from proxy.errors import ProxyError
from proxy.session import Session


def session() -> Session:
    """A fresh session with default epsilon 1."""
    return Session.start("u", "db", "15.0", Decimal(1), {"application_name": "start"})


def run(s: Session, sql: str) -> str:
    """Run one session command; its tag."""
    return run_session_command(sql, sql.split()[0].upper(), s, Decimal(10)).tag


def test_rollback_restores_settings_and_epsilon() -> None:
    s = session()
    run(s, "BEGIN")
    run(s, "SET application_name = 'in tx'")
    run(s, "SET dp.epsilon = 3")
    assert s.get("application_name") == "in tx" and s.epsilon == 3
    assert run(s, "ROLLBACK") == "ROLLBACK"
    assert s.get("application_name") == "start" and s.epsilon == 1 and s.tx_status == "I"


def test_savepoints_and_set_local() -> None:
    s = session()
    run(s, "BEGIN")
    run(s, "SET application_name = a")
    run(s, 'SAVEPOINT "sp 1"')
    run(s, "SET application_name = b")
    s.fail()
    assert s.tx_status == "E"
    with pytest.raises(ProxyError) as e:
        run(s, "SHOW application_name")
    assert e.value.sqlstate == "25P02"
    run(s, 'ROLLBACK TO SAVEPOINT "sp 1"')
    assert s.tx_status == "T" and s.get("application_name") == "a"
    run(s, "SET LOCAL application_name = c")
    assert s.get("application_name") == "c"
    run(s, 'RELEASE "sp 1"')
    with pytest.raises(ProxyError) as e:
        run(s, 'RELEASE "sp 1"')
    assert e.value.sqlstate == "3B001"
    assert run(s, "COMMIT") == "COMMIT"
    assert s.get("application_name") == "a"  # SET LOCAL ended with the transaction


def test_commit_of_failed_transaction_rolls_back() -> None:
    s = session()
    run(s, "BEGIN")
    run(s, "SET application_name = x")
    s.fail()
    assert run(s, "COMMIT") == "ROLLBACK"
    assert s.get("application_name") == "start"


def test_implicit_transaction_rolls_back_on_error() -> None:
    s = session()
    s.begin_implicit()
    run(s, "SET dp.epsilon = 4")
    s.fail()
    assert s.epsilon == 1 and s.tx_status == "I" and not s.implicit
    s.begin_implicit()
    run(s, "SET dp.epsilon = 4")
    s.end_implicit()
    assert s.epsilon == 4


def test_warnings_outside_transactions() -> None:
    s = session()
    res = run_session_command("COMMIT", "COMMIT", s, None)
    assert res.warnings and res.warnings[0][0] == "25P01"
    res = run_session_command("SET LOCAL application_name = z", "SET", s, None)
    assert res.warnings and s.get("application_name") == "start"
    with pytest.raises(ProxyError):
        run(s, "SAVEPOINT a")


def test_reset_all_restores_default_epsilon() -> None:
    s = session()
    run(s, "SET dp.epsilon = 5")
    run(s, "RESET ALL")
    assert s.epsilon == 1
    run(s, "SET dp.epsilon = 5")
    run(s, "RESET dp.epsilon")
    assert s.epsilon == 1


def test_parse_declare_fetch_close() -> None:
    d = parse_declare('DECLARE "SQL_CUR0x1" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1')
    assert (d.name, d.binary, d.scroll, d.hold, d.query) == ("SQL_CUR0x1", True, False, True, "SELECT 1")
    assert parse_fetch('fetch 2048 in "SQL_CUR0x1"') == FetchSpec("SQL_CUR0x1", False, "forward", 2048)
    assert parse_fetch("FETCH c") == FetchSpec("c", False, "forward", 1)
    assert parse_fetch("MOVE BACKWARD ALL FROM C") == FetchSpec("c", True, "backward", ALL)
    assert parse_fetch("FETCH -2 FROM c") == FetchSpec("c", False, "backward", 2)
    assert parse_fetch("FETCH ABSOLUTE -1 c") == FetchSpec("c", False, "absolute", -1)
    assert parse_close("CLOSE ALL") is None and parse_close('close "X"') == "X"
    with pytest.raises(ProxyError):
        parse_fetch("FETCH SIDEWAYS 2 FROM c")


def _c(n: int, scroll: bool | None = None) -> Cursor:
    return Cursor("c", [("x", "int4")], [(i,) for i in range(1, n + 1)], scroll=scroll)


def test_cursor_positions_follow_postgresql() -> None:
    c = _c(3)
    assert c.fetch(FetchSpec("c", False, "forward", 2)) == [(1,), (2,)]
    assert c.position == 2
    assert c.fetch(FetchSpec("c", False, "forward", 5)) == [(3,)]
    assert c.position == 4  # ran out: after the last row
    assert c.fetch(FetchSpec("c", False, "backward", 1)) == [(3,)]
    assert c.fetch(FetchSpec("c", False, "backward", ALL)) == [(2,), (1,)]
    assert c.position == 0
    assert c.fetch(FetchSpec("c", False, "absolute", -1)) == [(3,)]
    assert c.fetch(FetchSpec("c", False, "relative", -2)) == [(1,)]
    assert c.fetch(FetchSpec("c", False, "absolute", 9)) == [] and c.position == 4
    assert c.fetch(FetchSpec("c", False, "forward", ALL)) == []


def test_no_scroll_cursor_refuses_backward() -> None:
    c = _c(3, scroll=False)
    c.fetch(FetchSpec("c", False, "forward", 2))
    with pytest.raises(ProxyError) as e:
        c.fetch(FetchSpec("c", False, "backward", 1))
    assert e.value.sqlstate == "55000"
