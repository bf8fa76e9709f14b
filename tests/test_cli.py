"""The ``nipc`` command against a fake daemon (no root), and end to end in the sandbox.

The fake daemon is a real AF_UNIX listener in a thread: it reads the request line and
answers the way the real daemon would, then plays the routed server itself.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import require_root
from local_daemon import LocalDaemon
from nipc import cli
from nipc_testbed.sandbox import Host, Sandbox
from support import CLIENT_PYTHON, UnixServer, accept_each, client_dir, read_line

REPO = Path(__file__).resolve().parents[1]


def echo(conn: socket.socket) -> None:
    """Echo to EOF, half-close, then say how much came: proves the client's EOF arrived
    while the reply direction was still open."""
    total = 0
    while data := conn.recv(1 << 17):
        conn.sendall(data)
        total += len(data)
    conn.sendall(f"END {total}\n".encode())


class FakeDaemon:
    """Answers each ``CONNECT`` with ``reply`` (bytes, may carry early stream bytes), then
    runs ``serve`` on the connection if the reply was OK."""

    def __init__(self, path: Path, reply: bytes = b"OK\n",
                 serve: Callable[[socket.socket], None] = echo) -> None:
        self.path, self.reply, self.serve = path, reply, serve
        self.requests: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        accept_each(self._sock, self._handle)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            line = read_line(conn)
            if not line.endswith(b"\n"):
                return
            self.requests.append(line)
            conn.sendall(self.reply)
            if self.reply.startswith(b"OK\n"):
                try:
                    self.serve(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(tmp_path / "nipc.sock")
    yield d
    d.close()


def nipc(*args: str, daemon: Path | None = None,
         input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the command as a user would (a fresh process; ``NIPC_SOCKET`` if given)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if daemon is not None:
        env["NIPC_SOCKET"] = str(daemon)
    return subprocess.run([sys.executable, "-m", "nipc.cli", *args], capture_output=True,
                          env=env, timeout=120, input=input)


# -- nipc connect --


def test_connect_moves_20_mib_both_ways_with_half_close(fake: FakeDaemon) -> None:
    data = random.Random(1).randbytes(20 * 1024 * 1024)
    started = time.monotonic()
    out = nipc("connect", "/srv/echo.sock@b.example", daemon=fake.path, input=data)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(data + f"END {len(data)}\n".encode()).digest()
    assert fake.requests == [b"CONNECT /srv/echo.sock@b.example\n"]
    assert time.monotonic() - started < 30


def test_connect_delivers_bytes_that_came_with_ok(tmp_path: Path) -> None:
    d = FakeDaemon(tmp_path / "d.sock", reply=b"OK\nhello-early\n")
    try:
        out = nipc("connect", "/srv/x.sock@b.example", daemon=d.path, input=b"ping")
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"hello-early\npingEND 4\n"
    finally:
        d.close()


def test_connect_refusal_is_one_line_and_nonzero(tmp_path: Path) -> None:
    d = FakeDaemon(tmp_path / "d.sock", reply=b"ERR EACCES nope\n")
    try:
        out = nipc("connect", "/srv/x.sock@b.example", daemon=d.path, input=b"")
        assert out.returncode == 1
        assert out.stderr == b"nipc: EACCES: nope\n"
        assert out.stdout == b""
    finally:
        d.close()


def test_connect_closes_stdout_as_soon_as_the_server_ends(tmp_path: Path) -> None:
    """The server says goodbye and ends its side: stdout reaches EOF at once, although
    stdin is still open (ssh -W and ProxyCommand users depend on it); what stdin sends
    afterwards still reaches the server."""
    got: list[bytes] = []

    def goodbye(conn: socket.socket) -> None:
        conn.sendall(b"bye\n")
        conn.shutdown(socket.SHUT_WR)
        got.append(b"".join(iter(lambda: conn.recv(65536), b"")))

    d = FakeDaemon(tmp_path / "d.sock", serve=goodbye)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NIPC_SOCKET": str(d.path)}
    proc = subprocess.Popen([sys.executable, "-m", "nipc.cli", "connect", "/srv/x.sock@b.example"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        reader.join(30)
        assert out == [b"bye\n"], "stdout still open while stdin is"
        proc.stdin.write(b"late words\n")
        proc.stdin.close()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        for _ in range(300):
            if got:
                break
            time.sleep(0.01)
        assert got == [b"late words\n"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        d.close()


def test_connect_without_daemon_names_the_socket(tmp_path: Path) -> None:
    out = nipc("connect", "/srv/x.sock@b.example", "--daemon", str(tmp_path / "none.sock"), input=b"")
    assert out.returncode == 1
    assert out.stderr.decode() == (f"nipc: ENOENT: cannot reach the NIPC daemon at "
                                   f"{tmp_path / 'none.sock'}: No such file or directory\n")


def test_connect_rejects_bad_target_before_asking() -> None:
    out = nipc("connect", "relative.sock@b.example", input=b"")
    assert out.returncode == 1
    assert out.stderr.startswith(b"nipc: EINVAL: socket path must be absolute")


@pytest.mark.parametrize("verb", ["connect", "forward", "check", "demo"])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main([verb, "--help"])
    assert exit.value.code == 0
    assert f"usage: nipc {verb}" in capsys.readouterr().out


# -- nipc forward --


def wait_until_listening(proc: subprocess.Popen[bytes], path: Path) -> None:
    """``nipc forward`` announces itself once the socket has its mode and listens."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith(f"nipc forward: {path} ".encode()), line
    assert path.exists()


