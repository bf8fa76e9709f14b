"""Running nipcd as a service (issue 11): reload without cutting connections, signals,
draining on SIGTERM, systemd's notification protocol and watchdog.

Most tests run a real nipcd on this host (twistd, local connects ``PATH@localhost``, no
Kerberos: tests/local_daemon.py); the routed ones at the end use the sandbox domain.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acting import as_user
from conftest import require_root
from local_daemon import LocalDaemon, environ_for_cli
from nipc.cli.status import ask_status
from nipc.client import connect
from nipc_testbed.sandbox import Host
from support import CLIENT_PYTHON, UnixServer, client_dir, digest_of, read_line, stream



@pytest.fixture
def make_solo() -> Iterator[Callable[[str], LocalDaemon]]:
    """Start a daemon per test (these tests change its configuration and stop it), with
    extra TOML; it is stopped and its directory removed after the test."""
    started: list[LocalDaemon] = []

    def make(extra: str = "") -> LocalDaemon:
        require_root()
        root = Path(tempfile.mkdtemp(prefix="nipc-ops-"))
        started.append(LocalDaemon(root, extra))
        return started[-1]

    yield make
    for daemon in started:
        daemon.stop()
        shutil.rmtree(daemon.root, ignore_errors=True)


@pytest.fixture
def solo(make_solo: Callable[[str], LocalDaemon]) -> LocalDaemon:
    return make_solo("")


def rewrite(daemon: LocalDaemon, old: str, new: str) -> None:
    text = daemon.config.read_text()
    assert old in text, text
    daemon.config.write_text(text.replace(old, new))


def nipc_reload(daemon: LocalDaemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nipc.cli", "reload", "--admin", str(daemon.admin)],
                          capture_output=True, text=True, timeout=60, env=environ_for_cli())


def wait_for(what: str, check: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def log_count(daemon: LocalDaemon, text: str) -> int:
    return daemon.log().count(text)


def sighup(daemon: LocalDaemon) -> None:
    """SIGHUP, and wait for the reload it starts to finish (applied or refused)."""
    sighup_pid(daemon.proc.pid, daemon.log)


def sighup_pid(pid: int, log: Callable[[], str]) -> None:
    def outcomes() -> int:
        text = log()
        return text.count("configuration reloaded") + text.count("reload refused")

    before = outcomes()
    os.kill(pid, signal.SIGHUP)
    wait_for("the reload's outcome in the log", lambda: outcomes() > before)


def stream_across(sock: socket.socket, server: UnixServer, size: int, seeds: tuple[int, int],
                  reloads: int, reload: Callable[[int], None]) -> None:
    """Send ``size`` bytes of seed ``seeds[0]`` while reading the server's ``size`` bytes of
    seed ``seeds[1]``; ``reload(n)`` for n = 1..reloads as the reply passes each step. Then
    every byte must have arrived, in order, both ways."""
    received = hashlib.sha256()
    got = [0]

    def read() -> None:
        while data := sock.recv(1 << 17):
            received.update(data)
            got[0] += len(data)

    reader = threading.Thread(target=read)
    reader.start()
    done = 0
    for part in stream(seeds[0], size):
        sock.sendall(part)
        if got[0] > done * (size // (reloads + 2)) and done < reloads:
            done += 1
            reload(done)
    sock.shutdown(socket.SHUT_WR)
    reader.join(180)
    sock.close()
    assert done == reloads, "the stream ended before every reload was done"
    assert got[0] == size and received.hexdigest() == digest_of(seeds[1], size)
    wait_for("the server saw the end", server.seen[0].ended.is_set, 60)
    assert server.seen[0].received == digest_of(seeds[0], size)


def echo(daemon: LocalDaemon, server: UnixServer) -> socket.socket:
    """A local connection through the daemon to the greeting echo server."""
    sock = connect(f"{server.path}@localhost", daemon=str(daemon.socket), timeout=20)
    assert sock.recv(4096).endswith(b"\n")  # the greeting
    return sock


def round_trip(sock: socket.socket, data: bytes = b"ping") -> None:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "connection ended"
        got += chunk
    assert got == data


def refused_with(daemon: LocalDaemon, server: UnixServer) -> str:
    """The errno name of the daemon's refusal of a connection to ``server``. Read raw: an
    over-limit caller is answered at accept, maybe before its request line is written."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(str(daemon.socket))
        try:
            sock.sendall(f"CONNECT {server.path}@localhost\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_line(sock).decode()
    assert reply.startswith("ERR "), reply
    return reply.split()[1]


# -- signals ------------------------------------------------------------------------------


def test_stray_signals_do_not_kill(solo: LocalDaemon) -> None:
    """SIGUSR1 (reopen the log), SIGUSR2, SIGALRM, SIGVTALRM, SIGPWR and a real-time signal,
    each of which would end a Python process, leave the daemon serving, with a log line."""
    server = UnixServer(str(solo.root / "echo.sock"))
    try:
        with echo(solo, server) as sock:
            for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM,
                        signal.SIGPWR, signal.SIGRTMIN + 3):
                os.kill(solo.proc.pid, sig)
            wait_for("the last signal logged", lambda: "SIGRTMIN+3" in solo.log())
            assert solo.proc.poll() is None
            round_trip(sock)  # the connection made before carries on
        with echo(solo, server) as sock:  # and new ones are accepted
            round_trip(sock)
        log = solo.log()
        for name in ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPWR", "SIGRTMIN+3"):
            assert f"ignoring signal {int(getattr(signal, name, signal.SIGRTMIN + 3))} ({name})" in log
        assert "SIGUSR1: no [log] file to reopen" in log
    finally:
        server.close()


