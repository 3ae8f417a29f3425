"""Static types of post-processing expressions (rewriter/postprocess.py evaluates them).

An expression over released values runs after the query has run and been charged, so
whatever would fail on every value must be refused when the plan is made: PostgreSQL
refuses `ABS(MIN(d))`, `MIN(d) > 5`, `COUNT(*) AND TRUE` or `CASE ... THEN MIN(d) ELSE 0`
before it reads a row, and so does dpproxy, with PostgreSQL's SQLSTATE (42883 for an
operator or function it lacks, 42804 for mismatched types, 42846 for a cast it lacks,
22P02/22007 for a literal that is no number or date). The types are PostgreSQL's names
(int4, numeric, date, text, bool...), as RowDescription sends them.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from sqlglot import exp

from rewriter.errors import RewriteError

NUMERIC_RANK = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3, "float4": 4, "float8": 5}
_TEXTS = ("text", "varchar", "bpchar")
_INTS = ("int2", "int4", "int8")
# A string literal or NULL: PostgreSQL's "unknown", which takes the other operand's type.
_UNKNOWN = "unknown"
_PG_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
             "float8": "double precision", "bool": "boolean", "bpchar": "character",
             "varchar": "character varying"}  # fmt: skip
_CAST_TYPES = {"INT": "int4", "BIGINT": "int8", "SMALLINT": "int2", "DOUBLE": "float8", "FLOAT": "float4",
               "TEXT": "text", "VARCHAR": "varchar", "CHAR": "bpchar", "DATE": "date", "DECIMAL": "numeric",
               "NUMERIC": "numeric", "BIGDECIMAL": "numeric"}  # fmt: skip
_OPERATORS = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%", exp.EQ: "=",
              exp.NEQ: "<>", exp.GT: ">", exp.GTE: ">=", exp.LT: "<", exp.LTE: "<="}  # fmt: skip
_NUMBER_FUNCTIONS = {exp.Abs: "abs", exp.Round: "round", exp.Trunc: "trunc", exp.Ceil: "ceil",
                     exp.Floor: "floor", exp.Sign: "sign", exp.Sqrt: "sqrt"}  # fmt: skip


class PostProcessError(RewriteError):
    """An error computing a post-processed value (it depends on noisy values only), or,
    raised when the plan is made, one it would raise on every value."""


def infer_type(n: exp.Expression, env: dict[str, str]) -> str:
    """The PostgreSQL type name of a post-processing expression over the placeholders
    typed in `env`; PostProcessError where PostgreSQL would refuse it."""
    t = _type(n, env)
    return "text" if t == _UNKNOWN else t


def require_boolean(n: exp.Expression, env: dict[str, str], what: str) -> None:
    """42804 unless `n` is a boolean (or NULL), as PostgreSQL requires of `what`'s
    argument (HAVING: a count there would drop every group instead of failing)."""
    if isinstance(n.unnest(), exp.Literal) and n.unnest().is_string:
        raise PostProcessError("0A000", f"a string literal as the argument of {what} is not supported",
                               "write TRUE or FALSE")  # fmt: skip
    _boolean(n, env, what)


def cast_type(n: exp.Cast, source: str) -> str:
    """The type of a cast, after the noise, of a value of type `source`; PostProcessError
    where it would fail on every value (PostgreSQL's 42846 where it has no such cast,
    0A000 where dpproxy does not cast after the noise)."""
    name = n.to.this.name if isinstance(n.to, exp.DataType) else ""
    target = _CAST_TYPES.get(name)
    if target is None:
        raise PostProcessError("0A000", f"cast to {n.to.sql(dialect='postgres').lower()} is not supported after noise",
                            "cast released values to a number type, text or date")  # fmt: skip
    type_params(n.to)
    if (source == "date" and target in NUMERIC_RANK or source in NUMERIC_RANK and target == "date"
            or source == "bool" and target not in ("int4", *_TEXTS)):  # fmt: skip
        raise PostProcessError("42846", f"cannot cast type {pg_name(source)} to {pg_name(target)}")
    return target


def type_params(to: exp.Expression) -> list[int]:
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


def pg_name(t: str) -> str:
    """PostgreSQL's name of a type, as its error messages write it."""
    return _PG_NAMES.get(t, t)


def wider(a: str, b: str) -> str:
    """The type two branches or operands resolve to (numbers widen; `unknown` and text
    take the other's)."""
    if "float4" in (a, b) and a != b and a in NUMERIC_RANK and b in NUMERIC_RANK:
        return "float8"  # real with anything but real is computed in double precision
    if a in NUMERIC_RANK and b in NUMERIC_RANK:
        wa = max(NUMERIC_RANK[a], NUMERIC_RANK[b])
        out = next(k for k, v in NUMERIC_RANK.items() if v == wa)
        return "int8" if out in ("int2", "int4") and "int8" in (a, b) else out
    if a == _UNKNOWN:
        return b
    return a if a != "text" or b == _UNKNOWN else b


