"""The fast paths for remembered constants send exactly what the general path sends.

`SELECT 1` (pool pings, pgbench) is answered from the catalog mirror's remembered answer
in one plain call (`Connection._fast_query`, `Connection._fast_batch`). Each case runs
the same messages twice: once so that they take the general path (the first run, before
the answer is remembered, or a batch split across two writes so that its end has not
arrived when it starts), once on the fast path, and compares the raw bytes received,
in text and binary formats, in and out of a transaction block, and after an error.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_protocol_raw import SYNC, Raw, bind, describe, execute, parse
from tests.support.ops import audit_rows, wait_for
from tests.support.proxy_process import ProxyProcess


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\x00"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def reply(raw: Raw) -> bytes:
    """The raw bytes up to and including the next ReadyForQuery."""
    return b"".join(t.encode() + struct.pack("!i", len(p) + 4) + p for t, p in raw.until_ready())


def split(raw: Raw, *msgs: bytes) -> bytes:
    """Send a batch in two writes with a pause, so the fast path cannot see it whole."""
    raw.send(*msgs[:2])
    time.sleep(0.05)
    raw.send(*msgs[2:])
    return reply(raw)


def whole(raw: Raw, *msgs: bytes) -> bytes:
    """Send a batch in one write (the fast path's case)."""
    raw.send(*msgs)
    return reply(raw)


@pytest.fixture
def raw(audited: tuple[ProxyProcess, Path]) -> Iterator[Raw]:
    """A logged-in raw connection."""
    r = Raw(audited[0].port)
    yield r
    r.close()


@pytest.mark.parametrize("sql", ["SELECT 41", "SELECT 42 AS answer, 'x' AS letter;"])
def test_simple_query_same_bytes_in_and_out_of_a_block_and_after_an_error(raw: Raw, sql: str) -> None:
    first = whole(raw, _query(sql))  # general path: not remembered yet
    again = whole(raw, _query(sql))  # remembered: the fast path
    assert first == again and first.endswith(b"Z\x00\x00\x00\x05I")
    assert whole(raw, _query("BEGIN")).endswith(b"T")
    in_block = whole(raw, _query(sql))
    assert in_block == first[:-1] + b"T"
    # A failed block: the general path answers 25P02, and so it stays.
    whole(raw, _query("SELECT o_totalprice FROM orders"))
    failed = whole(raw, _query(sql))
    assert failed.startswith(b"E") and b"25P02" in failed and failed.endswith(b"E")
    assert whole(raw, _query("ROLLBACK")).endswith(b"I")
    assert whole(raw, _query(sql)) == first


@pytest.mark.parametrize("rfmt", [(), (0,), (1,), (0, 1)])
@pytest.mark.parametrize("with_describe", [True, False])
def test_extended_batch_same_bytes_as_the_general_path(raw: Raw, rfmt: tuple[int, ...], with_describe: bool) -> None:
    q = "SELECT 43 AS n, 'y' AS letter"
    msgs = [parse(q), bind(rfmt=rfmt), *([describe("P")] if with_describe else []), execute(), SYNC]
    slow = split(raw, *msgs)
    fast = whole(raw, *msgs)
    assert fast == slow and fast.endswith(b"I")
    # Inside a transaction block (the portal then stays open until the block ends).
    assert whole(raw, _query("BEGIN")).endswith(b"T")
    assert whole(raw, *msgs) == slow[:-1] + b"T"
    assert split(raw, *msgs) == slow[:-1] + b"T"
    # The unnamed portal left open by the fast path is the general path's portal.
    assert whole(raw, execute(), SYNC) == split(raw, execute(), SYNC)
    assert whole(raw, _query("COMMIT")).endswith(b"I")


def test_prepared_statement_batch_and_errors(raw: Raw) -> None:
    q = "SELECT 44"
    assert whole(raw, parse(q, "ping"), SYNC).endswith(b"I")
    msgs = [bind(stmt="ping"), describe("P"), execute(), SYNC]
    slow = split(raw, *msgs)
    assert whole(raw, *msgs) == slow
    # After an error in the batch everything up to Sync is skipped, fast path included.
    got = whole(raw, bind(stmt="nosuch"), *msgs)
    assert got.startswith(b"E") and b"26000" in got and got.endswith(b"Z\x00\x00\x00\x05I")
    assert whole(raw, *msgs) == slow
    # A failed block: the general path answers 25P02 for the prepared ping too.
    whole(raw, _query("BEGIN"))
    whole(raw, _query("SELECT o_totalprice FROM orders"))
    got = whole(raw, *msgs)
    assert b"25P02" in got and got.endswith(b"E")
    whole(raw, _query("ROLLBACK"))
    # A duplicate Parse of a named statement is refused (42P05), as before.
    got = whole(raw, parse(q, "ping"), *msgs)
    assert b"42P05" in got
    # A row limit below the row count suspends the portal: the general path.
    got = whole(raw, bind(stmt="ping"), execute(max_rows=1), SYNC)
    assert got == split(raw, bind(stmt="ping"), execute(max_rows=1), SYNC)


def test_private_table_never_takes_the_fast_path(raw: Raw) -> None:
    # A private-table statement is routed to DP (or refused), never remembered.
    constant = whole(raw, _query("SELECT 1"))
    for _ in range(2):
        got = whole(raw, _query("SELECT o_totalprice FROM orders"))
        assert got.startswith(b"E") and b"42803" in got
        got = whole(raw, _query("SELECT 1 FROM orders"))
        assert got != constant
        got = whole(raw, parse("SELECT 1 FROM orders"), bind(), describe("P"), execute(), SYNC)
        assert b"SELECT 1\x00" not in got or got != constant


def test_fast_path_statements_are_audited_like_the_general_path(audited: tuple[ProxyProcess, Path]) -> None:
    p, cfg = audited
    r = Raw(p.port, "carol")
    try:
        for _ in range(3):
            whole(r, _query("SELECT 45"))
        for _ in range(3):
            whole(r, parse("SELECT 45"), bind(), describe("P"), execute(), SYNC)
    finally:
        r.close()
    rows = wait_for(lambda: (x := audit_rows(cfg, "analyst = 'carol'")) and len(x) >= 6 and x,
                    what="six audit rows")  # fmt: skip
    assert len(rows) == 6
    keys = ("analyst", "route", "statement", "statement_hash", "statement_length", "decision",
            "sqlstate", "epsilon", "delta", "cache_hit")  # fmt: skip
    simple = [tuple(r[k] for k in keys) for r in rows if r["protocol"] == "simple"]
    extended = [tuple(r[k] for k in keys) for r in rows if r["protocol"] == "extended"]
    assert len(simple) == 3 and len(set(simple)) == 1  # the first (general) run and the fast ones
    assert len(extended) == 3 and len(set(extended)) == 1
    assert simple[0][1:7] == ("catalog", "SELECT 45", simple[0][3], 9, "answered", "00000")


def test_a_refusal_met_by_the_fast_path_checks_is_an_error_not_a_fatal(raw: Raw) -> None:
    # `dp.budget` with a filter is refused (0A000) while the fast path looks at it.
    sql = "SELECT * FROM dp.budget WHERE dataset = 'x'"
    got = whole(raw, _query(sql))
    assert got.startswith(b"E") and b"0A000" in got and got.endswith(b"I")
    got = whole(raw, parse(sql), bind(), describe("P"), execute(), SYNC)
    assert b"0A000" in got and got.endswith(b"I")
    assert whole(raw, _query("SELECT 46")).endswith(b"I")  # the session goes on
