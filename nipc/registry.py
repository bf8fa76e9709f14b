"""The connections this daemon made, so a server can ask who is behind one (``PEER``) and
a service can chain onward in its caller's name, and who may (SPEC section 6).

A routed connection is recognised by the kernel's word, never by a claim: the client end
we connected is bound to the abstract name ``nipc/<conn_id>`` and its ``SO_PEERCRED`` pid
is this daemon's own. Anyone can bind an abstract name, but nobody else can make the
kernel report our pid, and the name is ours alone while our socket is open.
Delegation evidence lives only here, in memory, for the life of its connection.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from zope.interface import implementer

from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.interfaces import IRegistry

ABSTRACT_PREFIX = b"\0nipc/"
_PIDFD_GETFD = 438  # the same number on every architecture (new-style syscall table)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
#: How many of a caller's file descriptors we look at when searching for its inbound
#: connection: bounds the work a caller with many fds can cause.
MAX_SCAN = 4096


@dataclass
class Routed:
    """One connection this daemon made to a local socket, and who it was made for."""

    conn_id: str
    identity: LocalIdentity
    principal: str | None
    hops: tuple[str, ...]
    origin: str
    auth_time: float = field(default_factory=time.time)
    pac: dict[str, Any] | None = None
    #: GSS credentials from the inbound ticket (S4U2Proxy evidence); never leaves memory.
    delegation: Any = None

    def describe(self) -> dict[str, Any]:
        """The ``PEER`` answer: everything about the caller except credentials."""
        info: dict[str, Any] = {
            "conn_id": self.conn_id,
            "principal": self.principal,
            "user": self.identity.user,
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "groups": list(self.identity.groups),
            "origin": self.origin,
            "hops": list(self.hops),
            "auth_time": round(self.auth_time, 3),
        }
        if self.pac is not None:
            info.update(self.pac)
        return info


def new_connection_id() -> str:
    """A fresh id for one routed connection, made by the side where it starts (the gate for
    a local caller, inbound for a peer's): its audit lines, ``PEER`` answer and abstract name."""
    return secrets.token_hex(8)


def abstract_name(conn_id: str) -> bytes:
    """The abstract socket name the daemon's end of ``conn_id``'s local connect is bound to
    (:func:`connection_id_of` reads it back)."""
    return ABSTRACT_PREFIX + conn_id.encode("ascii")


def connection_id_of(sock: socket.socket) -> str | None:
    """The connection id if ``sock``'s peer is a client end this daemon connected."""
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            return None
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        name = sock.getpeername()
    except OSError:
        return None
    if pid != os.getpid() or not isinstance(name, bytes) or not name.startswith(ABSTRACT_PREFIX):
        return None
    return name[len(ABSTRACT_PREFIX):].decode("ascii", "replace")


def _socket_from(fd: int) -> socket.socket | None:
    """A socket object on a duplicate of ``fd``; None if ``fd`` is not a socket (the
    duplicate is closed then: ``socket(fileno=)`` does not close what it refuses, and a
    caller attaching a plain file over and over would leak one descriptor each time)."""
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None


@implementer(IRegistry)
class Registry:
    def __init__(self) -> None:
        self._routed: dict[str, Routed] = {}
        #: Connections carrying delegation evidence, by projected uid: every outgoing
        #: CONNECT asks for its caller's, so this must not mean a scan of them all.
        self._delegations: dict[int, dict[str, Routed]] = {}

    def add(self, routed: Routed) -> None:
        self._routed[routed.conn_id] = routed
        if routed.delegation is not None:
            self._delegations.setdefault(routed.identity.uid, {})[routed.conn_id] = routed

    def remove(self, conn_id: str) -> None:
        routed = self._routed.pop(conn_id, None)
        if routed is not None:
            routed.delegation = None  # releases the evidence ticket (and its MEMORY ccache)
            held = self._delegations.get(routed.identity.uid)
            if held is not None:
                held.pop(conn_id, None)
                if not held:
                    del self._delegations[routed.identity.uid]

    def __len__(self) -> int:
        return len(self._routed)

    def for_fd(self, fd: int) -> Routed | None:
        """The routed connection whose server end ``fd`` is (an fd a client handed us)."""
        sock = _socket_from(fd)
        if sock is None:
            return None
        with sock:
            conn_id = connection_id_of(sock)
        return self._routed.get(conn_id) if conn_id else None

    def delegations_for(self, uid: int, accounts: frozenset[int] = frozenset()) -> dict[str, Routed]:
        """Inbound connections carrying delegation evidence that a process running as
        ``uid`` may chain from: those made for ``uid``, or all of them when ``uid`` is one
        of the service ``accounts`` the operator lets act for others."""
        if uid not in accounts:
            return dict(self._delegations.get(uid, {}))
        return {conn_id: routed for held in self._delegations.values()
                for conn_id, routed in held.items()}


def check_may_chain(uid: int, routed: Routed, accounts: frozenset[int]) -> None:
    """A process running as ``uid`` attached ``routed``: it may act in that connection's
    caller's name only as that very user, or as one of the service ``accounts``."""
    if uid == routed.identity.uid or uid in accounts:
        return
    raise NipcError("EPERM", f"uid {uid} may not act for {routed.principal or routed.identity.user} "
                             f"(uid {routed.identity.uid}): only a process running as that user, "
                             "or an account in [peer] chain_accounts, may chain from its connection")


def one_caller(found: list[Routed]) -> Routed | None:
    """The inbound connection an implicit chain acts from. With connections of several
    principals in one process, guessing could act for the wrong one: refuse."""
    principals = sorted({str(routed.principal) for routed in found})
    if len(principals) > 1:
        raise NipcError("EINVAL", f"this process holds inbound connections of {len(principals)} "
                                  f"callers ({', '.join(principals[:3])}): attach the one to act "
                                  "for to the CONNECT request (SCM_RIGHTS)")
    return found[0] if found else None


def held_by(pid: int, candidates: dict[str, Routed]) -> list[Routed]:
    """Which of ``candidates`` process ``pid`` holds the server end of.

    Looks at the process's sockets through ``pidfd_getfd(2)`` (the daemon is root).
    The caller passes only connections the calling uid may chain from
    (:meth:`Registry.delegations_for`), so a root process holding someone's connection
    does not become them. Blocking: run off the reactor.
    """
    found: list[Routed] = []
    if not candidates:
        return found
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return found
    try:
        fds = os.listdir(f"/proc/{pid}/fd")[:MAX_SCAN]
        for entry in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                    continue
            except OSError:
                continue
            local = _libc.syscall(_PIDFD_GETFD, pidfd, int(entry), 0)
            if local < 0:
                if ctypes.get_errno() in (errno.EPERM, errno.ENOSYS):
                    return []
                continue
            try:
                sock = socket.socket(fileno=local)
            except OSError:
                os.close(local)
                continue
            with sock:
                conn_id = connection_id_of(sock)
            if conn_id in candidates:
                found.append(candidates[conn_id])
    except OSError:
        return []
    finally:
        os.close(pidfd)
    return found
