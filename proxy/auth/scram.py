"""Server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677).

Follows PostgreSQL's flavour: the user name inside the SCRAM messages is
ignored (the StartupMessage names the user), only ``tls-server-end-point``
channel binding is offered, and verifiers use PostgreSQL's text format so they
can be copied from or into ``pg_authid.rolpassword``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from proxy.auth.saslprep import password_bytes

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"
DEFAULT_ITERATIONS = 4096
SALT_BYTES = 16
NONCE_BYTES = 18
_KEY_BYTES = 32

_VERIFIER_RE = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")
# RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','.
_NONCE_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


class AuthenticationFailed(Exception):
    """The SCRAM exchange failed; the message is for the server log, not the client."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """What the server stores for a password: never the password itself."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes
    # A mock verifier stands in for an unknown user; the exchange always fails.
    is_mock: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        """PostgreSQL's text form ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``."""
        b64 = _b64encode
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt)}"
            f"${b64(self.stored_key)}:{b64(self.server_key)}"
        )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _keys_from_salted(salted: bytes) -> tuple[bytes, bytes]:
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server_key = _hmac(salted, b"Server Key")
    return stored_key, server_key


def compute_verifier(password: str | bytes, salt: bytes, iterations: int) -> Verifier:
    """Derive the verifier of ``password`` for a given salt and iteration count."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salted = hashlib.pbkdf2_hmac("sha256", password_bytes(password), salt, iterations)
    stored_key, server_key = _keys_from_salted(salted)
    return Verifier(iterations, salt, stored_key, server_key)


def make_verifier(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """Hash ``password`` into PostgreSQL's SCRAM-SHA-256 verifier text."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    return str(compute_verifier(password, salt, iterations))


def parse_verifier(text: str) -> Verifier:
    """Parse PostgreSQL's verifier text; ValueError if it is not a SCRAM-SHA-256 verifier."""
    match = _VERIFIER_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    iterations = int(match.group(1))
    try:
        salt, stored_key, server_key = (_b64decode(match.group(i)) for i in (2, 3, 4))
    except binascii.Error:
        raise ValueError("invalid base64 in SCRAM verifier") from None
    if iterations < 1 or not salt:
        raise ValueError("SCRAM verifier has no salt or no iterations")
    if len(stored_key) != _KEY_BYTES or len(server_key) != _KEY_BYTES:
        raise ValueError("SCRAM verifier keys must be 32 bytes")
    return Verifier(iterations, salt, stored_key, server_key)


def mock_verifier(username: str, secret: bytes) -> Verifier:
    """A deterministic fake verifier for a user that does not exist.

    The same user name always gets the same salt (derived from a server
    secret), so probing cannot tell unknown users from real ones.
    """
    seed = _hmac(secret, b"dpproxy mock scram\x00" + username.encode("utf-8"))
    salt = _hmac(seed, b"salt")[:SALT_BYTES]
    stored_key = _hmac(seed, b"stored key")
    server_key = _hmac(seed, b"server key")
    return Verifier(DEFAULT_ITERATIONS, salt, stored_key, server_key, is_mock=True)


def _parse_attributes(text: str, what: str) -> list[tuple[str, str]]:
    attributes = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha() or not part[0].isascii():
            raise AuthenticationFailed(f"malformed SCRAM {what}: bad attribute {part[:20]!r}")
        attributes.append((part[0], part[2:]))
    return attributes


