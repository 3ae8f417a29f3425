"""Tests of the SCRAM-SHA-256 server, driven by a small SCRAM client written here."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import pytest

from proxy.auth.saslprep import password_bytes, saslprep
from proxy.auth.scram import (
    AuthenticationFailed,
    ScramExchange,
    Verifier,
    compute_verifier,
    make_verifier,
    mock_verifier,
    parse_verifier,
)

CB_DATA = hashlib.sha256(b"pretend this is the server certificate").digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hm(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass
class Client:
    """A SCRAM-SHA-256 client following RFC 5802 step by step (test-only)."""

    password: str
    gs2_header: str = "n,,"
    cb_data: bytes = b""
    nonce: str = "rOprNGfwEbeRWgbNEkqO"
    user: str = ""

    def first(self) -> bytes:
        self.bare = f"n={self.user},r={self.nonce}"
        return (self.gs2_header + self.bare).encode()

    def final(self, server_first: bytes, nonce_override: str | None = None) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        self.server_first = server_first.decode()
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac(
            "sha256", password_bytes(self.password), salt, int(attrs["i"])
        )
        client_key = hm(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        self.server_key = hm(salted, b"Server Key")
        binding = b64(self.gs2_header.encode() + self.cb_data)
        nonce = attrs["r"] if nonce_override is None else nonce_override
        self.without_proof = f"c={binding},r={nonce}"
        self.auth_message = f"{self.bare},{self.server_first},{self.without_proof}"
        signature = hm(stored_key, self.auth_message.encode())
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{self.without_proof},p={b64(proof)}".encode()

    def check_server_final(self, server_final: bytes) -> bool:
        expected = "v=" + b64(hm(self.server_key, self.auth_message.encode()))
        return server_final.decode() == expected


def run(
    verifier: Verifier,
    client: Client,
    mechanism: str = "SCRAM-SHA-256",
    channel_binding: bytes | None = None,
) -> bytes:
    exchange = ScramExchange(verifier, channel_binding=channel_binding)
    server_first = exchange.handle_client_first(mechanism, client.first())
    assert server_first.startswith(b"r=" + client.nonce.encode())
    server_final = exchange.handle_client_final(client.final(server_first))
    assert exchange.done
    assert client.check_server_final(server_final)
    return server_final


VERIFIER = parse_verifier(make_verifier("correct horse", iterations=64))


# --- verifiers ---


def test_rfc7677_test_vector() -> None:
    # RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    v = compute_verifier("pencil", salt, 4096)
    exchange = ScramExchange(v)
    # Pin the server nonce by replaying the RFC's messages through our checks.
    client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    exchange._client_first_bare = client_first_bare  # pin the random nonce
    exchange._server_first = server_first
    exchange._nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    exchange._gs2_header = "n,,"
    exchange._state = "final"
    final = exchange.handle_client_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_make_verifier_format_and_parse() -> None:
    text = make_verifier("secret", iterations=4096, salt=b"0123456789abcdef")
    assert text.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    v = parse_verifier(text)
    assert (v.iterations, v.salt) == (4096, b"0123456789abcdef")
    assert str(v) == text
    # Fresh salts differ.
    assert make_verifier("secret", iterations=1) != make_verifier("secret", iterations=1)


@pytest.mark.parametrize(
    "text",
    [
        "md5abcdef",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ=",
        "SCRAM-SHA-256$4096:c2FsdA=$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$x:c2FsdA==$a:b",
    ],
)
def test_parse_verifier_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_verifier(text)


def test_saslprep() -> None:
    assert saslprep("I\u00adX") == "IX"  # soft hyphen maps to nothing
    assert saslprep("user") == "user"
    assert saslprep("\u00aa") == "a"  # NFKC
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"  # non-ASCII space maps to space
    assert saslprep("\u0007") is None  # control character
    assert saslprep("\u0627\u0031") is None  # RandALCat must also end the string
    assert password_bytes("\u0007pw") == b"\x07pw"  # PostgreSQL falls back to raw bytes
    assert password_bytes(b"\xff\xfe") == b"\xff\xfe"
    assert password_bytes("I\u00adX") == b"IX"


# --- successful exchanges ---


def test_exchange_succeeds() -> None:
    run(VERIFIER, Client("correct horse"))


def test_exchange_ignores_user_name_attribute() -> None:
    for user in ("", "*", "postgres", "=2Cweird"):
        run(VERIFIER, Client("correct horse", user=user))


def test_exchange_with_y_flag_without_tls_binding() -> None:
    run(VERIFIER, Client("correct horse", gs2_header="y,,"))


def test_exchange_with_channel_binding() -> None:
    client = Client("correct horse", gs2_header="p=tls-server-end-point,,", cb_data=CB_DATA)
    run(VERIFIER, client, mechanism="SCRAM-SHA-256-PLUS", channel_binding=CB_DATA)


def test_plain_mechanism_over_tls_with_binding_available() -> None:
    run(VERIFIER, Client("correct horse"), channel_binding=CB_DATA)


def test_non_ascii_password() -> None:
    v = parse_verifier(make_verifier("pässwörd\u2168", iterations=32))
    run(v, Client("pässwörd\u2168"))
    run(v, Client("pässwördIX"))  # SASLprep makes them equal


def test_mechanisms() -> None:
    assert ScramExchange(VERIFIER).mechanisms(tls=True) == ["SCRAM-SHA-256"]
    with_cb = ScramExchange(VERIFIER, channel_binding=CB_DATA)
    assert with_cb.mechanisms(tls=True) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert with_cb.mechanisms(tls=False) == ["SCRAM-SHA-256"]


def test_server_nonce_is_fresh() -> None:
    a = ScramExchange(VERIFIER).handle_client_first("SCRAM-SHA-256", Client("x").first())
    b = ScramExchange(VERIFIER).handle_client_first("SCRAM-SHA-256", Client("x").first())
    assert a != b


# --- failures ---


def _fails(exchange: ScramExchange, client: Client, **final_kwargs: str) -> None:
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(client.final(server_first, **final_kwargs))
    assert not exchange.done


def test_wrong_password() -> None:
    _fails(ScramExchange(VERIFIER), Client("wrong horse"))


def test_tampered_nonce() -> None:
    exchange = ScramExchange(VERIFIER)
    client = Client("correct horse")
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    real_nonce = server_first.decode().split(",")[0][2:]
    with pytest.raises(AuthenticationFailed, match="nonce"):
        exchange.handle_client_final(client.final(server_first, nonce_override=real_nonce + "x"))


def test_client_nonce_only_is_rejected() -> None:
    _fails(ScramExchange(VERIFIER), Client("correct horse"), nonce_override="rOprNGfwEbeRWgbNEkqO")


def test_mock_verifier_fails_like_a_wrong_password() -> None:
    secret = b"server secret"
    mock = mock_verifier("nobody", secret)
    assert mock == mock_verifier("nobody", secret)  # deterministic salt per user
    assert mock.salt != mock_verifier("other", secret).salt
    exchange = ScramExchange(mock)
    client = Client("any")
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    assert f",s={b64(mock.salt)},i=4096".encode() in server_first
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(client.final(server_first))


def test_mock_verifier_fails_even_with_matching_proof() -> None:
    real = compute_verifier("pw", b"salt" * 4, 16)
    doomed = Verifier(real.iterations, real.salt, real.stored_key, real.server_key, is_mock=True)
    _fails(ScramExchange(doomed), Client("pw"))


def test_tampered_proof() -> None:
    exchange = ScramExchange(VERIFIER)
    client = Client("correct horse")
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    final = client.final(server_first)
    proof = bytearray(base64.b64decode(final.split(b",p=")[1]))
    proof[0] ^= 1
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(final.split(b",p=")[0] + b",p=" + b64(bytes(proof)).encode())


@pytest.mark.parametrize(
    "mechanism, header, cb_data, server_cb",
    [
        # -PLUS without binding data in the header
        ("SCRAM-SHA-256-PLUS", "n,,", b"", CB_DATA),
        ("SCRAM-SHA-256-PLUS", "y,,", b"", CB_DATA),
        # binding data with the plain mechanism
        ("SCRAM-SHA-256", "p=tls-server-end-point,,", CB_DATA, CB_DATA),
        # downgrade: client could bind, thinks we cannot, but we offered -PLUS
        ("SCRAM-SHA-256", "y,,", b"", CB_DATA),
        # -PLUS when the connection has no TLS binding
        ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", CB_DATA, None),
        # unsupported binding type
        ("SCRAM-SHA-256-PLUS", "p=tls-unique,,", CB_DATA, CB_DATA),
        # authorization identity
        ("SCRAM-SHA-256", "n,a=admin,", b"", None),
        ("OAUTHBEARER", "n,,", b"", None),
    ],
)
def test_channel_binding_negotiation_errors(
    mechanism: str, header: str, cb_data: bytes, server_cb: bytes | None
) -> None:
    exchange = ScramExchange(VERIFIER, channel_binding=server_cb)
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_first(mechanism, Client("x", gs2_header=header).first())


def test_wrong_channel_binding_data() -> None:
    exchange = ScramExchange(VERIFIER, channel_binding=CB_DATA)
    client = Client("correct horse", gs2_header="p=tls-server-end-point,,", cb_data=b"other cert")
    server_first = exchange.handle_client_first("SCRAM-SHA-256-PLUS", client.first())
    with pytest.raises(AuthenticationFailed, match="channel binding"):
        exchange.handle_client_final(client.final(server_first))


def test_binding_header_changed_between_messages() -> None:
    exchange = ScramExchange(VERIFIER)
    client = Client("correct horse", gs2_header="y,,")
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    client.gs2_header = "n,,"
    with pytest.raises(AuthenticationFailed, match="channel binding"):
        exchange.handle_client_final(client.final(server_first))


@pytest.mark.parametrize(
    "first",
    [
        b"",
        b"n,,",
        b"n,",
        b"x,,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=,x=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a,b",
        b"n,,n=,r=a\x01b",
        b"n,,n=\xff,r=abc",
        b"n,,n=,r=abc,",
    ],
)
def test_malformed_client_first(first: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        ScramExchange(VERIFIER).handle_client_first("SCRAM-SHA-256", first)


@pytest.mark.parametrize(
    "make_final",
    [
        lambda n: b"",
        lambda n: b"c=biws,r=" + n,
        lambda n: b"r=" + n + b",c=biws,p=AAAA",
        lambda n: b"c=biws,r=" + n + b",p=not base64!",
        lambda n: b"c=biws,r=" + n + b",p=AAAA",
        lambda n: b"c=!!,r=" + n + b",p=" + base64.b64encode(bytes(32)),
        lambda n: b"c=biws,r=" + n + b",p=" + base64.b64encode(bytes(32)) + b"\xff",
        lambda n: b"c=biws,r=" + n + b",p=\xc3\xa9",
        lambda n: b"c=biws,,r=" + n + b",p=" + base64.b64encode(bytes(32)),
    ],
)
def test_malformed_client_final(make_final) -> None:  # type: ignore[no-untyped-def]
    exchange = ScramExchange(VERIFIER)
    server_first = exchange.handle_client_first("SCRAM-SHA-256", Client("x").first())
    nonce = server_first.split(b",")[0][2:]
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(make_final(nonce))


def test_out_of_order_and_replay() -> None:
    exchange = ScramExchange(VERIFIER)
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(b"c=biws,r=x,p=AAAA")
    client = Client("correct horse")
    exchange = ScramExchange(VERIFIER)
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    final = client.final(server_first)
    exchange.handle_client_final(final)
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(final)
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_first("SCRAM-SHA-256", client.first())


def test_failed_exchange_cannot_be_retried() -> None:
    exchange = ScramExchange(VERIFIER)
    client = Client("wrong")
    server_first = exchange.handle_client_first("SCRAM-SHA-256", client.first())
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(client.final(server_first))
    good = Client("correct horse")
    good.first()
    with pytest.raises(AuthenticationFailed):
        exchange.handle_client_final(good.final(server_first))
