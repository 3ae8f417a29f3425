"""A throwaway PostgreSQL cluster owned by this process, for the demo and the test suite.

`PgCluster.start()` runs initdb into a fresh temporary directory and starts `postgres`
directly (not through pg_ctl) so that we hold the postmaster's process handle and can be
sure it is gone when we stop. `PgCluster.existing(dsn)` wraps a server someone else runs.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

BINDIR_ENV = "DPPROXY_PG_BINDIR"
TEST_DSN_ENV = "DPPROXY_TEST_DSN"
_UNPRIVILEGED_USER = "dpproxy"
_SUPERUSER = "postgres"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 5
# Unix socket paths are limited to 107 bytes (sun_path); PostgreSQL appends ".s.PGSQL.<port>".
_MAX_SOCKET_DIR_LEN = 90

_INSTALL_HINT = (
    "no PostgreSQL server binaries found (looked at ${env}, PATH, pg_config --bindir, "
    "/usr/lib/postgresql/*/bin and the 'pgserver' package). Install a server with "
    "`apt-get install postgresql` (or your platform's package), or the embedded one with "
    "`pip install 'dpproxy[embedded]'`, or set ${env} to the directory holding initdb."
).replace("${env}", BINDIR_ENV)


class PgClusterError(RuntimeError):
    """The throwaway cluster could not be found, initialised or started."""


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "postgres").is_file()


def _version_key(path: str) -> tuple[int, ...]:
    # "/usr/lib/postgresql/15/bin" -> (15,); non-numeric versions sort last.
    parts = Path(path).parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


def _pgserver_bindir() -> Path | None:
    # find_spec does not import pgserver (whose __init__ pulls in psutil and friends);
    # the wheel ships a full server under pgserver/pginstall/bin.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _has_server(bindir):
            return bindir
    return None


def find_pg_bindir() -> Path:
    """Locate a directory holding `initdb` and `postgres`.

    Order: env DPPROXY_PG_BINDIR, `initdb` on PATH, `pg_config --bindir`,
    /usr/lib/postgresql/*/bin (newest first), then the `pgserver` wheel's binaries.
    Raises PgClusterError with installation advice when nothing is found.
    """
    override = os.environ.get(BINDIR_ENV)
    if override:
        if _has_server(Path(override)):
            return Path(override)
        raise PgClusterError(f"{BINDIR_ENV}={override} holds no initdb and postgres")

    on_path = shutil.which("initdb")
    if on_path:
        # Resolve symlinks so postgres and the share/ directory are found beside the real binary.
        bindir = Path(on_path).resolve().parent
        if _has_server(bindir):
            return bindir

    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            # pg_config also comes with client-only packages (libpq-dev): check for a server.
            if out and _has_server(Path(out)):
                return Path(out)

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if _has_server(Path(candidate)):
            return Path(candidate)

    embedded = _pgserver_bindir()
    if embedded is not None:
        return embedded
    raise PgClusterError(_INSTALL_HINT)


@dataclass(frozen=True)
class _RunAs:
    """The OS identity the server processes run under (None: the current user)."""

    user: str | None
    uid: int
    gid: int


def _unprivileged_identity() -> _RunAs:
    """initdb and postgres refuse to run as root: pick (or create) a system user."""
    if os.geteuid() != 0:
        return _RunAs(None, os.getuid(), os.getgid())
    for name in ("postgres", _UNPRIVILEGED_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(name, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         _UNPRIVILEGED_USER],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(_UNPRIVILEGED_USER)
    return _RunAs(_UNPRIVILEGED_USER, entry.pw_uid, entry.pw_gid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_env() -> dict[str, str]:
    # PG* variables from the caller (PGDATA, PGPORT, PGOPTIONS...) must not steer our server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook that makes the postmaster quit if this process dies without cleanup.

    atexit covers Ctrl-C and normal exits; this covers SIGKILL of the Python process.
    Linux only. The death signal fires when the *thread* that forked exits, so we only
    arm it when starting from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGQUIT), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the hook was armed
            os._exit(1)

    return hook


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _uri(
    host: str, port: int, user: str, password: str | None, dbname: str, params: dict[str, str]
) -> str:
    """Build a libpq URI, percent-encoding every part (socket paths, passwords)."""
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]"
    else:
        netloc = quote(host, safe="")
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{userinfo}@{netloc}:{port}/{quote(dbname, safe='')}{query}"


class PgCluster:
    """A PostgreSQL server: either one we started (and will stop) or an existing one."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        superuser: str,
        password: str | None,
        extra_params: dict[str, str] | None = None,
        process: subprocess.Popen[bytes] | None = None,
        base_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Prefer `PgCluster.start()` or `PgCluster.existing()` to calling this directly."""
        self._host = host
        self._port = port
        self._superuser = superuser
        self._password = password
        self._extra_params = dict(extra_params or {})
        self._process = process
        self._base_dir = base_dir
        self._log = log or (lambda _msg: None)
        self._lock = threading.Lock()
        self._stopped = False

    # ---------------------------------------------------------------- construction

    @classmethod
    def existing(cls, dsn: str) -> PgCluster:
        """Wrap a server someone else runs (e.g. from DPPROXY_TEST_DSN); stop() leaves it alone."""
        params = conninfo_to_dict(dsn)
        host = str(params.pop("host", None) or "localhost")
        port = int(params.pop("port", None) or 5432)
        user = str(params.pop("user", None) or os.environ.get("USER", _SUPERUSER))
        password = params.pop("password", None)
        params.pop("dbname", None)
        return cls(
            host=host,
            port=port,
            superuser=user,
            password=None if password is None else str(password),
            extra_params={k: str(v) for k, v in params.items() if v is not None},
        )

    @classmethod
    def start(
        cls,
        port: int | None = None,
        base_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
        *,
        durable: bool = True,
    ) -> PgCluster:
        """initdb a fresh cluster in a temporary directory and start postgres on 127.0.0.1.

        `port=None` picks a free port (retrying if another process grabs it first).
        `durable=False` turns fsync off: fine for tests, never for data you keep.
        The server is stopped and its directory removed by `stop()`, at interpreter exit,
        or when used as a context manager.
        """
        say = log or (lambda _msg: None)
        bindir = find_pg_bindir()
        run_as = _unprivileged_identity()
        base = Path(tempfile.mkdtemp(prefix="dpproxy-pg-", dir=base_dir))
        # mkdtemp makes 0700; the server user must be able to traverse into it.
        base.chmod(0o755)
        cluster = cls(
            host="127.0.0.1",
            port=0,
            superuser=_SUPERUSER,
            password=secrets.token_urlsafe(24),
            base_dir=base,
            log=say,
        )
        atexit.register(cluster.stop)
        try:
            say(f"initdb ({bindir}) in {base}")
            cluster._initdb(bindir, run_as, durable=durable)
            cluster._launch(bindir, run_as, port)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-started server behind.
            cluster.stop()
            raise
        say(f"PostgreSQL ready on {cluster.host}:{cluster.port}")
        return cluster

    def _initdb(self, bindir: Path, run_as: _RunAs, *, durable: bool) -> None:
        assert self._base_dir is not None and self._password is not None
        data, sockdir, pwfile = self.data_dir, self._base_dir / "sock", self._base_dir / "pwfile"
        for d in (data, sockdir):
            d.mkdir(mode=0o700)
            os.chown(d, run_as.uid, run_as.gid)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._password + "\n")
        os.chown(pwfile, run_as.uid, run_as.gid)
        try:
            result = subprocess.run(
                [
                    str(bindir / "initdb"), "-D", str(data), "-U", self._superuser,
                    "-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                    "--no-instructions",
                ],
                **self._spawn_kwargs(run_as),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")
            hint = ""
            if run_as.user is not None and "Permission denied" in output:
                hint = (
                    f"\nThe server runs as OS user '{run_as.user}': every directory above "
                    f"{self._base_dir} must be traversable by it (chmod o+x), or pass another base_dir."
                )
            raise PgClusterError(f"initdb failed:\n{output}{hint}")

        use_socket = len(str(sockdir)) <= _MAX_SOCKET_DIR_LEN
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "max_connections": "200",
            # A long base_dir would overflow sun_path: fall back to TCP only.
            "unix_socket_directories": f"'{sockdir}'" if use_socket else "''",
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
        }
        if not durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# added by dpproxy.pgcluster\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _spawn_kwargs(self, run_as: _RunAs) -> dict[str, object]:
        kwargs: dict[str, object] = {"env": _child_env(), "cwd": str(self._base_dir)}
        if run_as.user is not None:
            # extra_groups=[] drops root's supplementary groups as well.
            kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
        return kwargs

    def _launch(self, bindir: Path, run_as: _RunAs, port: int | None) -> None:
        for attempt in range(1 if port is not None else _PORT_ATTEMPTS):
            self._port = port if port is not None else _free_port()
            with self.log_file.open("ab") as logf:
                self._process = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self._port)],
                    **self._spawn_kwargs(run_as),  # type: ignore[arg-type]
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    # Own session: a terminal Ctrl-C reaches only Python, which then
                    # shuts the server down in order (after fixtures/clients are done).
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            if self._wait_ready():
                return
            log_tail = _tail(self.log_file)
            if port is None and re.search(r"could not bind|Address already in use", log_tail):
                self._log(f"port {self._port} taken, retrying ({attempt + 1}/{_PORT_ATTEMPTS})")
                continue
            break
        raise PgClusterError(
            f"PostgreSQL did not start on port {self._port}; server log:\n{_tail(self.log_file)}"
        )

    def _wait_ready(self) -> bool:
        """Poll until the server accepts a login; False if it exited or timed out."""
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self._terminate()
        return False

    # ---------------------------------------------------------------- properties

    @property
    def host(self) -> str:
        """Host name or address clients connect to."""
        return self._host

    @property
    def port(self) -> int:
        """TCP port of the server."""
        return self._port

    @property
    def superuser(self) -> str:
        """Name of the superuser role (for existing servers: the DSN's user)."""
        return self._superuser

    @property
    def password(self) -> str | None:
        """The superuser's password (random for clusters we start)."""
        return self._password

    @property
    def owned(self) -> bool:
        """True when this object started the server and will stop it."""
        return self._base_dir is not None

    @property
    def base_dir(self) -> Path | None:
        """The temporary directory holding data, socket and log (None for existing servers)."""
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        if self._base_dir is None:
            raise PgClusterError("an existing server has no data directory we know of")
        return self._base_dir / "data"

    @property
    def log_file(self) -> Path:
        """The server's log (stdout and stderr of postgres)."""
        if self._base_dir is None:
            raise PgClusterError("an existing server has no log file we know of")
        return self._base_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster we started, if it is running."""
        return self._process.pid if self._process and self._process.poll() is None else None

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A libpq URI for `dbname`; without `user`, logs in as the superuser."""
        if user is None:
            user, password = self._superuser, (password if password is not None else self._password)
        return _uri(self._host, self._port, user, password, dbname, self._extra_params)

    # ---------------------------------------------------------------- shutdown

    def _terminate(self) -> None:
        proc = self._process
        if proc is None or proc.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._log("PostgreSQL did not stop in time; killing it")
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the server we started and delete its directory. Safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        if not self.owned:
            return
        try:
            self._terminate()
        finally:
            if self._base_dir is not None:
                shutil.rmtree(self._base_dir, ignore_errors=True)
        self._log("PostgreSQL stopped")

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        kind = "owned" if self.owned else "existing"
        return f"<PgCluster {kind} {self._host}:{self._port}>"
