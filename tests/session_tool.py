"""A sending "daemon" that holds a real session on a peer daemon and misuses its proofs.

    session_tool.py ADDRESS PORT HOST PATH DAEMON_PRINCIPAL [WAIT]

Run inside the sending host's namespace with its krb5 environment. It authenticates alice
by protocol transition on channel 1 of a link (the full exchange, mutual authentication
included), then tries the session's proofs where they must not work, and prints a JSON
object: each attempt's errno (or CLOSED), plus what the peer offered. With WAIT, it
first waits that many seconds after the full exchange (the session's end) and then tries
one correct proof.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import gssapi

from forge_tool import channel_of, tls
from nipc import wire
from nipc.kerberos import _FLAGS, bindings, principal_name, service_name
from nipc.session import OFFERED, proof_message

HOPS = ("a.lan.test",)


class Link:
    """One TLS link to the peer daemon, its frames read in order."""

    def __init__(self, address: str, port: int) -> None:
        self.conn = tls(address, port)
        self.decoder = wire.FrameDecoder()

    def binding(self, channel: int) -> bytes:
        return channel_of(self.conn, channel)

    def exchange(self, hello: wire.Hello, channel: int) -> wire.Result | str:
        self.conn.sendall(wire.encode(hello, channel))
        while True:
            try:
                chunk = self.conn.recv(65536)
            except Exception:  # the peer closed the link (TLS or socket error)
                return "CLOSED"
            if not chunk:
                return "CLOSED"
            for kind, number, payload in self.decoder.feed(chunk):
                if kind == wire.Kind.RESULT and number == channel:
                    result = wire.decode(kind, payload)
                    assert isinstance(result, wire.Result)
                    return result


def verdict(answer: wire.Result | str) -> str:
    return answer if isinstance(answer, str) else answer.errno_name


def main() -> None:
    address, port_text, host, path, daemon_principal, *wait = sys.argv[1:]
    port = int(port_text)
    store = {"client_keytab": __import__("os").environ["KRB5_CLIENT_KTNAME"], "ccache": "MEMORY:session-tool"}
    daemon = gssapi.Credentials(name=principal_name(daemon_principal), usage="initiate", store=store)
    alice = daemon.impersonate(principal_name("alice@" + daemon_principal.rpartition("@")[2]),
                               usage="initiate")
    first = Link(address, port)
    ctx = gssapi.SecurityContext(name=service_name(host), creds=alice, usage="initiate",
                                 flags=_FLAGS, channel_bindings=bindings(first.binding(1)))
    answer = first.exchange(wire.Hello(path, host, HOPS, ctx.step() or b"", "full",
                                          resumes=True), 1)
    assert isinstance(answer, wire.Result) and answer.ok, answer
    ctx.step(answer.token)
    assert ctx.complete
    reference = answer.info.get(OFFERED)
    out: dict[str, Any] = {"offered": answer.info}
    if not isinstance(reference, str):
        print(json.dumps(out))
        return

    def hello(link: Link, signed_for: bytes, conn_id: str, hops: tuple[str, ...] = HOPS) -> wire.Hello:
        mic = ctx.get_signature(proof_message(signed_for, reference, path, host, conn_id, hops))
        return wire.Hello(path, host, hops, b"", conn_id, reference, mic)

    if wait:
        time.sleep(float(wait[0]))
        late = first.exchange(hello(first, first.binding(2), "late"), 2)
        out["after_end"] = verdict(late)
        out["after_end_info"] = late.info if isinstance(late, wire.Result) else {}
        print(json.dumps(out))
        return
    good = hello(first, first.binding(2), "good")
    out["resumed"] = verdict(first.exchange(good, 2))
    # The proof made for channel 2, shown on channel 3 of the same link.
    out["other_channel"] = verdict(first.exchange(good, 3))
    # A proof made for channel 5, shown on channel 4.
    out["signed_for_another_channel"] = verdict(first.exchange(hello(first, first.binding(5), "c4"), 4))
    # Another hop chain than the session's, correctly signed.
    out["other_hops"] = verdict(first.exchange(
        hello(first, first.binding(6), "hops", ("c.lan.test",)), 6))
    second = Link(address, port)
    # Channel 7's proof of the first link, shown on channel 1 of another link.
    out["other_link_replayed"] = verdict(second.exchange(hello(first, first.binding(7), "rl"), 1))
    # A proof made for the other link itself: still not that link's session.
    out["other_link_signed"] = verdict(second.exchange(hello(second, second.binding(2), "sl"), 2))
    out["still_good"] = verdict(first.exchange(hello(first, first.binding(8), "good2"), 8))
    first.conn.shutdown()
    first.conn.sock_shutdown(2)
    time.sleep(1)
    third = Link(address, port)
    out["after_link_closed"] = verdict(third.exchange(hello(third, third.binding(1), "gone"), 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
