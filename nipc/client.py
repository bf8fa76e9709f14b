"""The blocking client library: ``nipc.connect("PATH@HOST")`` returns a connected socket.

It speaks the local protocol of SPEC section 2 to the daemon's socket (``NIPC_SOCKET`` or
the default path) and turns ``ERR <ERRNO> msg`` into ``OSError(errno, msg)``.

Before it sends anything it checks that the socket is the daemon's (:func:`check_gate`):
whoever sits at that path learns what the caller connects to and answers in the daemon's
name, so a socket or a directory that another user could have put there is refused.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import struct
from typing import Any

# Not nipc.config: the client runs on a host's own Python, without the daemon's dependencies.
from nipc.errors import NipcError
from nipc.request import DEFAULT_SOCKET, MAX_LINE, parse_answer, parse_reply


def daemon_socket() -> str:
    return os.environ.get("NIPC_SOCKET", DEFAULT_SOCKET)


def gate_owner() -> int:
    """The uid besides root that may own the gate: ``$NIPC_SOCKET_OWNER`` (a user name or
    uid, the daemon's ``[local] owner``), else root alone."""
    name = os.environ.get("NIPC_SOCKET_OWNER", "")
    if not name or name.isdigit():
        return int(name or 0)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise OSError(errno.EINVAL, f"NIPC_SOCKET_OWNER names no user: {name!r}") from None


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def check_gate(path: str, owner: int | None = None) -> None:
    """Refuse a gate socket another user could have placed: the socket and every directory
    on the way to it (as written and as resolved) must belong to root or ``owner``
    (default :func:`gate_owner`), and no directory may be writable by others (a group
    other than root's, or everyone), except sticky ones above the socket's own directory
    (``/tmp``): there the entry below is checked to be root's. A missing socket is left
    to ``connect()`` to report. Raises ``OSError(EPERM)`` naming the path and its owner."""
    trusted = {0, gate_owner() if owner is None else owner}
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return  # missing or not searchable: connect() says so, in its own words
    for name in dict.fromkeys([os.path.abspath(path), real]):
        parts = name.split("/")[1:]
        for depth in range(len(parts) + 1):
            where = "/" + "/".join(parts[:depth])
            st = os.lstat(where)
            if st.st_uid not in trusted:
                raise OSError(errno.EPERM, f"NIPC daemon socket {path}: {where} belongs to "
                                           f"{_who(st.st_uid)}, not root or the daemon's owner: "
                                           "not trusting it")
            if not stat.S_ISDIR(st.st_mode):
                continue
            writable = st.st_mode & (stat.S_IWOTH | (stat.S_IWGRP if st.st_gid else 0))
            sticky_above = st.st_mode & stat.S_ISVTX and depth < len(parts) - 1
            if writable and not sticky_above:
                raise OSError(errno.EPERM, f"NIPC daemon socket {path}: directory {where} "
                                           f"(owner {_who(st.st_uid)}, mode "
                                           f"{stat.S_IMODE(st.st_mode):04o}) is writable by "
                                           "other users, who could replace the socket")
    if not stat.S_ISSOCK(os.stat(real).st_mode):
        raise OSError(errno.ENOTSOCK, f"NIPC daemon socket {path} is not a socket")


def _open_gate(path: str) -> socket.socket:
    """A connection to the daemon at ``path``, once :func:`check_gate` trusts the file;
    the listening process must be root's or the owner's too (``SO_PEERCRED``), which no
    file swapped in after the check can fake."""
    owner = gate_owner()
    check_gate(path, owner)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as e:
            raise OSError(e.errno, f"cannot reach the NIPC daemon at {path}: {e.strerror}") from None
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid not in (0, owner):
            raise OSError(errno.EPERM, f"NIPC daemon socket {path} is served by a process of "
                                       f"{_who(uid)}, not root or the daemon's owner: not trusting it")
    except BaseException:
        sock.close()
        raise
    return sock


def _read_reply(sock: socket.socket) -> bytes:
    """Read exactly the reply line, leaving the routed stream's first bytes unread."""
    line = b""
    while not line.endswith(b"\n"):
        peek = sock.recv(MAX_LINE, socket.MSG_PEEK)
        if not peek:
            raise ConnectionResetError("NIPC daemon closed the connection without a reply")
        end = peek.find(b"\n")
        line += sock.recv(end + 1 if end >= 0 else len(peek))
        if len(line) > MAX_LINE:
            raise OSError(errno.EPROTO, "NIPC daemon sent an overlong reply")
    return line[:-1]


def peer_identity(conn: socket.socket, *, daemon: str | None = None,
                  timeout: float | None = 30) -> dict[str, Any]:
    """Who is behind ``conn``, a connection a server accepted: the daemon's ``PEER`` answer.

    The descriptor travels to the daemon as ``SCM_RIGHTS``; holding it is the proof that
    may ask. Raises ``OSError`` (``ENOENT`` for a connection the daemon did not make).
    """
    with _open_gate(daemon or daemon_socket()) as sock:
        sock.settimeout(timeout)
        rights = struct.pack("i", conn.fileno())
        sock.sendmsg([b"PEER\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        answer = parse_answer(_read_reply(sock))
    if isinstance(answer, NipcError):
        raise answer.to_oserror()
    return answer


def open_gate(path: str | None = None) -> socket.socket:
    """A connection to the daemon (``path``, else :func:`daemon_socket`) once it is trusted,
    ready for one request (:func:`send_connect`)."""
    return _open_gate(path or daemon_socket())


def send_connect(sock: socket.socket, target: str, timeout: float | None = None) -> None:
    """Send ``CONNECT target`` on a fresh connection to the daemon and read its reply:
    returns once routed, raises ``OSError`` for a refusal."""
    sock.settimeout(timeout)
    try:
        sock.sendall(f"CONNECT {target}\n".encode("utf-8"))
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused at accept (a limit): the reason is the line the daemon wrote first
    error = parse_reply(_read_reply(sock))
    if error is not None:
        raise error.to_oserror()


def connect(target: str, *, daemon: str | None = None, timeout: float | None = None) -> socket.socket:
    """Connect to ``target`` (``/path@host``) through the local NIPC daemon."""
    # A blocking connect waits for room in the daemon's listen queue; with a timeout set,
    # an AF_UNIX connect would fail at once with EAGAIN when the queue is full.
    sock = open_gate(daemon)
    try:
        send_connect(sock, target, timeout)
        return sock
    except BaseException:
        sock.close()
        raise
