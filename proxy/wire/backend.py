"""Encoders of backend (server-to-client) messages.

Each function returns the complete message, type byte and length included,
ready to be written to the transport.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_NULL_VALUE = _I32.pack(-1)
_FIELD = struct.Struct("!IhIhih")

_AUTH_OK = 0
_AUTH_CLEARTEXT = 3
_AUTH_SASL = 10
_AUTH_SASL_CONTINUE = 11
_AUTH_SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription.

    ``table_oid`` and ``column_attnum`` stay 0 for computed columns, so that no
    client looks them up in the catalog.
    """

    name: str
    type_oid: int
    type_size: int
    table_oid: int = 0
    column_attnum: int = 0
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """The fields of an ErrorResponse or NoticeResponse that dpproxy emits.

    ``position`` is a 1-based character index into the query string.
    """

    severity: str
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None
    position: int | None = None


def _cstr(text: str) -> bytes:
    encoded = text.encode("utf-8")
    if b"\x00" in encoded:
        # A NUL would end the field early and desynchronise the client.
        raise ValueError("protocol strings cannot contain NUL characters")
    return encoded + b"\x00"


def _message(type_byte: bytes, body: bytes = b"") -> bytes:
    return _HEADER.pack(type_byte, len(body) + 4) + body


def auth_ok() -> bytes:
    """AuthenticationOk."""
    return _message(b"R", _I32.pack(_AUTH_OK))


def auth_cleartext() -> bytes:
    """AuthenticationCleartextPassword."""
    return _message(b"R", _I32.pack(_AUTH_CLEARTEXT))


def auth_sasl(mechanisms: list[str]) -> bytes:
    """AuthenticationSASL listing the offered mechanisms, most preferred first."""
    if not mechanisms:
        raise ValueError("at least one SASL mechanism is required")
    body = _I32.pack(_AUTH_SASL) + b"".join(_cstr(m) for m in mechanisms) + b"\x00"
    return _message(b"R", body)


def auth_sasl_continue(data: bytes) -> bytes:
    """AuthenticationSASLContinue carrying the server's challenge."""
    return _message(b"R", _I32.pack(_AUTH_SASL_CONTINUE) + data)


def auth_sasl_final(data: bytes) -> bytes:
    """AuthenticationSASLFinal carrying the server's final message."""
    return _message(b"R", _I32.pack(_AUTH_SASL_FINAL) + data)


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus: report a run-time parameter's current value."""
    return _message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    """BackendKeyData: the key a client needs to cancel queries on this session."""
    if not 4 <= len(secret) <= 256:
        raise ValueError("cancel secret must be 4 to 256 bytes long")
    return _message(b"K", _I32.pack(pid) + secret)


_READY = {s: _message(b"Z", s.encode("ascii")) for s in ("I", "T", "E")}


def ready_for_query(status: str) -> bytes:
    """ReadyForQuery with transaction status 'I' (idle), 'T' (in block) or 'E' (failed)."""
    ready = _READY.get(status)
    if ready is None:
        raise ValueError(f"invalid transaction status {status!r}")
    return ready


def row_description(fields: Sequence[FieldDescription]) -> bytes:
    """RowDescription for the given columns."""
    parts = [_I16.pack(len(fields))]
    for f in fields:
        parts.append(_cstr(f.name))
        parts.append(
            _FIELD.pack(
                f.table_oid,
                f.column_attnum,
                f.type_oid,
                f.type_size,
                f.type_modifier,
                f.format,
            )
        )
    return _message(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    """DataRow: already-encoded column values, ``None`` for SQL NULL.

    This is the hot path of every result, so it does one join and no
    intermediate message object.
    """
    pack = _I32.pack
    parts: list[bytes] = [b""]
    size = 6  # Int32 length + Int16 column count
    for value in values:
        if value is None:
            parts.append(_NULL_VALUE)
            size += 4
        else:
            n = len(value)
            parts.append(pack(n))
            parts.append(value)
            size += 4 + n
    parts[0] = b"D" + pack(size) + _I16.pack(len(values))
    return b"".join(parts)


def command_complete(tag: str) -> bytes:
    """CommandComplete with a tag such as ``SELECT 3``."""
    return _message(b"C", _cstr(tag))


def empty_query_response() -> bytes:
    """EmptyQueryResponse: the query string was empty."""
    return _message(b"I")


def _fields_body(fields: ErrorFields) -> bytes:
    parts = [
        b"S" + _cstr(fields.severity),
        b"V" + _cstr(fields.severity),
        b"C" + _cstr(fields.sqlstate),
        b"M" + _cstr(fields.message),
    ]
    if fields.detail is not None:
        parts.append(b"D" + _cstr(fields.detail))
    if fields.hint is not None:
        parts.append(b"H" + _cstr(fields.hint))
    if fields.position is not None:
        parts.append(b"P" + _cstr(str(fields.position)))
    parts.append(b"\x00")
    return b"".join(parts)


def error_response(fields: ErrorFields) -> bytes:
    """ErrorResponse."""
    if len(fields.sqlstate) != 5:
        raise ValueError(f"SQLSTATE must have 5 characters: {fields.sqlstate!r}")
    return _message(b"E", _fields_body(fields))


def notice_response(fields: ErrorFields) -> bytes:
    """NoticeResponse (same layout as ErrorResponse)."""
    if len(fields.sqlstate) != 5:
        raise ValueError(f"SQLSTATE must have 5 characters: {fields.sqlstate!r}")
    return _message(b"N", _fields_body(fields))


def parse_complete() -> bytes:
    """ParseComplete."""
    return _message(b"1")


def bind_complete() -> bytes:
    """BindComplete."""
    return _message(b"2")


def close_complete() -> bytes:
    """CloseComplete."""
    return _message(b"3")


def no_data() -> bytes:
    """NoData: the statement or portal returns no rows."""
    return _message(b"n")


def parameter_description(oids: Sequence[int]) -> bytes:
    """ParameterDescription: the type OID of each parameter of a statement."""
    return _message(b"t", _I16.pack(len(oids)) + struct.pack(f"!{len(oids)}I", *oids))


def portal_suspended() -> bytes:
    """PortalSuspended: Execute stopped at its row limit."""
    return _message(b"s")


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    """NegotiateProtocolVersion: newest supported minor version and rejected ``_pq_`` options."""
    body = _I32.pack(newest_minor) + _I32.pack(len(unsupported))
    body += b"".join(_cstr(name) for name in unsupported)
    return _message(b"v", body)


def copy_out_response(ncols: int, fmt: int = 0) -> bytes:
    """CopyOutResponse with the same format code for the whole stream and every column."""
    if fmt not in (0, 1):
        raise ValueError(f"invalid COPY format {fmt}")
    body = bytes([fmt]) + _I16.pack(ncols) + _I16.pack(fmt) * ncols
    return _message(b"H", body)


def copy_data(data: bytes) -> bytes:
    """CopyData."""
    return _message(b"d", data)


def copy_done() -> bytes:
    """CopyDone."""
    return _message(b"c")


def ssl_no() -> bytes:
    """The one-byte refusal of an SSLRequest or GSSENCRequest."""
    return b"N"


def ssl_yes() -> bytes:
    """The one-byte acceptance of an SSLRequest (the TLS handshake follows)."""
    return b"S"
