"""The final connect: where a routed connection ends, expanded for and resolved as the caller.

Per-user destinations (SPEC section 2): ``%{uid}`` and ``%{user}`` in the path become the
projected identity's uid and account name on this host, the one making the connect, so
one request line reaches each caller's own socket (``/run/user/%{uid}/bus``).

Path policy (SPEC section 5): ``[destinations] allow``/``deny`` patterns say which paths
callers from other hosts may reach here at all. They are matched against the path as
resolved (every symlink and ``..`` followed as the caller, below), which is what the
connect then reaches: a link or ``..`` cannot lead out of an allowed place.

The connect is made by a thread of the daemon's own process that has become the caller.
Whatever the kernel resolves relative to "this process" would therefore be the daemon's:
``/proc/self/cwd``, ``/proc/self/root``, ``/proc/self/fd/N``, ``/dev/fd/N``,
``/proc/<daemon pid>/...``; and procfs lets a process into its own entries whoever its
threads act as, so such a path skips the directory checks the caller would face and
answers differently for each of the daemon's descriptors. So the path is never handed to
the kernel whole. It is resolved here one component at a time, each step an ``openat()``
with ``O_PATH|O_NOFOLLOW`` made with the caller's credentials (the kernel checks search
permission on every directory, as it would in ``connect()``); ordinary symlinks are read
and followed (at most 40, as the kernel does); and any step that lands on a procfs mount,
wherever it is mounted, ends the walk with the same refusal whatever follows it. The
``connect()`` then goes to the very inode resolved, held open, through
``/proc/self/fd/<fd>``: a path only this module builds, so nothing can swap a symlink or a
directory between the resolution and the connect.

Why not ``openat2(RESOLVE_NO_MAGICLINKS)`` alone: it stops at a magic link, but only after
looking the name up, so ``/proc/self/fd/5`` (ELOOP) and ``/proc/self/fd/99`` (ENOENT)
still tell the daemon's descriptors apart, as do ``/proc/self/fdinfo/N`` (plain files).

``fs.protected_symlinks`` is not applied to the links followed here: it guards a program
from following a link planted in ``/tmp`` on its own behalf, whereas here the caller named
that path and the link only leads where the caller may go anyway.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable

from nipc.errors import NipcError, from_oserror
from nipc.identity import LocalIdentity
from nipc.registry import abstract_name
from nipc.request import check_path

#: ``f_type`` of procfs (``linux/magic.h``).
PROC_SUPER_MAGIC = 0x9FA0
#: How many symlinks one resolution may follow (the kernel's own limit, ``MAXSYMLINKS``).
MAX_SYMLINKS = 40
_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
#: ``struct statfs`` is 120 bytes on 64-bit Linux; ``f_type`` (a long) comes first.
_STATFS_SIZE = 256


_PLACEHOLDER = re.compile(r"%\{(uid|user)\}")


def _substitute(text: str, who: LocalIdentity, quote: Callable[[str], str] = str) -> str:
    if not _PLACEHOLDER.search(text):
        return text
    if "/" in who.user or who.user in (".", ".."):
        raise NipcError("EINVAL", f"{text}: the account name {who.user!r} cannot be part of a path")
    return _PLACEHOLDER.sub(lambda m: str(who.uid) if m[1] == "uid" else quote(who.user), text)


def expand(path: str, who: LocalIdentity) -> str:
    """``path`` with ``%{uid}`` and ``%{user}`` replaced by ``who``'s; nothing else that
    holds ``%`` is touched. The result obeys the request's path rules (``ENAMETOOLONG``
    when it no longer fits ``sun_path``)."""
    expanded = _substitute(path, who)
    if expanded == path:
        return path
    try:
        return check_path(expanded)
    except NipcError as e:
        raise NipcError(e.errno_name, f"{path} for {who.user}: {e.message}") from None


def _names(path: str) -> list[str]:
    return [name for name in path.split("/") if name not in ("", ".")]


def _match(pattern: list[str], names: list[str]) -> bool:
    """Component by component: ``fnmatch`` within one name (``*``, ``?``, ``[...]`` never
    match ``/``), ``**`` for any number of whole names, none included."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return any(_match(pattern[1:], names[i:]) for i in range(len(names) + 1))
    return bool(names) and fnmatchcase(names[0], pattern[0]) and _match(pattern[1:], names[1:])


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` can never be a destination pattern, or None if it can."""
    if not pattern.startswith("/"):
        return "must be an absolute path pattern"
    if any(not c.isprintable() for c in pattern):
        return "holds a control character"
    names = pattern.split("/")
    if ".." in names or "." in names:
        return "is matched against resolved paths, which hold no '.' or '..'"
    if any("**" in name and name != "**" for name in names):
        return "'**' must be a whole path component (as in /run/**/x.sock)"
    return None


@dataclass(frozen=True)
class PathPolicy:
    """One host's ``[destinations]``: a path is reachable from other hosts when it matches
    an ``allow`` pattern and no ``deny`` pattern, after ``%{uid}``/``%{user}`` in the
    patterns became the caller's (their account name quoted, so it stays literal)."""

    allow: tuple[str, ...]
    deny: tuple[str, ...]
    host: str

    def permits(self, path: str, who: LocalIdentity) -> bool:
        names = _names(path)

        def hit(patterns: tuple[str, ...]) -> bool:
            return any(_match(_names(_substitute(p, who, glob.escape)), names) for p in patterns)

        return hit(self.allow) and not hit(self.deny)

    def check(self, path: str, resolved: str, who: LocalIdentity) -> None:
        """``EACCES`` that names the policy unless ``resolved`` (where ``path`` led) is
        permitted."""
        if not self.permits(resolved, who):
            via = f" (resolved: {resolved})" if resolved != path else ""
            raise NipcError("EACCES", f"{path}{via}: outside the destinations {self.host}'s "
                                      "policy lets callers from other hosts reach "
                                      "([destinations] in its configuration)")


def on_procfs(fd: int) -> bool:
    """Whether ``fd`` is on a procfs mount (``fstatfs``, allowed on ``O_PATH`` fds)."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little") == PROC_SUPER_MAGIC


def _components(path: str) -> list[str]:
    """The names to walk, last first (a stack): empty names and ``.`` are no steps."""
    return [name for name in reversed(path.split("/")) if name not in ("", ".")]


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def open_as_caller(path: str) -> int:
    """An ``O_PATH`` descriptor of what the absolute ``path`` names, resolved with this
    thread's credentials, never through procfs. Raises ``OSError`` from the step that
    failed, or ``NipcError(EACCES)`` for procfs."""
    fd = os.open("/", _ROOT)
    try:
        dev = os.fstat(fd).st_dev
        todo = _components(path)
        links = 0
        while todo:
            name = todo.pop()
            step = os.open(name, _STEP, dir_fd=fd)
            try:
                st = os.fstat(step)
                target = os.readlink("", dir_fd=step) if stat.S_ISLNK(st.st_mode) else None
            except BaseException:
                os.close(step)
                raise
            if target is not None:
                os.close(step)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if target.startswith("/"):
                    fd = _swap(fd, os.open("/", _ROOT))
                todo.extend(_components(target))
                continue
            fd = _swap(fd, step)
            # Only a step onto another file system (st_dev) can land on procfs.
            if st.st_dev != dev:
                dev = st.st_dev
                if on_procfs(fd):
                    raise NipcError("EACCES", f"{path}: destinations under /proc (or /dev/fd) "
                                              "cannot be reached over NIPC")
    except BaseException:
        os.close(fd)
        raise
    return fd


def connect_unix(path: str, conn_id: str, timeout: float, who: LocalIdentity,
                 policy: PathPolicy | None = None) -> socket.socket:
    """Connect to a pathname socket with this thread's credentials (``who``'s), resolved as
    above, if ``policy`` permits where it leads, within ``timeout`` seconds in all (a walk
    that waits in the kernel is bounded by the caller, :mod:`nipc.stuck`).

    The client end is bound to the abstract name ``nipc/<conn_id>``
    (:func:`nipc.registry.abstract_name`), so a server that looks at its peer's address can
    tell which routed connection this is.
    """
    what = f"connect to {path} as {who.describe()}"
    deadline = time.monotonic() + timeout  # for the walk and the connect together
    try:
        fd = open_as_caller(path)
    except OSError as e:
        raise from_oserror(e, what) from None
    try:
        if policy is not None:
            policy.check(path, os.readlink(f"/proc/self/fd/{fd}"), who)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as e:  # EMFILE, ENFILE: this host's overload, not the caller's fault
        os.close(fd)
        raise from_oserror(e, what) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        sock.bind(abstract_name(conn_id))
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(f"/proc/self/fd/{fd}")
        sock.setblocking(False)
    except socket.timeout:
        sock.close()
        raise NipcError("ETIMEDOUT", f"{what}: no answer in {timeout:g}s") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.ECONNREFUSED:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise NipcError("ENOTSOCK", f"{path} is not a socket") from None
            raise NipcError("ECONNREFUSED", f"nobody is listening on {path}") from None
        if e.errno == errno.ENOENT:  # the inode is held open: /proc itself is missing
            raise NipcError("EPROTO", f"{what}: the daemon needs /proc mounted") from None
        raise from_oserror(e, what) from None
    finally:
        os.close(fd)
    return sock
