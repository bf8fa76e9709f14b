"""Failure semantics (issue: partitions, crashes, outages and fd passing behave like local
IPC): faults injected into the sandbox domain, and what each end sees, within how long."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

import nipc
from acting import as_user, launch_daemon, open_fds, rss_kib
from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer, digest_of, last_audits, read_line, stream

pytestmark = pytest.mark.integration

#: Dead-peer detection configured for these tests (seconds): keepalive after 2 s idle,
#: TCP_USER_TIMEOUT 4 s. The bound the tests hold the daemons to is generous on top.
FAST = "keepalive_idle = 2\nuser_timeout = 4\n"
BOUND = 20.0


@pytest.fixture(scope="module")
def hosts(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    with ExitStack() as stack:
        for host in samba_hosts.values():
            stack.enter_context(host.reconfigured(
                lambda text: text.replace("[timeouts]\n", "[timeouts]\n" + FAST), start=True))
        yield samba_hosts
        for host in samba_hosts.values():
            host.restore_link()


def alice_connect(a: Host, target: str) -> socket.socket:
    return as_user(a.user("alice"), lambda: nipc.connect(target, daemon=str(a.socket_path), timeout=60))


def target(host: Host, name: str) -> str:
    return f"{host.run_dir / name}@{host.fqdn}"


def ends_within(s: socket.socket, seconds: float) -> float:
    """Read until EOF or reset; returns how long that took."""
    start = time.monotonic()
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - start


def test_partition_mid_stream(hosts: dict[str, Host]) -> None:
    """Cut the link between a and b: both ends of the routed connection see EOF/reset
    within the configured bound, never a socket that stays open but dead."""
    a, b = hosts["a"], hosts["b"]
    server = UnixServer(str(b.run_dir / "part.sock"))
    try:
        s = alice_connect(a, target(b, "part.sock"))
        read_line(s)
        s.sendall(b"before\n")
        assert s.recv(100) == b"before\n"
        b.cut_link()
        try:
            took = ends_within(s, BOUND + 10)
            assert took < BOUND, f"client saw the end only after {took:.1f}s"
            assert server.seen[0].ended.wait(BOUND), "server on b never saw the end"
        finally:
            b.restore_link()
        again = alice_connect(a, target(b, "part.sock"))  # no restart needed
        assert read_line(again).startswith(b"{")
        again.close()
    finally:
        server.close()


def test_remote_daemon_killed(hosts: dict[str, Host]) -> None:
    """kill -9 of b's daemon: the client on a sees EOF promptly; after a restart (its
    stale socket file cleared safely) b serves new connects."""
    a, b = hosts["a"], hosts["b"]
    server = UnixServer(str(b.run_dir / "kill.sock"))
    try:
        s = alice_connect(a, target(b, "kill.sock"))
        read_line(s)
        b.kill_daemon()
        assert ends_within(s, 10) < 5
        assert server.seen[0].ended.wait(5)
        assert b.socket_path.exists()  # the stale socket a crash leaves behind
        b.start_daemon()
        again = alice_connect(a, target(b, "kill.sock"))
        assert read_line(again).startswith(b"{")
        again.close()
    finally:
        server.close()


def test_connections_while_the_remote_daemon_restarts(hosts: dict[str, Host]) -> None:
    """Callers connect to b without pause while b's daemon is restarted (SIGTERM: it drains
    and stops; a new one starts) a few times. Each caller gets the server's greeting, or
    an error before any OK: never OK then EOF at once (a stopping b that still answered a
    HELLO on the link a held, or whose handshake ended as its process did)."""
    a, b = hosts["a"], hosts["b"]
    server = UnixServer(str(b.run_dir / "restart.sock"))
    done = threading.Event()
    greeted: list[float] = []
    refused: list[str] = []
    broken: list[str] = []

    def caller() -> None:
        while not done.is_set():
            try:
                s = alice_connect(a, target(b, "restart.sock"))
            except OSError as e:
                refused.append(f"{errno.errorcode.get(e.errno or 0, e.errno)} {e.strerror}")
                time.sleep(0.05)
                continue
            try:
                s.settimeout(30)
                line = read_line(s)
            except OSError as e:
                line = repr(e).encode()
            finally:
                s.close()
            if line.startswith(b"{"):
                greeted.append(time.monotonic())
            else:
                broken.append(f"OK then {line!r}; audits: {last_audits(a, b, n=4)}")

    # Two callers: often a handshake is under way while no connection is spliced, the
    # moment when a stopping daemon's drain had nothing to wait for.
    callers = [threading.Thread(target=caller) for _ in range(2)]
    for t in callers:
        t.start()
    try:
        for _ in range(6):
            time.sleep(1.0)
            b.stop_daemon(timeout=20)
            b.start_daemon()
        time.sleep(1.5)
    finally:
        done.set()
        for t in callers:
            t.join(120)
        server.close()
    assert not broken, broken
    # While b stops, or before the new one listens: b is not reachable, not overloaded.
    assert {r.split()[0] for r in refused} <= {"EHOSTUNREACH"}, sorted(set(refused))
    assert greeted and greeted[-1] > time.monotonic() - 60, (len(greeted), refused[-5:])


def test_local_daemon_killed(hosts: dict[str, Host]) -> None:
    """kill -9 of a's daemon: the server on b sees EOF promptly, the client too."""
    a, b = hosts["a"], hosts["b"]
    server = UnixServer(str(b.run_dir / "killa.sock"))
    try:
        s = alice_connect(a, target(b, "killa.sock"))
        read_line(s)
        a.kill_daemon()
        assert server.seen[0].ended.wait(5), "server on b kept a dead connection"
        assert ends_within(s, 10) < 5
        a.start_daemon()
    finally:
        server.close()


