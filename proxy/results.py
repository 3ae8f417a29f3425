"""Encoding results (rows dpproxy computed) into RowDescription and DataRow messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.wire import oids
from proxy.wire.codec import FieldDescription, copy_data, data_row, row_description
from proxy.wire.types import encode_binary, encode_text

TYPE_OIDS = {
    "bool": oids.BOOL,
    "int2": oids.INT2,
    "int4": oids.INT4,
    "int8": oids.INT8,
    "float4": oids.FLOAT4,
    "float8": oids.FLOAT8,
    "numeric": oids.NUMERIC,
    "text": oids.TEXT,
    "varchar": oids.VARCHAR,
    "bpchar": oids.BPCHAR,
    "name": oids.NAME,
    "date": oids.DATE,
    "timestamp": oids.TIMESTAMP,
    "timestamptz": oids.TIMESTAMPTZ,
    "oid": oids.OID,
}


def type_oid(type_name: str) -> int:
    """The OID of a PostgreSQL type name dpproxy produces, `name[]` for an array of one
    (text for anything else)."""
    if type_name.endswith("[]"):
        element = TYPE_OIDS.get(type_name[:-2])
        return oids.ARRAY_OF.get(element, oids.TEXT_ARRAY) if element is not None else oids.TEXT_ARRAY
    return TYPE_OIDS.get(type_name, oids.TEXT)


def column_formats(formats: Sequence[int], ncols: int) -> list[int]:
    """Expand Bind's result-format codes (none, one for all, or one per column)."""
    if not formats:
        return [0] * ncols
    if len(formats) == 1:
        return [formats[0]] * ncols
    return list(formats)


def describe_columns(columns: Sequence[tuple[str, str]], formats: Sequence[int] = ()) -> bytes:
    """RowDescription for computed columns: table OID 0, so no client looks them up."""
    fmts = column_formats(formats, len(columns))
    fields = [
        FieldDescription(
            name=name,
            table_oid=0,
            column_attnum=0,
            type_oid=(oid := type_oid(tname)),
            type_size=oids.type_size(oid),
            type_modifier=-1,
            format=fmts[i],
        )
        for i, (name, tname) in enumerate(columns)
    ]
    return row_description(fields)


def encode_rows(
    columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], formats: Sequence[int] = ()
) -> bytes:
    """DataRow messages for `rows`, each value in its column's requested format."""
    type_oids = [type_oid(t) for _, t in columns]
    fmts = column_formats(formats, len(columns))
    out = []
    for row in rows:
        values: list[bytes | None] = []
        for i, v in enumerate(row):
            if v is None:
                values.append(None)
            elif fmts[i] == 1:
                values.append(encode_binary(v, type_oids[i]))
            else:
                values.append(encode_text(v, type_oids[i]))
        out.append(data_row(values))
    return b"".join(out)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _csv_field(text: str, delimiter: str, null: str) -> str:
    if text == null or any(c in text for c in (delimiter, '"', "\n", "\r")) or text[:1].isspace():
        return '"' + text.replace('"', '""') + '"'
    return text


def encode_copy_rows(
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    csv: bool = False,
    header: bool = False,
    delimiter: str = "\t",
    null: str = "\\N",
) -> bytes:
    """CopyData messages, one per row, in COPY's text or CSV format."""
    type_oids = [type_oid(t) for _, t in columns]
    out = []
    if header and csv:
        out.append(copy_data((delimiter.join(_csv_field(n, delimiter, null) for n, _ in columns) + "\n").encode()))
    for row in rows:
        fields = []
        for v, oid in zip(row, type_oids, strict=True):
            if v is None:
                fields.append(null)
                continue
            text = encode_text(v, oid).decode("utf-8")
            fields.append(_csv_field(text, delimiter, null) if csv else text.translate(_COPY_ESCAPES))
        out.append(copy_data((delimiter.join(fields) + "\n").encode("utf-8")))
    return b"".join(out)
