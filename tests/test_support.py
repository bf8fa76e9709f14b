"""The test servers' own guarantees, which many tests' counts rely on."""

from __future__ import annotations

import socket
from pathlib import Path

from support import UnixServer


def test_a_returned_connect_is_counted_at_once(tmp_path: Path) -> None:
    """A connect() that returned is in ``seen`` as soon as it is read, without waiting for
    the accepting thread: a daemon's OK follows its connect, and tests count after it."""
    server = UnixServer(str(tmp_path / "count.sock"), behaviour="call", call=lambda conn: None)
    clients = []
    try:
        for n in range(1, 101):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.connect(server.path)
            assert len(server.seen) == n
    finally:
        for client in clients:
            client.close()
        server.close()


def test_a_closed_server_takes_no_connection_of_the_next(tmp_path: Path) -> None:
    """A server closed (its fd number free for the next one) accepts nothing more: every
    connection to the next server at the same path is that server's."""
    for _ in range(50):
        old = UnixServer(str(tmp_path / "same.sock"), behaviour="call", call=lambda conn: None)
        old.close()
        new = UnixServer(str(tmp_path / "same.sock"), behaviour="call", call=lambda conn: None)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(new.path)
                assert (len(old.seen), len(new.seen)) == (0, 1)
        finally:
            new.close()
