"""Copying bytes one way until EOF and passing the EOF on as a half-close: what ``connect``
(stdin/stdout to a routed socket) and ``forward`` (a local client to a routed socket) share."""

from __future__ import annotations

import socket
from collections.abc import Callable

#: Bytes per read while relaying: large, so 100 MiB is a few hundred system calls.
CHUNK = 1 << 20


def pump(read: Callable[[int], bytes], write: Callable[[bytes], object],
         end: Callable[[], None]) -> None:
    """Copy until EOF, then ``end()`` (the half-close). Errors propagate to the caller."""
    while data := read(CHUNK):
        write(data)
    end()


def shutdown(sock: socket.socket, how: int) -> Callable[[], None]:
    def end() -> None:
        try:
            sock.shutdown(how)
        except OSError:  # already gone: the other direction reports it
            pass
    return end