def _category(t: str) -> str:
    if t in ("date", "timestamp", "timestamptz"):  # compared across types, as in PostgreSQL
        return "datetime"
    return "number" if t in NUMERIC_RANK else "text" if t in _TEXTS else t


def _type(n: exp.Expression, env: dict[str, str]) -> str:  # noqa: C901 - a dispatcher
    if isinstance(n, exp.Column):
        return env.get(n.name, "text")
    if isinstance(n, exp.Literal):
        if n.is_string:
            return _UNKNOWN
        return "int4" if n.this.lstrip("-").isdigit() else "numeric"
    if isinstance(n, exp.Null):
        return _UNKNOWN
    if isinstance(n, exp.Boolean):
        return "bool"
    if isinstance(n, exp.Paren):
        return _type(n.this, env)
    if isinstance(n, tuple(_OPERATORS)) and not isinstance(n, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)):
        _comparable(n.this, n.expression, env, _OPERATORS[type(n)])
        return "bool"
    if isinstance(n, exp.In):
        for e in n.expressions:
            _comparable(n.this, e, env, "=")
        return "bool"
    if isinstance(n, exp.Between):
        _comparable(n.this, n.args["low"], env, ">=")
        _comparable(n.this, n.args["high"], env, "<=")
        return "bool"
    if isinstance(n, (exp.And, exp.Or)):
        for side in (n.this, n.expression):
            _boolean(side, env, "AND" if isinstance(n, exp.And) else "OR")
        return "bool"
    if isinstance(n, exp.Not):
        _boolean(n.this, env, "NOT")
        return "bool"
    if isinstance(n, exp.Is):
        if isinstance(n.expression, exp.Boolean):
            _boolean(n.this, env, f"IS {'TRUE' if n.expression.this else 'FALSE'}")
        else:
            _type(n.this, env)
        return "bool"
    if isinstance(n, exp.Neg):
        t = _type(n.this, env)
        if t not in NUMERIC_RANK and t != _UNKNOWN:
            raise PostProcessError("42883", f"operator does not exist: - {pg_name(t)}")
        return t
    if isinstance(n, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)):
        return _arithmetic(n, env)
    if isinstance(n, tuple(_NUMBER_FUNCTIONS)):
        return _number_function(n, env)
    if isinstance(n, exp.Nullif):
        _comparable(n.this, n.expression, env, "=")
        return _type(n.this, env)
    if isinstance(n, (exp.Coalesce, exp.Greatest, exp.Least)):
        name = {exp.Coalesce: "COALESCE", exp.Greatest: "GREATEST", exp.Least: "LEAST"}[type(n)]
        return _common([n.this, *n.expressions], env, name)
    if isinstance(n, exp.Case):
        for c in n.args.get("ifs") or []:
            _boolean(c.this, env, "CASE/WHEN")
        branches = [c.args["true"] for c in n.args.get("ifs") or []]
        if n.args.get("default") is not None:
            branches.append(n.args["default"])
        return _common(branches, env, "CASE")
    if isinstance(n, exp.If):
        _boolean(n.this, env, "CASE/WHEN")
        false = n.args.get("false")
        return _common([n.args["true"], *([false] if false is not None else [])], env, "CASE")
    if isinstance(n, exp.Cast):
        source = _type(n.this, env)
        return cast_type(n, "text" if source == _UNKNOWN else source)
    return "text"


