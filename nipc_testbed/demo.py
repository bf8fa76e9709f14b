"""NIPC at work on a throwaway domain: one allowed and one refused connection, explained.

    python -m nipc_testbed.demo [--keep] [--prefix nipc-demo-]      (as root; ``scripts/demo``)

Builds the sandbox (a Samba AD DC and hosts a, b, c, each with its own namespaces, /etc
and accounts), starts the daemons on a and b, and puts a socket on b (``/run/dns/dns.sock``,
mode 0660, group dnsops) served by a tiny server on b that answers each client with what the
kernel reports about it: ``SO_PEERCRED``, ``SO_PEERGROUPS`` and the peer's address.  Then
alice (in dnsops) and bob (not in it), each a real process of that user on a, call
``nipc.connect`` for that socket on b, with the system Python and the client installed on a.
alice has different numbers on a and b; the server must see b's.  The transcript shows what
was asked, what came back, what the server saw and the audit line of b's daemon.  Exit status
0 only if alice got OK as b's alice and bob EACCES.

``--keep`` leaves everything running and prints how to enter each host, how to try a
CONNECT by hand and how to tear down.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import shlex
import shutil
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nipc_testbed.sandbox import LOCAL_GROUP, Host, Sandbox, SandboxBusy, SandboxError, User

DEFAULT_PREFIX = "nipc-demo-"
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
#: The users run the client as on a real host: the system interpreter, with nipc installed
#: in the host's /usr/local (the virtualenv may be under /root, unreadable to them).
CLIENT_PYTHON = "/usr/bin/python3"
#: The demo's socket on b, as b's processes see it.
DNS_SOCKET = "/run/dns/dns.sock"

# Run as the calling user on host a; prints one JSON object.
_CLIENT = """
import errno, json, os, sys
import nipc
out = {"uid": os.getuid(), "groups": sorted(os.getgroups())}
try:
    sock = nipc.connect(sys.argv[1], timeout=30)
except OSError as e:
    out["reply"] = "ERR %s %s" % (errno.errorcode.get(e.errno, e.errno), e.strerror)
else:
    out["reply"] = "OK"
    data = b""
    with sock:
        while chunk := sock.recv(4096):
            data += chunk
    out["received"] = data.decode("utf-8", "replace")
print(json.dumps(out))
"""


# --- the server on b -----------------------------------------------------------------------


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "?"


def _address(raw: str | bytes) -> str:
    """A Unix socket address as ``ss`` shows it: abstract names with a leading ``@``."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if raw.startswith("\0"):
        return "@" + raw[1:].rstrip("\0")
    return raw or "(unnamed)"


