"""Who is calling: the kernel's word for a local caller, and local identities from NSS.

``SO_PEERCRED``/``SO_PEERGROUPS`` are read once at accept: they describe the process as it
was when it connected, which is what the local gate's permission check saw too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
import pwd
import socket
import struct
from dataclasses import dataclass

from nipc.errors import NipcError

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Caller:
    """A local process as the kernel attested it when it connected."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class LocalIdentity:
    """A local account: what a thread becomes to act for someone on this host."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.user} (uid {self.uid})"


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    size = 256
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE and size < 65536 * 4:
                size *= 16
                continue
            raise
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])


def caller_of(sock: socket.socket) -> Caller:
    """The credentials of the process at the other end of a connected AF_UNIX socket."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Caller(pid, uid, gid, peer_groups(sock))


def name_of_uid(uid: int) -> str:
    """An account's name through NSS (blocking: NSS may ask a directory)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise NipcError("EPERM", f"uid {uid} has no account name on this host") from None


def identity_of_caller(caller: Caller, name: str) -> LocalIdentity:
    """The caller as a named local account (its groups as the kernel reported them)."""
    return LocalIdentity(name, caller.uid, caller.gid, caller.groups)


class _Spwd(ctypes.Structure):
    _fields_ = [
        ("sp_namp", ctypes.c_char_p), ("sp_pwdp", ctypes.c_char_p), ("sp_lstchg", ctypes.c_long),
        ("sp_min", ctypes.c_long), ("sp_max", ctypes.c_long), ("sp_warn", ctypes.c_long),
        ("sp_inact", ctypes.c_long), ("sp_expire", ctypes.c_long), ("sp_flag", ctypes.c_ulong),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.getspnam.restype = ctypes.POINTER(_Spwd)
_libc.getspnam.argtypes = [ctypes.c_char_p]
_shadow_lock = threading.Lock()


def account_expired(name: str) -> bool:
    """True if the shadow entry (through NSS) says the account has expired (``chage -E``):
    a disabled account must not be acted for. No shadow entry means no expiry."""
    with _shadow_lock:  # getspnam returns a static buffer
        entry = _libc.getspnam(name.encode("utf-8"))
        if not entry:
            return False
        expire: int = entry.contents.sp_expire
    return expire >= 0 and expire <= int(time.time() // 86400)


def identity_of_user(name: str) -> LocalIdentity:
    """A local account by name through NSS: uid, primary gid and all its groups."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NipcError("EPERM", f"no local account {name!r} on this host") from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return LocalIdentity(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)