def _arithmetic(n: exp.Expression, env: dict[str, str]) -> str:
    divisor = n.expression.unnest() if isinstance(n, (exp.Div, exp.Mod)) else None
    if isinstance(divisor, exp.Literal) and not divisor.is_string and _zero(divisor.this):
        # Noisy values are never NULL: this would fail after the charge, every time.
        raise PostProcessError("22012", "division by zero")
    a, b = _type(n.this, env), _type(n.expression, env)
    op = _OPERATORS[type(n)]
    if _UNKNOWN in (a, b) and not any(isinstance(x, exp.Null) for x in (n.this, n.expression)):
        raise PostProcessError("0A000", f"a string literal in arithmetic over released values ({op}) "
                            "is not supported", "write the number without quotes")  # fmt: skip
    if {"timestamp", "timestamptz"} & {a, b}:
        raise PostProcessError("0A000", f"arithmetic on timestamps after the noise is not supported ({op})",
                               "compare released timestamps, or group by dates")  # fmt: skip
    if "date" in (a, b):  # date - date is whole days; date +/- days a date
        if isinstance(n, exp.Sub) and a == b:
            return "int4"
        days = ("int2", "int4")  # (no date + bigint in PostgreSQL)
        if isinstance(n, (exp.Add, exp.Sub)) and (b in days or isinstance(n, exp.Add) and a in days):
            return "date"
        raise PostProcessError("42883", f"operator does not exist: {pg_name(a)} {op} {pg_name(b)}",
                            "dates after the noise can be compared, subtracted (whole days) "
                            "and shifted by whole days")  # fmt: skip
    for t in (a, b):
        if t not in NUMERIC_RANK and t != _UNKNOWN:
            raise PostProcessError("42883", f"operator does not exist: {pg_name(a)} {op} {pg_name(b)}")
    return wider(a, b)


def _number_function(n: exp.Expression, env: dict[str, str]) -> str:
    t = _type(n.this, env)
    if t not in NUMERIC_RANK and t != _UNKNOWN:
        raise PostProcessError("42883", f"function {_NUMBER_FUNCTIONS[type(n)]}({pg_name(t)}) does not exist")
    if isinstance(n, (exp.Round, exp.Trunc)) and n.args.get("decimals") is not None:
        places = _type(n.args["decimals"], env)
        if places == _UNKNOWN:
            _literal_as(n.args["decimals"], "int4")
        elif places not in _INTS:
            raise PostProcessError("42883", f"function {_NUMBER_FUNCTIONS[type(n)]}({pg_name(t)}, "
                                f"{pg_name(places)}) does not exist")  # fmt: skip
        return "numeric"  # round(x, n) and trunc(x, n) exist for numeric only
    if isinstance(n, exp.Sqrt):
        return "float8"
    if isinstance(n, exp.Abs):
        return t
    # PostgreSQL resolves these for integers to their double precision versions.
    return "numeric" if t == "numeric" else "float8"


def _comparable(left: exp.Expression, right: exp.Expression, env: dict[str, str], op: str) -> None:
    """42883 unless PostgreSQL can compare the two sides; a string literal compared with
    a number or a date must read as one (22P02, 22007)."""
    a, b = _type(left, env), _type(right, env)
    if _UNKNOWN in (a, b):
        known, literal = (b, left) if a == _UNKNOWN else (a, right)
        _literal_as(literal, known)
        return
    if _category(a) != _category(b):
        raise PostProcessError("42883", f"operator does not exist: {pg_name(a)} {op} {pg_name(b)}")


def _literal_as(n: exp.Expression, t: str) -> None:
    """A string literal read as type `t` (NULL and other types pass)."""
    if not (isinstance(n, exp.Literal) and n.is_string):
        return
    text = str(n.this).strip()
    try:
        if t in NUMERIC_RANK:
            if not Decimal(text).is_finite() and t in _INTS:
                raise InvalidOperation
            if t in _INTS and Decimal(text) != Decimal(text).to_integral_value():
                raise InvalidOperation
        elif t == "date":
            date.fromisoformat(text)
        elif t in ("timestamp", "timestamptz"):
            datetime.fromisoformat(text)
        elif t == "bool" and text.lower() not in ("t", "f", "true", "false", "yes", "no", "on", "off", "1", "0"):
            raise InvalidOperation
    except (InvalidOperation, ValueError) as e:
        state = "22007" if t in ("date", "timestamp", "timestamptz") else "22P02"
        raise PostProcessError(state, f'invalid input syntax for type {pg_name(t)}: "{n.this}"') from e


def _boolean(n: exp.Expression, env: dict[str, str], what: str) -> None:
    t = _type(n, env)
    if t not in ("bool", _UNKNOWN):
        raise PostProcessError("42804", f"argument of {what} must be type boolean, not type {pg_name(t)}")


def _common(branches: list[exp.Expression], env: dict[str, str], what: str) -> str:
    """The type branches resolve to; 42804 when they cannot be matched."""
    out = _UNKNOWN
    for br in branches:
        t = _type(br, env)
        if out != _UNKNOWN and t != _UNKNOWN and _category(out) != _category(t):
            raise PostProcessError("42804", f"{what} types {pg_name(out)} and {pg_name(t)} cannot be matched")
        out = wider(out, t)
    if out != _UNKNOWN:
        for br in branches:
            _literal_as(br, out)
    return out


def _zero(text: str) -> bool:
    try:
        return Decimal(text) == 0
    except InvalidOperation:
        return False
