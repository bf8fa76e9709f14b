"""A hostile "daemon" for the tests: talks to a peer daemon over TLS with forged or
misbound tickets and prints the errno of each RESULT it gets.

    forge_tool.py ATTACK ADDRESS PORT HOST PATH DAEMON_PRINCIPAL [ARG ...]
    ATTACK: garbage-token | other-channel | replay | replay-other-channel | reuse-channel
            | long-chain                                             (print the errno)
            other-service SERVICE_HOST   a valid ticket for nipc/SERVICE_HOST, shown to HOST
            as-user USER                 a valid ticket for USER@REALM (protocol transition)
            expired                      the service ticket in $KRB5CCNAME, once expired
            ccache-principal PRINCIPAL   a ticket from $KRB5CCNAME for PRINCIPAL (another realm)
            control-path LINE            a HELLO whose path is PATH, a newline, then LINE
            truncated-hello | oversized-hello | garbage-frames | tls-silent
                                         print "<errno or CLOSED> <seconds until answered>"
            tcp-flood N HOLD             N TCP connections that never speak TLS; print JSON
                                         with how many the peer closed and when
Run inside the sending host's namespace with its krb5 environment (its keytab is what a
compromised sending daemon would hold). With $FORGE_TOKENS set, every GSS token made is
appended there in hex (the log-secrets test looks for them in the daemons' logs).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

import gssapi
from OpenSSL import SSL

from nipc import wire
from nipc.kerberos import bindings, principal_name, service_name
from nipc.tls import EXPORTER_LABEL


def tls(address: str, port: int) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    sock = socket.create_connection((address, port), timeout=20)
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def exchange(conn: SSL.Connection, hello: wire.Hello, channel: int = 1) -> str:
    conn.sendall(wire.encode(hello, channel))
    decoder = wire.FrameDecoder()
    while True:
        try:
            chunk = conn.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return "CLOSED"
        if not chunk:
            return "CLOSED"
        for kind, number, payload in decoder.feed(chunk):
            if kind != wire.Kind.RESULT or number != channel:
                continue  # an earlier channel's stream
            result = wire.decode(kind, payload)
            assert isinstance(result, wire.Result)
            return result.errno_name


def note(token: bytes) -> bytes:
    path = os.environ.get("FORGE_TOKENS")
    if path:
        with open(path, "a") as f:
            f.write(token.hex() + "\n")
    return token


def token_for(channel: bytes, daemon_principal: str, host: str, user: str = "alice") -> bytes:
    store = {"client_keytab": os.environ["KRB5_CLIENT_KTNAME"], "ccache": "MEMORY:forge"}
    daemon = gssapi.Credentials(name=principal_name(daemon_principal), usage="initiate", store=store)
    alice = daemon.impersonate(principal_name(user + "@" + daemon_principal.rpartition("@")[2]),
                               usage="initiate")
    ctx = gssapi.SecurityContext(name=service_name(host), creds=alice, usage="initiate",
                                 channel_bindings=bindings(channel),
                                 flags=gssapi.RequirementFlag.mutual_authentication)
    return note(ctx.step() or b"")


def ccache_token(channel: bytes, target: gssapi.Name) -> bytes:
    """A token from the credentials in $KRB5CCNAME (a ticket someone else obtained)."""
    creds = gssapi.Credentials(usage="initiate", store={"ccache": os.environ["KRB5CCNAME"]})
    ctx = gssapi.SecurityContext(name=target, creds=creds, usage="initiate",
                                 channel_bindings=bindings(channel),
                                 flags=gssapi.RequirementFlag.mutual_authentication)
    return note(ctx.step() or b"")


def extend_ccache(data: bytes, endtime: int) -> bytes:
    """A FILE ccache (format version 4) with every credential's end time set to ``endtime``."""
    buf = bytearray(data)
    pos = 0

    def u16() -> int:
        nonlocal pos
        pos += 2
        return int(struct.unpack_from(">H", buf, pos - 2)[0])

    def u32() -> int:
        nonlocal pos
        pos += 4
        return int(struct.unpack_from(">I", buf, pos - 4)[0])

    def blob() -> bytes:
        nonlocal pos
        n = u32()
        pos += n
        return bytes(buf[pos - n : pos])

    def principal() -> bytes:
        u32()  # name type
        count = u32()
        realm = blob()
        for _ in range(count):
            blob()
        return realm

    if u16() != 0x0504:
        raise SystemExit("not a version 4 FILE ccache")
    tags = u16()  # length of the header tags
    pos += tags
    principal()  # default principal
    while pos < len(buf):
        principal()  # client
        realm = principal()  # server
        u16()  # key enctype
        blob()  # key
        times = pos
        pos += 16  # authtime, starttime, endtime, renew_till
        if realm != b"X-CACHECONF:":
            struct.pack_into(">I", buf, times + 8, endtime)
        pos += 1 + 4  # is_skey, ticket flags
        for _ in range(u32()):  # addresses
            u16()
            blob()
        for _ in range(u32()):  # authdata
            u16()
            blob()
        blob()  # ticket
        blob()  # second ticket
    return bytes(buf)


def channel_of(conn: SSL.Connection, channel: int = 1) -> bytes:
    """What a ticket for ``channel`` of this link must be bound to."""
    return wire.binding(conn.export_keying_material(EXPORTER_LABEL, 32), channel)


