"""The settings dpproxy's data sessions start with (proxy/config.py BackendConfig)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.config import BackendConfig


def test_defaults_bound_time_writes_parallelism_and_give_hash_tables_room() -> None:
    s = BackendConfig(dsn="postgresql://x/d", ledger_dsn="postgresql://x/l").session_settings()
    assert s == {"statement_timeout": "30000", "default_transaction_read_only": "on",
                 "plan_cache_mode": "auto", "TimeZone": "UTC",
                 "max_parallel_workers_per_gather": "0", "work_mem": "64MB"}  # fmt: skip


def test_null_keeps_the_servers_setting_and_spaces_are_dropped() -> None:
    b = BackendConfig(dsn="d", ledger_dsn="l", work_mem=None, max_parallel_workers_per_gather=None)
    assert set(b.session_settings()) == {"statement_timeout", "default_transaction_read_only",
                                         "plan_cache_mode", "TimeZone"}  # fmt: skip
    assert BackendConfig(dsn="d", ledger_dsn="l", work_mem="256 MB").session_settings()["work_mem"] == "256MB"


@pytest.mark.parametrize("bad", ["64", "64 mb", "lots", "1TB", "64MB; DROP TABLE x"])
def test_work_mem_must_be_a_plain_size(bad: str) -> None:
    with pytest.raises(ValidationError):
        BackendConfig(dsn="d", ledger_dsn="l", work_mem=bad)
