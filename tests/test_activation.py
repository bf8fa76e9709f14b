"""systemd socket activation: nipcd serves the gate (and the peer port) on the listening
sockets it is handed instead of creating its own, and leaves the socket file to its owner.

A real daemon on this host (``path@localhost`` needs no Kerberos), started the way systemd
starts it: by ``systemd-socket-activate`` on the first connection, or, where that tool is
missing, by a tiny launcher passing the sockets the same way (fd 3 and up, ``LISTEN_FDS``,
``LISTEN_PID``, ``LISTEN_FDNAMES``), though it starts the daemon at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_root
from local_daemon import free_port, solo_config, stop_process
from nipc.client import connect
from support import UnixServer

TWISTD = str(Path(sys.executable).parent / "twistd")
#: Sockets the launcher (Python fallback) binds and execs the daemon with.
LAUNCHER = r"""
import os, socket, sys
listeners, argv = sys.argv[1].split(","), sys.argv[2:]
names, socks = [], []
for spec in listeners:
    name, _, where = spec.partition("=")
    if where.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(where)
    else:
        host, _, port = where.rpartition(":")
        s = socket.socket()
        s.bind((host, int(port)))
    s.listen(16)
    names.append(name)
    socks.append(s)
for n, s in enumerate(socks):  # fds 3, 4, ... as systemd passes them (fds are free there)
    if s.fileno() != 3 + n:
        os.dup2(s.fileno(), 3 + n)
    os.set_inheritable(3 + n, True)
    print(f"Listening on {listeners[n].partition('=')[2]} as {3 + n}.", flush=True)
os.environ.update(LISTEN_FDS=str(len(socks)), LISTEN_PID=str(os.getpid()),
                  LISTEN_FDNAMES=":".join(names))
os.execv(argv[0], argv)  # same pid: LISTEN_PID stays right
"""


class Activated:
    """nipcd in ``root``, socket-activated on a gate socket and a peer port: named ``peer``
    or, with ``peer_by_port``, unnamed but on the configured [peer] port."""

    def __init__(self, root: Path, extra_listener: str = "", peer_by_port: bool = False) -> None:
        root.chmod(0o755)
        self.root = root
        self.socket = root / "nipc.sock"
        self.peer_port = free_port()
        self.config = root / "nipcd.toml"
        self.config.write_text(solo_config(
            root, self.socket, self.peer_port if peer_by_port else free_port()))
        listeners = [("nipcd.socket", str(self.socket)),
                     ("nipcd.socket" if peer_by_port else "peer", f"127.0.0.1:{self.peer_port}")]
        if extra_listener:
            listeners.append(("extra", extra_listener))
        daemon = [TWISTD, "-n", "--pidfile=", "nipc", "--config", str(self.config)]
        tool = shutil.which("systemd-socket-activate")
        if tool is not None:
            argv = [tool, *(f"--listen={where}" for _, where in listeners),
                    "--fdname=" + ":".join(name for name, _ in listeners)]
            if "PYTHONPATH" in os.environ:  # it passes on only a few variables
                argv.append(f"--setenv=PYTHONPATH={os.environ['PYTHONPATH']}")
            argv += daemon
        else:
            argv = [sys.executable, "-c", LAUNCHER,
                    ",".join(f"{name}={where}" for name, where in listeners), *daemon]
        self.out = open(root / "nipcd.out", "wb")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + 10
        while f"Listening on {listeners[-1][1]} as" not in self.log():  # no daemon yet
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the launcher did not bind:\n" + self.log())
            time.sleep(0.02)

    def log(self) -> str:
        return (self.root / "nipcd.out").read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the daemon's log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> int:
        status = stop_process(self.proc)
        self.out.close()
        return status


@pytest.fixture
def root() -> Iterator[Path]:
    require_root()
    where = Path(tempfile.mkdtemp(prefix="nipc-activation-"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("peer_by_port", [False, True], ids=["peer-by-name", "peer-by-port"])
def test_the_daemon_serves_the_sockets_systemd_passes(root: Path, peer_by_port: bool) -> None:
    daemon = Activated(root, peer_by_port=peer_by_port)
    try:
        before = os.stat(daemon.socket)
        server = UnixServer(str(root / "echo.sock"))
        try:
            # The first connection starts the daemon (systemd-socket-activate) and waits in
            # the socket's queue until the daemon accepts.
            with connect(f"{root / 'echo.sock'}@localhost", daemon=str(daemon.socket),
                         timeout=20) as sock:
                assert sock.recv(4096).startswith(b"{")  # the echo server's greeting
                sock.sendall(b"through the activated socket")
                got = b""
                while len(got) < len(b"through the activated socket"):
                    chunk = sock.recv(4096)
                    assert chunk
                    got += chunk
                assert got == b"through the activated socket"
        finally:
            server.close()
        daemon.wait_for_log("nipcd solo.test serving")
        log = daemon.log()
        assert f"socket activation: adopted {daemon.socket} from systemd" in log
        assert "socket activation: adopted the peer port" in log
        assert f"peers on 127.0.0.1:{daemon.peer_port}" in log
        assert "removing stale socket" not in log
        # Neither recreated nor chmod'ed: the file is the launcher's, as systemd's would be.
        after = os.stat(daemon.socket)
        assert (after.st_ino, after.st_mode, after.st_uid) == (before.st_ino, before.st_mode,
                                                                before.st_uid)
        # The peer port is the daemon's too: it accepts (and expects TLS).
        with socket.create_connection(("127.0.0.1", daemon.peer_port), timeout=5):
            pass
    finally:
        daemon.stop()
    # The socket belongs to systemd: still there, same inode, after the daemon stopped.
    assert daemon.socket.is_socket()
    assert os.stat(daemon.socket).st_ino == before.st_ino
    assert not (root / "admin.sock").exists()  # the daemon's own socket is cleaned up


def test_a_socket_the_daemon_has_no_use_for_stops_it(root: Path) -> None:
    daemon = Activated(root, extra_listener=str(root / "other.sock"))
    try:
        with socket.socket(socket.AF_UNIX) as poke:  # starts the daemon
            poke.connect(str(daemon.socket))
            deadline = time.monotonic() + 20
            while "no use for" not in daemon.log() and time.monotonic() < deadline:
                time.sleep(0.05)
        assert f"socket activation: no use for {root / 'other.sock'}" in daemon.log()
    finally:
        daemon.stop()