def talk(path: Path, payload: bytes) -> bytes:
    """Send ``payload`` and half-close while reading everything back (concurrently: an
    echo through a relay would otherwise deadlock once the socket buffers are full)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))

        def send() -> None:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError:  # closed on us: what the reading side then sees is the result
                pass

        sender = threading.Thread(target=send)
        sender.start()
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
        sender.join()
    return data


@pytest.mark.parametrize("mode", [None, "0660"])
def test_forward_routes_each_connection_and_cleans_up(fake: FakeDaemon, tmp_path: Path,
                                                      mode: str | None) -> None:
    local = tmp_path / "fwd" / "app.sock"
    local.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NIPC_SOCKET": str(fake.path)}
    argv = [sys.executable, "-m", "nipc.cli", "forward", str(local), "/srv/app.sock@b.example"]
    proc = subprocess.Popen(argv + (["--mode", mode] if mode else []), env=env,
                            stderr=subprocess.PIPE)
    try:
        wait_until_listening(proc, local)
        assert stat.S_IMODE(os.stat(local).st_mode) == int(mode or "0600", 8)
        results: dict[int, bytes] = {}
        payloads = {i: random.Random(i).randbytes(1 << 20) for i in range(4)}

        def client(i: int) -> None:
            results[i] = talk(local, payloads[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i, payload in payloads.items():
            assert results[i] == payload + f"END {len(payload)}\n".encode()
        assert fake.requests == [b"CONNECT /srv/app.sock@b.example\n"] * 4
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert not local.exists()


def test_forward_resets_a_refused_client(tmp_path: Path) -> None:
    """A refused route is a reset at the local client, not a clean EOF it could take for
    an empty answer, even when the client speaks only after the refusal; the reason goes
    to stderr."""
    d = FakeDaemon(tmp_path / "d.sock", reply=b"ERR ENOENT no such socket\n")
    local = tmp_path / "app.sock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "nipc.cli", "forward", "--daemon", str(d.path),
                             str(local), "/srv/app.sock@b.example"], env=env, stderr=subprocess.PIPE)
    try:
        wait_until_listening(proc, local)
        for delay in (0.0, 0.5):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                s.connect(str(local))
                time.sleep(delay)  # the refusal is back by now
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                with pytest.raises(ConnectionResetError):
                    s.recv(4096)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        d.close()
    assert err.count(b"nipc forward: ENOENT: no such socket") == 2
    assert not local.exists()


def test_forward_refuses_a_live_socket(fake: FakeDaemon) -> None:
    out = nipc("forward", str(fake.path), "/srv/app.sock@b.example")
    assert out.returncode == 1
    assert b"in use by another process" in out.stderr
    assert fake.path.exists()


# -- nipc check --


def test_check_enoent_proves_the_path(tmp_path: Path) -> None:
    d = FakeDaemon(tmp_path / "d.sock", reply=b"ERR ENOENT /nonexistent-nipc-check: No such file\n")
    try:
        out = nipc("check", "b.example", daemon=d.path)
        text = out.stdout.decode()
        assert out.returncode == 0, text
        assert text.count("[ok  ]") == 2 and "FAIL" not in text
        assert "Kerberos" in text
        assert d.requests == [b"CONNECT /nonexistent-nipc-check@b.example\n"]
    finally:
        d.close()


def test_check_leaves_no_refused_einval_audit_line(tmp_path: Path) -> None:
    """Against a real daemon: the check's only trace is the audit line of its probe
    (ENOENT), not one more "refused EINVAL" for a connection closed without a request."""
    require_root()
    (tmp_path / "solo").mkdir()
    daemon = LocalDaemon(tmp_path / "solo")

    def audits() -> list[str]:
        return [line for line in daemon.log().splitlines() if "nipc-audit" in line]

    try:
        time.sleep(0.5)  # the start-up probe's own line (LocalDaemon's) is written
        before = len(audits())
        out = nipc("check", "localhost", daemon=daemon.socket)
        assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
        deadline = time.monotonic() + 20
        while "nonexistent-nipc-check" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        new = audits()[before:]
        assert len(new) == 1 and "errno=ENOENT" in new[0], new
    finally:
        daemon.stop()


@pytest.mark.parametrize(("answer", "hint"), [
    (b"ERR ENOKEY no credentials for alice\n", "kinit"),
    (b"ERR EHOSTUNREACH no route\n", "[peers]"),
    (b"ERR EKEYREJECTED ticket refused\n", "keytab"),
    (b"ERR ETIMEDOUT handshake\n", "in time"),
])
def test_check_explains_each_failure(tmp_path: Path, answer: bytes, hint: str) -> None:
    d = FakeDaemon(tmp_path / "d.sock", reply=answer)
    try:
        out = nipc("check", "b.example", daemon=d.path)
        text = out.stdout.decode()
        assert out.returncode == 1
        assert "[FAIL]" in text and answer.split()[1].decode() in text and hint in text
    finally:
        d.close()


def test_check_without_daemon(tmp_path: Path) -> None:
    out = nipc("check", "b.example", "--daemon", str(tmp_path / "none.sock"))
    assert out.returncode == 1
    assert "is nipcd running" in out.stdout.decode()


def test_check_gate_permissions() -> None:
    """EACCES on the daemon socket is the site's policy, and check says so (run as nobody,
    since root passes every permission check)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    where = Path(tempfile.mkdtemp(prefix="nipe-gate-"))
    where.chmod(0o755)
    d = FakeDaemon(where / "d.sock")
    os.chmod(d.path, 0o600)
    try:
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             CLIENT_PYTHON, "-m", "nipc.cli", "check", "b.example", "--daemon", str(d.path)],
            capture_output=True, timeout=60, cwd="/",
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(client_dir())})
        assert out.returncode == 1, out.stderr
        assert "EACCES" in out.stdout.decode() and "who may use NIPC" in out.stdout.decode()
        assert d.requests == []
    finally:
        d.close()
        shutil.rmtree(where)


