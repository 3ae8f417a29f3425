"""Decoder of backend (server-to-client) messages.

Used by tests to read dpproxy's replies off a raw socket, and by anything that
needs to look at a real server's framing. It only splits frames; the helpers
below parse the few payloads tests inspect.
"""

from __future__ import annotations

import struct

from proxy.wire._reader import ProtocolViolation, Reader
from proxy.wire.backend import FieldDescription

_HEADER = struct.Struct("!ci")


class BackendDecoder:
    """Splits a backend byte stream into ``(type_char, payload)`` tuples.

    The one-byte answer to an SSLRequest is not a framed message: read it
    before feeding the stream to this decoder.
    """

    def __init__(self, max_message_bytes: int = 1 << 30) -> None:
        """Create a decoder; larger messages are a protocol violation."""
        self._max = max_message_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Add received bytes and return every complete message, in order."""
        self._buf += data
        out: list[tuple[str, bytes]] = []
        while len(self._buf) >= 5:
            type_byte, length = _HEADER.unpack_from(self._buf)
            if length < 4 or length > self._max:
                raise ProtocolViolation(f"invalid backend message length {length}")
            if len(self._buf) < 1 + length:
                break
            out.append((type_byte.decode("latin-1"), bytes(self._buf[5 : 1 + length])))
            del self._buf[: 1 + length]
        return out


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Parse an ErrorResponse/NoticeResponse payload into ``{field code: value}``."""
    r = Reader(payload, "ErrorResponse")
    fields: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == "\x00":
            break
        fields[code] = r.cstr()
    r.end()
    return fields


def parse_row_description(payload: bytes) -> list[FieldDescription]:
    """Parse a RowDescription payload."""
    r = Reader(payload, "RowDescription")
    fields = []
    for _ in range(r.count("field")):
        name = r.cstr()
        table_oid = r.uint32()
        attnum = r.int16()
        type_oid = r.uint32()
        size = r.int16()
        modifier = r.int32()
        fmt = r.int16()
        fields.append(
            FieldDescription(
                name=name,
                type_oid=type_oid,
                type_size=size,
                table_oid=table_oid,
                column_attnum=attnum,
                type_modifier=modifier,
                format=fmt,
            )
        )
    r.end()
    return fields


def parse_data_row(payload: bytes) -> list[bytes | None]:
    """Parse a DataRow payload into raw column values (``None`` for NULL)."""
    r = Reader(payload, "DataRow")
    values: list[bytes | None] = []
    for _ in range(r.count("column")):
        size = r.int32()
        values.append(None if size == -1 else r.raw(size))
    r.end()
    return values
