"""Post-processing: evaluate expressions over noisy aggregates and public group keys.

These expressions only ever see values that have already been noised (or public key
values), so anything computed here is post-processing and costs no privacy. The
semantics follow PostgreSQL's where an analyst could notice (integer division truncates,
NULL propagates, three-valued logic).
"""

from __future__ import annotations

import math
import struct
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from rewriter.errors import RewriteError

Value = Any
DIVISION_BY_ZERO = "22012"


class PostProcessError(RewriteError):
    """An error computing a post-processed value (it depends on noisy values only)."""


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
        return _num(lo) <= _num(v) <= _num(hi)
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
        for e in [n.this, *n.expressions]:
            v = _eval(e, env)
            if v is not None:
                return v
        return None
    if isinstance(n, (exp.Greatest, exp.Least)):
        vals = [v for v in (_eval(e, env) for e in [n.this, *n.expressions]) if v is not None]
        if not vals:
            return None
        return max(vals, key=_num) if isinstance(n, exp.Greatest) else min(vals, key=_num)
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


def _num(v: Value) -> Value:
    # Compare ints, Decimals and floats by value, the way PostgreSQL would after casts.
    if isinstance(v, float) or isinstance(v, (int, Decimal)):
        return v
    return v


def _eq(a: Value, b: Value) -> bool:
    try:
        return bool(a == b)
    except TypeError:
        return False


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
        params = _type_params(to)
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


def _type_params(to: exp.Expression) -> list[int]:
    """A type's integer modifiers (`numeric(10,2)` -> [10, 2]); 0A000 for any other kind."""
    if not isinstance(to, exp.DataType):
        return []
    out = []
    for param in to.expressions:
        value = param.this if isinstance(param, exp.DataTypeParam) else param
        if not (isinstance(value, exp.Literal) and not value.is_string and str(value.this).isdigit()):
            raise PostProcessError("0A000", f"cast to {to.sql(dialect='postgres')} is not supported after noise")
        out.append(int(str(value.this)))
    return out


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


# --- static types --------------------------------------------------------------------------

_NUMERIC_RANK = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3, "float4": 4, "float8": 5}


def infer_type(n: exp.Expression, env: dict[str, str]) -> str:
    """The PostgreSQL type name of a post-processing expression (for RowDescription)."""
    if isinstance(n, exp.Column):
        return env.get(n.name, "text")
    if isinstance(n, exp.Literal):
        if n.is_string:
            return "text"
        return "int4" if n.this.lstrip("-").isdigit() else "numeric"
    if isinstance(n, exp.Null):
        return "text"
    if isinstance(n, (exp.Boolean, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And,
                      exp.Or, exp.Not, exp.Is, exp.Between, exp.In)):  # fmt: skip
        return "bool"
    if isinstance(n, (exp.Paren, exp.Neg, exp.Abs, exp.Nullif)):
        return infer_type(n.this, env)
    if isinstance(n, exp.If):
        false = n.args.get("false")
        t = infer_type(n.args["true"], env)
        return _wider(t, infer_type(false, env)) if false is not None else t
    if isinstance(n, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)):
        divisor = n.expression.unnest() if isinstance(n, (exp.Div, exp.Mod)) else None
        if isinstance(divisor, exp.Literal) and not divisor.is_string and _zero(divisor.this):
            # Noisy values are never NULL: this would fail after the charge, every time.
            raise PostProcessError(DIVISION_BY_ZERO, "division by zero")
        a, b = infer_type(n.this, env), infer_type(n.expression, env)
        if "date" in (a, b):  # date - date is whole days; date +/- days a date
            ints = ("int2", "int4", "int8")
            if isinstance(n, exp.Sub) and a == b:
                return "int4"
            if isinstance(n, (exp.Add, exp.Sub)) and (b in ints or isinstance(n, exp.Add) and a in ints):
                return "date"
            op = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%"}[type(n)]
            raise PostProcessError("42883", f"operator does not exist: {a} {op} {b}",
                                   "dates after the noise can be compared, subtracted (whole days) "
                                   "and shifted by whole days")  # fmt: skip
        return _wider(a, b)
    if isinstance(n, (exp.Round, exp.Trunc)) and n.args.get("decimals") is not None:
        return "numeric"  # round(x, n) and trunc(x, n) exist for numeric only
    if isinstance(n, (exp.Round, exp.Trunc, exp.Ceil, exp.Floor, exp.Sign)):
        # PostgreSQL resolves these for integers to their double precision versions.
        return "numeric" if infer_type(n.this, env) == "numeric" else "float8"
    if isinstance(n, exp.Sqrt):
        return "float8"
    if isinstance(n, (exp.Coalesce, exp.Greatest, exp.Least)):
        types = [infer_type(e, env) for e in [n.this, *n.expressions]]
        out = types[0]
        for t in types[1:]:
            out = _wider(out, t)
        return out
    if isinstance(n, exp.Case):
        branches = [c.args["true"] for c in n.args.get("ifs") or []]
        if n.args.get("default") is not None:
            branches.append(n.args["default"])
        out = infer_type(branches[0], env) if branches else "text"
        for br in branches[1:]:
            out = _wider(out, infer_type(br, env))
        return out
    if isinstance(n, exp.Cast):
        return cast_type(n, infer_type(n.this, env))
    return "text"


