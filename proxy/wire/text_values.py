"""Text-format values: PostgreSQL's output functions, and parsing of text parameters.

Output follows a server with ``DateStyle=ISO``, ``IntervalStyle=postgres``,
``bytea_output=hex`` and ``extra_float_digits >= 1`` (shortest exact floats).
"""

from __future__ import annotations

import math
import re
import struct
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from proxy.wire import oids

_F32 = struct.Struct("!f")
_U32 = struct.Struct("!I")
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_FLOAT_RE = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\s*",
    re.ASCII | re.IGNORECASE,
)
_INT_RANGES = {
    oids.INT2: (-(2**15), 2**15 - 1),
    oids.INT4: (-(2**31), 2**31 - 1),
    oids.INT8: (-(2**63), 2**63 - 1),
    oids.OID: (0, 2**32 - 1),
}
_BOOL_TRUE = {"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"}
_BOOL_FALSE = {"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"}
_TEXT_OIDS = {oids.TEXT, oids.VARCHAR, oids.BPCHAR, oids.NAME, oids.CHAR, oids.UNKNOWN, oids.JSON, 0}


def round_to_float4(value: float) -> float:
    """Round a float to single precision; ValueError if it does not fit."""
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        raise ValueError(f"value out of range for type real: {value!r}") from None


def _reads_back_as_float4(candidate: Decimal, value: float) -> bool:
    try:
        return round_to_float4(float(candidate)) == value
    except ValueError:  # rounded past the largest float4
        return False


def _neighbours(value: float, single: bool) -> tuple[Fraction, Fraction]:
    """The representable values just below and above a positive finite ``value``."""
    if single:
        bits = _U32.unpack(_F32.pack(value))[0]
        below = _F32.unpack(_U32.pack(bits - 1))[0] if bits > 0 else 0.0
        above = _F32.unpack(_U32.pack(bits + 1))[0]
    else:
        below = math.nextafter(value, 0.0)
        above = math.nextafter(value, math.inf)
    if math.isinf(above):
        # Past the largest finite value, pretend the spacing continues.
        return Fraction(below), 2 * Fraction(value) - Fraction(below)
    return Fraction(below), Fraction(above)


def _digits(value: Decimal) -> tuple[str, int]:
    """Significant digits (no trailing zeros) and scientific exponent of a positive Decimal."""
    _, digit_tuple, exponent = value.as_tuple()
    digits = "".join(map(str, digit_tuple))
    sci_exponent = len(digits) - 1 + int(exponent)
    return digits.rstrip("0") or "0", sci_exponent


def _strictly_inside(candidate: Decimal, low: Fraction, high: Fraction) -> bool:
    _, digit_tuple, exponent = candidate.as_tuple()
    coefficient = int("".join(map(str, digit_tuple)))
    exponent = int(exponent)
    # A decimal can only sit exactly on a binary midpoint if it is dyadic; most
    # candidates are not, which keeps this check off the slow path.
    if exponent < 0 and coefficient % 5**-exponent:
        return True
    exact = Fraction(candidate)
    return low < exact < high


def _shortest_digits(value: float, single: bool) -> tuple[str, int]:
    """Shortest decimal that reads back as ``value``, chosen like PostgreSQL's Ryu.

    PostgreSQL builds Ryu without STRICTLY_SHORTEST, so a decimal lying exactly
    halfway to a neighbouring float is never accepted even though round-half-even
    input would map it back; Python's repr does accept it. We therefore start from
    repr (or the float4 equivalent) and fall back to an exact search when the
    candidate sits on such a boundary.
    """
    below, above = _neighbours(value, single)
    exact = Fraction(value)
    low = (exact + below) / 2
    high = (exact + above) / 2
    if single:
        for precision in range(9):
            quick = Decimal(f"{value:.{precision}e}")
            if _reads_back_as_float4(quick, value):
                break
    else:
        quick = Decimal(repr(value))
    if _strictly_inside(quick, low, high):
        return _digits(quick)
    for precision in range(1, 18):
        _, digit_tuple, exponent = Decimal(f"{value:.{precision - 1}e}").as_tuple()
        nearest = int("".join(map(str, digit_tuple)))
        scale = Fraction(10) ** int(exponent)
        inside = [m for m in (nearest - 1, nearest, nearest + 1) if low < m * scale < high]
        if inside:
            best = min(inside, key=lambda m: (abs(m * scale - exact), m % 2))
            return _digits(Decimal(best).scaleb(int(exponent)))
    return _digits(Decimal(repr(value)))


