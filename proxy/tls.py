"""TLS for client connections: the server context and the SCRAM channel-binding data.

Channel binding type ``tls-server-end-point`` (RFC 5929) binds SCRAM to the hash of
the certificate dpproxy presents, computed with the certificate's own signature hash
(SHA-256 when that is MD5 or SHA-1), exactly as PostgreSQL does.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

# Signature algorithm OIDs (DER-encoded content) -> hash used for tls-server-end-point.
_SIG_HASHES = {
    "1.2.840.113549.1.1.11": "sha256",  # sha256WithRSAEncryption
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.10045.4.3.2": "sha256",  # ecdsa-with-SHA256
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.113549.1.1.5": "sha256",  # sha1WithRSA: RFC 5929 says use SHA-256
    "1.2.840.113549.1.1.4": "sha256",  # md5WithRSA: likewise
}


@dataclass(frozen=True)
class TLSSetup:
    """A loaded certificate: the context for handshakes and its channel-binding hash."""

    context: ssl.SSLContext
    end_point_hash: bytes


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, pos, pos + length


def _oid_text(content: bytes) -> str:
    parts = [content[0] // 40, content[0] % 40]
    value = 0
    for b in content[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def signature_hash(der: bytes) -> str:
    """The hash algorithm of a DER certificate's signature, as tls-server-end-point uses it.

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }.
    """
    _, start, _ = _der_item(der, 0)
    _, _, tbs_end = _der_item(der, start)
    _, alg_start, _ = _der_item(der, tbs_end)
    tag, oid_start, oid_end = _der_item(der, alg_start)
    if tag != 0x06:
        raise ValueError("certificate signature algorithm is not an OID")
    oid = _oid_text(der[oid_start:oid_end])
    if oid not in _SIG_HASHES:
        raise ValueError(f"unsupported certificate signature algorithm {oid} for channel binding")
    return _SIG_HASHES[oid]


def end_point_hash(cert_pem: str) -> bytes:
    """The tls-server-end-point channel-binding data of the first certificate in a PEM file."""
    begin = cert_pem.index("-----BEGIN CERTIFICATE-----")
    end = cert_pem.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(cert_pem[begin:end])
    return hashlib.new(signature_hash(der), der).digest()


def load_tls(cert_file: Path, key_file: Path) -> TLSSetup:
    """A server SSLContext (TLS 1.2 or newer) for the certificate chain and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return TLSSetup(ctx, end_point_hash(Path(cert_file).read_text()))
