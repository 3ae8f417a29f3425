"""How a statement's exception reaches the client (proxy.connection._statement_error)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.connection import _statement_error
from proxy.errors import ProxyError
from proxy.wire import codec
from rewriter.errors import RewriteError


def test_refusals_pass_through_unchanged() -> None:
    refusal = RewriteError("0A000", "not supported")
    assert _statement_error(refusal) is refusal
    error = ProxyError("53Z01", "budget")
    assert _statement_error(error) is error


def test_an_unexpected_exception_is_a_fixed_xx000_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    private = "customer 42 owes 1234.56"
    try:
        raise ValueError(private)
    except ValueError as raised:
        with caplog.at_level(logging.ERROR):
            e = _statement_error(raised)
    assert isinstance(e, ProxyError)
    assert (e.sqlstate, e.message) == ("XX000", "internal error in dpproxy")
    assert private not in e.message and private not in (e.hint or "")
    assert caplog.records and caplog.records[0].levelno == logging.ERROR


@pytest.mark.parametrize("raised", [ConnectionResetError(), asyncio.IncompleteReadError(b"", 5),
                                    codec.ProtocolViolation("bad message")])  # fmt: skip
def test_connection_level_exceptions_end_the_connection(raised: Exception) -> None:
    with pytest.raises(type(raised)):
        _statement_error(raised)
