"""The client trusts the gate socket only when it is the daemon's (issue 14 item 10).

Whoever sits at the gate's path reads every caller's targets and answers in the daemon's
name. ``nipc.connect``, ``nipc.peer_identity``, the ``nipc:`` endpoint and the CLI refuse a
socket, or a directory on the way to it, that belongs to another user, a directory other
users may write to, and a socket served by another user's process. Real sockets, real
owners (root creates them and gives them away, so the tests need root).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

import nipc
from acting import as_user
from conftest import require_root
from nipc.client import check_gate
from nipc.endpoint import NIPCClientEndpoint
from nipc.identity import identity_of_user
from support import accept_each

OTHER = "nobody"


class FakeGate:
    """A listening socket at ``path`` that answers ``OK`` and records what it was sent."""

    def __init__(self, path: Path, listener: socket.socket | None = None) -> None:
        self.path = path
        if listener is None:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(path))
            listener.listen()
        self._listener = listener
        os.chmod(path, 0o666)
        self.received = b""
        accept_each(self._listener, self._answer, threaded=False)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.received += conn.recv(4096)
                conn.sendall(b"OK\n")
            except OSError:
                pass

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A root-owned 0755 directory reachable by root only through root's own dirs."""
    require_root()
    where = tmp_path / "run"
    where.mkdir(mode=0o755)
    where.chmod(0o755)
    yield where


def refusal(path: Path) -> OSError:
    with pytest.raises(OSError) as info:
        nipc.connect("/x.sock@b.example", daemon=str(path), timeout=10)
    return info.value


def test_a_root_socket_in_root_directories_is_used(home: Path) -> None:
    """The normal case: root's socket in root's directories (under sticky /tmp)."""
    gate = FakeGate(home / "nipc.sock")
    try:
        nipc.connect("/x.sock@b.example", daemon=str(gate.path), timeout=10).close()
    finally:
        gate.close()
    assert gate.received == b"CONNECT /x.sock@b.example\n"


def test_a_socket_owned_by_another_user_is_refused(home: Path) -> None:
    """EPERM naming the path and the owner; the socket is sent nothing."""
    gate = FakeGate(home / "nipc.sock")
    nobody = identity_of_user(OTHER)
    os.chown(gate.path, nobody.uid, nobody.gid)
    try:
        e = refusal(gate.path)
        assert e.errno == errno.EPERM
        assert str(gate.path) in str(e) and f"uid {nobody.uid} ({OTHER})" in str(e), e
        with pytest.raises(PermissionError):
            nipc.peer_identity(socket.socket(socket.AF_UNIX), daemon=str(gate.path))
        endpoint = NIPCClientEndpoint(MemoryReactor(), "/x.sock@b.example", str(gate.path))
        failed: list[Failure] = []
        endpoint.connect(Factory()).addErrback(failed.append)
        assert failed and failed[0].check(PermissionError) and str(gate.path) in str(failed[0].value)
    finally:
        gate.close()
    assert gate.received == b""


def test_the_configured_owner_may_own_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``NIPC_SOCKET_OWNER`` (the daemon's [local] owner) is trusted besides root."""
    gate = FakeGate(home / "nipc.sock")
    nobody = identity_of_user(OTHER)
    os.chown(gate.path, nobody.uid, nobody.gid)
    monkeypatch.setenv("NIPC_SOCKET_OWNER", OTHER)
    try:
        nipc.connect("/x.sock@b.example", daemon=str(gate.path), timeout=10).close()
    finally:
        gate.close()


@pytest.mark.parametrize("mode,owner", [(0o755, OTHER), (0o777, "root"), (0o1777, "root"),
                                        (0o775, OTHER)])
def test_a_directory_others_could_write_to_is_refused(home: Path, mode: int, owner: str) -> None:
    """A user's directory, a world-writable one (sticky or not: before the daemon starts
    anyone may take the name) holding the gate: EPERM naming the directory."""
    where = home / "gate"
    where.mkdir()
    where.chmod(mode)
    who = identity_of_user(owner)
    os.chown(where, who.uid, 0 if owner == "root" else who.gid)
    gate = FakeGate(where / "nipc.sock")
    try:
        e = refusal(gate.path)
        assert e.errno == errno.EPERM and f"{where}" in str(e), e
    finally:
        gate.close()
    assert gate.received == b""


def test_a_symlink_to_the_real_gate_from_a_user_directory_is_refused(home: Path) -> None:
    """The path as written is checked, not only where it leads."""
    real = FakeGate(home / "nipc.sock")
    users = home / "users"
    users.mkdir(mode=0o777)
    users.chmod(0o777)
    (users / "nipc.sock").symlink_to(real.path)
    try:
        assert refusal(users / "nipc.sock").errno == errno.EPERM
        nipc.connect("/x.sock@b.example", daemon=str(real.path), timeout=10).close()
    finally:
        real.close()


def test_a_socket_served_by_another_users_process_is_refused(home: Path) -> None:
    """A root-owned file in root's directory, but the listener is another user's process
    (the file swapped in after the check, say): SO_PEERCRED gives it away. (The kernel
    takes a listener's credentials from whoever calls listen(), here a thread as nobody.)"""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home / "nipc.sock"))
    as_user(OTHER, listener.listen)
    gate = FakeGate(home / "nipc.sock", listener)
    try:
        check_gate(str(gate.path))  # the file itself passes
        e = refusal(gate.path)
        assert e.errno == errno.EPERM and "served by a process of" in str(e), e
    finally:
        gate.close()


def test_the_cli_refuses_it_clearly(home: Path) -> None:
    """``nipc connect`` exits with the errno name and the reason; ``nipc check`` says why."""
    gate = FakeGate(home / "nipc.sock")
    nobody = identity_of_user(OTHER)
    os.chown(gate.path, nobody.uid, nobody.gid)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        out = subprocess.run([sys.executable, "-m", "nipc.cli", "connect", "--daemon",
                              str(gate.path), "/x.sock@b.example"], capture_output=True,
                             text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
        assert out.returncode != 0 and "EPERM" in out.stderr and str(gate.path) in out.stderr, out
        check = subprocess.run([sys.executable, "-m", "nipc.cli", "check", "--daemon",
                                str(gate.path), "b.example"], capture_output=True, text=True,
                               timeout=60, env=env)
        assert check.returncode != 0 and "EPERM" in check.stdout, check
        assert "writable by other users" in check.stdout, check  # the hint
    finally:
        gate.close()
    assert gate.received == b""


def test_the_daemon_flags_a_gate_clients_will_refuse(tmp_path: Path) -> None:
    """A daemon whose gate sits below a directory anyone may write to says at start that
    clients will refuse it, naming the directory."""
    require_root()
    from local_daemon import LocalDaemon

    tmp_path.chmod(0o777)
    (tmp_path / "solo").mkdir()
    daemon = LocalDaemon(tmp_path / "solo")
    try:
        warning = (f"clients will refuse this daemon's gate socket: NIPC daemon socket "
                   f"{daemon.socket}: directory {tmp_path} ")
        assert warning in daemon.logged(warning), daemon.log()
    finally:
        daemon.stop()
        tmp_path.chmod(0o755)