def answered(conn: SSL.Connection, data: bytes, limit: float = 60) -> str:
    """Send raw bytes inside TLS; "<errno or CLOSED> <seconds>" once the peer answers."""
    start = time.monotonic()
    if data:
        try:
            conn.sendall(data)
        except (SSL.Error, OSError):
            return f"CLOSED {time.monotonic() - start:.2f}"  # the peer hung up mid-send
    decoder = wire.FrameDecoder()
    conn.setblocking(True)
    sock = conn  # pyOpenSSL Connection proxies fileno()
    while time.monotonic() - start < limit:
        if not conn.pending():
            ready, _, _ = select.select([sock], [], [], 1.0)
            if not ready:
                continue
        try:
            chunk = conn.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error, OSError):
            chunk = b""
        took = time.monotonic() - start
        if not chunk:
            return f"CLOSED {took:.2f}"
        for kind, _, payload in decoder.feed(chunk):
            result = wire.decode(kind, payload)
            assert isinstance(result, wire.Result)
            return f"{result.errno_name} {took:.2f}"
    return f"OPEN {time.monotonic() - start:.2f}"


def tcp_flood(address: str, port: int, count: int, hold: float) -> dict[str, object]:
    """``count`` TCP connections that never speak; when did the peer close each one?"""
    socks, failed = [], 0
    start = time.monotonic()
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((address, port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
    closed: dict[int, float] = {}
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    by_fd = {s.fileno(): s for s in socks}
    while len(closed) < len(socks) and time.monotonic() - start < hold:
        for fd, _ in poller.poll(200):
            s = by_fd[fd]
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed[fd] = time.monotonic() - start
                poller.unregister(fd)
    for s in socks:
        s.close()
    times = sorted(closed.values())
    return {"opened": len(socks), "failed": failed, "closed": len(closed),
            "last_close": round(times[-1], 2) if times else None,
            "closed_within_1s": sum(1 for t in times if t < 1.0)}


def main() -> None:
    attack, address, port_text, host, path, daemon_principal, *extra = sys.argv[1:]
    port = int(port_text)
    if attack == "tcp-flood":
        print(json.dumps(tcp_flood(address, port, int(extra[0]), float(extra[1]))))
        return
    conn = tls(address, port)
    if attack == "truncated-hello":
        # A HELLO header announcing 1000 bytes, then only 10 of them, then silence.
        print(answered(conn, wire.HEADER.pack(wire.Kind.HELLO, 1, 1000) + b'{"version"'))
    elif attack == "oversized-hello":
        # A HELLO announcing more than MAX_HANDSHAKE bytes, and sending them.
        size = wire.MAX_HANDSHAKE + 1
        print(answered(conn, wire.HEADER.pack(wire.Kind.HELLO, 1, size) + b"[" * size))
    elif attack == "garbage-frames":
        print(answered(conn, os.urandom(4096)))
    elif attack == "tls-silent":
        print(answered(conn, b""))
    elif attack == "other-service":
        token = token_for(channel_of(conn), daemon_principal, extra[0])
        print(exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "otherservice")))
    elif attack == "as-user":
        token = token_for(channel_of(conn), daemon_principal, host, user=extra[0])
        print(exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "asuser")))
    elif attack == "ccache-principal":
        target = gssapi.Name(extra[0], gssapi.NameType.kerberos_principal)
        token = ccache_token(channel_of(conn), target)
        print(exchange(conn, wire.Hello(path, host, ("x.mit.test",), token, "foreign")))
    elif attack == "expired":
        # The client's krb5 library will not send a ticket its ccache says has expired; a
        # hostile sender edits the ccache's (unsigned, client-side) copy of the end time.
        # Only the KDC-encrypted copy inside the ticket counts on the receiving side.
        path = os.environ["KRB5CCNAME"].removeprefix("FILE:")
        with open(path, "rb") as f:
            forged = extend_ccache(f.read(), int(time.time()) + 3600)
        with open(path + ".forged", "wb") as f:
            f.write(forged)
        os.environ["KRB5CCNAME"] = "FILE:" + path + ".forged"
        token = ccache_token(channel_of(conn), service_name(host))
        print(exchange(conn, wire.Hello(path, host, ("x.mit.test",), token, "expired")))
    elif attack == "garbage-token":
        hello = wire.Hello(path, host, ("a.lan.test",), b"\x60\x82garbage", "forged1")
        print(exchange(conn, hello))
    elif attack == "other-channel":
        token = token_for(os.urandom(32), daemon_principal, host)
        print(exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "forged2")))
    elif attack == "replay":
        token = token_for(channel_of(conn), daemon_principal, host)
        first = exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "legit"))
        assert first == "OK", first
        again = tls(address, port)
        print(exchange(again, wire.Hello(path, host, ("a.lan.test",), token, "replayed")))
    elif attack == "replay-other-channel":
        # The same link, the next channel: the ticket is bound to channel 1 only.
        token = token_for(channel_of(conn), daemon_principal, host)
        first = exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "legit"))
        assert first == "OK", first
        print(exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "replayed"), 2))
    elif attack == "reuse-channel":
        # A second HELLO on channel 1 of the same link (its ticket bound to channel 1).
        token = token_for(channel_of(conn), daemon_principal, host)
        first = exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "legit"))
        assert first == "OK", first
        token = token_for(channel_of(conn), daemon_principal, host)
        print(exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "again")))
    elif attack == "control-path":
        # A path with a newline and a made-up audit line after it (a log-forging attempt).
        forged = path + "\n" + extra[0]
        print(exchange(conn, wire.Hello(forged, host, ("a.lan.test",), b"\x60\x82garbage", "forged3")))
    elif attack == "long-chain":
        token = token_for(channel_of(conn), daemon_principal, host)
        hops = tuple(f"h{i}.lan.test" for i in range(9))
        print(exchange(conn, wire.Hello(path, host, hops, token, "long")))
    else:
        raise SystemExit(f"unknown attack {attack}")


if __name__ == "__main__":
    main()
