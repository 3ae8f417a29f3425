"""SCRAM interoperability with libpq (through psycopg) and with a real PostgreSQL.

1. libpq authenticates against a one-connection server built from our codec and
   ``ScramExchange`` (no PostgreSQL needed).
2. A verifier from ``make_verifier`` installed as a real role's password lets
   libpq log in to PostgreSQL, and a verifier PostgreSQL generated verifies
   libpq's proof in our exchange.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from proxy.auth.scram import (
    AuthenticationFailed,
    ScramExchange,
    Verifier,
    make_verifier,
    parse_verifier,
)
from proxy.wire import codec
from proxy.wire.messages import PasswordData, SSLRequest, StartupMessage, Terminate


def _serve_one(listener: socket.socket, verifier: Verifier, outcome: dict[str, object]) -> None:
    """Accept one connection and run startup + SCRAM with our codec."""
    conn, _ = listener.accept()
    with conn:
        decoder = codec.FrontendDecoder()

        pending: list[object] = []

        def next_message() -> object:
            while not pending:
                pending.extend(decoder.feed(b""))  # resumes after an SSLRequest pause
                if pending:
                    break
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("client went away")
                pending.extend(decoder.feed(data))
            return pending.pop(0)

        message = next_message()
        if isinstance(message, SSLRequest):
            conn.sendall(codec.ssl_no())
            message = next_message()
        assert isinstance(message, StartupMessage)
        outcome["user"] = message.params.get("user")
        exchange = ScramExchange(verifier)
        conn.sendall(codec.auth_sasl(exchange.mechanisms(tls=False)))
        try:
            first = next_message()
            assert isinstance(first, PasswordData)
            mechanism, initial = codec.parse_sasl_initial(first.data)
            conn.sendall(codec.auth_sasl_continue(exchange.handle_client_first(mechanism, initial)))
            final = next_message()
            assert isinstance(final, PasswordData)
            conn.sendall(codec.auth_sasl_final(exchange.handle_client_final(final.data)))
        except AuthenticationFailed as exc:
            outcome["failure"] = str(exc)
            conn.sendall(
                codec.error_response(
                    codec.ErrorFields(
                        "FATAL",
                        "28P01",
                        f'password authentication failed for user "{outcome["user"]}"',
                    )
                )
            )
            return
        conn.sendall(
            codec.auth_ok()
            + codec.parameter_status("server_version", "15.18")
            + codec.parameter_status("client_encoding", "UTF8")
            + codec.parameter_status("standard_conforming_strings", "on")
            + codec.parameter_status("integer_datetimes", "on")
            + codec.backend_key_data(1234, b"\x01\x02\x03\x04")
            + codec.ready_for_query("I")
        )
        outcome["authenticated"] = True
        outcome["last"] = next_message()


def _connect_to_our_server(verifier: Verifier, password: str) -> dict[str, object]:
    outcome: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = threading.Thread(target=_serve_one, args=(listener, verifier, outcome))
        server.start()
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=port,
                user="analyst",
                dbname="app",
                password=password,
                sslmode="prefer",
                connect_timeout=5,
            ) as conn:
                outcome["client_ok"] = conn.info.status == psycopg.pq.ConnStatus.OK
        except psycopg.OperationalError as exc:
            outcome["client_error"] = str(exc)
        server.join(timeout=10)
    return outcome


def test_libpq_authenticates_against_our_scram_server() -> None:
    verifier = parse_verifier(make_verifier("s3cret-ü", iterations=4096))
    outcome = _connect_to_our_server(verifier, "s3cret-ü")
    assert outcome.get("client_ok") is True, outcome
    assert outcome["authenticated"] is True
    assert outcome["user"] == "analyst"
    assert isinstance(outcome["last"], Terminate)


def test_libpq_wrong_password_is_refused() -> None:
    verifier = parse_verifier(make_verifier("s3cret", iterations=4096))
    outcome = _connect_to_our_server(verifier, "not it")
    assert "password authentication failed" in str(outcome.get("client_error")), outcome
    assert "proof" in str(outcome["failure"])


# --- against a real PostgreSQL ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass(frozen=True)
class Cluster:
    """Where the throwaway cluster listens: SCRAM over TCP, trust over its unix socket."""

    port: int
    socket_dir: Path

    def admin(self) -> psycopg.Connection:
        """A superuser connection over the unix socket."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", autocommit=True
        )


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster (this file's own; kept minimal on purpose)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not installed")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user")
    # Not pytest's tmp_path: its parent is private to root, and postgres must reach it.
    base = Path(tempfile.mkdtemp(prefix="dpproxy-scram-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        _as_postgres_user(
            [initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256"]
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = _free_port()
    subprocess.run(
        _as_postgres_user(
            [pg_ctl, "-D", str(data), "-w", "-l", str(base / "log"), "-o",
             f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"]
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield Cluster(port=port, socket_dir=base)
    finally:
        subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_our_verifier_works_in_postgresql(postgres: Cluster) -> None:
    verifier = make_verifier("from-dpproxy", iterations=4096)
    with postgres.admin() as admin:
        admin.execute(f"CREATE ROLE dp_interop LOGIN PASSWORD '{verifier}'")
        stored = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'dp_interop'"
        ).fetchone()
        assert stored == (verifier,)  # PostgreSQL kept our verifier as is
    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user="dp_interop", dbname="postgres",
        password="from-dpproxy", connect_timeout=5,
    ) as conn:  # fmt: skip
        assert conn.execute("SELECT current_user").fetchone() == ("dp_interop",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1", port=postgres.port, user="dp_interop", dbname="postgres",
            password="wrong", connect_timeout=5,
        )  # fmt: skip


def test_postgresql_verifier_works_in_our_exchange(postgres: Cluster) -> None:
    with postgres.admin() as admin:
        admin.execute("SET password_encryption = 'scram-sha-256'")
        admin.execute("CREATE ROLE made_by_pg LOGIN PASSWORD 'pässword'")
        (text,) = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'made_by_pg'"
        ).fetchone() or ("",)
    outcome = _connect_to_our_server(parse_verifier(text), "pässword")
    assert outcome.get("client_ok") is True, outcome
