"""Binary-format values, as PostgreSQL's ``*send``/``*recv`` functions define them.

Dates and timestamps count from 2000-01-01 (PostgreSQL's epoch) in days and
microseconds; numeric is a base-10000 digit array with weight, sign and
display scale.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from proxy.wire import oids

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_I64 = struct.Struct("!q")
_U32 = struct.Struct("!I")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")
_NUMERIC_HEADER = struct.Struct("!hhHh")
_INTERVAL = struct.Struct("!qii")

_INT_STRUCTS = {oids.INT2: _I16, oids.INT4: _I32, oids.INT8: _I64, oids.OID: _U32}
_TEXT_OIDS = {oids.TEXT, oids.VARCHAR, oids.BPCHAR, oids.NAME, oids.CHAR, oids.UNKNOWN, oids.JSON}

PG_EPOCH_DATE = date(2000, 1, 1)
PG_EPOCH = datetime(2000, 1, 1)
PG_EPOCH_UTC = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

NUMERIC_POS = 0x0000
NUMERIC_NEG = 0x4000
NUMERIC_NAN = 0xC000
NUMERIC_PINF = 0xD000
NUMERIC_NINF = 0xF000
NUMERIC_DSCALE_MAX = 0x3FFF
_NBASE = 10000


def encode_numeric(value: Decimal) -> bytes:
    """Encode a Decimal in numeric's binary format (numeric_send)."""
    if value.is_nan():
        if value.is_snan():
            raise ValueError("signaling NaN is not a numeric value")
        return _NUMERIC_HEADER.pack(0, 0, NUMERIC_NAN, 0)
    if value.is_infinite():
        return _NUMERIC_HEADER.pack(0, 0, NUMERIC_PINF if value > 0 else NUMERIC_NINF, 0)
    sign, digit_tuple, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite values always have an int exponent
    coefficient = int("".join(map(str, digit_tuple)) or "0")
    dscale = max(0, -exponent)
    if dscale > NUMERIC_DSCALE_MAX:
        raise ValueError(f"numeric display scale {dscale} exceeds {NUMERIC_DSCALE_MAX}")
    if exponent > 0:
        coefficient *= 10**exponent
        frac_groups = 0
    else:
        # Pad the fraction to whole base-10000 digits so groups align with the point.
        pad = (-dscale) % 4
        coefficient *= 10**pad
        frac_groups = (dscale + pad) // 4
    if coefficient == 0:
        return _NUMERIC_HEADER.pack(0, 0, NUMERIC_POS, dscale)
    groups: list[int] = []
    while coefficient:
        coefficient, group = divmod(coefficient, _NBASE)
        groups.append(group)
    groups.reverse()
    weight = len(groups) - frac_groups - 1
    while groups[-1] == 0:  # trailing zero groups carry no information
        groups.pop()
    if not -(2**15) <= weight < 2**15 or len(groups) >= 2**15:
        raise ValueError("numeric value out of range for the binary format")
    header = _NUMERIC_HEADER.pack(len(groups), weight, NUMERIC_NEG if sign else NUMERIC_POS, dscale)
    return header + struct.pack(f"!{len(groups)}h", *groups)


def decode_numeric(data: bytes) -> Decimal:
    """Decode numeric's binary format (numeric_recv), truncating digits hidden by dscale."""
    if len(data) < 8:
        raise ValueError("binary numeric is shorter than its 8-byte header")
    ndigits, weight, sign, dscale = _NUMERIC_HEADER.unpack_from(data)
    if ndigits < 0 or len(data) != 8 + 2 * ndigits:
        raise ValueError("binary numeric length does not match its digit count")
    if sign == NUMERIC_NAN:
        return Decimal("NaN")
    if sign == NUMERIC_PINF:
        return Decimal("Infinity")
    if sign == NUMERIC_NINF:
        return Decimal("-Infinity")
    if sign not in (NUMERIC_POS, NUMERIC_NEG):
        raise ValueError(f"invalid sign 0x{sign:04x} in binary numeric")
    if not 0 <= dscale <= NUMERIC_DSCALE_MAX:
        raise ValueError(f"invalid display scale {dscale} in binary numeric")
    coefficient = 0
    for group in struct.unpack_from(f"!{ndigits}h", data, 8):
        if not 0 <= group < _NBASE:
            raise ValueError(f"invalid digit {group} in binary numeric")
        coefficient = coefficient * _NBASE + group
    # value = coefficient * 10**shift; re-express it with exactly dscale fraction digits.
    shift = 4 * (weight - ndigits + 1)
    if shift + dscale >= 0:
        coefficient *= 10 ** (shift + dscale)
    else:
        coefficient //= 10 ** (-(shift + dscale))
    digits = tuple(int(c) for c in str(coefficient))
    return Decimal((1 if sign == NUMERIC_NEG and coefficient else 0, digits, -dscale))


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value):
            return Decimal("NaN")
        # repr is the shortest exact form; Decimal(float) would expose binary noise.
        return Decimal(repr(value)) if math.isfinite(value) else Decimal(value)
    raise TypeError(f"cannot encode {type(value).__name__} as numeric")


