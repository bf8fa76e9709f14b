"""Test support: real Unix-socket servers that record who connected, and a client run
as a real local user in its own process (so SO_PEERCRED is the kernel's truth)."""

from __future__ import annotations

import hashlib
import atexit
import json
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


def stream(seed: int, size: int, chunk: int = 1 << 16):  # type: ignore[no-untyped-def]
    """Deterministic pseudo-random bytes, in chunks."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def read_line(s: socket.socket) -> bytes:
    """Bytes up to and including the first newline, read one at a time so that nothing
    after it is taken; shorter (no newline) if the connection ends first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def accept_each(listener: socket.socket, handle: Callable[[socket.socket], None], *,
                threaded: bool = True) -> None:
    """Accept on ``listener`` until it is closed, on a daemon thread; each connection goes
    to ``handle``, on a thread of its own unless ``threaded`` is False (one at a time)."""
    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if threaded:
                threading.Thread(target=handle, args=(conn,), daemon=True).start()
            else:
                handle(conn)

    threading.Thread(target=loop, daemon=True).start()


def send_while_reading(sock: socket.socket, size: int, seed: int) -> tuple[str, int]:
    """Send ``size`` seeded bytes (``stream``) then EOF, on a thread, while reading ``sock``
    to EOF: the sha256 and length of what was read (neither side waits on the other)."""
    def send() -> None:
        for part in stream(seed, size):
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    h = hashlib.sha256()
    n = 0
    while data := sock.recv(1 << 17):
        h.update(data)
        n += len(data)
    sender.join()
    return h.hexdigest(), n


def audit_lines(log: Path) -> list[dict[str, Any]]:
    """Every audit line so far in a daemon's JSON log file."""
    records = log.read_text(errors="replace").split("\x1e")
    return [json.loads(r)["nipc_audit"] for r in records if '"nipc_audit"' in r]


def last_audits(*hosts: Any, n: int = 2) -> dict[str, list[dict[str, Any]]]:
    """Each host's last ``n`` audit lines (``Host``s of the sandbox), for the message of a
    test whose connection ended early: which side ended it, after how long, how many bytes."""
    return {host.name: audit_lines(host.log_path)[-n:] for host in hosts if host.log_path.exists()}