# -- reload ---------------------------------------------------------------------------------


def test_reload_applies_new_limits_and_refuses_a_bad_file(make_solo: Callable[[str], LocalDaemon]
                                                          ) -> None:
    """``nipc reload`` applies a new limit to new connections without touching the open
    one; a file that does not load (a typo, an unreadable keytab) is refused as a whole,
    non-zero exit with the reason, and the running configuration stays in force."""
    solo = make_solo("[limits]\nmax_per_caller = 1\n")
    # The start-up probe (a connect without a request line) may still count: wait for it.
    wait_for("no local client", lambda: ask_status(str(solo.admin), 10)["local_clients"] == 0)
    server = UnixServer(str(solo.root / "echo.sock"))
    try:
        first = echo(solo, server)
        assert refused_with(solo, server) == "EAGAIN"  # max_per_caller = 1

        rewrite(solo, "max_per_caller = 1", "max_per_caller = 2")
        done = nipc_reload(solo)
        assert done.returncode == 0, done.stderr
        assert "changed: max_per_caller" in done.stdout
        second = echo(solo, server)
        assert refused_with(solo, server) == "EAGAIN"  # 2 now

        # A typo anywhere refuses the whole file, its other changes too.
        rewrite(solo, "max_per_caller = 2", "max_per_caller = 3\nmax_per_callr = 3")
        refused = nipc_reload(solo)
        assert refused.returncode != 0
        assert "unknown key max_per_callr in [limits]; did you mean max_per_caller?" in refused.stderr
        assert "the running one stays" in refused.stderr
        assert refused_with(solo, server) == "EAGAIN"  # still 2
        assert "reload refused, the running configuration stays in force" in solo.log()

        # An unreadable keytab too (it is read on every accept).
        rewrite(solo, "max_per_callr = 3", "")
        (solo.root / "none.keytab").rename(solo.root / "moved.keytab")
        refused = nipc_reload(solo)
        assert refused.returncode != 0 and "kerberos.keytab: " in refused.stderr
        assert "cannot be read: No such file or directory" in refused.stderr, refused.stderr
        assert refused_with(solo, server) == "EAGAIN"
        (solo.root / "moved.keytab").rename(solo.root / "none.keytab")
        assert nipc_reload(solo).returncode == 0
        with echo(solo, server) as third:  # max_per_caller = 3 in force only now
            round_trip(third)

        for sock in (first, second):  # the connections made before every reload carry on
            round_trip(sock, b"still here")
            sock.close()
    finally:
        server.close()


