"""The receiving side's handler without a KDC, NSS or sockets: a ServerLink on a
StringTransport hands it HELLOs; a fake IAcceptor, IProjection and IDestinationConnector
stand for the keytab, the account mapping and the impersonated connect; the registry,
limits and connection records are the real ones. What only root-only integration tests
covered: the order (route checks, count, validate, register, connect, answer), the
RESULT for each outcome (with the AP-REP whenever the ticket was accepted), and what a
refusal or an end gives back."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.admission import STOPPING, PeerAdmission
from nipc.channel import Channel
from nipc.config import from_mapping
from nipc.connections import Connections
from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.inbound import VALIDATION_SHARE, Inbound
from nipc.interfaces import IAcceptor, IDestinationConnector, IProjection
from nipc.kerberos import Accepted
from nipc.limits import Limits
from nipc.link import ServerLink
from nipc.registry import Registry
from nipc.stuck import StuckConnects
from test_channels_unit import Server
from test_connections_unit import Recorder
from test_router_unit import Reactor
from test_splice_unit import HELLO, TLSTransport, frames

ALICE = LocalIdentity("alice", 1000, 1000, (1000,))


@implementer(IAcceptor)
class Acceptor:
    """Accepts the token ``t`` as alice's; anything else is refused as the keytab would."""

    def __init__(self) -> None:
        self.bindings: list[bytes] = []

    def warm(self) -> None:
        pass

    def accept(self, token: bytes, channel: bytes) -> Accepted:
        self.bindings.append(channel)
        if token != b"t":
            raise NipcError("EKEYREJECTED", "ticket bound to another TLS session")
        return Accepted("alice@T", b"ap-rep", None, None)


@implementer(IProjection)
class Projection:
    def project(self, principal: str) -> LocalIdentity:
        if principal != "alice@T":
            raise NipcError("EPERM", f"{principal} maps to no local account on this host")
        return ALICE


@implementer(IStreamClientEndpoint)
class Endpoint:
    def __init__(self, error: NipcError | None, later: "Deferred[None] | None" = None) -> None:
        self._error = error
        #: Connects once this fires (a connect still under way), if given.
        self._later = later
        self.transport = StringTransport()
        self.protocol: Any = None

    def connect(self, factory: IProtocolFactory) -> "Deferred[IProtocol]":
        if self._error is not None:
            return fail(self._error)
        if self._later is not None:
            later, self._later = self._later, None
            return later.addCallback(lambda _: self.connect(factory))
        self.protocol = protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(self.transport)
        return succeed(protocol)


@implementer(IDestinationConnector)
class Connector:
    """Connects at once (or fails with ``error``); notes who connected where."""

    def __init__(self, error: NipcError | None = None, later: bool = False) -> None:
        self.error = error
        self.asked: list[tuple[LocalIdentity, str, str]] = []
        self.endpoints: list[Endpoint] = []
        #: With ``later``: each connect completes when its Deferred here fires.
        self.pending: list[Deferred[None]] | None = [] if later else None

    def endpoint(self, who: LocalIdentity, path: str, conn_id: str) -> IStreamClientEndpoint:
        self.asked.append((who, path, conn_id))
        later: Deferred[None] | None = None
        if self.pending is not None:
            later = Deferred()
            self.pending.append(later)
        self.endpoints.append(Endpoint(self.error, later))
        return self.endpoints[-1]


class Daemon:
    """The receiving daemon b.test with its fakes, and one link a peer opened to it."""

    def __init__(self, connector: Connector | None = None, peers: bool = False,
                 projection: IProjection | None = None, **limits: int) -> None:
        self.reactor = Reactor()
        self.config = from_mapping({"host": {"name": "b.test", "realm": "T"},
                                    "kerberos": {"keytab": "/k", "principal": "p@T"},
                                    "limits": limits})
        self.acceptor = Acceptor()
        self.connector = connector or Connector()
        self.registry = Registry()
        self.limits = Limits(self.config.limits, self.config.host, self.reactor.seconds)
        self.sink = Recorder()
        self.live = Connections(sinks=[self.sink])  # type: ignore[list-item]
        #: The daemon's admission of peers (closed when it stops), if the test wants one.
        self.peers = PeerAdmission(self.limits) if peers else None
        self.stuck = StuckConnects(self.reactor, self.config.limits)
        self.inbound = Inbound(self.reactor, self.config.host, self.config.peer, self.acceptor, projection or Projection(),  # type: ignore[arg-type]
                               self.registry, self.live, self.limits, self.connector,
                               peers=self.peers, stuck=self.stuck, timeouts=self.config.timeouts)
        self.server = Server()

    def hello(self, hello: wire.Hello = HELLO, number: int = 1) -> Channel:
        """The peer's HELLO arrives on the link and is handed to the handler."""
        self.server.link.dataReceived(wire.encode(hello, number))
        channel, binding, got = self.server.hellos[-1]
        self.inbound.hello(channel, binding, got)
        return channel

    def results(self) -> list[wire.Result]:
        transport = self.server.transport
        assert isinstance(transport, TLSTransport)
        found = [wire.decode(k, p) for k, _, p in frames(transport) if k == wire.Kind.RESULT]
        return [r for r in found if isinstance(r, wire.Result)]


