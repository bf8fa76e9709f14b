"""The ``nipc`` command: reach a socket on another host from a shell, a pipeline or ssh.

A thin layer over the library (``nipc.connect``): every verb speaks the local protocol
through the daemon, so it proves and uses exactly what any other client would. Failures
are one line, ``nipc: <ERRNO>: message``, and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn, TextIO

from nipc import __version__
from nipc.client import connect as nipc_connect
from nipc.client import daemon_socket, open_gate, peer_identity, send_connect
from nipc.errors import NipcError
from nipc.request import check_host, parse_answer, parse_target

#: Bytes per read while relaying: large, so 100 MiB is a few hundred system calls.
CHUNK = 1 << 20
#: Exit status of a refusal or a failure (argparse uses 2 for bad usage).
FAILED = 1
#: The path ``nipc check`` asks for: ``ENOENT`` back means every step before it worked.
PROBE_PATH = "/nonexistent-nipc-check"


class CommandError(Exception):
    """A message for the user with its errno name; printed as ``nipc: NAME: message``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")


def _error(e: OSError) -> CommandError:
    if e.errno is None:  # raised by the library without an errno: timeout, early close
        name = "ETIMEDOUT" if isinstance(e, TimeoutError) else "ECONNRESET"
        return CommandError(name, str(e) or name)
    return CommandError(errno.errorcode.get(e.errno, "ERROR"), e.strerror or str(e))


def route(target: str, daemon: str | None, timeout: float) -> socket.socket:
    """``nipc.connect``, its errors as one-line command errors."""
    try:
        sock = nipc_connect(target, daemon=daemon or daemon_socket(), timeout=timeout)
    except OSError as e:
        raise _error(e) from None
    sock.settimeout(None)
    return sock


# -- relaying -----------------------------------------------------------------------------


def pump(read: Callable[[int], bytes], write: Callable[[bytes], object],
         end: Callable[[], None]) -> None:
    """Copy until EOF, then ``end()`` (the half-close). Errors propagate to the caller."""
    while data := read(CHUNK):
        write(data)
    end()


