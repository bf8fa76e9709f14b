"""What every verb of the ``nipc`` command shares: its error, the way it names a target and
reaches it through the daemon, and how a verb is declared.

Failures are one line, ``nipc: <ERRNO>: message``, and a non-zero exit status, never a
traceback: every verb raises :class:`CommandError` and ``main`` prints it.
"""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass

from nipc.client import connect as nipc_connect
from nipc.client import daemon_socket
from nipc.errors import NipcError
from nipc.request import ConnectRequest, parse_target

#: Exit status of a refusal or a failure (argparse uses 2 for bad usage).
FAILED = 1


class CommandError(Exception):
    """A message for the user with its errno name; printed as ``nipc: NAME: message``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")


def os_error(e: OSError) -> CommandError:
    """A library failure as a command error, named by its errno."""
    if e.errno is None:  # raised by the library without an errno: timeout, early close
        name = "ETIMEDOUT" if isinstance(e, TimeoutError) else "ECONNRESET"
        return CommandError(name, str(e) or name)
    return CommandError(errno.errorcode.get(e.errno, "ERROR"), e.strerror or str(e))


def nipc_error(e: NipcError) -> CommandError:
    return CommandError(e.errno_name, e.message)


def target(text: str) -> ConnectRequest:
    """``PATH@HOST`` read as the daemon reads it: refused before anything is asked (or, for
    ``forward``, before anything listens) if it could never be routed."""
    try:
        return parse_target(text)
    except NipcError as e:
        raise nipc_error(e) from None


def route(target: str, daemon: str | None, timeout: float) -> socket.socket:
    """``nipc.connect``, its errors as one-line command errors."""
    try:
        sock = nipc_connect(target, daemon=daemon or daemon_socket(), timeout=timeout)
    except OSError as e:
        raise os_error(e) from None
    sock.settimeout(None)
    return sock


def seconds(text: str) -> float:
    """An argument type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


@dataclass(frozen=True)
class Verb:
    """One verb of the command line: its help, its own arguments and what runs it. Verbs
    that talk to the daemon's socket get ``--daemon``; those that wait for it, ``--timeout``."""

    name: str
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    daemon: bool = True
    timeout: bool = True