def test_an_accepted_ticket_connects_as_its_principals_account_and_answers_ok() -> None:
    daemon = Daemon()
    channel = daemon.hello()
    assert daemon.limits.inbound == 1 and daemon.results() == []
    daemon.reactor.from_threads()  # the ticket validated and projected on its own thread
    assert daemon.acceptor.bindings == [wire.binding(TLSTransport.EXPORTER, 1)]
    ((who, path, conn_id),) = daemon.connector.asked
    assert (who, path) == (ALICE, "/run/s.sock")
    (result,) = daemon.results()
    assert result.ok and result.token == b"ap-rep" and result.info == {"conn_id": conn_id}
    assert len(daemon.registry) == 1
    (connection,) = daemon.live
    facts = connection.facts
    assert (facts["conn_id"], facts["principal"], facts["user"], facts["uid"]) == (
        conn_id, "alice@T", "alice", 1000)
    assert (facts["origin_conn_id"], facts["hops"], facts["direction"]) == (
        "c1", ["a.test"], "incoming")
    assert daemon.server.link.proven  # a channel passed Kerberos: the link is no longer pending
    # The end: both sides go; the count, the registration and the record are given back.
    end = daemon.connector.endpoints[0].protocol
    daemon.server.link.dataReceived(wire.frame(wire.Kind.CLOSE, channel.number))
    end.connectionLost(Failure(ConnectionError("server closed")))
    assert len(daemon.live) == 0 and len(daemon.registry) == 0 and daemon.limits.inbound == 0
    assert [line["result"] for line in daemon.sink.lines] == ["routed"]


def test_a_refused_ticket_is_refused_without_a_token_and_gives_back_its_count() -> None:
    daemon = Daemon()
    daemon.hello(wire.Hello("/run/s.sock", "b.test", ("a.test",), b"forged", "c1"))
    daemon.reactor.from_threads()
    (result,) = daemon.results()
    assert result.errno_name == "EKEYREJECTED" and result.token == b""
    assert not daemon.connector.asked and len(daemon.registry) == 0
    assert daemon.limits.inbound == 0 and len(daemon.live) == 0
    (line,) = daemon.sink.lines
    assert (line["result"], line["errno"]) == ("refused", "EKEYREJECTED")
    assert not daemon.server.link.proven


@pytest.mark.parametrize("hello,errno", [
    (wire.Hello("/s", "c.test", ("a.test",), b"t", "c1"), "EHOSTUNREACH"),
    (wire.Hello("/s", "b.test", ("a.test", "b.test"), b"t", "c1"), "ELOOP"),
    (wire.Hello("/s", "b.test", tuple(f"h{n}.test" for n in range(20)), b"t", "c1"), "ELOOP"),
], ids=["another host", "a loop", "too many hops"])
def test_a_bad_route_is_refused_before_any_kerberos(hello: wire.Hello, errno: str) -> None:
    daemon = Daemon()
    daemon.hello(hello)
    (result,) = daemon.results()  # at once: no thread was started
    assert result.errno_name == errno and not daemon.acceptor.bindings
    assert daemon.limits.inbound == 0


def test_over_the_inbound_limit_is_eagain() -> None:
    daemon = Daemon(max_inbound=1)
    daemon.hello(number=1)
    daemon.hello(number=2)
    assert [r.errno_name for r in daemon.results()] == ["EAGAIN"]
    assert daemon.limits.inbound == 1


def test_a_failed_connect_is_refused_with_the_ap_rep_and_unregistered() -> None:
    """The peer proved itself to the caller's daemon even though the destination is not
    there: the refusal carries the AP-REP, and nothing stays registered."""
    daemon = Daemon(Connector(NipcError("ENOENT", "no such socket")))
    daemon.hello()
    daemon.reactor.from_threads()
    (result,) = daemon.results()
    assert (result.errno_name, result.token) == ("ENOENT", b"ap-rep")
    assert len(daemon.registry) == 0 and daemon.limits.inbound == 0
    assert daemon.sink.lines[0]["principal"] == "alice@T"


