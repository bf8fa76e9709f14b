"""Attacks on the local gate by a local user (issue 14 follow-ups): requests that carry a
descriptor, against a real daemon on this host (no sandbox needed)."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acting import open_fds, rss_kib
from conftest import require_root
from local_daemon import LocalDaemon

#: Requests each attack sends; the daemon's descriptors may not grow by more than SLACK.
ROUNDS = 200
SLACK = 8


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDaemon]:
    require_root()
    daemon = LocalDaemon(tmp_path_factory.mktemp("gate-attacks"))
    try:
        yield daemon
    finally:
        daemon.stop()


def ask_with_fd(daemon: LocalDaemon, line: bytes, fd: int) -> bytes:
    """Send ``line`` with ``fd`` attached (SCM_RIGHTS); the daemon's reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        data = b""
        while not data.endswith(b"\n") and (chunk := s.recv(4096)):
            data += chunk
    return data


@pytest.mark.parametrize("line", [b"PEER\n", b"CONNECT /nonexistent.sock@localhost\n"],
                         ids=["peer", "connect"])
def test_attaching_a_file_that_is_not_a_socket_costs_the_daemon_no_descriptor(
        solo: LocalDaemon, line: bytes, tmp_path: Path) -> None:
    """A local user attaches a regular file to PEER or CONNECT, over and over: each is
    refused, and the daemon keeps none of the descriptors (a leak would let any user who
    may use the gate run the daemon out of descriptors)."""
    plain = tmp_path / "plain"
    plain.write_text("not a socket\n")
    fd = os.open(plain, os.O_RDONLY)
    try:
        before = open_fds(solo.proc.pid)
        replies = {ask_with_fd(solo, line, fd).split(b" ", 2)[1] for _ in range(ROUNDS)}
        after = open_fds(solo.proc.pid)
    finally:
        os.close(fd)
    assert replies <= {b"ENOENT", b"EINVAL"}, replies
    assert after - before <= SLACK, f"daemon fds {before} -> {after} after {ROUNDS} requests"


#: Connections a local user holds while they wait for a peer, each with bytes sent ahead.
WAITING = 200
#: What the daemon may hold per such connection (the early-data bound and one read).
EARLY_HELD_KIB = 192


def fill(sock: socket.socket, data: bytes) -> int:
    """Send what a non-blocking socket takes now; how many bytes."""
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent:])
    except BlockingIOError:
        pass
    return sent


def test_bytes_sent_ahead_of_ok_are_held_within_a_bound(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A local user opens 200 connections to a peer that never answers TLS (the dial waits
    up to the connect and handshake timeouts) and keeps sending after each request line:
    the daemon holds a bounded amount per connection, not the 256 KiB early-data bound
    plus a 256 KiB read (before: RSS grew by ~100 MB for one user)."""
    require_root()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(WAITING + 8)  # the kernel completes the TCP handshakes; nobody reads
    port = silent.getsockname()[1]
    daemon = LocalDaemon(tmp_path_factory.mktemp("early"),
                         f'[peers]\n"silent.test" = "127.0.0.1:{port}"\n')
    socks: list[socket.socket] = []
    try:
        before = rss_kib(daemon.proc.pid)
        for _ in range(WAITING):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket))
            s.setblocking(False)
            fill(s, b"CONNECT /run/x.sock@silent.test\n")
            socks.append(s)
        chunk = b"\0" * (1 << 20)
        for _ in range(4):  # the daemon reads, the clients send more, while it waits
            for s in socks:
                fill(s, chunk)
            time.sleep(0.5)
        grown = rss_kib(daemon.proc.pid) - before
    finally:
        for s in socks:
            s.close()
        daemon.stop()
        silent.close()
    print(f"daemon RSS grew by {grown} KiB with {WAITING} connections sending ahead")
    assert grown < WAITING * EARLY_HELD_KIB, f"daemon RSS grew by {grown} KiB"
