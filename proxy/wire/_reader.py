"""A bounds-checked cursor over one message payload.

Every read that would run past the end, and every malformed string, becomes a
``ProtocolViolation``: the decoder must never leak ``struct.error``,
``IndexError`` or ``UnicodeDecodeError`` to the session.
"""

from __future__ import annotations

import struct

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


class ProtocolViolation(Exception):
    """The peer broke the wire protocol; the server answers FATAL 08P01 and closes."""


class Reader:
    """Sequential reads from a message payload, raising ``ProtocolViolation`` on misuse."""

    __slots__ = ("_buf", "_pos", "_what")

    def __init__(self, buf: bytes, what: str) -> None:
        """Wrap ``buf``; ``what`` names the message in error texts."""
        self._buf = buf
        self._pos = 0
        self._what = what

    def _need(self, n: int) -> int:
        start = self._pos
        if n < 0 or start + n > len(self._buf):
            raise ProtocolViolation(f"{self._what}: message too short (truncated field)")
        self._pos = start + n
        return start

    def int16(self) -> int:
        """Read a signed big-endian Int16."""
        return _I16.unpack_from(self._buf, self._need(2))[0]

    def int32(self) -> int:
        """Read a signed big-endian Int32."""
        return _I32.unpack_from(self._buf, self._need(4))[0]

    def uint32(self) -> int:
        """Read an unsigned big-endian Int32 (OIDs are unsigned)."""
        return _U32.unpack_from(self._buf, self._need(4))[0]

    def byte(self) -> str:
        """Read one byte and return it as a one-character string."""
        return chr(self._buf[self._need(1)])

    def raw(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        start = self._need(n)
        return self._buf[start : start + n]

    def rest(self) -> bytes:
        """Read everything that is left."""
        start = self._pos
        self._pos = len(self._buf)
        return self._buf[start:]

    def cstr(self) -> str:
        """Read a NUL-terminated UTF-8 string."""
        end = self._buf.find(b"\x00", self._pos)
        if end < 0:
            raise ProtocolViolation(f"{self._what}: string is missing its NUL terminator")
        try:
            text = self._buf[self._pos : end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation(f"{self._what}: invalid UTF-8 in string") from exc
        self._pos = end + 1
        return text

    def count(self, field: str) -> int:
        """Read an Int16 element count, which must not be negative."""
        n = self.int16()
        if n < 0:
            raise ProtocolViolation(f"{self._what}: negative {field} count {n}")
        return n

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._buf) - self._pos

    def end(self) -> None:
        """Assert the payload has been consumed completely."""
        if self._pos != len(self._buf):
            raise ProtocolViolation(
                f"{self._what}: {len(self._buf) - self._pos} unexpected trailing byte(s)"
            )
