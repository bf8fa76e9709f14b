"""Attacks on the local gate by a local user (issue 14 follow-ups): requests that carry a
descriptor, against a real daemon on this host (no sandbox needed)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from acting import open_fds
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
