"""A hostile "daemon" for the tests: talks to a peer daemon over TLS with forged or
misbound tickets and prints the errno of each RESULT it gets.

    forge_tool.py ATTACK ADDRESS PORT HOST PATH DAEMON_PRINCIPAL
    ATTACK: garbage-token | other-channel | replay | long-chain
Run inside the sending host's namespace with its krb5 environment (its keytab is what a
compromised sending daemon would hold).
"""

from __future__ import annotations

import os
import socket
import sys

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


def exchange(conn: SSL.Connection, hello: wire.Hello) -> str:
    conn.sendall(wire.encode(hello))
    data = b""
    decoder = wire.FrameDecoder()
    while True:
        try:
            chunk = conn.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return "CLOSED"
        if not chunk:
            return "CLOSED"
        for kind, payload in decoder.feed(chunk):
            result = wire.decode(kind, payload)
            assert isinstance(result, wire.Result)
            return result.errno_name


def token_for(channel: bytes, daemon_principal: str, host: str) -> bytes:
    store = {"client_keytab": os.environ["KRB5_CLIENT_KTNAME"], "ccache": "MEMORY:forge"}
    daemon = gssapi.Credentials(name=principal_name(daemon_principal), usage="initiate", store=store)
    alice = daemon.impersonate(principal_name("alice@" + daemon_principal.rpartition("@")[2]),
                               usage="initiate")
    ctx = gssapi.SecurityContext(name=service_name(host), creds=alice, usage="initiate",
                                 channel_bindings=bindings(channel),
                                 flags=gssapi.RequirementFlag.mutual_authentication)
    return ctx.step() or b""


def main() -> None:
    attack, address, port_text, host, path, daemon_principal = sys.argv[1:]
    port = int(port_text)
    conn = tls(address, port)
    if attack == "garbage-token":
        hello = wire.Hello(path, host, ("a.lan.test",), b"\x60\x82garbage", "forged1")
        print(exchange(conn, hello))
    elif attack == "other-channel":
        token = token_for(os.urandom(32), daemon_principal, host)
        print(exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "forged2")))
    elif attack == "replay":
        channel = conn.export_keying_material(EXPORTER_LABEL, 32)
        token = token_for(channel, daemon_principal, host)
        first = exchange(conn, wire.Hello(path, host, ("a.lan.test",), token, "legit"))
        assert first == "OK", first
        again = tls(address, port)
        print(exchange(again, wire.Hello(path, host, ("a.lan.test",), token, "replayed")))
    elif attack == "long-chain":
        channel = conn.export_keying_material(EXPORTER_LABEL, 32)
        token = token_for(channel, daemon_principal, host)
        hops = tuple(f"h{i}.lan.test" for i in range(9))
        print(exchange(conn, wire.Hello(path, host, hops, token, "long")))
    else:
        raise SystemExit(f"unknown attack {attack}")


if __name__ == "__main__":
    main()