def test_only_root_may_reload(make_solo: Callable[[str], LocalDaemon]) -> None:
    """A member of the [admin] group may ask for STATUS, not RELOAD: EPERM, nothing done."""
    solo = make_solo('[admin]\ngroup = "nogroup"\n')
    nobody = pwd.getpwnam("nobody")  # primary group nogroup
    argv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--init-groups",
            "--", CLIENT_PYTHON, "-m", "nipc.cli", "reload", "--admin", str(solo.admin)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/",
                         env={"PYTHONPATH": str(client_dir()), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1 and "EPERM: only root may reload" in out.stderr, out.stderr
    assert "reloading the configuration" not in solo.log()


def test_restart_only_keys_are_named(solo: LocalDaemon) -> None:
    """Changing the peer port or the host name is not refused, but not applied either:
    the log and ``nipc reload`` name each key as needing a restart."""
    rewrite(solo, 'name = "solo.test"', 'name = "other.test"')
    text = solo.config.read_text()
    port_line = next(line for line in text.splitlines() if line.startswith("port = "))
    rewrite(solo, port_line, "port = 1")
    done = nipc_reload(solo)
    assert done.returncode == 0, done.stderr
    assert "applied only by a restart: host.name, peer.port" in done.stdout
    log = solo.log()
    assert "reload: host.name changed in" in log and "reload: peer.port changed in" in log
    assert "only a restart applies it" in log


def test_sighup_keeps_a_stream_byte_exact(solo: LocalDaemon) -> None:
    """A connection streaming both ways while the configuration changes and SIGHUP reloads
    it, again and again: every byte arrives, in order, both ways."""
    size = 48 << 20
    rewrite(solo, "[metrics]", "[timeouts]\nrequest = 5\n[metrics]")
    server = UnixServer(str(solo.root / "bulk.sock"), behaviour=f"bulk:{size}:11")
    try:
        sock = connect(f"{server.path}@localhost", daemon=str(solo.socket), timeout=20)

        def reload(n: int) -> None:
            rewrite(solo, f"request = {n + 4}", f"request = {n + 5}")
            sighup(solo)

        reloads = 6
        stream_across(sock, server, size, (12, 11), reloads, reload)
        assert log_count(solo, "configuration reloaded") == reloads
        assert "reload refused" not in solo.log()
        assert "changed request_timeout" in solo.log()
    finally:
        server.close()


def test_imports_added_and_removed_by_reload(solo: LocalDaemon) -> None:
    """An [[imports]] entry added on reload gets its socket; removed, the socket goes;
    the gate and its connections stay."""
    server = UnixServer(str(solo.root / "echo.sock"))
    imported = solo.root / "imported.sock"
    try:
        with echo(solo, server) as sock:
            text = solo.config.read_text()
            solo.config.write_text(text + f'\n[[imports]]\nsocket = "{imported}"\n'
                                          f'target = "{server.path}@localhost"\nmode = "0600"\n')
            done = nipc_reload(solo)
            assert done.returncode == 0, done.stderr
            assert "changed: imports" in done.stdout
            assert oct(imported.stat().st_mode & 0o7777) == oct(0o600)
            with socket.socket(socket.AF_UNIX) as through:
                through.connect(str(imported))
                assert b'"uid": 0' in through.recv(4096)
                round_trip(through)
            solo.config.write_text(text)
            assert nipc_reload(solo).returncode == 0
            assert not imported.exists()
            round_trip(sock)
    finally:
        server.close()


def test_log_file_reopened_after_rotation(solo: LocalDaemon) -> None:
    """logrotate's way: move the file away, then SIGUSR1 (or a reload): the daemon writes a
    new file at the configured path, and the old one keeps what was written before."""
    logfile = solo.root / "nipcd.json"
    rewrite(solo, "[metrics]", f'[log]\nfile = "{logfile}"\n[metrics]')
    assert nipc_reload(solo).returncode == 0
    assert logfile.exists()
    logfile.rename(solo.root / "nipcd.json.1")
    os.kill(solo.proc.pid, signal.SIGUSR1)
    wait_for("a new log file", logfile.exists)
    wait_for("the reopen logged in it", lambda: "reopened" in logfile.read_text())
    assert "configuration reloaded" in (solo.root / "nipcd.json.1").read_text()
    logfile.rename(solo.root / "nipcd.json.2")
    sighup(solo)
    wait_for("a new log file after SIGHUP", logfile.exists)
    assert "configuration reloaded" in logfile.read_text()


def peer_certificate(daemon: LocalDaemon) -> bytes:
    """The certificate the daemon's peer port presents to a new TLS connection (DER)."""
    port = int(next(line for line in daemon.config.read_text().splitlines()
                    if line.startswith("port = ")).split("=")[1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_tls_certificate_renewed_by_reload(solo: LocalDaemon) -> None:
    """A certificate renewed in place is presented to new links after a reload; a file that
    is not PEM any more is refused, and the certificate in force stays."""
    from test_tls_ca import CA

    ca = CA(solo.root / "ca", "ops")
    first = ca.issue("solo.test", "solo")
    rewrite(solo, 'listen = "127.0.0.1"', f'listen = "127.0.0.1"\ncertificate = '
            f'"{first.certificate}"\nprivate_key = "{first.private_key}"')
    assert nipc_reload(solo).returncode == 0
    presented = peer_certificate(solo)
    assert x509.load_pem_x509_certificate(first.certificate.read_bytes()).public_bytes(
        serialization.Encoding.DER) == presented

    renewed = ca.issue("solo.test", "solo")  # the same files, a new key and certificate
    assert renewed == first
    done = nipc_reload(solo)
    assert done.returncode == 0 and "changed: nothing" in done.stdout  # same paths...
    now = peer_certificate(solo)
    assert now != presented  # ...new contents, presented to new links
    assert x509.load_pem_x509_certificate(renewed.certificate.read_bytes()).public_bytes(
        serialization.Encoding.DER) == now

    renewed.certificate.write_text("not a certificate\n")
    refused = nipc_reload(solo)
    assert refused.returncode != 0 and "peer.certificate: no PEM certificate" in refused.stderr
    assert peer_certificate(solo) == now


# -- SIGTERM --------------------------------------------------------------------------------


def test_sigterm_stops_accepting_and_drains(make_solo: Callable[[str], LocalDaemon]) -> None:
    """SIGTERM: the gate socket goes at once, the open connection carries on; when it
    ends, the daemon exits without waiting for the drain time."""
    solo = make_solo("[timeouts]\ndrain = 60\n")
    server = UnixServer(str(solo.root / "echo.sock"))
    try:
        sock = echo(solo, server)
        os.kill(solo.proc.pid, signal.SIGTERM)
        wait_for("the gate socket removed", lambda: not solo.socket.exists())
        with pytest.raises(OSError):
            echo(solo, server)
        time.sleep(0.5)
        assert solo.proc.poll() is None
        round_trip(sock, b"draining" * 1000)
        # The admin socket stays for operators to watch the drain.
        (draining,) = ask_status(str(solo.admin), 10)["connections"]
        assert draining["bytes_in"] == 8000
        start = time.monotonic()
        sock.close()
        solo.proc.wait(30)
        assert time.monotonic() - start < 30  # far below the 60 s drain time
        assert "draining 1 connection(s) for up to 60s" in solo.log()
    finally:
        server.close()


def test_sigterm_closes_what_is_left_after_the_drain_time(
        make_solo: Callable[[str], LocalDaemon]) -> None:
    """SIGTERM with a connection that does not end: closed once ``drain`` seconds are up."""
    solo = make_solo("[timeouts]\ndrain = 1.5\n")
    server = UnixServer(str(solo.root / "echo.sock"))
    try:
        sock = echo(solo, server)
        start = time.monotonic()
        os.kill(solo.proc.pid, signal.SIGTERM)
        sock.settimeout(30)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        ended = time.monotonic() - start
        solo.proc.wait(30)
        assert 1.0 < ended < 20
        assert "drain time (1.5s) is up; closing 1 connection(s)" in solo.log()
        sock.close()
    finally:
        server.close()


# -- systemd's notification protocol ---------------------------------------------------------


class NotifyListener:
    """systemd's side of sd_notify: a datagram socket bound by the test at ``address``
    (``@name``: the abstract namespace), recording each message as a dict of its fields."""

    def __init__(self, address: str, on_message: Callable[[dict[str, str]], None] | None = None
                 ) -> None:
        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._on_message = on_message
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if self._on_message is not None:
                self._on_message(fields)
            self.messages.append((time.monotonic(), fields))

    def wait(self, what: str, check: Callable[[dict[str, str]], bool], after: int = 0,
             timeout: float = 30) -> int:
        """The index of the first message from ``after`` on that passes ``check``."""
        deadline = time.monotonic() + timeout
        while True:
            for n, (_, fields) in enumerate(self.messages[after:], after):
                if check(fields):
                    return n
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} notification within {timeout}s: "
                                     f"{[m for _, m in self.messages[after:]]}")
            time.sleep(0.05)

    def pings(self, since: float) -> int:
        return sum(1 for at, fields in self.messages if at >= since and fields.get("WATCHDOG") == "1")

    def close(self) -> None:
        self._sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_watchdog_reload_and_stop_notifications(make_solo: Callable[[str], LocalDaemon],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With NOTIFY_SOCKET (abstract) and WATCHDOG_USEC: WATCHDOG=1 at half the interval from
    the reactor, none while the process is frozen (SIGSTOP), so systemd would restart it;
    RELOADING=1 with MONOTONIC_USEC, then READY=1, on SIGHUP; STOPPING=1 on SIGTERM. The
    keytab holds this host's key but no KDC is there: ready all the same (callers retry
    the KDC; peers' tickets need only the keytab), and STATUS= says so."""
    listener = NotifyListener(f"@nipc-test-notify-{os.getpid()}")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    try:
        start = time.monotonic()
        solo = make_solo("")
        n = listener.wait("ready", lambda m: m.get("READY") == "1")
        assert listener.messages[n][1]["STATUS"].startswith(
            "ready, but the KDC is unreachable for now: EHOSTUNREACH")
        assert listener.messages[n][1]["MAINPID"] == str(solo.proc.pid)
        time.sleep(2)
        assert listener.pings(start) >= 4  # every 0.3 s

        os.kill(solo.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # a ping already on its way may still arrive
            frozen = time.monotonic()
            time.sleep(2)
            assert listener.pings(frozen) == 0
        finally:
            os.kill(solo.proc.pid, signal.SIGCONT)
        thawed = time.monotonic()
        listener.wait("watchdog after SIGCONT", lambda m: m.get("WATCHDOG") == "1",
                      after=len(listener.messages))
        assert time.monotonic() - thawed < 5

        mark, before = len(listener.messages), monotonic_usec()
        sighup(solo)
        n = listener.wait("reloading", lambda m: m.get("RELOADING") == "1", after=mark)
        stamp = int(listener.messages[n][1]["MONOTONIC_USEC"])
        assert before <= stamp <= monotonic_usec()
        listener.wait("ready after the reload", lambda m: m.get("READY") == "1", after=n + 1)

        mark = len(listener.messages)
        os.kill(solo.proc.pid, signal.SIGTERM)
        listener.wait("stopping", lambda m: m.get("STOPPING") == "1", after=mark)
        # twistd ends by re-raising the signal it stopped for, which systemd counts as a
        # clean exit for SIGTERM.
        assert solo.proc.wait(30) == -signal.SIGTERM
    finally:
        listener.close()


def test_watchdog_pid_of_another_process_is_not_ours() -> None:
    from nipc.notify import Notifier

    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier(env).watchdog is None and env == {}  # and taken from the environment
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"}).watchdog == 1.0
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog is None  # no socket, no watchdog


# -- on the sandbox domain: routed connections, a real keytab ---------------------------------


@pytest.fixture(scope="module")
def routed(samba_hosts: dict[str, Host]) -> Iterator[tuple[Host, Host, NotifyListener]]:
    """a and b running; a under a (test) service manager: NOTIFY_SOCKET, WATCHDOG_USEC."""
    a, b = samba_hosts["a"], samba_hosts["b"]
    originals = {host.name: host.config_path.read_text() for host in (a, b)}
    ready_while_listening: list[bool] = []

    def accepts(path: Path) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(path)) == 0

    listener = NotifyListener(str(a.dir / "notify.sock"), lambda m: ready_while_listening.append(
        accepts(a.socket_path)) if m.get("READY") == "1" else None)
    listener.ready_while_listening = ready_while_listening  # type: ignore[attr-defined]
    saved = {key: os.environ.get(key) for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    os.environ.update(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="4000000")
    try:
        a.start_daemon()
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
    b.start_daemon()
    yield a, b, listener
    for host in (a, b):
        host.stop_daemon()
        host.config_path.write_text(originals[host.name])
    listener.close()


@pytest.mark.integration
def test_ready_only_once_listening_with_the_keytab_loaded(
        routed: tuple[Host, Host, NotifyListener]) -> None:
    """READY=1 (with MAINPID) comes after the gate socket accepts and the keytab loaded,
    with a STATUS= of live counts; the watchdog is fed."""
    a, _, listener = routed
    n = listener.wait("ready", lambda m: m.get("READY") == "1")
    ready = listener.messages[n][1]
    assert ready["MAINPID"] == str(a.daemon_pid())
    assert "connection(s)" in ready["STATUS"] and "peer link(s)" in ready["STATUS"]
    assert listener.ready_while_listening[0] is True  # type: ignore[attr-defined]
    assert "cannot load the keytab" not in a.out_path.read_text()
    listener.wait("watchdog", lambda m: m.get("WATCHDOG") == "1")


@pytest.mark.integration
def test_routed_stream_byte_exact_across_reloads(routed: tuple[Host, Host, NotifyListener]
                                                 ) -> None:
    """alice streams 32 MiB each way from a to a socket on b while both daemons' files
    change and both reload (SIGHUP) again and again: every byte arrives, both ways; a says
    RELOADING=1 (with MONOTONIC_USEC) then READY=1 around each reload."""
    a, b, listener = routed
    listener.wait("ready", lambda m: m.get("READY") == "1")
    size = 32 << 20
    server = UnixServer(str(b.run_dir / "reload-bulk.sock"), behaviour=f"bulk:{size}:21")
    try:
        sock = as_user(a.user("alice"), lambda: connect(f"{server.path}@{b.fqdn}",
                                                daemon=str(a.socket_path), timeout=60))
        mark = len(listener.messages)

        def reload(n: int) -> None:
            for host in (a, b):
                text = host.config_path.read_text()
                host.config_path.write_text(
                    text.replace("[timeouts]\n", f"[timeouts]\ndrain = {30 + n}\n", 1) if n == 1
                    else text.replace(f"drain = {29 + n}", f"drain = {30 + n}"))
                sighup_pid(host.daemon_pid() or 0, host.out_path.read_text)

        reloads = 4
        stream_across(sock, server, size, (22, 21), reloads, reload)
        for host in (a, b):
            log = host.out_path.read_text()
            assert "changed drain_timeout" in log and "reload refused" not in log
        # Around each of a's reloads: RELOADING=1 with a timestamp, then READY=1.
        for _ in range(reloads):
            n = listener.wait("reloading", lambda m: m.get("RELOADING") == "1", after=mark)
            assert int(listener.messages[n][1]["MONOTONIC_USEC"]) > 0
            mark = listener.wait("ready again", lambda m: m.get("READY") == "1", after=n + 1) + 1
    finally:
        server.close()


# -- journald -------------------------------------------------------------------------------


def parse_journal_entry(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol: ``KEY=value`` lines and length-prefixed
    ``KEY\\n<le64><bytes>\\n`` fields."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8:8 + size].decode()
            assert rest[8 + size:9 + size] == b"\n"
            data = rest[9 + size:]
    return fields


class FakeJournal:
    """A datagram socket where journald's would be; entries parsed, memfd ones included."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, 1 << 20, 1)
            except OSError:
                return
            if fds:
                with os.fdopen(fds[0], "rb") as memfd:
                    memfd.seek(0)
                    data = memfd.read()
            self.entries.append(parse_journal_entry(data))

    def wait(self, what: str, check: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        found: list[dict[str, str]] = []
        wait_for(what, lambda: found.extend(e for e in list(self.entries) if check(e)) or found)
        return found[0]

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)


def test_journal_entries_carry_structured_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under journald (JOURNAL_STREAM names the daemon's stdout) with twistd's --logger set
    as in nipcd.service, every log line is a native journal entry: the audit line of a
    refused connection has NIPC_RESULT=refused, NIPC_ERRNO, NIPC_CONN_ID, NIPC_TARGET and
    PRIORITY, so ``journalctl NIPC_RESULT=refused`` finds it; nothing goes to stdout."""
    require_root()
    root = Path(tempfile.mkdtemp(prefix="nipc-ops-"))
    journal = FakeJournal(root / "journal.sock")
    out = root / "nipcd.out"
    out.touch()
    st = out.stat()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    daemon = LocalDaemon(root, f'[log]\njournal_socket = "{journal.path}"\n',
                         twistd_args=["--logger=nipc.logs.twistd_observer"])
    try:
        missing = root / "missing.sock"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(daemon.socket))
            sock.sendall(f"CONNECT {missing}@localhost\n".encode())
            assert read_line(sock).startswith(b"ERR ENOENT ")
        entry = journal.wait("the refusal's audit entry",
                             lambda e: e.get("NIPC_TARGET") == f"{missing}@localhost")
        assert entry["NIPC_RESULT"] == "refused" and entry["NIPC_ERRNO"] == "ENOENT"
        assert entry["NIPC_CONN_ID"] and entry["MESSAGE"].startswith("nipc-audit ")
        assert entry["NIPC_UID"] == "0" and entry["PRIORITY"] == "6"
        assert entry["SYSLOG_IDENTIFIER"] == "nipcd" and entry["NIPC_LOGGER"] == "nipc.gate"
        started = journal.wait("the start line", lambda e: "serving" in e["MESSAGE"])
        assert started["NIPC_HOST"] == "solo.test"
        os.kill(daemon.proc.pid, signal.SIGUSR2)
        warned = journal.wait("a warning", lambda e: "SIGUSR2" in e["MESSAGE"])
        assert warned["PRIORITY"] == "4" and warned["NIPC_NAME"] == "SIGUSR2"
        assert "nipc-audit" not in daemon.log()  # not twice: the journal has it
    finally:
        daemon.stop()
        journal.close()
        shutil.rmtree(root, ignore_errors=True)


def test_journal_encoding_newlines_and_big_entries(tmp_path: Path) -> None:
    """A value with a newline (or control characters) stays one field, length-prefixed; an
    entry too big for one datagram arrives whole through a sealed memfd."""
    from nipc.journal import JournalObserver, encode, fields_of, under_journald

    journal = FakeJournal(tmp_path / "journal.sock")
    try:
        observer = JournalObserver(str(journal.path))
        hostile = "/tmp/x\nNIPC_RESULT=routed\n"
        observer({"log_format": "refused {target}", "log_level": None, "target": hostile,
                  "log_namespace": "t", "nipc_audit": {"result": "refused", "hops": ["a", "b"]}})
        entry = journal.wait("the entry", lambda e: "NIPC_TARGET" in e)
        assert entry["NIPC_TARGET"] == hostile and entry["NIPC_RESULT"] == "refused"
        assert entry["NIPC_HOPS"] == "a,b"
        big = "x" * (600 << 10)
        observer.send(encode({"MESSAGE": "big", "NIPC_BIG": big}))
        assert journal.wait("the big entry", lambda e: e.get("MESSAGE") == "big")["NIPC_BIG"] == big
    finally:
        journal.close()
    assert fields_of({"log_format": "x", "conn-id.x": 1})["NIPC_CONN_ID_X"] == "1"
    assert not under_journald({"JOURNAL_STREAM": "1:1"})
    st = os.fstat(2)
    assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})


@pytest.mark.integration
def test_trusted_realms_reloaded_for_new_connections_only(
        routed: tuple[Host, Host, NotifyListener]) -> None:
    """b stops trusting a's realm by a reload: a new connection from a is refused (EACCES),
    the one already routed carries on; trusting it again by another reload lets new ones in."""
    a, b, _ = routed
    server = UnixServer(str(b.run_dir / "realms.sock"))

    def alice() -> socket.socket:
        sock = as_user(a.user("alice"), lambda: connect(f"{server.path}@{b.fqdn}",
                                                        daemon=str(a.socket_path), timeout=60))
        assert read_line(sock).startswith(b"{")
        return sock

    try:
        with alice() as before, b.reconfigured(lambda text: text.replace(
                "[kerberos]\n", '[kerberos]\ntrusted_realms = ["ELSEWHERE.TEST"]\n', 1),
                restart=False) as original:
            sighup_pid(b.daemon_pid() or 0, b.out_path.read_text)
            assert "changed trusted_realms" in b.out_path.read_text()
            with pytest.raises(PermissionError):
                alice()
            round_trip(before, b"still routed")
            b.config_path.write_text(original)
            sighup_pid(b.daemon_pid() or 0, b.out_path.read_text)
            with alice() as after:
                round_trip(after)
            round_trip(before)
    finally:
        server.close()


def test_watchdog_pings_come_from_the_reactor(tmp_path: Path) -> None:
    """The pings are scheduled on the reactor's clock: no turn of the reactor, no ping."""
    from twisted.internet.task import Clock

    from nipc.notify import Notifier

    listener = NotifyListener(str(tmp_path / "notify.sock"))
    try:
        clock = Clock()
        notifier = Notifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
        ping = notifier.start_watchdog(clock)
        assert ping is not None
        listener.wait("the first ping", lambda m: m.get("WATCHDOG") == "1")
        time.sleep(0.5)
        assert listener.pings(0) == 1  # real time passes, the reactor's does not: no ping
        clock.advance(1.0)
        clock.advance(1.0)
        wait_for("two more pings", lambda: listener.pings(0) == 3)
        ping.stop()
        notifier.close()
    finally:
        listener.close()


def test_a_refusal_sent_before_the_request_line_reaches_the_caller() -> None:
    """A daemon over a limit answers ``ERR EAGAIN`` at accept and closes, maybe before the
    client wrote its request line: the client must report EAGAIN (what the reload test
    saw as a bare EPIPE), not the broken pipe of its own late write."""
    from nipc.client import send_connect

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        b.sendall(b"ERR EAGAIN uid 0 is at its limit of 1 connections\n")
        b.close()
        with pytest.raises(OSError) as refused:
            send_connect(a, "/x.sock@h", timeout=10)
        assert refused.value.errno == errno.EAGAIN, refused.value
        assert "at its limit" in str(refused.value)
