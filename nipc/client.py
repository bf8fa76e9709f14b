"""The blocking client library: ``nipc.connect("PATH@HOST")`` returns a connected socket.

It speaks the local protocol of SPEC section 2 to the daemon's socket (``NIPC_SOCKET`` or
the default path) and turns ``ERR <ERRNO> msg`` into ``OSError(errno, msg)``.
"""

from __future__ import annotations

import os
import socket

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
            raise OSError(71, "NIPC daemon sent an overlong reply")  # EPROTO
    return line[:-1]


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
