"""Act as someone else on one thread only: the heart of "the kernel decides".

The libc ``set*id`` wrappers change every thread of the process (glibc broadcasts them),
so a daemon must never call them. Linux credentials are per thread at the syscall level:
a fresh thread calls ``setgroups``/``setresgid``/``setresuid`` through ``syscall(2)``, does
its one job (a ``connect()``, opening a credential cache) and ends, taking the identity
with it. A failure half-way through switching raises before the job runs.
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import os
import platform
import threading
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from nipc.errors import NipcError
from nipc.identity import LocalIdentity

T = TypeVar("T")

_SYSCALLS = {
    "x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119},
    "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149},
}
_NR = _SYSCALLS[platform.machine()]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(name: str, *args: object) -> None:
    if _libc.syscall(_NR[name], *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def become(identity: LocalIdentity) -> None:
    """Switch the calling thread (never the main thread) to ``identity``: its groups and its
    effective ids, all the kernel's permission checks use (``connect()``, files, KCM's and
    the keyring's peer credentials).

    Never the real or saved ids: ``kill(2)``/``tgkill(2)`` let a sender whose real or
    effective uid is a thread's real or saved uid signal it, and a signal such as SIGKILL or
    SIGSTOP sent to one thread acts on the whole daemon. A thread whose real uid were the
    caller's would let that caller stop or kill the daemon.
    """
    if threading.get_ident() == threading.main_thread().ident:
        raise RuntimeError("identity switch attempted on the main thread")
    groups = (ctypes.c_uint * len(identity.groups))(*identity.groups)
    gid, uid, keep = ctypes.c_long(identity.gid), ctypes.c_long(identity.uid), ctypes.c_long(-1)
    _syscall("setgroups", ctypes.c_size_t(len(identity.groups)), groups)
    _syscall("setresgid", keep, gid, keep)
    _syscall("setresuid", keep, uid, keep)
    if os.geteuid() != identity.uid or os.getegid() != identity.gid:
        raise OSError(errno.EPERM, "identity switch did not take effect")


def switch_to(identity: LocalIdentity) -> None:
    """:func:`become`, its failure a refusal (``EPERM``) for the caller."""
    try:
        become(identity)
    except OSError as e:
        raise NipcError("EPERM", f"cannot switch to {identity.describe()}: {e.strerror}") from None


def on_fresh_thread(reactor: IReactorFromThreads, job: Callable[[], T]) -> "Deferred[T]":
    """Run ``job`` on a new thread that ends with it: a job may change the thread's
    identity, which must never outlive it (a pool thread would keep it)."""
    done: Deferred[T] = Deferred()
    start_thread(deliver, (reactor, job, done), done)
    return done


def deliver(reactor: IReactorFromThreads, job: Callable[[], T], done: "Deferred[T]") -> None:
    """Run ``job`` on this thread (not the reactor's); its result or failure fires ``done``
    on the reactor thread."""
    try:
        result = job()
    except BaseException:
        reactor.callFromThread(done.errback, Failure())
    else:
        reactor.callFromThread(done.callback, result)


def start_thread(main: Callable[..., None], args: tuple[Any, ...], done: "Deferred[Any]") -> bool:
    """Start ``main(*args)`` on a new raw thread; if the host cannot start one, fail
    ``done`` with ``EAGAIN`` and say False.

    Not threading.Thread: its start() waits, holding up the reactor, until the new thread
    has run; a raw thread is started and left to run."""
    try:
        _thread.start_new_thread(main, args)
    except RuntimeError as e:  # RLIMIT_NPROC, memory: overload, refused as such
        done.errback(Failure(NipcError("EAGAIN", f"this host cannot start a thread now ({e})")))
        return False
    return True


def run_as(
    reactor: IReactorFromThreads,
    identity: LocalIdentity,
    job: Callable[[], T],
) -> "Deferred[T]":
    """Run ``job`` on a fresh thread that has become ``identity``; the thread then ends."""

    def as_identity() -> T:
        switch_to(identity)
        return job()

    return on_fresh_thread(reactor, as_identity)

