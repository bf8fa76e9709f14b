"""``nipc check HOST``: the way to HOST diagnosed step by step, each failure explained with
what to fix."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from typing import TextIO

from nipc.cli.command import FAILED, Verb, nipc_error
from nipc.client import daemon_socket, open_gate, send_connect
from nipc.errors import NipcError
from nipc.request import check_host

#: The path ``nipc check`` asks for: ``ENOENT`` back means every step before it worked.
PROBE_PATH = "/nonexistent-nipc-check"

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


def run(args: argparse.Namespace) -> int:
    try:
        host = check_host(args.host)
    except NipcError as e:
        raise nipc_error(e) from None
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


def _arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", metavar="HOST")


VERB = Verb(
    "check", "diagnose the way to HOST, step by step",
    f"Check that the local daemon answers, then ask it for {PROBE_PATH}@HOST: the "
    "ENOENT that comes back can only come from HOST's daemon after it validated a "
    "Kerberos ticket in your name, so it proves the whole path. Any other answer is "
    "explained with what to fix. Exit status 0 only if every step worked.",
    _arguments, run)