def format_float(value: float, single: bool = False) -> str:
    """Format a float as PostgreSQL does with extra_float_digits >= 1."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if single:
        value = round_to_float4(value)
    digits, sci_exponent = _shortest_digits(abs(value), single)
    # Same thresholds as printf's %g with the type's precision (DBL_DIG=15, FLT_DIG=6).
    if -4 <= sci_exponent < (6 if single else 15):
        if sci_exponent >= 0:
            whole = digits[: sci_exponent + 1].ljust(sci_exponent + 1, "0")
            frac = digits[sci_exponent + 1 :]
            text = whole + ("." + frac if frac else "")
        else:
            text = "0." + "0" * (-sci_exponent - 1) + digits
    else:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        text = f"{mantissa}e{'+' if sci_exponent >= 0 else '-'}{abs(sci_exponent):02d}"
    return ("-" if value < 0 else "") + text


def format_numeric(value: Decimal) -> str:
    """Format a Decimal as numeric_out does: never with an exponent, no negative zero."""
    if value.is_nan():
        if value.is_snan():
            raise ValueError("signaling NaN is not a numeric value")
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_zero():
        value = abs(value)
    return format(value, "f")


def _format_offset(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or secs:
        text += f":{minutes:02d}"
    if secs:
        text += f":{secs:02d}"
    return text


def _format_time_of_day(hour: int, minute: int, second: int, micro: int) -> str:
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if micro:
        text += f".{micro:06d}".rstrip("0")
    return text


def format_timestamp(value: datetime, with_zone: bool) -> str:
    """ISO timestamp; with a zone, naive values are taken as UTC."""
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d} " + _format_time_of_day(
        value.hour, value.minute, value.second, value.microsecond
    )
    if with_zone:
        offset = value.utcoffset() if value.tzinfo is not None else None
        text += _format_offset(offset or timedelta(0))
    return text


def format_interval(value: timedelta) -> str:
    """Interval in IntervalStyle=postgres, with the day and time parts sharing one sign."""
    micros = value // timedelta(microseconds=1)
    sign = -1 if micros < 0 else 1
    days, rest = divmod(abs(micros), 86_400_000_000)
    parts = []
    if days:
        parts.append(f"{sign * days} day" + ("" if sign * days == 1 else "s"))
    if rest or not days:
        seconds, micro = divmod(rest, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        clock = _format_time_of_day(hour, minute, second, micro)
        parts.append(("-" if sign < 0 and rest else "") + clock)
    return " ".join(parts)


def encode_text(value: object, oid: int) -> bytes:
    """Encode a non-NULL Python value in PostgreSQL's text output format for type ``oid``."""
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        if oid in _INT_RANGES:
            low, high = _INT_RANGES[oid]
            if not low <= value <= high:
                raise ValueError(f"{value} is out of range for type OID {oid}")
        return str(value).encode()
    if isinstance(value, float):
        if oid == oids.NUMERIC:
            if math.isfinite(value):
                return format_numeric(Decimal(repr(value))).encode()
            return format_float(value).encode()
        return format_float(value, single=oid == oids.FLOAT4).encode()
    if isinstance(value, Decimal):
        return format_numeric(value).encode()
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"\\x" + bytes(value).hex().encode()
    if isinstance(value, datetime):
        return format_timestamp(value, with_zone=oid == oids.TIMESTAMPTZ).encode()
    if isinstance(value, date):
        return value.isoformat().encode()
    if isinstance(value, time):
        return _format_time_of_day(value.hour, value.minute, value.second, value.microsecond).encode()
    if isinstance(value, timedelta):
        return format_interval(value).encode()
    raise TypeError(f"cannot encode {type(value).__name__} as text")


def _parse_int(text: str, oid: int) -> int:
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"invalid input syntax for an integer: {text!r}")
    value = int(text)
    low, high = _INT_RANGES[oid]
    if not low <= value <= high:
        raise ValueError(f"value {text!r} is out of range for type OID {oid}")
    return value


def _parse_float(text: str, oid: int) -> float:
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError(f"invalid input syntax for a floating-point number: {text!r}")
    value = float(text)
    if math.isinf(value) and "inf" not in text.lower():
        raise ValueError(f"value {text!r} is out of range for type double precision")
    return round_to_float4(value) if oid == oids.FLOAT4 else value


def _parse_numeric(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"invalid input syntax for type numeric: {text!r}") from None
    if value.is_snan():
        raise ValueError(f"invalid input syntax for type numeric: {text!r}")
    return value


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _BOOL_TRUE:
        return True
    if word in _BOOL_FALSE:
        return False
    raise ValueError(f"invalid input syntax for type boolean: {text!r}")


def _parse_bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError("invalid hexadecimal data for type bytea") from None
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] != 0x5C:  # backslash
            out.append(raw[i])
            i += 1
        elif raw[i + 1 : i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        elif re.fullmatch(rb"[0-3][0-7][0-7]", raw[i + 1 : i + 4]):
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ValueError("invalid input syntax for type bytea")
    return bytes(out)


def _parse_timestamp(text: str, with_zone: bool) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"invalid input syntax for type timestamp: {text!r}") from None
    if with_zone:
        # Naive input means the session time zone, which dpproxy pins to UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(tzinfo=None)


def decode_text(data: bytes, oid: int) -> object:
    """Parse a text-format parameter of type ``oid``.

    Types without a dedicated parser (including 0, "unspecified") come back as
    ``str`` so the backend can interpret them.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("invalid UTF-8 in text parameter") from None
    if "\x00" in text:
        raise ValueError("text parameter contains a NUL character")
    if oid in _TEXT_OIDS:
        return text
    if oid in _INT_RANGES:
        return _parse_int(text, oid)
    if oid in (oids.FLOAT4, oids.FLOAT8):
        return _parse_float(text, oid)
    if oid == oids.NUMERIC:
        return _parse_numeric(text)
    if oid == oids.BOOL:
        return _parse_bool(text)
    if oid == oids.BYTEA:
        return _parse_bytea(text)
    if oid in (oids.DATE, oids.TIMESTAMP, oids.TIMESTAMPTZ) and text.strip().lower() in ("infinity", "-infinity"):
        return text.strip().lower()  # no Python date holds it: bound as the text PostgreSQL reads
    if oid == oids.DATE:
        try:
            return date.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"invalid input syntax for type date: {text!r}") from None
    if oid == oids.TIME:
        try:
            return time.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"invalid input syntax for type time: {text!r}") from None
    if oid in (oids.TIMESTAMP, oids.TIMESTAMPTZ):
        return _parse_timestamp(text, with_zone=oid == oids.TIMESTAMPTZ)
    return text
