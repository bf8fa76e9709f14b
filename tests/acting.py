"""Test helpers that act on the running system as the daemons do: a thread that becomes
a local user, and a daemon started under a wrapper (setpriv, a preloaded library)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nipc.identity import LocalIdentity, identity_of_user
from nipc.impersonate import become
from nipc_testbed.sandbox import Host, User

T = TypeVar("T")


def signallable(pid: int, uid: int, gid: int, tids: Sequence[int] | None = None) -> list[int]:
    """Which threads of ``pid`` (``tids``, or all of them) a process whose real and effective
    ids are ``uid``/``gid`` may signal: ``tgkill`` with signal 0 checks the permission and
    delivers nothing. A thread that may be signalled lets that user SIGKILL/SIGSTOP the
    whole process."""
    assert platform.machine() == "x86_64", "tgkill's syscall number below is x86_64's"
    listed = repr(list(tids)) if tids is not None else f"os.listdir('/proc/{pid}/task')"
    probe = ("import ctypes, os\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             f"print(*[t for t in map(int, {listed}) if libc.syscall(234, {pid}, t, 0) == 0])\n")
    out = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                          sys.executable, "-c", probe],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return [int(t) for t in out.split()]


def identity(user: User | str) -> LocalIdentity:
    """What a thread of this (machine's) process becomes to act as ``user``: one host's
    account (``host.user(name)``), whose numbers are that host's, or by name an account of
    the machine's own (such as nobody; the sandbox's users exist only on its hosts)."""
    if isinstance(user, str):
        return identity_of_user(user)
    return LocalIdentity(user.name, user.uid, user.gid, user.groups)


def as_user(user: User | str, job: Callable[[], T]) -> T:
    """Run ``job`` on a fresh thread that has become ``user`` (see ``identity``)."""
    who = identity(user)
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            become(who)
            box["result"] = job()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=main)
    t.start()
    t.join(300)
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def launch_daemon(host: Host, wrapper: Sequence[str] = (), env: dict[str, str] | None = None,
                  timeout: float = 20) -> subprocess.Popen[bytes]:
    """Start ``host``'s daemon under ``wrapper`` (e.g. setpriv ...) instead of
    ``Host.start_daemon``, and return once its local socket accepts connections."""
    twistd = str(Path(sys.executable).parent / "twistd")
    argv = host.exec_argv([*wrapper, twistd, "-n", "--pidfile=", "nipc", "--config",
                           str(host.config_path)])
    proc = subprocess.Popen(argv, env={**os.environ, **host.env(), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(host.socket_path))
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{host.name}: daemon did not start under {list(wrapper)}") from None
            time.sleep(0.1)


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
