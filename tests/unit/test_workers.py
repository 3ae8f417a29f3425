"""Worker plumbing without a database: shares of the limits, session pids, forwarded
cancels and handed-over client sockets (proxy/workers.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from proxy.config import Config
from proxy.workers import (
    WorkerSpec,
    forward_cancel,
    open_cancel_socket,
    read_cancels,
    receive_clients,
    worker_config,
)


def _config(**sections: object) -> Config:
    return Config.model_validate({"backend": {"dsn": "postgresql://x/d", "ledger_dsn": "postgresql://x/l"},
                                  "metadata_file": "m.yaml", **sections})  # fmt: skip


def _spec(index: int, tmp: Path, count: int = 3) -> WorkerSpec:
    return WorkerSpec(index, count, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM), tmp)


def test_each_worker_gets_its_share_of_the_limits_and_its_metrics_port(tmp_path: Path) -> None:
    cfg = _config(limits={"max_connections": 10, "max_connections_per_analyst": 5},
                  observability={"metrics_port": 9100})  # fmt: skip
    w = worker_config(cfg, _spec(2, tmp_path))
    assert (w.limits.max_connections, w.limits.max_connections_per_analyst) == (4, 2)
    assert w.observability.metrics_port == 9102
    # The file's settings are untouched (a reload compares against them).
    assert cfg.limits.max_connections == 10 and cfg.observability.metrics_port == 9100


def test_a_session_pid_names_its_worker(tmp_path: Path) -> None:
    spec = _spec(2, tmp_path)
    pid = spec.session_pid(12345)
    assert 0 < pid < 2**31 and spec.owns(pid) and not _spec(1, tmp_path).owns(pid)


def test_a_cancel_is_forwarded_to_the_owning_worker_only(tmp_path: Path) -> None:
    a, b = _spec(0, tmp_path), _spec(1, tmp_path)
    sa, sb = open_cancel_socket(a), open_cancel_socket(b)
    try:
        pid = b.session_pid(77)
        forward_cancel(sa, a, pid, b"\x01\x02\x03\x04")
        forward_cancel(sa, a, (9 << 24) | 5, b"\x00\x00\x00\x00")  # no worker 9: dropped
        assert read_cancels(sb) == [(pid, b"\x01\x02\x03\x04")]
        assert read_cancels(sa) == []
    finally:
        sa.close()
        sb.close()


def test_handed_over_sockets_arrive_usable(tmp_path: Path) -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    child.setblocking(False)
    left, right = socket.socketpair()
    try:
        socket.send_fds(parent, [b"c"], [left.fileno()])
        (got,) = receive_clients(child)
        got.sendall(b"ping")
        assert right.recv(4) == b"ping"
        got.close()
        assert receive_clients(child) == []
    finally:
        for s in (parent, child, left, right):
            s.close()