def peer_identity(conn: socket.socket) -> dict[str, Any]:
    """What the kernel says about the process at the other end of ``conn``."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)  # Python's limit: 256
    groups = sorted(struct.unpack(f"{len(raw) // 4}I", raw))
    return {
        "pid": pid,
        "uid": uid,
        "user": _user_name(uid),
        "gid": gid,
        "group": _group_name(gid),
        "groups": [[g, _group_name(g)] for g in groups],
        "peer": _address(conn.getpeername()),
    }


def describe_identity(seen: dict[str, Any]) -> str:
    groups = ",".join(f"{g}({name})" for g, name in seen["groups"])
    return (
        f"uid={seen['uid']}({seen['user']}) gid={seen['gid']}({seen['group']}) "
        f"groups={groups} peer={seen['peer']}"
    )


def serve(path: str, record: str) -> None:
    """Accept forever; tell each client who it is, and append that to ``record`` (JSON lines)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o660)
    os.chown(path, 0, grp.getgrnam(LOCAL_GROUP).gr_gid)
    server.listen(16)
    print(f"listening on {path}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                seen = peer_identity(conn)
                with open(record, "a") as f:
                    f.write(json.dumps(seen) + "\n")
                reply = f"hello {seen['user']}, the kernel says you are {describe_identity(seen)}"
                conn.sendall(reply.encode() + b"\n")
            except OSError as e:  # one client's trouble never stops the server
                print(f"client: {e}", flush=True)


# --- the demo ------------------------------------------------------------------------------


@dataclass
class Attempt:
    user: User
    asked: str
    reply: str
    received: str
    seen: list[dict[str, Any]]
    audit: list[str]


def _new_lines(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _audit_text(line: str) -> str | None:
    """The text of an audit event in the daemon's log (JSON lines, or plain text)."""
    try:
        event = json.loads(line)
    except ValueError:
        return line[line.index("nipc-audit"):] if "nipc-audit" in line else None
    if not isinstance(event, dict) or "nipc_audit" not in event:
        return None
    text = str(event.get("log_format", "nipc-audit"))
    return text.replace("{{", "{").replace("}}", "}")


def _audit_lines(host: Host, offset: int, timeout: float = 5) -> list[str]:
    """The audit lines ``host``'s daemon logged after ``offset`` (it logs when a link ends)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [t for ln in _new_lines(host.log_path, offset) if (t := _audit_text(ln))]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def attempt(user: str, client: Host, target: str, record: Path, server_host: Host) -> Attempt:
    """``user`` runs ``nipc.connect(target)`` in a process of its own on ``client`` (with the
    daemon's socket at its default place)."""
    u = client.user(user)
    seen_before = len(_new_lines(record, 0))
    log_offset = _size(server_host.log_path)
    proc = client.run([CLIENT_PYTHON, "-c", _CLIENT, target], user=u, check=False, timeout=60)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        out = {"reply": f"(client failed, exit {proc.returncode}: {proc.stderr.strip()[-500:]})"}
    audit = _audit_lines(server_host, log_offset)
    seen = [json.loads(ln) for ln in _new_lines(record, 0)[seen_before:]]
    return Attempt(u, f"CONNECT {target}", out["reply"], out.get("received", ""), seen, audit)


def _user_line(u: User) -> str:
    groups = ",".join(f"{g}({name})" for g, name in zip(u.groups, u.group_names))
    return f"{u.name}: uid={u.uid} gid={u.gid} groups={groups}"


def show(n: int, a: Attempt, client: Host, verdict: str) -> None:
    print(f"{n}. {_user_line(a.user)}, a process of its own on {client.fqdn}")
    print(f"   asked       nipc.connect({a.asked.removeprefix('CONNECT ')!r})")
    print(f"               -> {a.asked}")
    print(f"   daemon      {a.reply}")
    if a.received:
        print(f"   server      {a.received.strip()}")
    if a.seen:
        for seen in a.seen:
            print(f"   server saw  {describe_identity(seen)}")
    else:
        print("   server saw  nothing: the kernel on b refused the connect, the server never knew")
    for line in a.audit or ["(no audit line)"]:
        print(f"   b's audit   {line}")
    print(f"   => {verdict}")
    print()


def _hand_instructions(sb: Sandbox, a: Host, target: str) -> str:
    alice_a = shlex.join(a.exec_argv(["setpriv", "--reuid=alice", "--regid=alice",
                                      "--init-groups"]))
    # Double quotes inside, single quotes around: sandbox paths hold no quotes at all.
    raw = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        f's.connect("/run/nipc/nipc.sock"); s.sendall(b"CONNECT {target}\\n"); '
        'print(s.makefile("rb").read().decode(), end="")'
    )
    lib = f'import nipc; s = nipc.connect("{target}"); print(s.makefile("rb").read().decode())'
    lines = [
        "Try a CONNECT by hand, as alice on a (bob gets ERR EACCES):",
        f"    {alice_a} {CLIENT_PYTHON} -c '{raw}'",
        "  or with the client library, or the nipc command (installed on every host):",
        f"    {alice_a} {CLIENT_PYTHON} -c '{lib}'",
        f"    echo hi | {alice_a} nipc connect {target}",
    ]
    if shutil.which("socat"):
        lines += [
            "  or with socat:",
            f"    printf 'CONNECT {target}\\n' | {alice_a} socat - UNIX-CONNECT:/run/nipc/nipc.sock",
        ]
    lines += [
        f"Daemon logs: {a.log_path}, {sb.hosts['b'].log_path}",
        # This interpreter (the virtualenv's) finds nipc and nipc_testbed from any directory.
        f"Tear down:   {shlex.quote(sys.executable)} -m nipc_testbed.sandbox down "
        f"--prefix {sb.prefix}",
    ]
    return "\n".join(lines)


def run(sb: Sandbox, keep: bool) -> bool:
    print(f"Building a throwaway domain (prefix {sb.prefix}): Samba AD DC for "
          f"{sb.samba_realm}, hosts as network namespaces ...", flush=True)
    sb.up()
    a, b = sb.hosts["a"], sb.hosts["b"]
    print(f"  up in {sb.timings['up']:.1f}s, root {sb.root}")
    for host in (a, b):
        host.start_daemon()
    print(f"  nipcd running on {a.fqdn} ({a.address}) and {b.fqdn} ({b.address})")

    record = b.dir / "dns-server.jsonl"  # the same file on b and here
    record.touch()
    server = sb.spawn("dns-server", b.exec_argv([sys.executable, "-m", "nipc_testbed.demo",
                                                 "--serve", DNS_SOCKET, "--record", str(record)]))
    deadline = time.monotonic() + 20
    while "listening" not in sb.output("dns-server").read_text(errors="replace"):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SandboxError("the demo server on b did not start:\n"
                               + sb.output("dns-server").read_text(errors="replace"))
        time.sleep(0.05)
    mode, owner = b.run(["stat", "-c", "%a %U:%G", DNS_SOCKET]).stdout.split()
    print(f"  on {b.fqdn}: {DNS_SOCKET}  mode {int(mode, 8):04o} owner {owner}, served by a "
          "tiny server that tells each client who the kernel says it is")
    alice_b = b.user("alice")
    print(f"  alice is uid {a.user('alice').uid} on {a.fqdn} and uid {alice_b.uid} on "
          f"{b.fqdn}: each host has its own /etc")
    print()

    target = f"{DNS_SOCKET}@{b.fqdn}"
    alice = attempt("alice", a, target, record, b)
    alice_ok = (alice.reply == "OK" and len(alice.seen) == 1
                and alice.seen[0]["uid"] == alice_b.uid)
    show(1, alice, a, "OK, and the server on b saw b's alice: as expected" if alice_ok
         else "NOT as expected: alice should get OK and be seen as b's alice")
    bob = attempt("bob", a, target, record, b)
    bob_ok = bob.reply.startswith("ERR EACCES") and not bob.seen
    show(2, bob, a, "refused with EACCES by b's kernel (bob is not in dnsops): as expected"
         if bob_ok else "NOT as expected: bob should get ERR EACCES")

    ok = alice_ok and bob_ok
    print("Result: " + ("alice got OK, bob got EACCES. NIPC works." if ok
                        else "FAILED (see above)."))
    if keep:
        print()
        print("The domain stays up (--keep). Enter a host:")
        print(sb.describe())
        print()
        print(_hand_instructions(sb, a, target))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nipc_testbed.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the domain running and print how to use it")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="sandbox prefix")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--record", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.record)
        return 0
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, a KDC, local users)", file=sys.stderr)
        return 1
    try:
        sb = Sandbox(prefix=args.prefix, mit=False, ldap=False)
    except SandboxError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    ok = False
    keep = args.keep
    busy = False
    try:
        ok = run(sb, keep)
    except SandboxBusy as e:  # someone else's sandbox: nothing of ours to tear down
        print(f"demo: {e}", file=sys.stderr)
        busy = True
    except SandboxError as e:
        print(f"demo: {e}", file=sys.stderr)
        keep = False
    except BaseException:  # Ctrl-C or a bug: never leave a half-built domain behind
        keep = False
        raise
    finally:
        if not keep and not busy:
            print("Tearing down ...", flush=True)
            try:
                sb.down()
            except SandboxError as e:
                print(f"demo: {e}", file=sys.stderr)
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