def digest_of(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for part in stream(seed, size):
        h.update(part)
    return h.hexdigest()


@dataclass
class Seen:
    pid: int
    uid: int
    gid: int
    groups: list[int]
    peername: str
    received: str = ""
    received_bytes: int = 0
    ended: threading.Event = field(default_factory=threading.Event)
    #: What went wrong in the handler, if anything (shown by failing tests).
    error: str = ""


@dataclass
class UnixServer:
    """A threaded server at ``path``; ``behaviour`` says what it does with each client.

    - ``greet``: send a JSON line with the peer's credentials, then echo until EOF.
    - ``bulk:N:SEED``: send N seeded bytes while reading to EOF; record the digest.
    - ``eof-reply``: read to EOF, then answer with the digest and length of what it read.
    """

    path: str
    mode: int = 0o666
    group: int | None = None
    behaviour: str = "greet"
    #: With ``greet``: a daemon socket to ask ``PEER`` about each connection.
    ask_peer: str | None = None
    #: With ``call``: what to do with each accepted connection.
    call: Callable[[socket.socket], None] | None = None
    _seen: list[Seen] = field(default_factory=list, init=False)
    #: Held while connections are taken from the backlog and recorded, and while closing.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        os.chmod(self.path, self.mode)
        if self.group is not None:
            os.chown(self.path, 0, self.group)
        # Room for a burst: the overload tests open 400 connections at once, and a full
        # backlog would refuse them with EAGAIN from the server, not from the daemon.
        self._sock.listen(1024)
        self._sock.setblocking(False)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def seen(self) -> list[Seen]:
        """Everyone who connected, in order. A connect() that has returned is counted even
        if no thread has accepted it yet (it waits in the backlog): a daemon answers its
        caller once its connect to us returned, so a count read after that answer is exact,
        not a race with the accepting thread."""
        self._accept_waiting()
        return self._seen

    def close(self) -> None:
        # Under the lock, so no accept can run on this fd number once it is closed (and
        # perhaps reused by the next test's server, whose connection it would then steal).
        with self._lock:
            self._closed = True
            self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while self._accept_waiting():
            poller.poll(200)

    def _accept_waiting(self) -> bool:
        """Accept and record every connection waiting in the backlog, each then handled on
        a thread of its own; False once the server is closed."""
        with self._lock:
            while not self._closed:
                try:
                    conn, _ = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    return True
                conn.setblocking(True)
                seen = self._record(conn)
                threading.Thread(target=self._handle, args=(conn, seen), daemon=True).start()
            return False

    def _record(self, conn: socket.socket) -> Seen:
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = sorted(struct.unpack(f"{len(raw) // 4}I", raw))
        peer = conn.getpeername()
        seen = Seen(pid, uid, gid, groups, peer.decode("latin-1") if isinstance(peer, bytes) else peer)
        self._seen.append(seen)
        return seen

    def _handle(self, conn: socket.socket, seen: Seen) -> None:
        uid, gid, groups = seen.uid, seen.gid, seen.groups
        try:
            self._behave(conn, seen, uid, gid, groups)
        except Exception as e:  # noqa: BLE001 - recorded for the test to report
            seen.error = repr(e)
        finally:
            conn.close()
            seen.ended.set()

    def _behave(self, conn: socket.socket, seen: Seen, uid: int, gid: int, groups: list[int]) -> None:
        kind, *args = self.behaviour.split(":")
        if kind == "call":
            assert self.call is not None
            self.call(conn)
        elif kind == "greet":
            info: dict[str, Any] = {"uid": uid, "gid": gid, "groups": groups,
                                    "peername": seen.peername}
            if self.ask_peer is not None:
                info["peer"] = ask_peer(self.ask_peer, conn)
            conn.sendall(json.dumps(info).encode() + b"\n")
            while data := conn.recv(65536):
                conn.sendall(data)
        elif kind == "bulk":
            seen.received, seen.received_bytes = send_while_reading(conn, int(args[0]), int(args[1]))
        elif kind == "eof-reply":
            h = hashlib.sha256()
            while data := conn.recv(65536):
                h.update(data)
                seen.received_bytes += len(data)
            conn.sendall(f"{h.hexdigest()} {seen.received_bytes}\n".encode())


_client_dir: Path | None = None


def client_dir() -> Path:
    """A world-readable copy of the client library and tool.

    Test users cannot be assumed to read the checkout (CI may clone under /root), nor to
    run the virtualenv's interpreter (pyenv's lives under /root): the client is stdlib-only
    and runs under the system Python from this copy, which goes when this process ends.
    """
    global _client_dir
    if _client_dir is None:
        root = Path(tempfile.mkdtemp(prefix="nipc-client-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        shutil.copytree(Path(__file__).resolve().parents[1] / "nipc", root / "nipc",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("client_tool.py", "support.py"):
            shutil.copy(Path(__file__).with_name(name), root / name)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        _client_dir = root
    return _client_dir


CLIENT_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def ask_peer(daemon: str, conn: socket.socket) -> str:
    """The daemon's ``PEER`` answer about ``conn`` (the fd travels as SCM_RIGHTS)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(daemon)
        s.sendmsg([b"PEER\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", conn.fileno()))])
        data = b""
        while not data.endswith(b"\n") and (chunk := s.recv(65536)):
            data += chunk
    return data.decode()


#: Where ``run_client`` installs the test client on each host (the host's own /usr/local).
CLIENT_TOOLS = "/usr/local/lib/nipc-tests"
_installed: set[Path] = set()


def _install_tools(host: Any) -> None:
    """Copy client_tool.py and support.py into the host's /usr/local, readable by all, once;
    ``import nipc`` is already there (the sandbox installs the client on every host)."""
    if host.dir in _installed:
        return
    here = Path(__file__).parent
    host.run(["install", "-d", "-m", "0755", CLIENT_TOOLS])
    host.run(["install", "-m", "0644", str(here / "client_tool.py"), str(here / "support.py"),
              CLIENT_TOOLS])
    _installed.add(host.dir)


def run_client(user: str | None, daemon_socket: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run tests/client_tool.py as ``user`` (None: as root) with the system Python, on the
    host whose daemon socket ``daemon_socket`` is; returns its JSON answer."""
    from nipc_testbed.sandbox import Host

    host = Host.owning(daemon_socket)
    _install_tools(host)
    env = {"NIPC_SOCKET": daemon_socket, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = host.exec_argv(["/usr/bin/python3", f"{CLIENT_TOOLS}/client_tool.py", *args], user)
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"client tool failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
