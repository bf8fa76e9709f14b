"""The blocking client library: ``nipc.connect("PATH@HOST")`` returns a connected socket.

It speaks the local protocol of SPEC section 2 to the daemon's socket (``NIPC_SOCKET`` or
the default path) and turns ``ERR <ERRNO> msg`` into ``OSError(errno, msg)``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from typing import Any

from nipc.config import DEFAULT_SOCKET
from nipc.request import MAX_LINE, parse_reply


def daemon_socket() -> str:
    return os.environ.get("NIPC_SOCKET", DEFAULT_SOCKET)


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
    path = daemon or daemon_socket()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as e:
            raise OSError(e.errno, f"cannot reach the NIPC daemon at {path}: {e.strerror}") from None
        sock.settimeout(timeout)
        rights = struct.pack("i", conn.fileno())
        sock.sendmsg([b"PEER\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        line = _read_reply(sock)
    verdict, _, body = line.partition(b" ")
    if verdict == b"OK":
        try:
            info = json.loads(body)
        except ValueError:
            info = None
        if isinstance(info, dict):
            return info
        raise OSError(errno.EPROTO, "NIPC daemon sent a malformed PEER answer")
    error = parse_reply(line)
    raise (error.to_oserror() if error else OSError(errno.EPROTO, "unexpected PEER answer"))


def connect(target: str, *, daemon: str | None = None, timeout: float | None = None) -> socket.socket:
    """Connect to ``target`` (``/path@host``) through the local NIPC daemon."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A blocking connect waits for room in the daemon's listen queue; with a timeout
        # set, an AF_UNIX connect would fail at once with EAGAIN when the queue is full.
        path = daemon or daemon_socket()
        try:
            sock.connect(path)
        except OSError as e:
            raise OSError(e.errno, f"cannot reach the NIPC daemon at {path}: {e.strerror}") from None
        sock.settimeout(timeout)
        sock.sendall(f"CONNECT {target}\n".encode("utf-8"))
        error = parse_reply(_read_reply(sock))
        if error is not None:
            raise error.to_oserror()
        return sock
    except BaseException:
        sock.close()
        raise
