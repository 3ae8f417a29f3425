"""Incremental decoder of frontend (client-to-server) messages.

The byte stream has two phases. In the *startup* phase messages carry no type
byte (Int32 length, Int32 code); in the *typed* phase each message is one type
byte plus an Int32 length that counts itself. Lengths are checked as soon as
the header arrives, so a hostile length never makes us buffer more than
``max_message_bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from proxy.wire._reader import ProtocolViolation, Reader
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
    FrontendMessage,
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

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH); a larger "startup" packet is junk.
MAX_STARTUP_PACKET = 10000
# Protocol 3.2 allows a cancel key of up to 256 bytes; 3.0 keys are 4 bytes.
MIN_CANCEL_SECRET = 4
MAX_CANCEL_SECRET = 256

_HEADER = struct.Struct("!ci")
# Chunks up to this size are remembered with their messages (see FrontendDecoder._last);
# password messages never are, so no secret stays in memory longer than it must.
_MEMO_CHUNK = 1024
_NOT_MEMO = frozenset({PasswordData, StartupMessage, SSLRequest, GSSENCRequest, CancelRequest})
_I32 = struct.Struct("!i")


def _decode_startup(payload: bytes) -> FrontendMessage:
    """Decode one untyped message; ``payload`` excludes the length word."""
    r = Reader(payload, "startup packet")
    code = r.int32()
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        r.end()
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.int32()
        secret = r.rest()
        if not MIN_CANCEL_SECRET <= len(secret) <= MAX_CANCEL_SECRET:
            raise ProtocolViolation(f"CancelRequest: invalid secret key length {len(secret)}")
        return CancelRequest(pid=pid, secret=secret)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.2"
        )
    params: dict[str, str] = {}
    while True:
        name = r.cstr()
        if name == "":
            break
        if name in params:
            raise ProtocolViolation(f"startup packet: duplicate parameter {name!r}")
        params[name] = r.cstr()
    # PostgreSQL insists the empty-name terminator is the very last byte.
    r.end()
    return StartupMessage(version=code, params=params)


def _decode_parse(r: Reader) -> Parse:
    name = r.cstr()
    query = r.cstr()
    n = r.count("parameter type")
    oids = tuple(r.uint32() for _ in range(n))
    return Parse(name=name, query=query, param_oids=oids)


def _decode_bind(r: Reader) -> Bind:
    portal = r.cstr()
    statement = r.cstr()
    param_formats = tuple(r.int16() for _ in range(r.count("parameter format")))
    nparams = r.count("parameter")
    params: list[bytes | None] = []
    for _ in range(nparams):
        size = r.int32()
        if size == -1:
            params.append(None)
        elif size < 0:
            raise ProtocolViolation(f"Bind: invalid parameter length {size}")
        else:
            params.append(r.raw(size))
    # Formats apply to all parameters (one code) or one each; anything else is malformed.
    if len(param_formats) not in (0, 1, nparams):
        raise ProtocolViolation(
            f"Bind: {len(param_formats)} parameter formats but {nparams} parameters"
        )
    result_formats = tuple(r.int16() for _ in range(r.count("result format")))
    return Bind(
        portal=portal,
        statement=statement,
        param_formats=param_formats,
        params=tuple(params),
        result_formats=result_formats,
    )


def _decode_target(r: Reader, what: str) -> tuple[str, str]:
    kind = r.byte()
    if kind not in ("S", "P"):
        raise ProtocolViolation(f"{what}: invalid target kind {kind!r}")
    return kind, r.cstr()


def _decode_describe(r: Reader) -> Describe:
    kind, name = _decode_target(r, "Describe")
    return Describe(kind=kind, name=name)


def _decode_close(r: Reader) -> Close:
    kind, name = _decode_target(r, "Close")
    return Close(kind=kind, name=name)


def _decode_execute(r: Reader) -> Execute:
    portal = r.cstr()
    return Execute(portal=portal, max_rows=r.int32())


_TYPED: dict[bytes, tuple[str, Callable[[Reader], FrontendMessage]]] = {
    b"Q": ("Query", lambda r: Query(sql=r.cstr())),
    b"P": ("Parse", _decode_parse),
    b"B": ("Bind", _decode_bind),
    b"D": ("Describe", _decode_describe),
    b"E": ("Execute", _decode_execute),
    b"C": ("Close", _decode_close),
    b"S": ("Sync", lambda r: Sync()),
    b"H": ("Flush", lambda r: Flush()),
    b"X": ("Terminate", lambda r: Terminate()),
    b"p": ("PasswordMessage", lambda r: PasswordData(data=r.rest())),
    b"F": ("FunctionCall", lambda r: FunctionCall(raw=r.rest())),
    b"d": ("CopyData", lambda r: CopyData(data=r.rest())),
    b"c": ("CopyDone", lambda r: CopyDone()),
    b"f": ("CopyFail", lambda r: CopyFail(message=r.cstr())),
}


def decode_typed(type_byte: bytes, payload: bytes) -> FrontendMessage:
    """Decode the payload of one typed frontend message (length word excluded)."""
    entry = _TYPED.get(type_byte)
    if entry is None:
        raise ProtocolViolation(f"invalid frontend message type {type_byte!r}")
    what, decode = entry
    r = Reader(payload, what)
    message = decode(r)
    r.end()
    return message


class FrontendDecoder:
    """Turns the client's byte stream into frontend messages, incrementally.

    Once it has raised ``ProtocolViolation`` the decoder stays failed: the
    connection must be closed, and resynchronising would be guesswork.
    """

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        """Create a decoder in the startup phase."""
        if max_message_bytes < 5:
            raise ValueError("max_message_bytes must be at least 5")
        self._max = max_message_bytes
        self._buf = bytearray()
        self._startup = True
        self._failed: ProtocolViolation | None = None
        # The last small chunk that decoded into whole messages, and those messages:
        # clients repeating a statement (pool pings, pgbench, a prepared statement run
        # in a loop) send the same bytes each time, and decoding them is a pure function
        # of the bytes once the startup phase is over (the messages are immutable).
        self._last: tuple[bytes, tuple[FrontendMessage, ...]] | None = None

    @property
    def in_startup_phase(self) -> bool:
        """True until a StartupMessage has been decoded."""
        return self._startup

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def reset_to_startup(self) -> None:
        """Return to the startup phase, e.g. after a TLS handshake.

        Any buffered plaintext is discarded: bytes sent before the handshake
        must never be interpreted as coming from inside TLS (CVE-2021-23222).
        """
        self._buf.clear()
        self._startup = True
        self._last = None

    def feed(self, data: bytes) -> list[FrontendMessage]:
        """Add received bytes and return every message they complete, in order.

        Decoding pauses after an SSLRequest, GSSENCRequest or CancelRequest so
        the session can reply first; call ``feed(b"")`` to continue after 'N'.
        """
        if self._failed is not None:
            raise self._failed
        fresh = not self._buf and not self._startup
        last = self._last
        if fresh and last is not None and data == last[0]:
            return list(last[1])
        self._buf += data
        out: list[FrontendMessage] = []
        try:
            while True:
                message = self._next_startup() if self._startup else self._next_typed()
                if message is None:
                    if (fresh and not self._buf and out and len(data) <= _MEMO_CHUNK
                            and not any(type(x) in _NOT_MEMO for x in out)):  # fmt: skip
                        self._last = (bytes(data), tuple(out))
                    return out
                out.append(message)
                if isinstance(message, StartupMessage):
                    self._startup = False
                elif isinstance(message, SSLRequest | GSSENCRequest | CancelRequest):
                    # Stop here: the session must answer (or close) before anything
                    # else is read. Bytes already buffered after an SSLRequest that
                    # the server accepts were sent in plaintext and must be refused
                    # by the caller (see ``buffered``), never read as TLS content.
                    return out
        except ProtocolViolation as exc:
            self._failed = exc
            self._buf.clear()
            raise

    def _next_startup(self) -> FrontendMessage | None:
        if len(self._buf) < 4:
            return None
        length = _I32.unpack_from(self._buf)[0]
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid length of startup packet: {length}")
        if len(self._buf) < length:
            return None
        payload = bytes(self._buf[4:length])
        del self._buf[:length]
        return _decode_startup(payload)

    def _next_typed(self) -> FrontendMessage | None:
        if len(self._buf) < 5:
            if self._buf and bytes(self._buf[:1]) not in _TYPED:
                raise ProtocolViolation(f"invalid frontend message type {bytes(self._buf[:1])!r}")
            return None
        type_byte, length = _HEADER.unpack_from(self._buf)
        if type_byte not in _TYPED:
            raise ProtocolViolation(f"invalid frontend message type {type_byte!r}")
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        if length > self._max:
            raise ProtocolViolation(
                f"message length {length} exceeds the limit of {self._max} bytes"
            )
        total = 1 + length
        if len(self._buf) < total:
            return None
        payload = bytes(self._buf[5:total])
        del self._buf[:total]
        return decode_typed(type_byte, payload)


def parse_sasl_initial(data: bytes) -> tuple[str, bytes]:
    """Split a SASLInitialResponse payload into (mechanism, initial response).

    A length of -1 ("no initial response") yields ``b""``.
    """
    r = Reader(data, "SASLInitialResponse")
    mechanism = r.cstr()
    size = r.int32()
    if size == -1:
        response = b""
    elif size < 0:
        raise ProtocolViolation(f"SASLInitialResponse: invalid length {size}")
    else:
        response = r.raw(size)
    r.end()
    return mechanism, response


def parse_password(data: bytes) -> str:
    """Decode a cleartext PasswordMessage payload."""
    r = Reader(data, "PasswordMessage")
    password = r.cstr()
    r.end()
    return password
