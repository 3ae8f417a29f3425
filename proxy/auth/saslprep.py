"""SASLprep (RFC 4013) of passwords, with PostgreSQL's fallback.

PostgreSQL applies SASLprep to the password before hashing it for SCRAM, and
when the password is not valid UTF-8 or SASLprep rejects it, it hashes the
raw bytes instead. Doing the same keeps our verifiers interchangeable with
PostgreSQL's.
"""

from __future__ import annotations

import stringprep
import unicodedata

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points are refused for stored strings
)


def saslprep(text: str) -> str | None:
    """Return the SASLprep form of ``text``, or None if SASLprep rejects it."""
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in text
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return None
    for ch in normalized:
        if any(check(ch) for check in _PROHIBITED):
            return None
    # RFC 3454 section 6: right-to-left text must be wholly right-to-left.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return None
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return None
    return normalized


def password_bytes(password: str | bytes) -> bytes:
    """The bytes PostgreSQL feeds to PBKDF2: SASLprep'd UTF-8, else the raw bytes."""
    if isinstance(password, bytes):
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return password
    else:
        text = password
    prepared = saslprep(text)
    if prepared is None:
        return password if isinstance(password, bytes) else password.encode("utf-8")
    return prepared.encode("utf-8")