def test_a_live_daemons_socket_is_never_removed(hosts: dict[str, Host]) -> None:
    """A second daemon with the same config refuses to start; the first keeps serving."""
    a = hosts["a"]
    twistd = str(Path(sys.executable).parent / "twistd")
    proc = subprocess.run(a.exec_argv([twistd, "-n", "--pidfile=", "nipc", "--config", str(a.config_path)]),
                          env={**os.environ, **a.env()}, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "another process is serving" in proc.stdout + proc.stderr
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(a.socket_path))
        s.sendall(b"CONNECT relative@x\n")
        assert s.recv(100).startswith(b"ERR EINVAL")


CRASHER = """
import os, random, signal, socket, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_UNIX); s.bind(path); os.chmod(path, 0o666); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.sendall(random.Random(seed).randbytes(size))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_destination_server_crash(hosts: dict[str, Host]) -> None:
    """The server sends data and dies: the client gets every byte it sent, then EOF."""
    a, b = hosts["a"], hosts["b"]
    path = b.run_dir / "crash.sock"
    path.unlink(missing_ok=True)
    size = 1 << 20
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(path), str(size), "5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        s = alice_connect(a, target(b, "crash.sock"))
        s.settimeout(30)
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
        assert proc.wait(30) == -signal.SIGKILL  # the EOF came from its death
        import random
        assert got == random.Random(5).randbytes(size)
    finally:
        proc.kill()
        path.unlink(missing_ok=True)


def test_kdc_outage(hosts: dict[str, Host], sandbox: Sandbox) -> None:
    """KDC unreachable: a caller without cached tickets fails fast with a clear errno;
    cached tickets keep serving; once the KDC is back, it works with no restart."""
    a, b = hosts["a"], hosts["b"]
    server = UnixServer(str(b.run_dir / "kdc.sock"))
    port = ["ip", "-n", sandbox.switch_netns, "link", "set", "p-dc"]
    try:
        alice_connect(a, target(b, "kdc.sock")).close()  # alice's tickets are now cached
        subprocess.run(port + ["down"], check=True)
        try:
            start = time.monotonic()
            with pytest.raises(OSError) as refused:
                as_user(a.user("bob"), lambda: nipc.connect(target(b, "kdc.sock"), daemon=str(a.socket_path), timeout=60))
            took = time.monotonic() - start
            assert refused.value.errno in (113, 110), refused.value  # EHOSTUNREACH, ETIMEDOUT
            assert "KDC" in str(refused.value.strerror), refused.value
            assert took < BOUND, took
            alice_connect(a, target(b, "kdc.sock")).close()
        finally:
            subprocess.run(port + ["up"], check=True)
        as_user(a.user("bob"), lambda: nipc.connect(target(b, "kdc.sock"), daemon=str(a.socket_path), timeout=60)).close()
    finally:
        server.close()


def test_clock_skew(hosts: dict[str, Host]) -> None:
    """b's clock 20 minutes ahead of the realm: a clear error naming clock skew."""
    a, b = hosts["a"], hosts["b"]
    lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
    if not os.path.exists(lib):
        pytest.fail("libfaketime missing: scripts/bootstrap installs the faketime package")
    b.stop_daemon()
    skewed = launch_daemon(b, env={"LD_PRELOAD": lib, "FAKETIME": "+20m",
                                   "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    server = UnixServer(str(b.run_dir / "skew.sock"))
    try:
        with pytest.raises(OSError) as refused:
            alice_connect(a, target(b, "skew.sock"))
        assert refused.value.errno == 129, refused.value  # EKEYREJECTED
        assert "clock skew" in str(refused.value.strerror)
    finally:
        server.close()
        skewed.send_signal(signal.SIGTERM)
        skewed.wait(10)
        b.start_daemon()


def test_fd_passing_before_ok_is_einval(hosts: dict[str, Host]) -> None:
    a, b = hosts["a"], hosts["b"]

    def attempt() -> bytes:
        with socket.socket(socket.AF_UNIX) as s, open("/dev/null") as f:
            s.connect(str(a.socket_path))
            s.sendmsg([f"CONNECT {target(b, 'x.sock')}\n".encode()],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", f.fileno()))])
            return s.recv(4096)

    assert as_user(a.user("alice"), attempt).startswith(b"ERR EINVAL ")


def audit_lines(host: Host, needle: str) -> list[str]:
    return [line for line in host.log_path.read_text().splitlines() if needle in line]


@pytest.mark.parametrize("sender", ["client", "server"])
def test_fd_passing_after_ok_tears_down(hosts: dict[str, Host], sender: str) -> None:
    """SCM_RIGHTS on a routed connection, from either end: both ends are torn down and
    the event is logged with the caller's identity; nothing silently dropped."""
    a, b = hosts["a"], hosts["b"]
    go = threading.Event()

    def misbehave(conn: socket.socket) -> None:
        conn.sendall(b"hello\n")
        if sender == "server":
            go.wait(10)
            with open("/dev/null") as f:
                conn.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", f.fileno()))])
        while conn.recv(65536):
            pass

    server = UnixServer(str(b.run_dir / f"fd-{sender}.sock"), behaviour="call", call=misbehave)
    try:
        s = alice_connect(a, target(b, f"fd-{sender}.sock"))
        assert read_line(s) == b"hello\n"
        if sender == "client":
            with open("/dev/null") as f:
                s.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", f.fileno()))])
        go.set()
        assert ends_within(s, 10) < 5
        assert server.seen[0].ended.wait(5)
        logged = a if sender == "client" else b
        deadline = time.monotonic() + 5
        while not audit_lines(logged, "SCM_RIGHTS") and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = audit_lines(logged, "SCM_RIGHTS")
        assert lines and all('"uid"' in line or "uid=" in line for line in lines), lines
    finally:
        server.close()


def test_slow_reader_bounded_memory(hosts: dict[str, Host]) -> None:
    """A fast writer and a slow reader: the daemons' memory stays bounded, the writer is
    slowed to the reader's pace, and no byte is lost or reordered."""
    a, b = hosts["a"], hosts["b"]
    size = 48 << 20

    def slow(conn: socket.socket) -> None:
        h = hashlib.sha256()
        while data := conn.recv(1 << 16):
            h.update(data)
            time.sleep(0.004)  # about 16 MB/s at most
        conn.sendall(h.hexdigest().encode())

    server = UnixServer(str(b.run_dir / "slow.sock"), behaviour="call", call=slow)
    pids = [a.daemon_pid(), b.daemon_pid()]
    assert all(pids)
    before = [rss_kib(p) for p in pids if p]
    peak = list(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for i, p in enumerate(pids):
                assert p
                peak[i] = max(peak[i], rss_kib(p))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        s = alice_connect(a, target(b, "slow.sock"))
        start = time.monotonic()
        for part in stream(11, size):
            s.sendall(part)
        s.shutdown(socket.SHUT_WR)
        write_time = time.monotonic() - start
        s.settimeout(60)
        answer = s.recv(100).decode()
        assert answer == digest_of(11, size)
        # The writer could not run ahead of the reader by more than the buffers.
        assert write_time > 1.5, write_time
    finally:
        done.set()
        sampler.join()
        server.close()
    growth = [p - q for p, q in zip(peak, before)]
    assert max(growth) < 48 * 1024, f"daemon RSS grew by {growth} KiB"


def settled_fds(pid: int) -> int:
    """``pid``'s fd count once it stays the same for half a second (connections that just
    ended are closed a reactor turn later), within 10 seconds."""
    count, deadline = open_fds(pid), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        count, before = open_fds(pid), count
        if count == before:
            break
    return count


def test_many_connections_while_one_peer_is_partitioned(hosts: dict[str, Host]) -> None:
    """200 routed connections carrying data at once, while c is cut off: the ones to b
    are unaffected (digests equal), the ones to c end, and no fd leaks in a's daemon."""
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    size = 256 << 10
    to_b = UnixServer(str(b.run_dir / "many.sock"), behaviour=f"bulk:{size}:3")
    to_c = UnixServer(str(c.run_dir / "many.sock"))
    a_pid = a.daemon_pid()
    assert a_pid
    # Warmed up first: a's links to b and c (and whatever else a daemon opens once) are
    # there whether or not earlier tests left them, so the baseline counts them either way
    # (taken cold, it lacked the link to b that the test leaves open: a leak, run alone).
    warm = UnixServer(str(b.run_dir / "warm.sock"))
    try:
        for where in (target(b, "warm.sock"), target(c, "many.sock")):
            s = alice_connect(a, where)
            assert read_line(s).startswith(b"{")
            s.close()
        assert all(x.ended.wait(30) for x in (*warm.seen, *to_c.seen))
    finally:
        warm.close()
    baseline = settled_fds(a_pid)

    def to_b_job(_: int) -> str:
        s = alice_connect(a, target(b, "many.sock"))

        def send() -> None:
            for part in stream(4, size):
                s.sendall(part)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        h = hashlib.sha256()
        s.settimeout(60)
        while chunk := s.recv(1 << 16):
            h.update(chunk)
        sender.join()
        s.close()
        return h.hexdigest()

    try:
        c_socks = [alice_connect(a, target(c, "many.sock")) for _ in range(100)]
        c.cut_link()
        try:
            with ThreadPoolExecutor(100) as pool:
                digests = list(pool.map(to_b_job, range(100)))
            assert set(digests) == {digest_of(3, size)}
            # The server shuts its side after sending, so the caller can see EOF before the
            # server has read the last of the caller's bytes: wait for each server to end.
            assert all(s.ended.wait(30) for s in to_b.seen)
            assert all(s.received == digest_of(4, size) for s in to_b.seen)
            for s in c_socks:
                assert ends_within(s, BOUND + 10) < BOUND
                s.close()
        finally:
            c.restore_link()
        deadline = time.monotonic() + 10
        while open_fds(a_pid) > baseline and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_fds(a_pid) <= baseline, (open_fds(a_pid), baseline)
    finally:
        to_b.close()
        to_c.close()


def test_kdc_outage_does_not_starve_cached_callers(hosts: dict[str, Host], sandbox: Sandbox) -> None:
    """40 callers without cached tickets wait on an unreachable KDC at once; alice, whose
    tickets are cached, still connects at once (their KDC waits have a pool of their own)."""
    import pwd

    a, b = hosts["a"], hosts["b"]
    server = UnixServer(str(b.run_dir / "starve.sock"))
    port = ["ip", "-n", sandbox.switch_netns, "link", "set", "p-dc"]
    strangers = [p.pw_name for p in pwd.getpwall() if 0 < p.pw_uid < 1000][:40]
    assert len(strangers) >= 10

    def stranger(name: str) -> str:
        try:
            as_user(a.user(name), lambda: nipc.connect(target(b, "starve.sock"), daemon=str(a.socket_path), timeout=60)).close()
            return "OK"
        except OSError as e:
            return str(e.errno)

    try:
        alice_connect(a, target(b, "starve.sock")).close()  # cached from here on
        subprocess.run(port + ["down"], check=True)
        with ThreadPoolExecutor(48) as pool:
            waiting = [pool.submit(stranger, name) for name in strangers * (48 // len(strangers))]
            time.sleep(1.0)  # every KDC thread is now stuck
            start = time.monotonic()
            alice_connect(a, target(b, "starve.sock")).close()
            assert time.monotonic() - start < 2.0
            results = [f.result(timeout=120) for f in waiting]
        assert "OK" not in results
    finally:
        subprocess.run(port + ["up"], check=True)
        server.close()


def test_a_stalled_reader_does_not_stall_its_neighbours_on_the_link(hosts: dict[str, Host]) -> None:
    """Connections a -> b share one link. One whose client stops reading while its server
    keeps sending fills only its own window: a neighbour on the same link still echoes
    at once, and the stalled one loses no byte once its client reads again."""
    a, b = hosts["a"], hosts["b"]
    size = 32 << 20
    flood = UnixServer(str(b.run_dir / "flood.sock"), behaviour=f"bulk:{size}:21")
    echo = UnixServer(str(b.run_dir / "neighbour.sock"))
    try:
        stalled = alice_connect(a, target(b, "flood.sock"))
        stalled.shutdown(socket.SHUT_WR)  # nothing to send; and then we do not read
        time.sleep(1.0)  # the flood fills the buffers and the window, then waits
        neighbour = alice_connect(a, target(b, "neighbour.sock"))
        neighbour.settimeout(5)
        assert read_line(neighbour).startswith(b"{")
        for _ in range(20):
            start = time.monotonic()
            neighbour.sendall(b"ping\n")
            assert read_line(neighbour) == b"ping\n"
            assert time.monotonic() - start < 0.5
        neighbour.close()
        stalled.settimeout(30)
        h = hashlib.sha256()
        got = 0
        while chunk := stalled.recv(1 << 16):
            h.update(chunk)
            got += len(chunk)
        assert got == size and h.hexdigest() == digest_of(21, size)
        stalled.close()
    finally:
        flood.close()
        echo.close()