# Casts after the noise (`_cast`): the type each target gives. PostgreSQL has no cast
# between dates and numbers, nor from booleans to numbers other than integer.
_CAST_TYPES = {"INT": "int4", "BIGINT": "int8", "SMALLINT": "int2", "DOUBLE": "float8", "FLOAT": "float4",
               "TEXT": "text", "VARCHAR": "varchar", "CHAR": "bpchar", "DATE": "date", "DECIMAL": "numeric",
               "NUMERIC": "numeric", "BIGDECIMAL": "numeric"}  # fmt: skip
_PG_TYPE_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
                  "float8": "double precision", "bool": "boolean", "bpchar": "character"}  # fmt: skip


def cast_type(n: exp.Cast, source: str) -> str:
    """The type of a cast after the noise of a value of type `source`; refused before
    anything runs (a PostProcessError when the plan is made) where it would
    fail on every value (PostgreSQL's 42846 where it has no such cast, 0A000 where
    dpproxy does not cast after the noise)."""
    name = n.to.this.name if isinstance(n.to, exp.DataType) else ""
    target = _CAST_TYPES.get(name)
    if target is None:
        raise PostProcessError("0A000", f"cast to {n.to.sql(dialect='postgres').lower()} is not supported after noise",
                               "cast released values to a number type, text or date")  # fmt: skip
    _type_params(n.to)  # 0A000 for modifiers that are not integers
    numbers = _NUMERIC_RANK.keys()
    if (source == "date" and target in numbers or source in numbers and target == "date"
            or source == "bool" and target not in ("int4", "text", "varchar", "bpchar")):
        frm, to = (_PG_TYPE_NAMES.get(t, t) for t in (source, target))
        raise PostProcessError("42846", f"cannot cast type {frm} to {to}")
    return target


def _zero(text: str) -> bool:
    try:
        return Decimal(text) == 0
    except InvalidOperation:
        return False


def _wider(a: str, b: str) -> str:
    if "float4" in (a, b) and a != b and a in _NUMERIC_RANK and b in _NUMERIC_RANK:
        return "float8"  # real with anything but real is computed in double precision
    if a in _NUMERIC_RANK and b in _NUMERIC_RANK:
        wa = max(_NUMERIC_RANK[a], _NUMERIC_RANK[b])
        out = next(k for k, v in _NUMERIC_RANK.items() if v == wa)
        return "int8" if out in ("int2", "int4") and "int8" in (a, b) else out
    return a if a != "text" else b
