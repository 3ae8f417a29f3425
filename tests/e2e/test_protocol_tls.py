"""TLS: sslmode=require and verify-full, SCRAM-SHA-256-PLUS channel binding, require_tls,
and plaintext bytes sent after SSLRequest (CVE-2021-23222) refused."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.e2e.conftest import ANALYSTS, Env
from tests.support.proxy_process import ProxyProcess

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@dataclass
class TLSProxy:
    """A dpproxy with a certificate, requiring TLS, and the CA that signed it."""

    proxy: ProxyProcess
    ca: Path

    def dsn(self, user: str, password: str, **extra: str) -> str:
        """A libpq DSN for host localhost (the certificate's name)."""
        base = f"host=localhost port={self.proxy.port} dbname=tpch user={user} password={password}"
        return base + "".join(f" {k}={v}" for k, v in extra.items())


def _openssl(*args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dpproxy test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(d / "ext.cnf"),
             "-out", str(d / "server.pem"))  # fmt: skip
    (d / "server.key").chmod(0o600)
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.fixture(scope="module", params=[1, 2], ids=["one process", "two workers"])
def tls_proxy(
    env: Env, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[TLSProxy]:
    """A second dpproxy on the same backend, with TLS required; also with two workers,
    whose sockets are handed over before the TLS handshake (see proxy/workers.py)."""
    d = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(d)
    cfg = yaml.safe_load(env.config.read_text())
    cfg["listen"] = {**cfg.get("listen", {}), "tls_cert": str(cert), "tls_key": str(key),
                     "require_tls": True, "workers": request.param}  # fmt: skip
    cfg["metadata_file"] = str((env.config.parent / cfg["metadata_file"]).resolve())
    path = env.config.parent / f"dpproxy-tls-{request.param}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = ProxyProcess(path).start()
    yield TLSProxy(p, ca)
    p.stop()


def test_sslmode_require_and_verify_full(tls_proxy: TLSProxy) -> None:
    pw = ANALYSTS["alice"].password
    with psycopg.connect(tls_proxy.dsn("alice", pw, sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SHOW dp.epsilon").fetchone() is not None
    with psycopg.connect(tls_proxy.dsn("alice", pw, sslmode="verify-full", sslrootcert=str(tls_proxy.ca))) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] > 0


def test_channel_binding_required(tls_proxy: TLSProxy) -> None:
    pw = ANALYSTS["alice"].password
    dsn = tls_proxy.dsn("alice", pw, sslmode="require", channel_binding="require")
    with psycopg.connect(dsn) as conn:
        # libpq refuses to finish unless the server proved the binding (SCRAM-SHA-256-PLUS).
        assert conn.execute("SHOW dp.epsilon").fetchone() is not None
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(tls_proxy.dsn("alice", "wrong", sslmode="require", channel_binding="require"))


def test_plaintext_refused_when_tls_required(tls_proxy: TLSProxy) -> None:
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry .* no encryption"):
        psycopg.connect(tls_proxy.dsn("alice", ANALYSTS["alice"].password, sslmode="disable"))


def test_psql_sslmode_require(tls_proxy: TLSProxy) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    out = subprocess.run([psql, tls_proxy.dsn("alice", ANALYSTS["alice"].password, sslmode="require"),
                          "-X", "-At", "-c", "SHOW dp.epsilon"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "1.0", out.stderr


def test_bytes_after_ssl_request_refused(tls_proxy: TLSProxy) -> None:
    startup = struct.pack("!ii", 8, 80877103)
    junk = b"Q\x00\x00\x00\x0dSELECT 1\x00"
    with socket.create_connection(("127.0.0.1", tls_proxy.proxy.port), timeout=10) as s:
        s.sendall(startup + junk)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    # Never 'S' followed by a handshake over injected bytes: a FATAL 08P01 and close.
    assert data[:1] == b"E" and b"08P01" in data and b"unencrypted data" in data
