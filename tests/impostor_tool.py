"""A fake peer daemon for the tests: speaks TLS and the NIPC frames, holds no keytab,
and answers every HELLO with an OK RESULT whose mutual-authentication token is
missing or garbage (as a network attacker impersonating the peer would).

    impostor_tool.py ADDRESS PORT MODE      MODE: no-token | garbage-token
Prints "ready" once listening, then one line per HELLO it answered.
"""

from __future__ import annotations

import socket
import sys

from OpenSSL import SSL

from nipc import wire
from nipc.tls import ephemeral_certificate


def main() -> None:
    address, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    key, cert = ephemeral_certificate("b.lan.test")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_privatekey(key)
    ctx.use_certificate(cert)
    listener = socket.create_server((address, port))
    print("ready", flush=True)
    token = b"" if mode == "no-token" else b"\x6f\x81\x00garbage-ap-rep"
    while True:
        raw, _ = listener.accept()
        conn = SSL.Connection(ctx, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            decoder = wire.FrameDecoder()
            frames: list[wire.Frame] = []
            while not frames:
                frames = decoder.feed(conn.recv(65536))
            conn.sendall(wire.encode(wire.Result("OK", token=token), frames[0][1]))
            print("answered", flush=True)
            conn.recv(65536)  # hold the link until the victim gives up
        except (SSL.Error, OSError):
            pass
        finally:
            raw.close()


if __name__ == "__main__":
    main()
