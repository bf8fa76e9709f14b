"""``nipc peer --fd FD``: who is behind a connection a server accepted (the daemon's ``PEER``
answer), for servers written in any language."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket

from nipc.cli.command import CommandError, Verb, os_error
from nipc.client import peer_identity


def run(args: argparse.Namespace) -> int:
    """Print the identity behind an inherited connection (a server's accepted socket)."""
    try:
        conn = socket.socket(fileno=os.dup(args.fd))
    except OSError as e:
        raise CommandError(errno.errorcode.get(e.errno or 0, "EBADF"),
                           f"descriptor {args.fd}: {e.strerror}") from None
    with conn:
        try:
            info = peer_identity(conn, daemon=args.daemon, timeout=args.timeout)
        except OSError as e:
            raise os_error(e) from None
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def _arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--fd", type=int, required=True, metavar="FD",
                     help="the connection's file descriptor, inherited by this process")


VERB = Verb(
    "peer", "show who is behind a connection you accepted (PEER)",
    "Ask the daemon who is behind the connection on file descriptor FD (for example "
    "a server's accepted socket handed to a helper): principal, local user, uid, "
    "groups, SIDs from the PAC, origin host, hop chain. Prints JSON.",
    _arguments, run)
