"""PostgreSQL types: OIDs, sizes, and value codecs for text and binary formats.

The codecs live in ``text_values`` and ``binary_values``; this module is the
one import point and adds ``decode_param``, which picks between them.
"""

from __future__ import annotations

from proxy.wire.binary_values import decode_binary, decode_numeric, encode_binary, encode_numeric
from proxy.wire.oids import *  # noqa: F403  (re-export the OID constants)
from proxy.wire.oids import ARRAY_OF, TYPE_SIZES, type_size
from proxy.wire.text_values import decode_text, encode_text, format_float, format_numeric

TEXT_FORMAT = 0
BINARY_FORMAT = 1


def decode_param(data: bytes, oid: int, fmt: int) -> object:
    """Decode one non-NULL Bind parameter of type ``oid`` sent in format ``fmt``.

    Raises ``ValueError`` with a client-presentable message on malformed input
    or an unsupported (type, format) pair.
    """
    if fmt == TEXT_FORMAT:
        return decode_text(data, oid)
    if fmt == BINARY_FORMAT:
        return decode_binary(data, oid)
    raise ValueError(f"unsupported format code: {fmt}")


__all__ = [
    "ARRAY_OF",
    "BINARY_FORMAT",
    "TEXT_FORMAT",
    "TYPE_SIZES",
    "decode_binary",
    "decode_numeric",
    "decode_param",
    "decode_text",
    "encode_binary",
    "encode_numeric",
    "encode_text",
    "format_float",
    "format_numeric",
    "type_size",
]
