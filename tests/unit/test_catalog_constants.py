"""Which catalog statements have a constant answer the proxy may remember (`SELECT 1`)."""

from __future__ import annotations

import pytest

from proxy.catalog import CatalogField, CatalogResult, is_constant_select
from proxy.wire.codec import command_complete


@pytest.mark.parametrize("sql", [
    "SELECT 1", "select 1;", "SELECT -1", "SELECT 1.5e3", "SELECT 'a'", "SELECT NULL",
    "SELECT TRUE, FALSE", "SELECT 1 AS one", 'SELECT 1 AS "One", \'x\' y', "SELECT 1 -- ping",
    "/* pool check */ SELECT 1",
])  # fmt: skip
def test_literal_selects_are_constant(sql: str) -> None:
    assert is_constant_select(sql)


@pytest.mark.parametrize("sql", [
    "SELECT", "SELECT now()", "SELECT version()", "SELECT current_user", "SELECT 1::regclass",
    "SELECT 1 + 1", "SELECT 1/0", "SELECT E'a'", "SELECT 'a' 'b'", "SELECT - 'a'", "SELECT 1 FROM pg_class",
    "SELECT 1 WHERE false", "SELECT 1 LIMIT 0", "SELECT DISTINCT 1", "SELECT (1)", "SELECT $1",
    "SELECT 1,", "SELECT 1; SELECT 2", "VALUES (1)", "SHOW server_version", "SELECT 'a' COLLATE \"C\"",
    "SELECT 1 AS", "SELECT random()", "SELECT nextval('s')", "SELECT pg_sleep(1)",
])  # fmt: skip
def test_anything_else_is_not(sql: str) -> None:
    assert not is_constant_select(sql)


def test_a_remembered_answer_is_encoded_once_and_reused() -> None:
    fields = [CatalogField("?column?", 23, 4, -1, 0, 0)]
    fresh = CatalogResult("SELECT 1", fields, [[b"1"]])
    remembered = CatalogResult("SELECT 1", fields, [[b"1"]], encoded={})
    assert remembered.reply() == fresh.reply()
    assert remembered.reply().endswith(command_complete("SELECT 1"))
    assert remembered.reply() is remembered.reply()  # the same bytes object: not re-encoded
    assert remembered.reply((1,)) == fresh.reply((1,))  # per requested format
    assert remembered.data_rows((), 0, 0) == b""  # partial ranges are never memoized


def test_the_mirror_fingerprint_covers_its_stubs(monkeypatch: pytest.MonkeyPatch) -> None:
    # README: a mirror built by a release without a stub this one adds is rebuilt at
    # start-up, because the stubs are part of the fingerprint it is kept by.
    from proxy import mirror

    schema = mirror.MirrorSchema()
    before = schema.fingerprint()
    monkeypatch.setattr(mirror, "STUB_FUNCTIONS", {**mirror.STUB_FUNCTIONS, "pg_new_size": ("oid",)})
    assert schema.fingerprint() != before
