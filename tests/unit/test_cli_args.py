"""Command-line arguments checked before anything starts."""

from __future__ import annotations

import pytest

from proxy.cli import build_parser
from proxy.sampledata import MIN_SCALE, load_tpch


def test_demo_scale_is_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["demo", "--scale", "0.5"]).scale == 0.5
    for bad in ("0.001", "0", "-1", "nan", "abc"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["demo", "--scale", bad])
        assert info.value.code == 2
    assert "must be at least 0.01" in capsys.readouterr().err


def test_load_refuses_scales_whose_keys_repeat() -> None:
    # tpchgen-cli repeats partsupp keys below 0.01 (the primary key would then fail
    # half-way through loading); the loader says so before generating anything.
    with pytest.raises(ValueError, match="at least 0.01"):
        load_tpch("postgresql://unused", MIN_SCALE / 10, lambda _msg: None)
