"""``nipc status`` and ``nipc reload``: the daemon's admin socket (root or the daemon's
[admin] group), which answers one line, ``OK <json>`` or ``ERR <ERRNO> message``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket

from nipc.cli.command import CommandError, Verb, nipc_error
from nipc.client import daemon_socket
from nipc.errors import NipcError
from nipc.request import parse_answer


def admin_socket() -> str:
    """The daemon's admin socket: $NIPC_ADMIN_SOCKET, else ``admin.sock`` next to the gate
    socket (the daemon's default)."""
    return os.environ.get("NIPC_ADMIN_SOCKET") or os.path.join(
        os.path.dirname(daemon_socket()), "admin.sock")


def ask_status(path: str, timeout: float, request: bytes = b"STATUS") -> dict[str, object]:
    """Send ``STATUS`` (or another admin request) to the admin socket; the answer, or a
    command error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            try:
                sock.sendall(request + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at once: the reason is in what the daemon wrote first
            data = b""
            while not data.endswith(b"\n") and (chunk := sock.recv(1 << 16)):
                data += chunk
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, "ETIMEDOUT")
            hint = (" (root or the daemon's [admin] group only)" if name == "EACCES" else
                    " (is nipcd running, with its admin socket on?)" if name in ("ENOENT", "ECONNREFUSED")
                    else "")
            raise CommandError(name, f"admin socket {path}: {e.strerror or e}{hint}") from None
    if not data:
        raise CommandError("ECONNRESET", f"admin socket {path}: closed without an answer")
    answer = parse_answer(data.rstrip(b"\n"))
    if isinstance(answer, NipcError):
        raise nipc_error(answer)
    return answer


def _size(n: object) -> str:
    value = float(n) if isinstance(n, (int, float)) else 0.0
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _age(seconds: object) -> str:
    s = int(seconds) if isinstance(seconds, (int, float)) else 0
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def status_table(status: dict[str, object]) -> str:
    """The ``STATUS`` answer as a table an operator reads."""
    conns = status.get("connections")
    rows = [c for c in conns if isinstance(c, dict)] if isinstance(conns, list) else []
    lines = [f"nipcd {status.get('version', '?')} on {status.get('host')} (pid {status.get('pid')}, "
             f"up {_age(status.get('uptime'))}): "
             f"{len(rows)} connection(s), {status.get('local_clients', 0)} local client(s), "
             f"{status.get('pending_peer_handshakes', 0)} peer handshake(s) pending"]
    links = status.get("links")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict):
            lines.append(f"link {link.get('direction')} {link.get('host')} {link.get('peer')}: "
                         f"{link.get('channels')} open of {link.get('opened_channels')} channel(s), "
                         f"up {_age(link.get('age'))}")
    if not rows:
        return "\n".join(lines)
    table = [("CONN", "DIR", "USER", "PRINCIPAL", "FROM", "TARGET", "IN", "OUT", "AGE")]
    for c in rows:
        user = f"{c.get('user') or '?'}({c.get('uid')})"
        hops = c.get("hops")
        origin = ">".join(map(str, hops)) if isinstance(hops, list) and hops else f"pid {c.get('pid')}"
        table.append((str(c.get("conn_id")), str(c.get("direction")), user,
                      str(c.get("principal") or "-"), origin, str(c.get("target")),
                      _size(c.get("bytes_in")), _size(c.get("bytes_out")), _age(c.get("age"))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [cell.rjust(w) if i in (6, 7, 8) else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.append("IN: bytes from the caller towards the target; OUT: back to the caller.")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    status = ask_status(args.admin or admin_socket(), args.timeout)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(status_table(status))
    return 0


def run_reload(args: argparse.Namespace) -> int:
    """Reload and wait for the outcome: non-zero with the reason when it was refused (so
    ``systemctl reload`` fails), the changed keys otherwise."""
    outcome = ask_status(args.admin or admin_socket(), args.timeout, b"RELOAD")
    def names(key: str) -> str:
        value = outcome.get(key)
        return ", ".join(map(str, value)) if isinstance(value, list) else ""

    print(f"nipcd reloaded; changed: {names('changed') or 'nothing'}")
    if names("restart_needed"):
        print(f"changed but applied only by a restart: {names('restart_needed')}")
    return 0


def _admin_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--admin", metavar="SOCKET",
                     help="the daemon's admin socket (default: $NIPC_ADMIN_SOCKET, else "
                          "admin.sock next to the daemon's socket, i.e. /run/nipc/admin.sock)")


def _status_arguments(sub: argparse.ArgumentParser) -> None:
    _admin_argument(sub)
    sub.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")


STATUS = Verb(
    "status", "list the daemon's live connections (root or the [admin] group)",
    "Ask the daemon, through its admin socket, for every connection it is routing: "
    "conn id, direction (outgoing to a peer, local to this host, incoming from a "
    "peer), caller's user and uid (the projected one for incoming), principal when "
    "known, where it came from (caller pid, or the hosts it passed), target, bytes "
    "each way and age. Only root and members of the daemon's [admin] group may ask.",
    _status_arguments, run_status, daemon=False)

RELOAD = Verb(
    "reload", "make the daemon re-read its configuration (root; ExecReload=)",
    "Ask the daemon, through its admin socket, to re-read its configuration file and "
    "apply it to new connections; routed connections carry on. Waits for the outcome: "
    "exit status 0 if the new configuration is in force, non-zero with the reason if "
    "it was refused (the running one then stays). Keys only a restart applies are "
    "named. Same as SIGHUP, which cannot report a refusal.",
    _admin_argument, run_reload, daemon=False)