def test_a_channel_closed_before_the_connection_was_made_is_econnreset() -> None:
    daemon = Daemon()
    channel = daemon.hello()
    daemon.server.link.dataReceived(wire.frame(wire.Kind.CLOSE, channel.number))  # gave up
    assert channel.closed
    daemon.reactor.from_threads()
    assert daemon.connector.endpoints[0].transport.disconnecting  # the end is closed
    assert [line["errno"] for line in daemon.sink.lines] == ["ECONNRESET"]
    assert len(daemon.registry) == 0 and daemon.limits.inbound == 0 and len(daemon.live) == 0


@pytest.mark.parametrize("during", ["validation", "connect"])
def test_a_daemon_that_began_stopping_during_the_handshake_sends_no_ok(during: str) -> None:
    """The HELLO came before the daemon began stopping; its ticket was validated (or its
    connect made) after: no OK, whose splice would end with the process a moment later
    (the caller saw OK, then EOF), but a refusal saying the daemon stops, which the
    sender retries on a new link; nothing stays connected, counted or registered."""
    connector = Connector(later=during == "connect")
    daemon = Daemon(connector, peers=True)
    daemon.hello()
    assert daemon.peers is not None
    if during == "connect":
        daemon.reactor.from_threads()
        assert connector.pending is not None
        (pending,) = connector.pending
        daemon.peers.close()
        pending.callback(None)
        assert connector.endpoints[0].transport.disconnecting  # the end is closed at once
    else:
        daemon.peers.close()
        daemon.reactor.from_threads()
        assert not connector.asked
    (result,) = daemon.results()
    assert (result.errno_name, result.info, result.token) == (
        "EHOSTUNREACH", {STOPPING: True}, b"ap-rep")
    assert daemon.limits.inbound == 0 and len(daemon.registry) == 0 and len(daemon.live) == 0
    assert [line["errno"] for line in daemon.sink.lines] == ["EHOSTUNREACH"]


def test_a_hello_on_a_link_accepted_before_the_daemon_began_stopping_is_refused() -> None:
    """A peer reuses a link it holds to a daemon that is stopping: the HELLO is refused at
    once, saying so (not as an overload), and no handshake starts."""
    daemon = Daemon(peers=True)
    assert daemon.peers is not None
    link = ServerLink(daemon.reactor, lambda transport: None, daemon.inbound,
                      daemon.peers.link("192.0.2.1"), 10.0)
    link.makeConnection(TLSTransport())  # type: ignore[no-untyped-call]
    link.handshakeCompleted()
    daemon.peers.close()
    link.dataReceived(wire.encode(HELLO, 1))
    assert isinstance(link.transport, TLSTransport)
    (result,) = [wire.decode(k, p) for k, _, p in frames(link.transport) if k == wire.Kind.RESULT]
    assert isinstance(result, wire.Result)
    assert (result.errno_name, result.info) == ("EHOSTUNREACH", {STOPPING: True})
    assert daemon.limits.inbound == 0 and not daemon.acceptor.bindings


class Hung(Projection):
    """An account lookup that hangs (sssd or LDAP not answering) until ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def project(self, principal: str) -> LocalIdentity:
        self.entered.set()
        assert self.release.wait(30.0)
        return super().project(principal)


def test_a_validation_that_hangs_is_etimedout_naming_the_principal_and_frees_its_slot() -> None:
    """At its share of ``[timeouts] handshake`` the caller is told what hung, the inbound slot is given
    back, the thread is counted as stuck (and counts against max_stuck) until it returns,
    and what it returns then is dropped: no registration, no connect, no second answer."""
    hung = Hung()
    daemon = Daemon(projection=hung, max_stuck=1)
    daemon.hello()
    assert daemon.limits.inbound == 1 and hung.entered.wait(30.0)
    daemon.reactor.advance(daemon.config.timeouts.handshake * VALIDATION_SHARE - 0.5)
    assert daemon.results() == [] and daemon.limits.inbound == 1
    daemon.reactor.advance(1.0)
    (result,) = daemon.results()
    assert result.errno_name == "ETIMEDOUT" and "validating/projecting alice@T on b.test" in result.message
    assert daemon.limits.inbound == 0 and len(daemon.live) == 0 and len(daemon.stuck) == 1
    assert "validating/projecting alice@T" in daemon.stuck.summary()
    # At max_stuck, the next HELLO is refused before a thread starts.
    daemon.hello(number=2)
    assert daemon.results()[-1].errno_name == "EAGAIN" and daemon.limits.inbound == 0
    hung.release.set()
    daemon.reactor.from_threads()  # the late admission arrives
    assert len(daemon.stuck) == 0 and daemon.connector.asked == []
    assert len(daemon.registry) == 0 and len(daemon.results()) == 2
    assert [line["result"] for line in daemon.sink.lines] == ["refused", "refused"]