class ScramExchange:
    """One SCRAM authentication, driven by the session with the client's messages.

    Call ``handle_client_first`` with the SASLInitialResponse, send back the
    result in AuthenticationSASLContinue, then call ``handle_client_final`` with
    the SASLResponse and send its result in AuthenticationSASLFinal. Any
    problem raises ``AuthenticationFailed``.
    """

    def __init__(self, verifier: Verifier, channel_binding: bytes | None = None) -> None:
        """Prepare an exchange; ``channel_binding`` is the tls-server-end-point hash, if any."""
        self._verifier = verifier
        self._channel_binding = channel_binding
        self._state = "first"
        self._gs2_header = ""
        self._nonce = ""
        self._client_first_bare = ""
        self._server_first = ""

    def mechanisms(self, tls: bool) -> list[str]:
        """SASL mechanisms to offer, preferred first."""
        if tls and self._channel_binding is not None:
            return [MECHANISM_PLUS, MECHANISM]
        return [MECHANISM]

    def handle_client_first(self, mechanism: str, data: bytes) -> bytes:
        """Check the client-first-message and return the server-first-message."""
        if self._state != "first":
            raise AuthenticationFailed("unexpected SCRAM client-first-message")
        self._state = "failed"  # until proven otherwise
        if mechanism not in (MECHANISM, MECHANISM_PLUS):
            raise AuthenticationFailed(f"unsupported SASL mechanism {mechanism!r}")
        if mechanism == MECHANISM_PLUS and self._channel_binding is None:
            raise AuthenticationFailed("SCRAM-SHA-256-PLUS requested without TLS channel binding")
        text = _decode(data, "client-first-message")
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        cb_flag, authzid, bare = parts
        plus = mechanism == MECHANISM_PLUS
        if cb_flag == "n":
            if plus:
                raise AuthenticationFailed("SCRAM-SHA-256-PLUS chosen without channel binding data")
        elif cb_flag == "y":
            # The client could bind but believes we cannot: a downgrade if we offered -PLUS.
            if plus or self._channel_binding is not None:
                raise AuthenticationFailed("SCRAM channel binding negotiation error")
        elif cb_flag == f"p={CHANNEL_BINDING_TYPE}":
            if not plus:
                raise AuthenticationFailed("channel binding data sent with SCRAM-SHA-256")
        elif cb_flag.startswith("p="):
            raise AuthenticationFailed(f"unsupported channel binding type {cb_flag[2:]!r}")
        else:
            raise AuthenticationFailed("malformed SCRAM GS2 header")
        if authzid:
            raise AuthenticationFailed("SCRAM authorization identity is not supported")
        attributes = _parse_attributes(bare, "client-first-message")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            # A leading "m=" (mandatory extension) also lands here, as RFC 5802 requires.
            raise AuthenticationFailed("SCRAM client-first-message needs n= then r=")
        client_nonce = attributes[1][1]
        if not _NONCE_RE.fullmatch(client_nonce):
            raise AuthenticationFailed("invalid SCRAM client nonce")
        self._gs2_header = f"{cb_flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + _b64encode(secrets.token_bytes(NONCE_BYTES))
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64encode(v.salt)},i={v.iterations}"
        self._state = "final"
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message and return the server-final-message."""
        if self._state != "final":
            raise AuthenticationFailed("unexpected SCRAM client-final-message")
        self._state = "failed"
        text = _decode(data, "client-final-message")
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise AuthenticationFailed("SCRAM client-final-message has no proof")
        attributes = _parse_attributes(without_proof, "client-final-message")
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise AuthenticationFailed("SCRAM client-final-message needs c= then r=")
        try:
            binding = _b64decode(attributes[0][1])
            proof = _b64decode(proof_b64)
        except (binascii.Error, ValueError):
            raise AuthenticationFailed("invalid base64 in SCRAM client-final-message") from None
        expected_binding = self._gs2_header.encode("ascii")
        if self._gs2_header.startswith("p="):
            assert self._channel_binding is not None  # checked in handle_client_first
            expected_binding += self._channel_binding
        # Neither value is secret, but compare_digest costs nothing here.
        if not hmac.compare_digest(binding, expected_binding):
            raise AuthenticationFailed("SCRAM channel binding check failed")
        if not hmac.compare_digest(attributes[1][1].encode(), self._nonce.encode()):
            raise AuthenticationFailed("SCRAM nonce mismatch")
        if len(proof) != _KEY_BYTES:
            raise AuthenticationFailed("SCRAM proof has the wrong length")
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        v = self._verifier
        signature = _hmac(v.stored_key, auth_message.encode("utf-8"))
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key)
        if not ok or v.is_mock:
            raise AuthenticationFailed("SCRAM proof does not match the password")
        self._state = "done"
        server_signature = _hmac(v.server_key, auth_message.encode("utf-8"))
        return f"v={_b64encode(server_signature)}".encode("ascii")

    @property
    def done(self) -> bool:
        """True once the client has proven it knows the password."""
        return self._state == "done"


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed(f"SCRAM {what} is not valid UTF-8") from None
