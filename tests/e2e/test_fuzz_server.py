"""Fuzzing a live dpproxy with random protocol messages, before and after login.

The server must answer with protocol errors (or nothing) and never crash, never send a
Python traceback or an internal error, and keep serving other clients.
"""

from __future__ import annotations

import os
import select
import socket
import struct

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import ANALYSTS
from tests.support.proxy_process import ProxyProcess

pytestmark = pytest.mark.slow

TYPES = b"PBDESHCXQFpfdc" + bytes(range(0x20, 0x7F, 7))

message = st.builds(
    lambda t, body, lie: t + struct.pack("!i", len(body) + 4 + lie) + body,
    st.sampled_from([bytes([b]) for b in TYPES]),
    st.binary(max_size=64),
    st.sampled_from([0, 0, 0, 1, -1, -5, 1000]),
)


def _drain(sock: socket.socket, limit: float = 2.0) -> bytes:
    out = b""
    while True:
        ready, _, _ = select.select([sock], [], [], limit)
        if not ready:
            return out
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
        limit = 0.3


def _check_reply(reply: bytes) -> None:
    assert b"Traceback" not in reply and b'File "' not in reply
    assert b"internal error" not in reply


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200))
def test_random_bytes_before_login(proxy: ProxyProcess, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        _check_reply(_drain(s))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(message, min_size=1, max_size=6))
def test_random_messages_after_login(proxy: ProxyProcess, messages: list[bytes]) -> None:
    conn = psycopg.connect(proxy.dsn("dave", ANALYSTS["dave"].password), autocommit=True)
    try:
        fd = conn.pgconn.socket
        os.write(fd, b"".join(messages) + b"S\x00\x00\x00\x04")  # then Sync
        sock = socket.socket(fileno=os.dup(fd))
        try:
            reply = _drain(sock, 1.0)
        finally:
            sock.close()
        _check_reply(reply)
        i = 0
        while i + 5 <= len(reply):
            kind, length = reply[i : i + 1], struct.unpack("!i", reply[i + 1 : i + 5])[0]
            assert kind in b"EZ123tTnsDCINAKScHdGW", kind  # only backend message types
            i += 1 + length
    finally:
        conn.pgconn.finish()
    # The server keeps serving.
    with psycopg.connect(proxy.dsn("dave", ANALYSTS["dave"].password)) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
