"""The ``nipc`` command: reach a socket on another host from a shell, a pipeline or ssh.

A thin layer over the library (``nipc.connect``): every verb speaks the local protocol
through the daemon, so it proves and uses exactly what any other client would. One module
per verb (``status`` holds ``reload`` too: both ask the admin socket); what they share is in
:mod:`nipc.cli.command` (errors, target, route) and :mod:`nipc.cli.relay` (half-close).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from nipc import __version__
from nipc.cli import check, connect, demo, forward, peer, status
from nipc.cli.command import FAILED, CommandError, Verb, seconds

#: In the order ``nipc --help`` lists them.
VERBS: tuple[Verb, ...] = (connect.VERB, forward.VERB, check.VERB, peer.VERB, status.STATUS,
                           status.RELOAD, demo.VERB)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="nipc",
        description="Reach Unix-domain sockets on other hosts as yourself, through the local "
                    "NIPC daemon ($NIPC_SOCKET or /run/nipc/nipc.sock).",
    )
    top.add_argument("--version", action="version", version=f"nipc {__version__}")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.description)
        if verb.daemon:
            sub.add_argument("--daemon", metavar="SOCKET",
                             help="the daemon's socket (default: $NIPC_SOCKET or /run/nipc/nipc.sock)")
        if verb.timeout:
            sub.add_argument("--timeout", type=seconds, default=30.0, metavar="SECONDS",
                             help="how long the daemon may take to answer (default: 30)")
        verb.arguments(sub)
        sub.set_defaults(run=verb.run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        exit_status: int = args.run(args)
    except CommandError as e:
        print(f"nipc: {e}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return exit_status
