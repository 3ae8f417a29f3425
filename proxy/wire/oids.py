"""Builtin PostgreSQL type OIDs and their storage sizes (``pg_type.typlen``)."""

from __future__ import annotations

from types import MappingProxyType

BOOL = 16
BYTEA = 17
CHAR = 18
NAME = 19
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
UNKNOWN = 705
BPCHAR = 1042
VARCHAR = 1043
DATE = 1082
TIME = 1083
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
INTERVAL = 1186
NUMERIC = 1700

BOOL_ARRAY = 1000
BYTEA_ARRAY = 1001
NAME_ARRAY = 1003
INT2_ARRAY = 1005
INT4_ARRAY = 1007
TEXT_ARRAY = 1009
BPCHAR_ARRAY = 1014
VARCHAR_ARRAY = 1015
INT8_ARRAY = 1016
FLOAT4_ARRAY = 1021
FLOAT8_ARRAY = 1022
OID_ARRAY = 1028
TIMESTAMP_ARRAY = 1115
DATE_ARRAY = 1182
TIME_ARRAY = 1183
TIMESTAMPTZ_ARRAY = 1185
INTERVAL_ARRAY = 1187
NUMERIC_ARRAY = 1231

# Read-only so no caller can change what every session reports.
ARRAY_OF: MappingProxyType[int, int] = MappingProxyType(
    {
        BOOL: BOOL_ARRAY,
        BYTEA: BYTEA_ARRAY,
        NAME: NAME_ARRAY,
        INT2: INT2_ARRAY,
        INT4: INT4_ARRAY,
        TEXT: TEXT_ARRAY,
        BPCHAR: BPCHAR_ARRAY,
        VARCHAR: VARCHAR_ARRAY,
        INT8: INT8_ARRAY,
        FLOAT4: FLOAT4_ARRAY,
        FLOAT8: FLOAT8_ARRAY,
        OID: OID_ARRAY,
        TIMESTAMP: TIMESTAMP_ARRAY,
        DATE: DATE_ARRAY,
        TIME: TIME_ARRAY,
        TIMESTAMPTZ: TIMESTAMPTZ_ARRAY,
        INTERVAL: INTERVAL_ARRAY,
        NUMERIC: NUMERIC_ARRAY,
    }
)

_SIZES = {
    BOOL: 1,
    BYTEA: -1,
    CHAR: 1,
    NAME: 64,
    INT8: 8,
    INT2: 2,
    INT4: 4,
    TEXT: -1,
    OID: 4,
    JSON: -1,
    FLOAT4: 4,
    FLOAT8: 8,
    UNKNOWN: -2,
    BPCHAR: -1,
    VARCHAR: -1,
    DATE: 4,
    TIME: 8,
    TIMESTAMP: 8,
    TIMESTAMPTZ: 8,
    INTERVAL: 16,
    NUMERIC: -1,
}
TYPE_SIZES: MappingProxyType[int, int] = MappingProxyType(
    _SIZES | {array: -1 for array in ARRAY_OF.values()}
)


def type_size(oid: int) -> int:
    """The RowDescription size of a type: ``typlen``, -1 for varlena, -2 for C strings."""
    try:
        return TYPE_SIZES[oid]
    except KeyError:
        raise ValueError(f"unknown type OID {oid}") from None