# -- nipc demo --


def test_demo_delegates(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class Demo:
        @staticmethod
        def main(argv: list[str]) -> int:
            seen.append(argv)
            return 3

    import nipc_testbed
    monkeypatch.setitem(sys.modules, "nipc_testbed.demo", Demo)
    monkeypatch.setattr(nipc_testbed, "demo", Demo, raising=False)
    assert cli.main(["demo", "--keep"]) == 3
    assert seen == [["--keep"]]


def test_demo_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import nipc_testbed
    monkeypatch.setitem(sys.modules, "nipc_testbed.demo", None)
    monkeypatch.delattr(nipc_testbed, "demo", raising=False)
    assert cli.main(["demo"]) == 1
    assert "scripts/demo" in capsys.readouterr().err


# -- end to end in the sandbox --


@pytest.mark.integration
def test_pipeline_moves_100_mib_through_a_to_b(samba_hosts: dict[str, Host], sandbox: Sandbox) -> None:
    """alice on a: ``cat file | nipc connect PATH@b | sha256sum``; the server on b echoes to
    EOF and then reports the count, so the digest matches only if every byte went both ways
    and the EOF arrived while the reply direction stayed open."""
    require_root()
    a, b = samba_hosts["a"], samba_hosts["b"]
    size = 100 * 1024 * 1024
    blob_inside = "/tmp/nipc-pipeline-blob"  # in a's own /tmp
    blob = a.path(blob_inside)
    h = hashlib.sha256()
    with open(blob, "wb") as f:
        rng = random.Random(100)
        for _ in range(size >> 20):
            part = rng.randbytes(1 << 20)
            f.write(part)
            h.update(part)
    h.update(f"END {size}\n".encode())
    blob.chmod(0o644)
    server = UnixServer(str(b.run_dir / "echo.sock"), behaviour="call", call=echo)
    try:
        with a.running(), b.running():
            # The nipc command installed on a, its daemon at the default socket: as a user has it.
            pipeline = f"cat {blob_inside} | nipc connect {b.run_dir / 'echo.sock'}@{b.fqdn} | sha256sum"
            out = a.run(["bash", "-o", "pipefail", "-c", pipeline], "alice",
                        env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=300)
            assert out.stdout.split()[0] == h.hexdigest()
            assert server.seen[-1].uid == b.user("alice").uid
    finally:
        server.close()
        blob.unlink()