def _micros(delta: timedelta) -> int:
    return delta // _MICROSECOND


def encode_binary(value: object, oid: int) -> bytes:
    """Encode a non-NULL Python value in PostgreSQL's binary format for type ``oid``."""
    if oid in _INT_STRUCTS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"type OID {oid} needs an int, not {type(value).__name__}")
        try:
            return _INT_STRUCTS[oid].pack(value)
        except struct.error:
            raise ValueError(f"{value} is out of range for type OID {oid}") from None
    if oid in (oids.FLOAT4, oids.FLOAT8):
        if not isinstance(value, int | float | Decimal) or isinstance(value, bool):
            raise TypeError(f"type OID {oid} needs a number, not {type(value).__name__}")
        try:
            return (_F32 if oid == oids.FLOAT4 else _F64).pack(float(value))
        except OverflowError:
            raise ValueError(f"{value} is out of range for type real") from None
    if oid == oids.NUMERIC:
        return encode_numeric(_to_decimal(value))
    if oid in _TEXT_OIDS:
        if not isinstance(value, str):
            raise TypeError(f"type OID {oid} needs a str, not {type(value).__name__}")
        return value.encode("utf-8")
    if oid == oids.BOOL:
        if not isinstance(value, bool):
            raise TypeError(f"type bool needs a bool, not {type(value).__name__}")
        return b"\x01" if value else b"\x00"
    if oid == oids.BYTEA:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"type bytea needs bytes, not {type(value).__name__}")
        return bytes(value)
    if oid == oids.DATE:
        if not isinstance(value, date) or isinstance(value, datetime):
            raise TypeError(f"type date needs a date, not {type(value).__name__}")
        return _I32.pack((value - PG_EPOCH_DATE).days)
    if oid in (oids.TIMESTAMP, oids.TIMESTAMPTZ):
        if not isinstance(value, datetime):
            raise TypeError(f"type OID {oid} needs a datetime, not {type(value).__name__}")
        if oid == oids.TIMESTAMPTZ and value.tzinfo is not None:
            return _I64.pack(_micros(value - PG_EPOCH_UTC))
        # Naive timestamptz values are UTC; a timestamp keeps its wall-clock reading.
        return _I64.pack(_micros(value.replace(tzinfo=None) - PG_EPOCH))
    if oid == oids.TIME:
        if not isinstance(value, time):
            raise TypeError(f"type time needs a time, not {type(value).__name__}")
        seconds = value.hour * 3600 + value.minute * 60 + value.second
        return _I64.pack(seconds * 1_000_000 + value.microsecond)
    if oid == oids.INTERVAL:
        if not isinstance(value, timedelta):
            raise TypeError(f"type interval needs a timedelta, not {type(value).__name__}")
        return _INTERVAL.pack(_micros(value) - value.days * 86_400_000_000, value.days, 0)
    raise ValueError(f"binary format is not supported for type OID {oid}")


