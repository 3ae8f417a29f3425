"""Post-processing: evaluate expressions over noisy aggregates and public group keys.

These expressions only ever see values that have already been noised (or public key
values), so anything computed here is post-processing and costs no privacy. The
semantics follow PostgreSQL's where an analyst could notice (integer division truncates,
NULL propagates, three-valued logic).
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from rewriter.posttypes import PostProcessError, type_params

__all__ = ["DIVISION_BY_ZERO", "PostProcessError", "evaluate"]

Value = Any
DIVISION_BY_ZERO = "22012"


def evaluate(node: exp.Expression, env: dict[str, Value]) -> Value:
    """Evaluate a post-processing expression; placeholders are looked up in `env`.

    Raises PostProcessError with PostgreSQL's SQLSTATE where PostgreSQL would raise: an
    integer result beyond bigint, a decimal beyond what numeric holds, values of types
    that cannot be compared."""
    try:
        v = _eval(node, env)
    except (TypeError, ValueError) as e:  # GREATEST(COUNT(*), 'abc'), ROUND(x, 'F'): no cast
        raise PostProcessError("22P02", "invalid input: values of different types after noise") from e
    except (InvalidOperation, OverflowError) as e:
        raise PostProcessError("22003", "value out of range") from e
    if type(v) is int and not _INT8_MIN <= v <= _INT8_MAX:
        raise PostProcessError("22003", "bigint out of range")
    return v


_INT8_MIN, _INT8_MAX = -(1 << 63), (1 << 63) - 1


def _eval(n: exp.Expression, env: dict[str, Value]) -> Value:  # noqa: C901 - a dispatcher
    if isinstance(n, exp.Column):
        return env[n.name]
    if isinstance(n, exp.Literal):
        if n.is_string:
            return n.this
        text = n.this
        return int(text) if text.lstrip("-").isdigit() else Decimal(text)
    if isinstance(n, exp.Null):
        return None
    if isinstance(n, exp.Boolean):
        return bool(n.this)
    if isinstance(n, exp.Paren):
        return _eval(n.this, env)
    if isinstance(n, exp.Neg):
        v = _eval(n.this, env)
        return None if v is None else -v
    if isinstance(n, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)):
        return _arith(n, _eval(n.this, env), _eval(n.expression, env))
    if isinstance(n, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
        return _compare(n, _eval(n.this, env), _eval(n.expression, env))
    if isinstance(n, exp.And):
        a, b = _eval(n.this, env), _eval(n.expression, env)
        if a is False or b is False:
            return False
        return None if a is None or b is None else True
    if isinstance(n, exp.Or):
        a, b = _eval(n.this, env), _eval(n.expression, env)
        if a is True or b is True:
            return True
        return None if a is None or b is None else False
    if isinstance(n, exp.Not):
        v = _eval(n.this, env)
        return None if v is None else not v
    if isinstance(n, exp.Is):
        v = _eval(n.this, env)
        target = n.expression
        holds = v is None if isinstance(target, exp.Null) else v is bool(_eval(target, env))
        return holds != bool(n.args.get("negate"))  # IS NOT is Is(negate=True)
    if isinstance(n, exp.Between):
        v, lo, hi = _eval(n.this, env), _eval(n.args["low"], env), _eval(n.args["high"], env)
        if v is None or lo is None or hi is None:
            return None
        return bool(_compare(exp.GTE(), v, lo)) and bool(_compare(exp.LTE(), v, hi))
    if isinstance(n, exp.In):
        v = _eval(n.this, env)
        if v is None:
            return None
        opts = [_eval(e, env) for e in n.expressions]
        return any(o is not None and _eq(v, o) for o in opts) or (None if None in opts else False)
    if isinstance(n, exp.Nullif):
        a, b = _eval(n.this, env), _eval(n.expression, env)
        return None if a is not None and b is not None and _eq(a, b) else a
    if isinstance(n, exp.Coalesce):
        args = [n.this, *n.expressions]
        for i, e in enumerate(args):
            v = _eval(e, env)
            if isinstance(v, str):  # an untyped literal takes the other arguments' type
                return _like_others([v, *_values_of(args[i + 1 :], env)])[0]
            if v is not None:
                return v
        return None
    if isinstance(n, (exp.Greatest, exp.Least)):
        vals = _like_others([v for v in (_eval(e, env) for e in [n.this, *n.expressions]) if v is not None])
        if not vals:
            return None
        return max(vals) if isinstance(n, exp.Greatest) else min(vals)
    if isinstance(n, exp.Case):
        for cond in n.args.get("ifs") or []:
            if _eval(cond.this, env) is True:
                return _eval(cond.args["true"], env)
        default = n.args.get("default")
        return _eval(default, env) if default is not None else None
    if isinstance(n, exp.If):
        if _eval(n.this, env) is True:
            return _eval(n.args["true"], env)
        false = n.args.get("false")
        return _eval(false, env) if false is not None else None
    if isinstance(n, (exp.Round, exp.Trunc)):
        v = _eval(n.this, env)
        if isinstance(v, int) and n.args.get("decimals") is None:
            v = float(v)  # round(int) is round(double precision) in PostgreSQL
        return _round(v, n.args.get("decimals"), env, truncate=isinstance(n, exp.Trunc))
    if isinstance(n, exp.Sign):
        v = _eval(n.this, env)
        if v is None:
            return None
        sign = (v > 0) - (v < 0)
        return Decimal(sign) if isinstance(v, Decimal) else float(sign)
    if isinstance(n, exp.Abs):
        v = _eval(n.this, env)
        return None if v is None else abs(v)
    if isinstance(n, (exp.Ceil, exp.Floor)):
        v = _eval(n.this, env)
        if v is None:
            return None
        if isinstance(v, (float, int)):  # ceil(int) is ceil(double precision) in PostgreSQL
            return float(math.ceil(v) if isinstance(n, exp.Ceil) else math.floor(v))
        rounding = ROUND_CEILING if isinstance(n, exp.Ceil) else ROUND_FLOOR
        return Decimal(v).to_integral_value(rounding=rounding)
    if isinstance(n, exp.Sqrt):
        v = _eval(n.this, env)
        if v is None:
            return None
        if v < 0:
            raise PostProcessError("2201F", "cannot take square root of a negative number")
        return math.sqrt(float(v))
    if isinstance(n, exp.Cast):
        return _cast(_eval(n.this, env), n.to)
    raise PostProcessError("0A000", f"cannot evaluate {type(n).__name__} after noise")


def _values_of(args: list[exp.Expression], env: dict[str, Value]) -> list[Value]:
    """The values of `args` that are not literals and evaluate without error (only
    their types are wanted)."""
    out = []
    for a in args:
        if not isinstance(a, exp.Literal):
            try:
                out.append(_eval(a, env))
            except PostProcessError:
                continue
    return out


def _like_others(vals: list[Value]) -> list[Value]:
    """`vals` with untyped string literals read as the type of the other values."""
    ref = next((v for v in vals if v is not None and not isinstance(v, str)), None)
    return vals if ref is None else [_literal_like(v, ref) for v in vals]


def _eq(a: Value, b: Value) -> bool:
    a, b = _coerced(a, b)
    try:
        return bool(a == b)
    except TypeError:
        return False


def _coerced(a: Value, b: Value) -> tuple[Value, Value]:
    """An untyped string literal compared with a number or a date, read as one (as
    PostgreSQL resolves it; the plan checked it reads)."""
    return _literal_like(a, b), _literal_like(b, a)


def _literal_like(v: Value, other: Value) -> Value:
    if not isinstance(v, str):
        return v
    if isinstance(other, (int, float, Decimal)) and not isinstance(other, bool):
        return Decimal(v.strip())
    if isinstance(other, datetime):  # a timestamp key (DATE_TRUNC): DP sessions run in UTC
        moment = datetime.fromisoformat(v.strip())
        return moment.replace(tzinfo=UTC) if other.tzinfo is not None and moment.tzinfo is None else moment
    return _as_date(v) if _is_date(other) else v


def _promote(a: Value, b: Value) -> tuple[Value, Value]:
    if isinstance(a, float) or isinstance(b, float):
        return float(a), float(b)
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return Decimal(a), Decimal(b)
    return a, b


def _date_arith(n: exp.Expression, a: Value, b: Value) -> Value:
    """date - date (whole days, an integer) and date +/- whole days, as PostgreSQL."""
    if isinstance(n, exp.Sub) and _is_date(a) and _is_date(b):
        return (a - b).days
    try:
        if isinstance(n, (exp.Add, exp.Sub)) and _is_date(a) and type(b) is int:
            return a + timedelta(days=b if isinstance(n, exp.Add) else -b)
        if isinstance(n, exp.Add) and type(a) is int and _is_date(b):
            return b + timedelta(days=a)
    except OverflowError as e:
        raise PostProcessError("22008", "date out of range") from e
    raise PostProcessError("42883", "operator does not exist for date and "
                           f"{'date' if _is_date(b) and _is_date(a) else type(b if _is_date(a) else a).__name__}")  # fmt: skip


def _is_date(v: Value) -> bool:
    return isinstance(v, date) and not isinstance(v, datetime)


def _as_date(v: Value) -> date:
    """A date, or a string literal read as one (PostgreSQL casts an untyped literal
    compared with a date to date)."""
    if _is_date(v):
        return v  # type: ignore[no-any-return]
    if isinstance(v, str):
        try:
            return date.fromisoformat(v.strip())
        except ValueError as e:
            raise PostProcessError("22007", f'invalid input syntax for type date: "{v}"') from e
    raise PostProcessError("42883", f"cannot compare date with {type(v).__name__}")


def _arith(n: exp.Expression, a: Value, b: Value) -> Value:
    if a is None or b is None:
        return None
    if _is_date(a) or _is_date(b):
        return _date_arith(n, a, b)
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        raise PostProcessError("42883", f"operator does not exist for {type(a).__name__}")
    a, b = _promote(a, b)
    if isinstance(n, exp.Add):
        return a + b
    if isinstance(n, exp.Sub):
        return a - b
    if isinstance(n, exp.Mul):
        return a * b
    if b == 0:
        raise PostProcessError(DIVISION_BY_ZERO, "division by zero")
    if isinstance(n, exp.Mod):
        return math.fmod(a, b) if isinstance(a, float) else a - b * _trunc_div(a, b)
    if isinstance(a, int):
        return _trunc_div(a, b)
    if isinstance(a, Decimal):
        return _decimal_div(a, b)
    return a / b


def _trunc_div(a: Value, b: Value) -> Value:
    # PostgreSQL integer division truncates toward zero (Python's // floors).
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _decimal_div(a: Decimal, b: Decimal) -> Decimal:
    try:
        q = a / b
    except InvalidOperation as e:
        raise PostProcessError("22003", "numeric value out of range") from e
    # Like PostgreSQL's numeric division: a sensible number of significant digits.
    return q.quantize(Decimal(1).scaleb(-16), rounding=ROUND_HALF_UP) if abs(q) < 10**20 else q


def _compare(n: exp.Expression, a: Value, b: Value) -> Value:
    if a is None or b is None:
        return None
    a, b = _coerced(a, b)
    if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)):
        a, b = _promote(a, b)
    elif _is_date(a) or _is_date(b):
        a, b = _as_date(a), _as_date(b)
    try:
        if isinstance(n, exp.EQ):
            return a == b
        if isinstance(n, exp.NEQ):
            return a != b
        if isinstance(n, exp.GT):
            return a > b
        if isinstance(n, exp.GTE):
            return a >= b
        if isinstance(n, exp.LT):
            return a < b
        return a <= b
    except TypeError as e:
        raise PostProcessError("42883", "cannot compare values of different types") from e


def _round(v: Value, decimals: exp.Expression | None, env: dict[str, Value], truncate: bool = False) -> Value:
    """ROUND (half away from zero for numeric, half to even for double) or TRUNC."""
    if v is None:
        return None
    places = 0 if decimals is None else _eval(decimals, env)
    if places is None:
        return None
    if isinstance(v, float):
        if truncate:
            return float(math.trunc(v))
        return float(round(v, int(places))) if decimals is not None else float(round(v))
    return Decimal(v).quantize(Decimal(1).scaleb(-int(places)), rounding=ROUND_DOWN if truncate else ROUND_HALF_UP)


_PG_INT_NAMES = {"SMALLINT": "smallint", "INT": "integer", "BIGINT": "bigint"}


def _cast(v: Value, to: exp.Expression) -> Value:
    if v is None:
        return None
    t = to.this if isinstance(to, exp.DataType) else None
    name = t.name if t is not None else ""
    if isinstance(v, bool):  # PostgreSQL casts a boolean to integer or text only
        if name == "INT":
            return int(v)
        if name in ("TEXT", "VARCHAR", "CHAR"):
            v = "true" if v else "false"
    try:
        if name in ("INT", "BIGINT", "SMALLINT"):
            n = int(Decimal(str(v)).to_integral_value(rounding=ROUND_HALF_UP))
            bits = {"SMALLINT": 16, "INT": 32, "BIGINT": 64}[name]
            if not -(1 << (bits - 1)) <= n < 1 << (bits - 1):
                raise PostProcessError("22003", f"{_PG_INT_NAMES[name]} out of range")
            return n
        params = type_params(to)
        if name in ("DECIMAL", "NUMERIC", "BIGDECIMAL"):
            return _numeric_typmod(Decimal(str(v)) if isinstance(v, float) else Decimal(v), params)
        if name == "DOUBLE":
            return float(v)
        if name == "FLOAT":  # real
            return float(struct.unpack("f", struct.pack("f", float(v)))[0])
        if name in ("TEXT", "VARCHAR"):
            text = str(v)
            return text[: params[0]] if params else text  # varchar(n) truncates, as PostgreSQL does
        if name == "CHAR":  # char(n): cut or padded to n
            n = params[0] if params else 1
            return str(v)[:n].ljust(n)
        if name == "DATE" and (_is_date(v) or isinstance(v, str)):
            return _as_date(v)
    except OverflowError as e:  # real: beyond float4's range
        raise PostProcessError("22003", "value out of range: overflow") from e
    except (InvalidOperation, ValueError) as e:
        raise PostProcessError("22P02", f"invalid value for type {name.lower()}") from e
    raise PostProcessError("0A000", f"cast to {name.lower()} is not supported after noise")


def _numeric_typmod(d: Decimal, params: list[int]) -> Decimal:
    """`d` as numeric(precision, scale): rounded half away from zero to `scale` digits,
    and 22003 if it then needs more than `precision` digits (PostgreSQL's rules)."""
    if not params or not d.is_finite():
        return d
    precision, scale = params[0], params[1] if len(params) > 1 else 0
    out = d.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    if out != 0 and out.adjusted() + 1 > precision - scale:
        raise PostProcessError("22003", f"numeric field overflow: numeric({precision},{scale}) must "
                               f"round to an absolute value below 10^{precision - scale}")  # fmt: skip
    return out
