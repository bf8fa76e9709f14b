"""``nipc forward LOCAL_SOCKET PATH@HOST``: a local socket that routes each connection to a
socket on another host, as the user who runs it."""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import stat
import sys
import threading
from types import FrameType
from typing import NoReturn, TextIO

from nipc.cli.command import CommandError, Verb, route, target
from nipc.cli.relay import pump, shutdown

#: How long a refused client of ``nipc forward`` may take to send its first bytes, which
#: turn the close into a reset (see :func:`_reset`).
RESET_WAIT = 5.0


def _reset(client: socket.socket) -> None:
    """End a refused client's connection as a reset (``ECONNRESET``), not a clean EOF it
    could take for an empty answer. An AF_UNIX close is a reset only while bytes the client
    sent lie unread (SO_LINGER does nothing there), so wait, up to :data:`RESET_WAIT`, for
    its first bytes, unread, before closing; a client that sends nothing sees EOF."""
    poller = select.poll()
    poller.register(client, select.POLLIN)
    poller.poll(RESET_WAIT * 1000)
    client.close()


def _splice(client: socket.socket, target: str, daemon: str | None, timeout: float,
            log: TextIO) -> None:
    """One accepted connection: route it, then relay both ways with half-close."""
    with client:
        try:
            routed = route(target, daemon, timeout)
        except CommandError as e:
            print(f"nipc forward: {e}", file=log, flush=True)
            _reset(client)
            return
        with routed:

            def one_way(src: socket.socket, dst: socket.socket) -> None:
                try:
                    pump(src.recv, dst.sendall, shutdown(dst, socket.SHUT_WR))
                except OSError:  # a reset at either end ends both directions
                    shutdown(src, socket.SHUT_RDWR)()
                    shutdown(dst, socket.SHUT_RDWR)()

            back = threading.Thread(target=one_way, args=(routed, client), daemon=True)
            back.start()
            one_way(client, routed)
            back.join()


def _listen(path: str, mode: int) -> socket.socket:
    """Bind ``path`` with ``mode``, never exposed wider even for an instant."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise CommandError("EEXIST", f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(path) != errno.ECONNREFUSED:
                raise CommandError("EADDRINUSE", f"{path} is in use by another process")
        os.unlink(path)  # stale: nobody listening
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777)
    try:
        server.bind(path)
    except OSError as e:
        server.close()
        raise CommandError(errno.errorcode.get(e.errno or 0, "ERROR"), f"{path}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, mode)
    server.listen(64)
    return server


def run(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.local_socket)
    target(args.target)

    def stop(signum: int, frame: FrameType | None) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    # Held until the cleanup below is in place: a signal now must not leave the socket.
    stoppers = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stoppers)
    server = _listen(path, args.mode)
    inode = os.stat(path).st_ino
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stoppers)
        print(f"nipc forward: {path} (mode {args.mode:04o}) -> {args.target}", file=sys.stderr,
              flush=True)
        while True:
            client, _ = server.accept()
            threading.Thread(target=_splice, args=(client, args.target, args.daemon,
                                                    args.timeout, sys.stderr),
                             daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()
        try:  # only our own socket: someone may have replaced it meanwhile
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"not a permission mode: {text!r}")
    return mode


def _arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("local_socket", metavar="LOCAL_SOCKET")
    sub.add_argument("target", metavar="PATH@HOST")
    sub.add_argument("--mode", type=_mode, default=0o600, metavar="OCTAL",
                     help="permissions of LOCAL_SOCKET (default: 0600)")


VERB = Verb(
    "forward", "serve a local socket that routes to PATH@HOST",
    "Listen on LOCAL_SOCKET and route each accepted connection to PATH@HOST through "
    "the daemon, as you: whoever can connect to LOCAL_SOCKET acts with your identity, "
    "hence mode 0600 by default. A refused route resets the client's connection (once it "
    "has sent something, up to 5 s) and the reason goes to stderr. The socket is "
    "removed on exit (Ctrl-C, SIGTERM).",
    _arguments, run)