def _fixed(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ValueError(f"binary {what} must be {size} bytes, got {len(data)}")


_ELEMENT_OF = {array: element for element, array in oids.ARRAY_OF.items()}
# PostgreSQL's binary +/-infinity of dates (int32) and timestamps (int64), which Python's
# dates cannot hold: decoded as the text PostgreSQL reads them from.
_INFINITIES = {4: {(1 << 31) - 1: "infinity", -(1 << 31): "-infinity"},
               8: {(1 << 63) - 1: "infinity", -(1 << 63): "-infinity"}}  # fmt: skip
_ARRAY_HEADER = struct.Struct("!iiI")
_DIMENSION = struct.Struct("!ii")


def decode_binary_array(data: bytes, oid: int) -> list[object]:
    """Decode a one-dimensional binary array of type ``oid`` (an entry of ARRAY_OF) into
    its elements, NULL as None; more dimensions or a mismatched element type raise."""
    element = _ELEMENT_OF[oid]
    if len(data) < _ARRAY_HEADER.size:
        raise ValueError("binary array is shorter than its header")
    ndim, _flags, element_oid = _ARRAY_HEADER.unpack_from(data)
    if ndim == 0:
        return []
    if ndim != 1:
        raise ValueError("only one-dimensional array parameters are supported")
    if element_oid != element:
        raise ValueError(f"binary array of type OID {oid} holds elements of type OID {element_oid}")
    if len(data) < _ARRAY_HEADER.size + _DIMENSION.size:
        raise ValueError("binary array is shorter than its header")
    count, _lower = _DIMENSION.unpack_from(data, _ARRAY_HEADER.size)
    pos = _ARRAY_HEADER.size + _DIMENSION.size
    if count < 0 or count > len(data):
        raise ValueError("binary array has an invalid length")
    out: list[object] = []
    for _ in range(count):
        if pos + 4 > len(data):
            raise ValueError("binary array ends early")
        size = _I32.unpack_from(data, pos)[0]
        pos += 4
        if size == -1:
            out.append(None)
            continue
        if size < 0 or pos + size > len(data):
            raise ValueError("binary array ends early")
        out.append(decode_binary(data[pos : pos + size], element))
        pos += size
    if pos != len(data):
        raise ValueError("binary array has trailing bytes")
    return out


def decode_binary(data: bytes, oid: int) -> object:
    """Decode a binary-format parameter of type ``oid`` (a one-dimensional array of a
    known element type decodes to a list)."""
    if oid in _ELEMENT_OF:
        return decode_binary_array(data, oid)
    if oid in _INT_STRUCTS:
        codec = _INT_STRUCTS[oid]
        _fixed(data, codec.size, f"type OID {oid}")
        return codec.unpack(data)[0]
    if oid == oids.FLOAT4:
        _fixed(data, 4, "real")
        return _F32.unpack(data)[0]
    if oid == oids.FLOAT8:
        _fixed(data, 8, "double precision")
        return _F64.unpack(data)[0]
    if oid == oids.NUMERIC:
        return decode_numeric(data)
    if oid in _TEXT_OIDS:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("invalid UTF-8 in text parameter") from None
        if "\x00" in text:
            raise ValueError("text parameter contains a NUL character")
        return text
    if oid == oids.BOOL:
        _fixed(data, 1, "boolean")
        if data not in (b"\x00", b"\x01"):
            raise ValueError("binary boolean must be 0 or 1")
        return data == b"\x01"
    if oid == oids.BYTEA or oid == 0:
        return bytes(data)
    try:
        if oid == oids.DATE:
            _fixed(data, 4, "date")
            days = _I32.unpack(data)[0]
            if days in _INFINITIES[4]:  # asyncpg sends date.max / date.min as these
                return _INFINITIES[4][days]
            return PG_EPOCH_DATE + timedelta(days=days)
        if oid in (oids.TIMESTAMP, oids.TIMESTAMPTZ):
            _fixed(data, 8, "timestamp")
            micros = _I64.unpack(data)[0]
            if micros in _INFINITIES[8]:
                return _INFINITIES[8][micros]
            return (PG_EPOCH if oid == oids.TIMESTAMP else PG_EPOCH_UTC) + timedelta(microseconds=micros)
    except OverflowError:
        # Includes PostgreSQL's +/-infinity, which Python dates cannot hold.
        raise ValueError(f"binary value of type OID {oid} is outside Python's range") from None
    if oid == oids.TIME:
        _fixed(data, 8, "time")
        micros = _I64.unpack(data)[0]
        if not 0 <= micros <= 86_400_000_000:
            raise ValueError("binary time is out of range")
        if micros == 86_400_000_000:
            raise ValueError("time 24:00:00 cannot be represented in Python")
        seconds, micro = divmod(micros, 1_000_000)
        return time(seconds // 3600, seconds // 60 % 60, seconds % 60, micro)
    if oid == oids.INTERVAL:
        _fixed(data, 16, "interval")
        micros, days, months = _INTERVAL.unpack(data)
        if months:
            raise ValueError("intervals with months cannot be represented as timedelta")
        try:
            return timedelta(days=days, microseconds=micros)
        except OverflowError:
            raise ValueError("binary interval is outside Python's range") from None
    raise ValueError(f"binary format is not supported for type OID {oid}")