def _write_fd(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write


def _shutdown(sock: socket.socket, how: int) -> Callable[[], None]:
    def end() -> None:
        try:
            sock.shutdown(how)
        except OSError:  # already gone: the other direction reports it
            pass
    return end


def _end_output(fd: int) -> Callable[[], None]:
    """The server's EOF passed on at once: ``fd`` (our stdout) is half-closed if it is a
    socket and released (pointed at /dev/null), so whoever reads it sees EOF now, while
    stdin may still flow to the server. ``ssh -W``-style ProxyCommand users depend on it."""

    def end() -> None:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            with socket.socket(fileno=os.dup(fd)) as out:
                _shutdown(out, socket.SHUT_WR)()
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
            pump(lambda n: os.read(stdin, n), sock.sendall, _shutdown(sock, socket.SHUT_WR))
        except OSError as e:
            upstream_error.append(e)
            _shutdown(sock, socket.SHUT_RDWR)()  # unblock the other direction

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


def cmd_connect(args: argparse.Namespace) -> int:
    _check_target(args.target)
    sock = route(args.target, args.daemon, args.timeout)
    with sock:
        try:
            bridge(sock, sys.stdin.fileno(), sys.stdout.fileno())
        except OSError as e:
            raise _error(e) from None
    return 0


# -- forwarding ---------------------------------------------------------------------------


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
                    pump(src.recv, dst.sendall, _shutdown(dst, socket.SHUT_WR))
                except OSError:  # a reset at either end ends both directions
                    _shutdown(src, socket.SHUT_RDWR)()
                    _shutdown(dst, socket.SHUT_RDWR)()

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


def cmd_forward(args: argparse.Namespace) -> int:
    target, path = args.target, os.path.abspath(args.local_socket)
    _check_target(target)

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
        print(f"nipc forward: {path} (mode {args.mode:04o}) -> {target}", file=sys.stderr,
              flush=True)
        while True:
            client, _ = server.accept()
            threading.Thread(target=_splice, args=(client, target, args.daemon, args.timeout,
                                                    sys.stderr), daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()
        try:  # only our own socket: someone may have replaced it meanwhile
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass


def _check_target(target: str) -> None:
    """Refuse before listening a target that could never be routed."""
    try:
        parse_target(target)
    except NipcError as e:
        raise CommandError(e.errno_name, e.message) from None


# -- diagnosis ----------------------------------------------------------------------------

#: What each refusal of the probe means and what to do about it.
HINTS: dict[str, str] = {
    "ENOKEY": "no Kerberos credentials for you: in own-ccache mode run `kinit` (check with "
              "`klist`); in protocol-transition mode the KDC knows no principal of your name.",
    "EHOSTUNREACH": "the daemon found no way to the peer: add HOST to [peers] in nipcd.toml, "
                    "or fix DNS (SRV _nipc._tcp.HOST, A/AAAA), check the firewall (TCP 7445) "
                    "and that nipcd runs on HOST.",
    "ETIMEDOUT": "the peer did not answer in time: packets dropped (firewall), the peer daemon "
                 "is stuck, or the KDC is slow; see [timeouts] and both daemons' logs.",
    "EKEYREJECTED": "Kerberos refused. If the message names a host's keytab, that host's "
                    "keytab lacks the KDC's current keys for its kerberos.principal (klist "
                    "-kte there; its log has a critical line). 'refused delegation': the "
                    "sending host's account lacks nipc/HOST in its delegation list "
                    "(msDS-AllowedToDelegateTo, krbAllowedToDelegateTo) or the protocol-"
                    "transition flag, or its krb5.conf lacks forwardable = true. Otherwise: the "
                    "SPN nipc/HOST is on the wrong account, enctypes differ, or the clocks are "
                    "more than 5 minutes apart.",
    "EKEYEXPIRED": "a ticket expired: run `kinit` again (own-ccache), or check the clocks.",
    "EPROTO": "the peer handshake failed (TLS or protocol version); see both daemons' logs.",
    "EPERM": "no usable identity for you: HOST's auth_to_local/NSS has no account for your "
             "principal, or it maps to root (kerberos.allow_root).",
    "EACCES": "refused by policy: your account is disabled or locked at the KDC, or your "
              "realm is not in HOST's kerberos.trusted_realms; the daemons' logs say which.",
    "ELOOP": "the connection would chain through too many daemons or loop back.",
    "EAGAIN": "a daemon limit was hit ([limits] in nipcd.toml: connections, per-user "
              "connections or new connections per second); try again, or see the logs.",
    "EINVAL": "the request was malformed: check the host name.",
    "ECONNRESET": "the daemon closed the connection before answering; see its log.",
}

DAEMON_HINTS: dict[str, str] = {
    "ENOENT": "no socket there: is nipcd running (systemctl status nipcd)? Is NIPC_SOCKET right?",
    "ECONNREFUSED": "the socket file exists but nobody listens: nipcd is not running.",
    "EACCES": "the gate socket's owner/group/mode (or ACL) exclude you: that is the site's "
              "'who may use NIPC' policy; ask for the group in [local] of nipcd.toml.",
    "ENOTSOCK": "that path is not a socket.",
    "EPERM": "the socket, or a directory on its path, belongs to someone other than root (or "
             "$NIPC_SOCKET_OWNER, the daemon's [local] owner) or is writable by other users, "
             "who could have put a socket of their own there.",
}


class Report:
    """Prints one line per step with its duration; remembers whether all went well."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.ok = True

    def step(self, good: bool, started: float, what: str, hint: str = "") -> None:
        ms = (time.monotonic() - started) * 1000
        self.ok &= good
        mark = "ok  " if good else "FAIL"
        print(f"[{mark}] {ms:8.1f} ms  {what}", file=self.out)
        if hint:
            print(f"{'':21}-> {hint}", file=self.out)
        self.out.flush()

    def note(self, what: str) -> None:
        print(f"[info]             {what}", file=self.out, flush=True)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        host = check_host(args.host)
    except NipcError as e:
        raise CommandError(e.errno_name, e.message) from None
    daemon = args.daemon or daemon_socket()
    report = Report(sys.stdout)

    started = time.monotonic()
    try:
        addresses = sorted({str(a[4][0]) for a in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})
        report.note(f"{host} resolves here to {', '.join(addresses)} "
                    "(the daemon uses its [peers] table first, then DNS)")
    except OSError:
        report.note(f"{host} does not resolve here (fine if it is in the daemon's [peers] table)")

    # The CONNECT goes over this very connection: a probe closed without a request would
    # leave a "refused EINVAL" audit line behind in the daemon's log.
    started = time.monotonic()
    try:
        gate = open_gate(daemon)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, "ERROR")
        report.step(False, started, f"local daemon socket {daemon}: {name} {e.strerror}",
                    DAEMON_HINTS.get(name, ""))
        return FAILED
    report.step(True, started, f"local daemon socket {daemon} accepts connections")

    started = time.monotonic()
    target = f"{PROBE_PATH}@{host}"
    try:
        with gate:
            send_connect(gate, target, args.timeout)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, "ERROR")
        if name == "ENOENT":
            report.step(True, started, f"CONNECT {target}: ENOENT, as expected")
            if host == "localhost" or host in _own_names():
                report.note("that was a local connect with your own credentials: "
                            "no network or Kerberos was involved")
            else:
                report.note(f"so the daemon reached {host} (name, TCP, TLS 1.3), Kerberos gave "
                            f"a ticket in your name, both daemons authenticated each other, and "
                            f"{host} mapped you to a local account and looked for the path as you")
                report.note("(unless HOST is this daemon's own name: then it was a local connect)")
        else:
            report.step(False, started, f"CONNECT {target}: {name} {e.strerror}",
                        HINTS.get(name, "see the daemons' logs"))
    else:
        report.step(True, started, f"CONNECT {target}: OK (that path exists on {host}!)")
    return 0 if report.ok else FAILED


def _own_names() -> set[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return {n.removesuffix(".") for n in names}


# -- peer ---------------------------------------------------------------------------------


def cmd_peer(args: argparse.Namespace) -> int:
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
            raise _error(e) from None
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


# -- status -------------------------------------------------------------------------------


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
        raise CommandError(answer.errno_name, answer.message)
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


def cmd_status(args: argparse.Namespace) -> int:
    status = ask_status(args.admin or admin_socket(), args.timeout)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(status_table(status))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
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


# -- the demo -----------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from nipc_testbed import demo  # beside nipc in a checkout, never installed with it
    except ImportError:
        raise CommandError("ENOENT", "the demo is not part of this installation; run scripts/demo "
                                "from a checkout") from None
    argv = (["--keep"] if args.keep else []) + (["--prefix", args.prefix] if args.prefix else [])
    return int(demo.main(argv) or 0)


# -- the command line ---------------------------------------------------------------------


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"not a permission mode: {text!r}")
    return mode


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="nipc",
        description="Reach Unix-domain sockets on other hosts as yourself, through the local "
                    "NIPC daemon ($NIPC_SOCKET or /run/nipc/nipc.sock).",
    )
    top.add_argument("--version", action="version", version=f"nipc {__version__}")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=description)
        if name not in ("demo", "status", "reload"):
            sub.add_argument("--daemon", metavar="SOCKET",
                             help="the daemon's socket (default: $NIPC_SOCKET or /run/nipc/nipc.sock)")
        if name != "demo":
            sub.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                             help="how long the daemon may take to answer (default: 30)")
        return sub

    c = verb("connect", "bridge stdin/stdout to PATH@HOST",
             "Connect to PATH@HOST and copy stdin to it and it to stdout, verbatim. EOF on "
             "stdin half-closes the connection (the server sees EOF) while its answer keeps "
             "flowing to stdout; when the server ends its side, stdout is closed at once "
             "while stdin still flows. Usable in pipelines and as an ssh ProxyCommand.")
    c.add_argument("target", metavar="PATH@HOST")
    c.set_defaults(run=cmd_connect)

    f = verb("forward", "serve a local socket that routes to PATH@HOST",
             "Listen on LOCAL_SOCKET and route each accepted connection to PATH@HOST through "
             "the daemon, as you: whoever can connect to LOCAL_SOCKET acts with your identity, "
             "hence mode 0600 by default. A refused route resets the client's connection (once it "
             "has sent something, up to 5 s) and the reason goes to stderr. The socket is "
             "removed on exit (Ctrl-C, SIGTERM).")
    f.add_argument("local_socket", metavar="LOCAL_SOCKET")
    f.add_argument("target", metavar="PATH@HOST")
    f.add_argument("--mode", type=_mode, default=0o600, metavar="OCTAL",
                   help="permissions of LOCAL_SOCKET (default: 0600)")
    f.set_defaults(run=cmd_forward)

    k = verb("check", "diagnose the way to HOST, step by step",
             f"Check that the local daemon answers, then ask it for {PROBE_PATH}@HOST: the "
             "ENOENT that comes back can only come from HOST's daemon after it validated a "
             "Kerberos ticket in your name, so it proves the whole path. Any other answer is "
             "explained with what to fix. Exit status 0 only if every step worked.")
    k.add_argument("host", metavar="HOST")
    k.set_defaults(run=cmd_check)

    p = verb("peer", "show who is behind a connection you accepted (PEER)",
             "Ask the daemon who is behind the connection on file descriptor FD (for example "
             "a server's accepted socket handed to a helper): principal, local user, uid, "
             "groups, SIDs from the PAC, origin host, hop chain. Prints JSON.")
    p.add_argument("--fd", type=int, required=True, metavar="FD",
                   help="the connection's file descriptor, inherited by this process")
    p.set_defaults(run=cmd_peer)

    s = verb("status", "list the daemon's live connections (root or the [admin] group)",
             "Ask the daemon, through its admin socket, for every connection it is routing: "
             "conn id, direction (outgoing to a peer, local to this host, incoming from a "
             "peer), caller's user and uid (the projected one for incoming), principal when "
             "known, where it came from (caller pid, or the hosts it passed), target, bytes "
             "each way and age. Only root and members of the daemon's [admin] group may ask.")
    s.add_argument("--admin", metavar="SOCKET",
                   help="the daemon's admin socket (default: $NIPC_ADMIN_SOCKET, else "
                        "admin.sock next to the daemon's socket, i.e. /run/nipc/admin.sock)")
    s.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    s.set_defaults(run=cmd_status)

    r = verb("reload", "make the daemon re-read its configuration (root; ExecReload=)",
             "Ask the daemon, through its admin socket, to re-read its configuration file and "
             "apply it to new connections; routed connections carry on. Waits for the outcome: "
             "exit status 0 if the new configuration is in force, non-zero with the reason if "
             "it was refused (the running one then stays). Keys only a restart applies are "
             "named. Same as SIGHUP, which cannot report a refusal.")
    r.add_argument("--admin", metavar="SOCKET",
                   help="the daemon's admin socket (default: $NIPC_ADMIN_SOCKET, else "
                        "admin.sock next to the daemon's socket, i.e. /run/nipc/admin.sock)")
    r.set_defaults(run=cmd_reload)

    d = verb("demo", "build a throwaway domain and show NIPC at work (root)",
             "Build the sandbox domain (Samba AD DC, hosts a, b, c as network namespaces), "
             "route one allowed and one refused connection, and tear it down.")
    d.add_argument("--keep", action="store_true",
                   help="leave the domain running and print how to enter each host")
    d.add_argument("--prefix", help="name prefix of the sandbox's namespaces")
    d.set_defaults(run=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except CommandError as e:
        print(f"nipc: {e}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return status


if __name__ == "__main__":
    sys.exit(main())
