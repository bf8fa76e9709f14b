"""nipc.compat.write_now: bytes go out at once when nothing is queued, never out of order."""

from __future__ import annotations

import socket

import pytest

from nipc.compat import write_now


class Transport:
    """The attributes of a Twisted socket transport that write_now looks at."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.queued: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.queued.append(data)
        self._tempDataLen += len(data)


@pytest.fixture()
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_sent_at_once_when_nothing_is_queued(pair: tuple[socket.socket, socket.socket]) -> None:
    t = Transport(pair[0])
    write_now(t, b"hello")
    assert pair[1].recv(10) == b"hello" and t.queued == []


@pytest.mark.parametrize("state", ["queued", "disconnecting", "write side closed", "not connected"])
def test_queued_behind_what_is_already_queued_or_when_closing(
        pair: tuple[socket.socket, socket.socket], state: str) -> None:
    t = Transport(pair[0])
    if state == "queued":
        t.write(b"first")
    elif state == "disconnecting":
        t.disconnecting = True
    elif state == "write side closed":
        t._writeDisconnected = True
    else:
        t.connected = False
    write_now(t, b"second")
    assert t.queued[-1] == b"second"
    pair[1].setblocking(False)
    with pytest.raises(BlockingIOError):
        pair[1].recv(10)


def test_what_the_socket_does_not_take_is_queued_in_order(
        pair: tuple[socket.socket, socket.socket]) -> None:
    t = Transport(pair[0])
    data = bytes(range(256)) * 40000  # more than a socket buffer takes at once
    write_now(t, data)
    assert len(t.queued) == 1 and 0 < len(t.queued[0]) < len(data)
    got = bytearray()
    pair[1].settimeout(2)
    while len(got) < len(data) - len(t.queued[0]):
        got += pair[1].recv(1 << 20)
    assert bytes(got) + t.queued[0] == data
