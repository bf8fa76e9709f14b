"""``nipc demo``: the throwaway domain of a checkout (``nipc_testbed``), which is never
installed with the daemon; elsewhere the verb says where to find it."""

from __future__ import annotations

import argparse

from nipc.cli.command import CommandError, Verb


def run(args: argparse.Namespace) -> int:
    try:
        from nipc_testbed import demo  # beside nipc in a checkout, never installed with it
    except ImportError:
        raise CommandError("ENOENT", "the demo is not part of this installation; run scripts/demo "
                                "from a checkout") from None
    argv = (["--keep"] if args.keep else []) + (["--prefix", args.prefix] if args.prefix else [])
    return int(demo.main(argv) or 0)


def _arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--keep", action="store_true",
                     help="leave the domain running and print how to enter each host")
    sub.add_argument("--prefix", help="name prefix of the sandbox's namespaces")


VERB = Verb(
    "demo", "build a throwaway domain and show NIPC at work (root)",
    "Build the sandbox domain (Samba AD DC, hosts a, b, c as network namespaces), "
    "route one allowed and one refused connection, and tear it down.",
    _arguments, run, daemon=False, timeout=False)
