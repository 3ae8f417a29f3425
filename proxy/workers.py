"""Several worker processes behind one listening port (`listen.workers`).

One dpproxy process runs one event loop, so it uses one core. With `listen.workers: N`,
`dpproxy serve` forks N workers and keeps the listening socket itself: it accepts each
client connection and hands the socket to the next worker in turn (SCM_RIGHTS over a
Unix socket pair). Workers sharing one listening socket instead split connections
unevenly (in development, 8 pgbench clients landed 7 and 1), and round robin keeps
them even. Each worker is a whole dpproxy: its own backend pools, plan and route caches and
audit writer. Budgets, the answer cache and the audit log live in the shared ledger
database, so the workers are replicas of one another, exactly as separate dpproxy
processes already are (see the README's *Replicas*).

What differs per worker:
- connection limits: each worker admits ceil(limit / N) sessions, so the whole stays
  within the configured limit (a busy worker may refuse before the total is reached);
- `/metrics` and `/health`: worker i serves them on `metrics_port + i`;
- cancel requests arrive on a connection of their own, which any worker may accept:
  a session's key carries its worker's index (bits 24-29 of the pid), and a worker
  forwards a cancel for another worker's session over a Unix datagram socket.

Otherwise the parent only supervises: SIGTERM/SIGINT (it stops accepting) and SIGHUP
are passed on to every worker, a worker that dies after running for a while is
replaced, and one that dies at start-up stops the whole (a broken config or an
unreachable database would only die again).
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from proxy.config import Config, ConfigError

log = logging.getLogger("dpproxy.workers")

_INDEX_SHIFT = 24  # session pids: worker index above, a random number below
_CANCEL = struct.Struct("!i4s")  # pid, secret
# A worker that dies sooner than this after its start is not restarted.
_MIN_UPTIME_S = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    """One worker's place among its siblings."""

    index: int
    count: int
    channel: socket.socket  # the worker's end of its pair: accepted client sockets arrive here
    peers: Path  # a directory holding each worker's cancel socket

    def owns(self, pid: int) -> bool:
        """Whether a session pid was handed out by this worker."""
        return pid >> _INDEX_SHIFT == self.index

    def session_pid(self, low: int) -> int:
        """A session pid of this worker from a random `low` (1 <= low < 2^24)."""
        return self.index << _INDEX_SHIFT | low

    def cancel_path(self, index: int) -> Path:
        """The datagram socket on which worker `index` takes forwarded cancels."""
        return self.peers / f"w{index}"


def open_cancel_socket(spec: WorkerSpec) -> socket.socket:
    """This worker's non-blocking datagram socket for forwarded cancels."""
    path = spec.cancel_path(spec.index)
    path.unlink(missing_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    return s


def forward_cancel(s: socket.socket, spec: WorkerSpec, pid: int, secret: bytes) -> None:
    """Send a cancel to the worker that owns `pid` (silently dropped if it is gone)."""
    index = pid >> _INDEX_SHIFT
    if not 0 <= index < spec.count or len(secret) != 4:
        return  # no worker handed this pid out: ignored, as PostgreSQL ignores bad keys
    try:
        s.sendto(_CANCEL.pack(pid, secret), str(spec.cancel_path(index)))
    except OSError:
        pass


def read_cancels(s: socket.socket) -> list[tuple[int, bytes]]:
    """The forwarded cancels waiting on this worker's socket."""
    out = []
    while True:
        try:
            data = s.recv(64)
        except (BlockingIOError, InterruptedError):
            return out
        if len(data) == _CANCEL.size:
            pid, secret = _CANCEL.unpack(data)
            out.append((pid, secret))


def receive_clients(channel: socket.socket) -> list[socket.socket]:
    """The client sockets the parent has handed to this worker so far."""
    out = []
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 16)
        except (BlockingIOError, InterruptedError):
            return out
        if not fds and not msg:
            return out  # the parent is gone
        out += [socket.socket(fileno=fd) for fd in fds]


