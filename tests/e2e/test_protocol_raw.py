"""The extended protocol on a raw socket: message order, error recovery, bad input.

Each case asserts what PostgreSQL's protocol chapter says: errors skip to Sync with
exactly one ReadyForQuery per Sync, or a protocol violation ends the connection with
FATAL 08P01, and the server keeps serving other clients either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import struct

import pytest

from proxy.wire import codec
from tests.e2e.conftest import ANALYSTS
from tests.support.proxy_process import ProxyProcess


def _msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def parse(sql: str, name: str = "", oids: tuple[int, ...] = ()) -> bytes:
    """A Parse message."""
    return _msg(b"P", _cstr(name) + _cstr(sql) + struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def bind(portal: str = "", stmt: str = "", params: tuple[bytes | None, ...] = (),
         pfmt: tuple[int, ...] = (), rfmt: tuple[int, ...] = ()) -> bytes:  # fmt: skip
    """A Bind message."""
    body = _cstr(portal) + _cstr(stmt) + struct.pack(f"!h{len(pfmt)}h", len(pfmt), *pfmt)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return _msg(b"B", body + struct.pack(f"!h{len(rfmt)}h", len(rfmt), *rfmt))


def describe(kind: str, name: str = "") -> bytes:
    """A Describe message."""
    return _msg(b"D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    """An Execute message."""
    return _msg(b"E", _cstr(portal) + struct.pack("!i", max_rows))


def close(kind: str, name: str) -> bytes:
    """A Close message."""
    return _msg(b"C", kind.encode() + _cstr(name))


SYNC = _msg(b"S")
FLUSH = _msg(b"H")


class Raw:
    """A raw protocol client: SCRAM login, then messages in and decoded messages out."""

    def __init__(self, port: int, user: str = "alice") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.dec = codec.BackendDecoder()
        self.queue: list[tuple[str, bytes]] = []
        self._login(user, ANALYSTS[user].password)

    def send(self, *msgs: bytes) -> None:
        """Send messages as one write (a pipeline)."""
        self.sock.sendall(b"".join(msgs))

    def recv(self) -> tuple[str, bytes]:
        """The next backend message as (type, payload); ('EOF', b'') when closed."""
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                return ("EOF", b"")
            self.queue.extend(self.dec.feed(data))
        return self.queue.pop(0)

    def until_ready(self) -> list[tuple[str, bytes]]:
        """Every message up to and including the next ReadyForQuery (or the close)."""
        out = []
        while True:
            t, p = self.recv()
            out.append((t, p))
            if t in ("Z", "EOF"):
                return out

    def _login(self, user: str, password: str) -> None:
        params = _cstr("user") + _cstr(user) + _cstr("database") + _cstr("tpch") + b"\x00"
        self.sock.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
        t, p = self.recv()
        assert t == "R" and struct.unpack("!i", p[:4])[0] == 10
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        initial = ("n,," + first_bare).encode()
        self.sock.sendall(_msg(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!i", len(initial)) + initial))
        t, p = self.recv()
        server_first = p[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth = f"{first_bare},{server_first},{without_proof}".encode()
        sig = hmac.new(stored, auth, "sha256").digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig, strict=True))).decode()
        self.sock.sendall(_msg(b"p", f"{without_proof},p={proof}".encode()))
        msgs = self.until_ready()
        assert msgs[-1][0] == "Z", msgs

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def types(msgs: list[tuple[str, bytes]]) -> str:
    """Message types as one string, NoticeResponses and ParameterStatus left out."""
    return "".join(t for t, _ in msgs if t not in ("N", "S"))


def sqlstate(payload: bytes) -> str:
    """The SQLSTATE of an ErrorResponse payload."""
    return codec.parse_error_fields(payload)["C"]


@pytest.fixture
def raw(proxy: ProxyProcess) -> Raw:
    """A logged-in raw connection (closed after the test)."""
    r = Raw(proxy.port)
    yield r  # type: ignore[misc]
    r.close()


def test_describe_statement_before_bind(raw: Raw) -> None:
    raw.send(parse("SELECT COUNT(*), AVG(o_totalprice) FROM orders WHERE o_orderdate < $1", "s1"),
             describe("S", "s1"), FLUSH)  # fmt: skip
    got = [raw.recv() for _ in range(3)]
    assert [t for t, _ in got] == ["1", "t", "T"]
    assert struct.unpack("!hI", got[1][1]) == (1, 1082)  # the parameter is a date
    fields = codec.parse_row_description(got[2][1])
    assert [(f.type_oid, f.table_oid) for f in fields] == [(20, 0), (1700, 0)]
    raw.send(SYNC)
    assert types(raw.until_ready()) == "Z"


def test_execute_row_limit_and_binary(raw: Raw) -> None:
    q = "SELECT o_orderpriority, COUNT(*) FROM orders GROUP BY o_orderpriority"
    raw.send(parse(q), bind(rfmt=(0, 1)), describe("P"), execute(max_rows=2), execute(max_rows=2),
             execute(), SYNC)  # fmt: skip
    msgs = raw.until_ready()
    assert types(msgs) == "12TDDsDDsDCZ"
    rows = [codec.parse_data_row(p) for t, p in msgs if t == "D"]
    assert all(len(r[1]) == 8 for r in rows)  # binary int8
    assert msgs[-2][1] == b"SELECT 5\x00"


def test_constant_portal_described_in_the_formats_it_is_sent(raw: Raw) -> None:
    # The first run remembers `SELECT 1, 'x'`'s answer; later Describes of its portals
    # come from that memory and must still announce each Bind's formats.
    q = "SELECT 1 AS one, 'x' AS letter"
    for rfmt in ((), (), (1,), (0, 1), (1, 1), ()):
        raw.send(parse(q), bind(rfmt=rfmt), describe("P"), execute(), SYNC)
        msgs = raw.until_ready()
        assert types(msgs) == "12TDCZ", (rfmt, msgs)
        fields = codec.parse_row_description(next(p for t, p in msgs if t == "T"))
        assert [f.name for f in fields] == ["one", "letter"]
        want = [0, 0] if not rfmt else [rfmt[0]] * 2 if len(rfmt) == 1 else list(rfmt)
        # dpproxy sends binary for a column it can encode (int4 here, and text as is)
        assert [f.format for f in fields] == want, rfmt
        row = codec.parse_data_row(next(p for t, p in msgs if t == "D"))
        assert row[0] == (struct.pack("!i", 1) if want[0] == 1 else b"1")
        assert row[1] == b"x"


def test_error_discards_until_sync(raw: Raw) -> None:
    raw.send(parse("SELECT COUNT(*) FROM orders"), bind(), execute(),
             parse("SELECT o_totalprice FROM orders"), bind(), execute(),
             parse("SELECT COUNT(*) FROM orders"), bind(), execute(), SYNC, SYNC)  # fmt: skip
    first = raw.until_ready()
    # The refusal comes at Execute (the DP rewrite runs there); the third query is skipped.
    assert types(first) == "12DC12EZ"
    assert types(raw.until_ready()) == "Z"  # one ReadyForQuery per Sync


@pytest.mark.parametrize(
    ("msgs", "state"),
    [
        ((bind(stmt="nosuch"),), "26000"),
        ((execute("nosuch"),), "34000"),
        ((parse("SELECT 1; SELECT 2"),), "42601"),
        ((parse("SELECT COUNT(*) FROM orders"), bind(rfmt=(2,))), "22023"),
        ((parse("SELECT COUNT(*) FROM orders", "dup"), parse("SELECT 1", "dup")), "42P05"),
        ((parse("SELECT COUNT(*) FROM orders WHERE o_totalprice > $1"), bind()), "08P01"),
        ((describe("S", "nosuch"),), "26000"),
        ((describe("P", "nosuch"),), "34000"),
    ],
)
def test_errors_recover_at_sync(raw: Raw, msgs: tuple[bytes, ...], state: str) -> None:
    _check_recovers(raw, (*msgs, SYNC), state)


def test_function_call_refused(raw: Raw) -> None:
    # FunctionCall is answered like a simple Query: error, then ReadyForQuery.
    _check_recovers(raw, (_msg(b"F", b"\x00\x00\x00\x01"),), "0A000")


def _check_recovers(raw: Raw, msgs: tuple[bytes, ...], state: str) -> None:
    raw.send(*msgs)
    got = raw.until_ready()
    errors = [sqlstate(p) for t, p in got if t == "E"]
    assert errors == [state] and got[-1][0] == "Z"
    raw.send(close("S", "nosuch"), close("P", "nosuch"), SYNC)  # closing unknown names is fine
    assert types(raw.until_ready()) == "33Z"
    raw.send(_msg(b"Q", _cstr("SHOW dp.epsilon")))
    assert types(raw.until_ready()) == "TDCZ"


@pytest.mark.parametrize(
    "junk",
    [
        b"Y\x00\x00\x00\x04",  # unknown message type
        b"Q\x00\x00\x00\x02",  # length below 4
        b"Q\x7f\x00\x00\x00",  # length above the limit
        _msg(b"P", b"\x00SELECT 1"),  # missing terminators
        _msg(b"B", b"\x00\x00\x00\x01\x00\x00"),  # truncated
        _msg(b"D", b"X\x00"),  # bad describe kind
        _msg(b"E", b"\x00\x00"),  # short
        _msg(b"S", b"extra"),  # Sync with a body
        _msg(b"p", b"late password"),  # PasswordMessage after login
        struct.pack("!ii", 8, 80877103),  # SSLRequest after start-up
    ],
)
def test_protocol_violations_close_with_08P01(proxy: ProxyProcess, raw: Raw, junk: bytes) -> None:
    raw.send(junk)
    got = []
    while True:
        t, p = raw.recv()
        if t == "EOF":
            break
        got.append((t, p))
    assert [t for t, _ in got] == ["E"] and sqlstate(got[0][1]) == "08P01"
    # The server still serves other clients.
    other = Raw(proxy.port)
    other.send(_msg(b"Q", _cstr("SHOW dp.epsilon")))
    assert types(other.until_ready()) == "TDCZ"
    other.close()


def test_named_statement_outlives_sync_and_unnamed_portal_does_not(raw: Raw) -> None:
    raw.send(parse("SELECT COUNT(*) FROM orders WHERE o_orderpriority = $1", "n1"), SYNC)
    assert types(raw.until_ready()) == "1Z"
    raw.send(bind(stmt="n1", params=(b"2-HIGH",)), SYNC, execute(), SYNC)
    got = raw.until_ready() + raw.until_ready()
    assert types(got) == "2ZEZ" and sqlstate([p for t, p in got if t == "E"][0]) == "34000"
    raw.send(_msg(b"Q", _cstr("DEALLOCATE n1")), bind(stmt="n1", params=(b"x",)), SYNC)
    got = raw.until_ready() + raw.until_ready()
    assert types(got) == "CZEZ"


def test_protocol_3_2_and_pq_options_negotiated(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        params = _cstr("user") + _cstr("alice") + _cstr("_pq_.foo") + _cstr("1") + b"\x00"
        s.sendall(struct.pack("!ii", len(params) + 8, 196610) + params)
        dec = codec.BackendDecoder()
        msgs = []
        while not msgs:
            msgs = dec.feed(s.recv(4096))
    t, payload = msgs[0]
    assert t == "v"
    minor, n = struct.unpack("!ii", payload[:8])
    assert (minor, n) == (0, 1) and payload[8:] == b"_pq_.foo\x00"
