"""Byte-level tests of the wire codec (frontend decoder, backend encoders and decoder)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire.codec import (
    BackendDecoder,
    ErrorFields,
    FieldDescription,
    FrontendDecoder,
    ProtocolViolation,
    auth_cleartext,
    auth_ok,
    auth_sasl,
    auth_sasl_continue,
    auth_sasl_final,
    backend_key_data,
    bind_complete,
    close_complete,
    command_complete,
    copy_data,
    copy_done,
    copy_out_response,
    data_row,
    empty_query_response,
    error_response,
    negotiate_protocol_version,
    no_data,
    notice_response,
    parameter_description,
    parameter_status,
    parse_complete,
    parse_data_row,
    parse_error_fields,
    parse_password,
    parse_row_description,
    parse_sasl_initial,
    portal_suspended,
    ready_for_query,
    row_description,
    ssl_no,
    ssl_yes,
)
from proxy.wire.messages import (
    Bind,
    CancelRequest,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FunctionCall,
    GSSENCRequest,
    Parse,
    PasswordData,
    Query,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)

# --- a tiny client-side encoder, written from the protocol docs, for building inputs ---


def i16(n: int) -> bytes:
    return struct.pack("!h", n)


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def untyped(body: bytes) -> bytes:
    return i32(len(body) + 4) + body


def typed(t: bytes, body: bytes = b"") -> bytes:
    return t + i32(len(body) + 4) + body


def startup(params: dict[str, str] | None = None, version: int = 196608) -> bytes:
    params = {"user": "alice", "database": "app"} if params is None else params
    body = i32(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return untyped(body)


def typed_decoder() -> FrontendDecoder:
    d = FrontendDecoder()
    assert d.feed(startup()) == [StartupMessage(196608, {"user": "alice", "database": "app"})]
    return d


PARSE = typed(b"P", cstr("s1") + cstr("select $1, $2") + i16(2) + i32(23) + struct.pack("!I", 2**32 - 1))
BIND = typed(
    b"B",
    cstr("p1") + cstr("s1") + i16(1) + i16(1) + i16(3)
    + i32(2) + b"\x00\x07" + i32(-1) + i32(0) + i16(2) + i16(0) + i16(1),
)  # fmt: skip
ALL_TYPED = [
    (typed(b"Q", cstr("select 1; select 2")), Query("select 1; select 2")),
    (PARSE, Parse("s1", "select $1, $2", (23, 2**32 - 1))),
    (BIND, Bind("p1", "s1", (1,), (b"\x00\x07", None, b""), (0, 1))),
    (typed(b"D", b"S" + cstr("s1")), Describe("S", "s1")),
    (typed(b"D", b"P" + cstr("")), Describe("P", "")),
    (typed(b"E", cstr("p1") + i32(2)), Execute("p1", 2)),
    (typed(b"C", b"P" + cstr("C_1")), Close("P", "C_1")),
    (typed(b"C", b"S" + cstr("S_1")), Close("S", "S_1")),
    (typed(b"S"), Sync()),
    (typed(b"H"), Flush()),
    (typed(b"X"), Terminate()),
    (typed(b"p", cstr("secret")), PasswordData(b"secret\0")),
    (typed(b"F", b"\x00\x00\x04\xd2\x00\x00"), FunctionCall(b"\x00\x00\x04\xd2\x00\x00")),
    (typed(b"d", b"a\tb\n"), CopyData(b"a\tb\n")),
    (typed(b"c"), CopyDone()),
    (typed(b"f", cstr("aborted")), CopyFail("aborted")),
]


# --- startup phase ---


def test_startup_message_3_0_and_3_2() -> None:
    d = FrontendDecoder()
    msg = d.feed(startup({"user": "u", "application_name": "psql"}))[0]
    assert msg == StartupMessage(196608, {"user": "u", "application_name": "psql"})
    assert (msg.major, msg.minor) == (3, 0)
    assert not d.in_startup_phase
    d2 = FrontendDecoder()
    msg2 = d2.feed(startup({"user": "u", "_pq_.foo": "1"}, version=196610))[0]
    assert isinstance(msg2, StartupMessage) and msg2.minor == 2
    assert msg2.params["_pq_.foo"] == "1"


def test_startup_message_byte_by_byte() -> None:
    d = FrontendDecoder()
    data = startup() + typed(b"Q", cstr("select 1"))
    out = []
    for b in data:
        out += d.feed(bytes([b]))
    assert out == [StartupMessage(196608, {"user": "alice", "database": "app"}), Query("select 1")]
    assert d.buffered == 0


def test_ssl_request_pauses_then_stays_in_startup_phase() -> None:
    d = FrontendDecoder()
    assert d.feed(untyped(i32(80877103))) == [SSLRequest()]
    assert d.in_startup_phase
    # After answering 'N' the client sends GSSENCRequest, then a StartupMessage.
    assert d.feed(untyped(i32(80877104))) == [GSSENCRequest()]
    assert d.feed(startup()) == [StartupMessage(196608, {"user": "alice", "database": "app"})]


def test_ssl_request_leaves_early_bytes_buffered_for_the_session_to_refuse() -> None:
    d = FrontendDecoder()
    assert d.feed(untyped(i32(80877103)) + startup()) == [SSLRequest()]
    assert d.buffered == len(startup())
    # Session answered 'N': continuing is legitimate.
    assert isinstance(d.feed(b"")[0], StartupMessage)


def test_reset_to_startup_discards_plaintext() -> None:
    d = typed_decoder()
    d.feed(b"Q\0")
    d.reset_to_startup()
    assert d.in_startup_phase and d.buffered == 0
    assert isinstance(d.feed(startup())[0], StartupMessage)


@pytest.mark.parametrize("secret", [b"\x01\x02\x03\x04", bytes(range(32)), b"k" * 256])
def test_cancel_request(secret: bytes) -> None:
    d = FrontendDecoder()
    assert d.feed(untyped(i32(80877102) + i32(4242) + secret)) == [CancelRequest(4242, secret)]


@pytest.mark.parametrize(
    "data, fragment",
    [
        (i32(7) + b"\0\0\0", "invalid length of startup packet"),
        (i32(-1), "invalid length of startup packet"),
        (i32(10001), "invalid length of startup packet"),
        (untyped(i32(80877103) + b"x"), "trailing"),
        (untyped(i32(80877102) + i32(1) + b"abc"), "secret key length"),
        (untyped(i32(80877102) + i32(1) + b"k" * 257), "secret key length"),
        (untyped(i32(0x00020000) + b"\0"), "unsupported frontend protocol 2.0"),
        (untyped(i32(0x00040000) + b"\0"), "unsupported frontend protocol 4.0"),
        (untyped(i32(196608) + cstr("user") + cstr("u")), "NUL terminator"),
        (untyped(i32(196608) + cstr("user") + b"bob"), "NUL terminator"),
        (untyped(i32(196608) + b"\0" + b"junk"), "trailing"),
        (untyped(i32(196608) + cstr("user") + b"\xff\xfe\0" + b"\0"), "UTF-8"),
        (untyped(i32(196608) + cstr("a") + cstr("1") + cstr("a") + cstr("2") + b"\0"), "duplicate"),
    ],
)
def test_startup_violations(data: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        FrontendDecoder().feed(data)


# --- typed phase ---


@pytest.mark.parametrize("data, expected", ALL_TYPED)
def test_each_typed_message(data: bytes, expected: object) -> None:
    assert typed_decoder().feed(data) == [expected]


def test_all_typed_messages_in_one_chunk_and_byte_by_byte() -> None:
    stream = b"".join(data for data, _ in ALL_TYPED)
    expected = [msg for _, msg in ALL_TYPED]
    assert typed_decoder().feed(stream) == expected
    d = typed_decoder()
    got = []
    for b in stream:
        got += d.feed(bytes([b]))
    assert got == expected


def test_split_across_header_boundary() -> None:
    d = typed_decoder()
    data = typed(b"Q", cstr("select 42"))
    assert d.feed(data[:3]) == []
    assert d.feed(data[3:7]) == []
    assert d.feed(data[7:] + data[:1]) == [Query("select 42")]
    assert d.feed(data[1:]) == [Query("select 42")]


def test_bind_with_no_formats_and_zero_params() -> None:
    data = typed(b"B", cstr("") + cstr("") + i16(0) + i16(0) + i16(0))
    assert typed_decoder().feed(data) == [Bind("", "", (), (), ())]


def test_bind_format_per_parameter() -> None:
    body = cstr("") + cstr("") + i16(2) + i16(0) + i16(1) + i16(2)
    body += i32(1) + b"7" + i32(4) + i32(7) + i16(1) + i16(1)
    assert typed_decoder().feed(typed(b"B", body)) == [
        Bind("", "", (0, 1), (b"7", b"\0\0\0\x07"), (1,))
    ]


def test_message_at_exact_size_limit_is_accepted() -> None:
    d = FrontendDecoder(max_message_bytes=64)
    d.feed(startup())
    sql = "x" * (64 - 4 - 1)
    assert d.feed(typed(b"Q", cstr(sql))) == [Query(sql)]


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"Z" + i32(4), "invalid frontend message type"),
        (b"\0", "invalid frontend message type"),
        (b"Q" + i32(3), "invalid message length 3"),
        (b"Q" + i32(-5), "invalid message length"),
        (b"Q" + i32(2**31 - 1), "exceeds the limit"),
        (typed(b"S", b"\0"), "Sync: 1 unexpected trailing"),
        (typed(b"H", b"xx"), "Flush: 2 unexpected trailing"),
        (typed(b"X", b"x"), "Terminate: 1 unexpected trailing"),
        (typed(b"c", b"x"), "CopyDone"),
        (typed(b"Q", b"select 1"), "NUL terminator"),
        (typed(b"Q", cstr("select 1") + b"x"), "trailing"),
        (typed(b"Q", b"\xc3\x28\0"), "invalid UTF-8"),
        (typed(b"P", cstr("") + cstr("select") + i16(2) + i32(23)), "truncated"),
        (typed(b"P", cstr("") + cstr("select") + i16(-1)), "negative parameter type count"),
        (typed(b"P", cstr("") + cstr("select")), "truncated"),
        (typed(b"B", cstr("") + cstr("") + i16(2) + i16(0) + i16(0) + i16(1) + i32(-1) + i16(0)),
         "2 parameter formats but 1 parameters"),
        (typed(b"B", cstr("") + cstr("") + i16(0) + i16(1) + i32(-2) + i16(0)),
         "invalid parameter length -2"),
        (typed(b"B", cstr("") + cstr("") + i16(0) + i16(1) + i32(10) + b"abc" + i16(0)),
         "truncated"),
        (typed(b"B", cstr("") + cstr("") + i16(0) + i16(-3)), "negative parameter count"),
        (typed(b"B", cstr("") + cstr("") + i16(0) + i16(0) + i16(-1)), "negative result format"),
        (typed(b"B", cstr("") + cstr("") + i16(0) + i16(0) + i16(0) + b"\0"), "trailing"),
        (typed(b"D", b"X" + cstr("s")), "invalid target kind"),
        (typed(b"D", b""), "truncated"),
        (typed(b"C", b"s" + cstr("s")), "invalid target kind"),
        (typed(b"E", cstr("p") + b"\0\0"), "truncated"),
        (typed(b"f", b"no terminator"), "NUL terminator"),
    ],
)  # fmt: skip
def test_typed_violations(data: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        typed_decoder().feed(data)


def test_oversized_length_rejected_before_body_arrives() -> None:
    d = FrontendDecoder(max_message_bytes=1024)
    d.feed(startup())
    with pytest.raises(ProtocolViolation, match="exceeds"):
        d.feed(b"Q" + i32(1025))


def test_decoder_stays_failed() -> None:
    d = typed_decoder()
    with pytest.raises(ProtocolViolation):
        d.feed(b"!")
    with pytest.raises(ProtocolViolation):
        d.feed(typed(b"S"))


def test_messages_before_a_violation_in_the_same_chunk_are_not_returned() -> None:
    d = typed_decoder()
    with pytest.raises(ProtocolViolation):
        d.feed(typed(b"S") + b"!")


def test_parse_sasl_initial() -> None:
    data = cstr("SCRAM-SHA-256") + i32(5) + b"n,,ab"
    assert parse_sasl_initial(data) == ("SCRAM-SHA-256", b"n,,ab")
    assert parse_sasl_initial(cstr("X") + i32(-1)) == ("X", b"")
    for bad in [b"SCRAM", cstr("M") + i32(6) + b"abc", cstr("M") + i32(-2), cstr("M") + i32(1) + b"ab"]:
        with pytest.raises(ProtocolViolation):
            parse_sasl_initial(bad)


def test_parse_password() -> None:
    assert parse_password(b"hunter2\0") == "hunter2"
    with pytest.raises(ProtocolViolation):
        parse_password(b"hunter2")


# --- fuzzing: bad input only ever raises ProtocolViolation ---


def _feed_all(decoder: FrontendDecoder, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            decoder.feed(b"")  # continue past SSLRequest pauses
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_startup_phase(chunks: list[bytes]) -> None:
    _feed_all(FrontendDecoder(max_message_bytes=4096), chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_typed_phase(chunks: list[bytes]) -> None:
    _feed_all(typed_decoder(), chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(b"QPBDECSHXpFdcf"), st.binary(max_size=40)), max_size=5))
def test_fuzz_well_framed_random_payloads(messages: list[tuple[int, bytes]]) -> None:
    data = b"".join(typed(bytes([t]), body) for t, body in messages)
    _feed_all(typed_decoder(), [data])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_fuzz_startup_payloads(body: bytes) -> None:
    _feed_all(FrontendDecoder(), [untyped(i32(196608) + body), untyped(body)])


# --- backend encoders: exact bytes ---


def test_simple_backend_messages() -> None:
    assert auth_ok() == b"R\0\0\0\x08\0\0\0\0"
    assert auth_cleartext() == b"R\0\0\0\x08\0\0\0\x03"
    assert auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]) == (
        b"R" + i32(4 + 4 + 19 + 14 + 1) + i32(10) + b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    )
    assert auth_sasl_continue(b"r=abc") == b"R" + i32(13) + i32(11) + b"r=abc"
    assert auth_sasl_final(b"v=xyz") == b"R" + i32(13) + i32(12) + b"v=xyz"
    assert parameter_status("TimeZone", "UTC") == b"S" + i32(17) + b"TimeZone\0UTC\0"
    assert backend_key_data(7, b"abcd") == b"K" + i32(12) + i32(7) + b"abcd"
    assert ready_for_query("T") == b"Z\0\0\0\x05T"
    assert command_complete("SELECT 3") == b"C" + i32(13) + b"SELECT 3\0"
    assert empty_query_response() == b"I\0\0\0\x04"
    assert parse_complete() == b"1\0\0\0\x04"
    assert bind_complete() == b"2\0\0\0\x04"
    assert close_complete() == b"3\0\0\0\x04"
    assert no_data() == b"n\0\0\0\x04"
    assert portal_suspended() == b"s\0\0\0\x04"
    assert copy_done() == b"c\0\0\0\x04"
    assert copy_data(b"1\n") == b"d\0\0\0\x061\n"
    assert ssl_no() == b"N" and ssl_yes() == b"S"


def test_parameter_description_and_negotiation() -> None:
    assert parameter_description([23, 1184, 2**32 - 1]) == (
        b"t" + i32(4 + 2 + 12) + i16(3) + i32(23) + i32(1184) + b"\xff\xff\xff\xff"
    )
    assert parameter_description([]) == b"t" + i32(6) + i16(0)
    assert negotiate_protocol_version(0, ["_pq_.foo"]) == (
        b"v" + i32(4 + 8 + 9) + i32(0) + i32(1) + b"_pq_.foo\0"
    )


def test_copy_out_response() -> None:
    assert copy_out_response(2) == b"H" + i32(4 + 1 + 2 + 4) + b"\0" + i16(2) + i16(0) + i16(0)
    assert copy_out_response(1, fmt=1) == b"H" + i32(9) + b"\x01" + i16(1) + i16(1)


def test_row_description_bytes_and_round_trip() -> None:
    fields = [
        FieldDescription("city", type_oid=25, type_size=-1),
        FieldDescription("n", type_oid=20, type_size=8, table_oid=16385, column_attnum=3, format=1),
    ]
    encoded = row_description(fields)
    expected_body = (
        i16(2)
        + b"city\0" + i32(0) + i16(0) + i32(25) + i16(-1) + i32(-1) + i16(0)
        + b"n\0" + i32(16385) + i16(3) + i32(20) + i16(8) + i32(-1) + i16(1)
    )  # fmt: skip
    assert encoded == b"T" + i32(len(expected_body) + 4) + expected_body
    [(kind, payload)] = BackendDecoder().feed(encoded)
    assert kind == "T" and parse_row_description(payload) == fields


def test_data_row() -> None:
    assert data_row([]) == b"D" + i32(6) + i16(0)
    encoded = data_row([b"42", None, b""])
    assert encoded == b"D" + i32(4 + 2 + 6 + 4 + 4) + i16(3) + i32(2) + b"42" + i32(-1) + i32(0)
    [(kind, payload)] = BackendDecoder().feed(encoded)
    assert kind == "D" and parse_data_row(payload) == [b"42", None, b""]


def test_error_and_notice_response() -> None:
    f = ErrorFields("ERROR", "42501", "not allowed", detail="d", hint="h", position=7)
    encoded = error_response(f)
    body = b"SERROR\0VERROR\0C42501\0Mnot allowed\0Dd\0Hh\0P7\0\0"
    assert encoded == b"E" + i32(len(body) + 4) + body
    [(kind, payload)] = BackendDecoder().feed(encoded)
    assert kind == "E"
    assert parse_error_fields(payload) == {
        "S": "ERROR", "V": "ERROR", "C": "42501", "M": "not allowed", "D": "d", "H": "h", "P": "7"
    }  # fmt: skip
    notice = notice_response(ErrorFields("NOTICE", "00000", "cost 0.1"))
    notice_body = b"SNOTICE\0VNOTICE\0C00000\0Mcost 0.1\0\0"
    assert notice == b"N" + i32(len(notice_body) + 4) + notice_body


def test_encoders_reject_bad_values() -> None:
    with pytest.raises(ValueError):
        ready_for_query("X")
    with pytest.raises(ValueError):
        command_complete("bad\0tag")
    with pytest.raises(ValueError):
        error_response(ErrorFields("ERROR", "123", "m"))
    with pytest.raises(ValueError):
        backend_key_data(1, b"abc")
    with pytest.raises(ValueError):
        auth_sasl([])


def test_backend_decoder_incremental() -> None:
    stream = parse_complete() + bind_complete() + data_row([b"1"]) + ready_for_query("I")
    d = BackendDecoder()
    got = []
    for b in stream:
        got += d.feed(bytes([b]))
    assert [k for k, _ in got] == ["1", "2", "D", "Z"]
    assert got[-1] == ("Z", b"I")
    with pytest.raises(ProtocolViolation):
        BackendDecoder().feed(b"Z" + i32(2))


def test_repeated_chunk_decodes_the_same_from_memory() -> None:
    d = typed_decoder()
    chunk = PARSE + BIND + typed(b"D", b"P" + cstr("")) + typed(b"E", cstr("p1") + i32(0)) + typed(b"S")
    first = d.feed(chunk)
    assert [type(m).__name__ for m in first] == ["Parse", "Bind", "Describe", "Execute", "Sync"]
    again = d.feed(chunk)
    assert again == first and again is not first
    # After a partial message the same bytes mean something else: decoded afresh.
    sync = typed(b"S")
    assert d.feed(sync[:4]) == []
    assert d.feed(sync[4:] + chunk) == [Sync(), *first]
    assert d.feed(chunk[:7]) == []
    assert d.feed(chunk[7:]) == first
    assert d.feed(chunk) == first


def test_password_chunks_are_not_remembered() -> None:
    d = typed_decoder()
    pw = typed(b"p", cstr("secret"))
    assert d.feed(pw) == [PasswordData(b"secret\0")]
    assert d._last is None
    q = typed(b"Q", cstr("select 1"))
    assert d.feed(q) == d.feed(q) == [Query("select 1")]
    assert d._last is not None and d._last[0] == q
