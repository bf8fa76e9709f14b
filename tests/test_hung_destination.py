"""A destination on a hung mount (SECURITY.md F4): a caller who names a path whose walk
waits in the kernel gets ETIMEDOUT naming it at ``[timeouts] connect``, their inbound
slot back at once, and no more than ``[limits] max_stuck_per_caller`` threads of b's
daemon left waiting; when the mount answers again (here: its FUSE server ends) the threads
return, their late results are discarded and the daemon is as before.

Real parts: daemons on a and b, alice and bob connecting through a's gate, and on b a real
FUSE mount (in b's own mount namespace) whose server never answers, so b's impersonated
walk blocks in the kernel exactly as on a hung sshfs. The same for b's account lookup
(NSS on a hung sssd or LDAP server): a FIFO as b's /etc/passwd.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acting import as_user, open_fds
from conftest import require_root
from nipc_testbed.sandbox import Host
from support import UnixServer, read_line

pytestmark = pytest.mark.integration

TOOL = Path(__file__).with_name("hung_mount_tool.py")
#: b's settings: a short connect deadline, and caps small enough to reach.
CONNECT = 1
PER_CALLER = 2
INBOUND_PER_SOURCE = PER_CALLER - 1  # what alice's connects from a would hold
#: The deadline the caller sees: timeouts.connect + nipc.connector.GRACE, and a generous
#: allowance for a shared CPU (a bound, not a speed target).
BOUND = CONNECT + 1 + 8
#: How long a finished connection's inbound slot may take to come back (see ``ask``).
SLOT_WAIT = 15


def ask(gate: Path, user: str, host: Host, target: str) -> tuple[str, float]:
    """One CONNECT through ``gate`` as ``user``: the reply line and how long it took.

    With max_inbound_per_source = 1, the previous connection's slot on b comes back when
    b has seen it close, a moment after the client closed it: a refusal for that limit is
    asked again for up to SLOT_WAIT seconds (a slot held by a hung walk never comes back).
    """

    def once() -> tuple[str, float]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            started = time.monotonic()
            s.connect(str(gate))
            s.sendall(f"CONNECT {target}\n".encode())
            line = read_line(s).decode().strip()
            return line, time.monotonic() - started

    def job() -> tuple[str, float]:
        deadline = time.monotonic() + SLOT_WAIT
        while True:
            line, took = once()
            if "max_inbound_per_source" not in line or time.monotonic() > deadline:
                return line, took
            time.sleep(0.2)

    return as_user(host.user(user), job)


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])  # type: ignore[index]


def wait_until(check: object, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_a_hung_destination_times_out_frees_its_slot_and_caps_stuck_threads(
        samba_hosts: dict[str, Host]) -> None:
    require_root()
    a, b = samba_hosts["a"], samba_hosts["b"]
    server = UnixServer(str(b.run_dir / "hung-test-ok.sock"))
    mount = b.run_dir / "hung"
    mount.mkdir(exist_ok=True)
    hung_target = f"{mount}/x.sock@{b.fqdn}"
    good_target = f"{server.path}@{b.fqdn}"

    def edit(text: str) -> str:
        return text.replace("connect = 5", f"connect = {CONNECT}") + (
            f"\n[limits]\nmax_stuck_per_caller = {PER_CALLER}\n"
            f"max_inbound_per_source = {INBOUND_PER_SOURCE}\n")

    holder = None
    try:
        with a.running(), b.reconfigured(edit, start=True):
            pid = b.daemon_pid()
            assert pid is not None
            log_start = b.log_path.stat().st_size
            assert ask(a.socket_path, "alice", a, good_target)[0] == "OK"
            threads, fds = threads_of(pid), open_fds(pid)
            holder = subprocess.Popen(b.exec_argv([sys.executable, str(TOOL), str(mount)]),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert holder.stdout is not None and holder.stdout.readline() == b"mounted\n"

            # As many as alice may leave stuck, each ETIMEDOUT naming the path in time:
            # one on b's own gate (the local route), the rest from a. Each from a held an
            # inbound slot: without the deadline, the next connect of anyone on a would be
            # EAGAIN (max_inbound_per_source) for as long as the mount hangs.
            local = (b.socket_path, b, f"{mount}/x.sock@localhost")
            for gate, host, target in [local] + [(a.socket_path, a, hung_target)] * (PER_CALLER - 1):
                reply, took = ask(gate, "alice", host, target)
                assert reply.startswith("ERR ETIMEDOUT ") and str(mount) in reply, reply
                assert took < BOUND, took
            assert ask(a.socket_path, "bob", a, good_target)[0] == "OK"
            # alice's next connects are refused at once, before a thread, naming the path
            # (wherever they go: which path would hang is known only by trying).
            for target in (hung_target, good_target):
                reply, took = ask(a.socket_path, "alice", a, target)
                assert reply.startswith("ERR EAGAIN ") and "max_stuck_per_caller" in reply, reply
                assert f"oldest {mount}/x.sock" in reply and took < BOUND, (reply, took)
            # bob is not held back by alice's stuck connects.
            reply, _ = ask(a.socket_path, "bob", a, hung_target)
            assert reply.startswith("ERR ETIMEDOUT "), reply
            assert ask(a.socket_path, "bob", a, good_target)[0] == "OK"
            # alice's quota is per uid on b, whichever way her connects came.
            assert ask(b.socket_path, "alice", b, local[2])[0].startswith("ERR EAGAIN ")
            # The threads really are stuck (one per hung connect), and little else is held.
            stuck = PER_CALLER + 1
            assert threads_of(pid) <= threads + stuck + 2
            assert open_fds(pid) <= fds + 3 * stuck
            with open(b.log_path, "rb") as f:
                f.seek(log_start)
                log = f.read().decode("utf-8", "replace")
            assert f"{stuck} destination connects stuck in the kernel, oldest {mount}/x.sock" in log

            # The mount answers again (its server ended): the threads return, are uncounted.
            holder.stdin.close()  # type: ignore[union-attr]
            holder.wait(30)
            assert wait_until(lambda: threads_of(pid) <= threads + 1), threads_of(pid)
            assert wait_until(lambda: open_fds(pid) <= fds + 1), open_fds(pid)
            reply, took = ask(a.socket_path, "alice", a, hung_target)
            assert not reply.startswith(("ERR ETIMEDOUT", "ERR EAGAIN")), reply
            assert ask(a.socket_path, "alice", a, good_target)[0] == "OK"
            with open(b.log_path, "rb") as f:
                f.seek(log_start)
                log = f.read().decode("utf-8", "replace")
            assert "stuck in the kernel ({stuck} still stuck)" in log and '"stuck": 0' in log
            assert "Traceback" not in log
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait(30)
        subprocess.run(b.exec_argv(["umount", "-l", str(mount)]), capture_output=True)
        server.close()


#: b's handshake deadline in the test below (it bounds b's validation of each HELLO).
HANDSHAKE = 4


def test_a_hung_account_lookup_times_out_naming_the_principal_and_frees_its_slot(
        samba_hosts: dict[str, Host]) -> None:
    """An account lookup that hangs on b (as on a hung sssd or LDAP server: here b's
    /etc/passwd is a FIFO no one writes, so NSS waits in open() in the kernel): alice's
    connect from a is ETIMEDOUT naming her principal at half of b's ``[timeouts] handshake``,
    the threads count against ``max_stuck`` (then EAGAIN before a thread), and once the lookup answers they return, their late
    results are dropped and alice connects as before."""
    require_root()
    a, b = samba_hosts["a"], samba_hosts["b"]
    server = UnixServer(str(b.run_dir / "hung-nss-ok.sock"))
    good_target = f"{server.path}@{b.fqdn}"
    passwd = b.path("/etc/passwd")
    real = passwd.with_name("passwd.nipc-test")
    fifo = passwd.with_name("passwd.nipc-fifo")

    def edit(text: str) -> str:
        assert "handshake = 10" in text
        return text.replace("handshake = 10", f"handshake = {HANDSHAKE}") + (
            "\n[limits]\nmax_stuck = 2\n")

    def release() -> None:
        """The real file back, then the FIFO's waiting readers woken (EOF: no such user)."""
        if real.exists():
            real.replace(passwd)
        if fifo.exists():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: no reader left
                pass
            fifo.unlink()

    try:
        with a.running(), b.reconfigured(edit, start=True):
            pid = b.daemon_pid()
            assert pid is not None
            log_start = b.log_path.stat().st_size
            threads = threads_of(pid)
            os.mkfifo(fifo, 0o644)
            os.link(passwd, real)
            fifo.replace(passwd)  # atomically: readers see the file or the FIFO
            os.link(passwd, fifo)  # a name to wake its readers by
            for _ in range(2):
                reply, took = ask(a.socket_path, "alice", a, good_target)
                assert reply.startswith("ERR ETIMEDOUT ") and "validating/projecting alice@" in reply, reply
                assert took < HANDSHAKE + 8, took
            reply, took = ask(a.socket_path, "alice", a, good_target)
            assert reply.startswith("ERR EAGAIN ") and "max_stuck" in reply, reply
            assert threads_of(pid) <= threads + 2 + 2
            with open(b.log_path, "rb") as f:
                f.seek(log_start)
                log = f.read().decode("utf-8", "replace")
            assert "stuck in the kernel, oldest validating/projecting alice@" in log, log[-3000:]

            release()
            assert wait_until(lambda: threads_of(pid) <= threads + 1), threads_of(pid)
            assert ask(a.socket_path, "alice", a, good_target)[0] == "OK"
            with open(b.log_path, "rb") as f:
                f.seek(log_start)
                log = f.read().decode("utf-8", "replace")
            assert '"stuck": 0' in log and "Traceback" not in log
    finally:
        release()
        server.close()
