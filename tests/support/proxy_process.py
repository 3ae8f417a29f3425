"""Running dpproxy as a real subprocess (`dpproxy serve`), as users run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """`python -m proxy.cli serve --config FILE --port PORT` in the background."""

    def __init__(self, config: Path, port: int | None = None) -> None:
        self.config = config
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.parent / f"proxy-{self.port}.log"

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        """Start and wait until the port accepts connections."""
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config),
             "--port", str(self.port)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dpproxy exited early:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dpproxy did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (crash) the proxy."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def dsn(self, user: str, password: str, dbname: str = "tpch") -> str:
        """A libpq keyword DSN for connecting through the proxy."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} "
            f"password={password} sslmode=disable"
        )
