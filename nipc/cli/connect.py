"""``nipc connect PATH@HOST``: stdin and stdout bridged to a socket on another host, for
pipelines and as an ssh ProxyCommand."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable

from nipc.cli.command import Verb, os_error, route, target
from nipc.cli.relay import pump, shutdown


def _write_fd(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write


def _end_output(fd: int) -> Callable[[], None]:
    """The server's EOF passed on at once: ``fd`` (our stdout) is half-closed if it is a
    socket and released (pointed at /dev/null), so whoever reads it sees EOF now, while
    stdin may still flow to the server. ``ssh -W``-style ProxyCommand users depend on it."""

    def end() -> None:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            with socket.socket(fileno=os.dup(fd)) as out:
                shutdown(out, socket.SHUT_WR)()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return end


def bridge(sock: socket.socket, stdin: int, stdout: int) -> None:
    """stdin -> socket and socket -> stdout, each direction half-closed on its own EOF
    (stdout closed as soon as the server ends its side).

    Returns when the socket gave EOF and stdin did too (or stdin is a terminal, which
    would otherwise keep an interactive session open after the server has gone).
    """
    upstream_error: list[OSError] = []

    def upstream() -> None:
        try:
            pump(lambda n: os.read(stdin, n), sock.sendall, shutdown(sock, socket.SHUT_WR))
        except OSError as e:
            upstream_error.append(e)
            shutdown(sock, socket.SHUT_RDWR)()  # unblock the other direction

    sender = threading.Thread(target=upstream, name="nipc-stdin", daemon=True)
    sender.start()
    try:
        pump(sock.recv, _write_fd(stdout), _end_output(stdout))
    except BrokenPipeError:  # the reader of our stdout went away (``| head``)
        raise SystemExit(128 + signal.SIGPIPE) from None
    if not os.isatty(stdin):
        sender.join()
    if upstream_error:
        raise upstream_error[0]


def run(args: argparse.Namespace) -> int:
    target(args.target)
    sock = route(args.target, args.daemon, args.timeout)
    with sock:
        try:
            bridge(sock, sys.stdin.fileno(), sys.stdout.fileno())
        except OSError as e:
            raise os_error(e) from None
    return 0


def _arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("target", metavar="PATH@HOST")


VERB = Verb(
    "connect", "bridge stdin/stdout to PATH@HOST",
    "Connect to PATH@HOST and copy stdin to it and it to stdout, verbatim. EOF on "
    "stdin half-closes the connection (the server sees EOF) while its answer keeps "
    "flowing to stdout; when the server ends its side, stdout is closed at once "
    "while stdin still flows. Usable in pipelines and as an ssh ProxyCommand.",
    _arguments, run)