def worker_config(config: Config, spec: WorkerSpec) -> Config:
    """The configuration one worker runs with: its share of the limits, its metrics port."""
    n = spec.count
    limits = config.limits.model_copy(update={
        "max_connections": math.ceil(config.limits.max_connections / n),
        "max_connections_per_analyst": math.ceil(config.limits.max_connections_per_analyst / n),
    })  # fmt: skip
    obs = config.observability
    port = obs.metrics_port
    if port:  # (0: any free port, for each worker)
        obs = obs.model_copy(update={"metrics_port": port + spec.index})
    return config.model_copy(update={"limits": limits, "observability": obs})


def serve_workers(config: Config, run: Callable[[WorkerSpec], None],
                  progress: Callable[[str], None]) -> int:  # fmt: skip
    """Fork `listen.workers` workers each calling `run(spec)`; accept and hand out clients."""
    listen = config.listen
    count = listen.workers
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.create_server((listen.host, listen.port), family=family, backlog=1024)
    sock.setblocking(False)
    listen.port = sock.getsockname()[1]  # (port 0: the workers report the one chosen)
    peers = Path(tempfile.mkdtemp(prefix="dpproxy-peers-"))
    progress(f"{count} workers on {listen.host}:{listen.port}")
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    channels: dict[int, socket.socket] = {}  # index -> the parent's end of its pair
    state = {"stopping": False, "failed": False}

    def spawn(index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            # Until the worker's loop handles it, a forwarded reload must not end the
            # worker (SIGHUP's default action): it is reading its config at that moment.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            sock.close()
            ours.close()
            for other in channels.values():
                other.close()
            theirs.setblocking(False)
            code = 0
            try:
                run(WorkerSpec(index, count, theirs, peers))
            except ConfigError as e:  # e.g. a declared key the database lacks: no traceback
                progress(f"worker {index}: {e}")
                code = 2
            except BaseException:  # noqa: BLE001 - a worker reports and exits, never returns
                log.exception("worker %d failed", index)
                code = 1
            os._exit(code)
        theirs.close()
        ours.setblocking(False)  # a stuck worker must not stall the accept loop
        old = channels.pop(index, None)
        if old is not None:
            old.close()
        channels[index] = ours
        children[pid] = (index, time.monotonic())

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            state["stopping"] = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                return
            if pid == 0:
                return
            index, started = children.pop(pid)
            if state["stopping"]:
                continue
            code = os.waitstatus_to_exitcode(status)
            if time.monotonic() - started < _MIN_UPTIME_S:
                progress(f"worker {index} exited at start-up (status {code}); stopping")
                state["stopping"] = state["failed"] = True
                forward(signal.SIGTERM, None)
                continue
            progress(f"worker {index} exited (status {code}); starting a new one")
            spawn(index)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    turn = 0
    try:
        for i in range(count):
            spawn(i)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while children:
                if state["stopping"]:
                    time.sleep(0.05)  # the workers drain their sessions; wait for them
                elif sel.select(timeout=0.2):
                    turn = _hand_out(sock, channels, turn, count)
                reap()
    finally:
        sock.close()
        for ch in channels.values():
            ch.close()
        shutil.rmtree(peers, ignore_errors=True)
    return 1 if state["failed"] else 0


def _hand_out(sock: socket.socket, channels: dict[int, socket.socket], turn: int, count: int) -> int:
    """Accept every waiting client and give each to the next worker in turn."""
    while True:
        try:
            client, _addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return turn
        except OSError as e:  # e.g. out of file descriptors: keep serving the others
            log.warning("accept failed: %s", e)
            return turn
        with client:
            for _ in range(count):
                ch = channels.get(turn % count)
                turn += 1
                if ch is None:
                    continue
                try:
                    socket.send_fds(ch, [b"c"], [client.fileno()])
                    break
                except OSError:
                    continue  # that worker is gone or full: try the next one
