"""The local gate without sockets: a StringTransport for the client, a fake IRouter whose
Deferreds the test fires, the real registry, limits and connection records, and a
MemoryReactorClock. What only root-only integration tests covered: the request line
routed in the caller's name, OK and the splice, bytes sent ahead of OK, each refusal (its
ERR line and its audit line), the request deadline, a caller who leaves while routing,
descriptors, and an import's gate."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import gate
from nipc.config import from_mapping
from nipc.connections import Connections
from nipc.errors import NipcError
from nipc.gate import MAX_EARLY, GateServices, LocalGate, LocalGateFactory, State
from nipc.identity import Caller
from nipc.interfaces import IRouter
from nipc.limits import Limits
from nipc.registry import Registry, Routed
from nipc.request import ConnectRequest
from nipc.splice import End, UnixEnd
from test_connections_unit import Recorder
from test_router_unit import Reactor

BASE: dict[str, Any] = {"host": {"name": "a.test", "realm": "T"},
                        "kerberos": {"keytab": "/k", "principal": "p@T"}}
ALICE = Caller(4242, 1000, 1000, (1000,))


@implementer(IRouter)
class Router:
    """Routes nothing by itself: each route's Deferred is the test's to fire."""

    def __init__(self) -> None:
        self.routes: list[tuple[ConnectRequest, Caller, str, Deferred[End]]] = []
        self.cancelled: list[str] = []

    def is_local(self, host: str) -> bool:
        return host in ("localhost", "a.test")

    def route(self, request: ConnectRequest, caller: Caller, conn_id: str,
              evidence: Routed | None = None,
              facts: dict[str, Any] | None = None) -> "Deferred[End]":
        d: Deferred[End] = Deferred(lambda _: self.cancelled.append(conn_id))
        self.routes.append((request, caller, conn_id, d))
        return d


class Daemon:
    """What one daemon's gates share, with fakes where the world would be."""

    def __init__(self, **limits: int) -> None:
        self.reactor = Reactor()
        self.config = from_mapping({**BASE, "limits": limits})
        self.router = Router()
        self.registry = Registry()
        self.limits = Limits(self.config.limits, self.config.host, self.reactor.seconds)
        self.sink = Recorder()
        self.live = Connections(sinks=[self.sink])  # type: ignore[list-item]
        self.services = GateServices(self.reactor, self.config.timeouts, self.config.peer, self.router,  # type: ignore[arg-type]
                                     self.registry, self.limits, self.live)

    def connect(self, target: ConnectRequest | None = None) -> tuple[LocalGate, StringTransport]:
        """A client connects to the gate (or to an import of ``target``)."""
        protocol = LocalGateFactory(self.services, target).buildProtocol(None)
        transport = StringTransport()
        transport.getHandle = lambda: None  # type: ignore[method-assign]
        protocol.makeConnection(transport)
        return protocol, transport

    def refusals(self) -> list[tuple[str, str]]:
        return [(line["errno"], line["reason"]) for line in self.sink.lines
                if line["result"] == "refused"]


@pytest.fixture(autouse=True)
def alice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every client is alice (SO_PEERCRED of a StringTransport: none)."""
    monkeypatch.setattr(gate, "caller_of", lambda handle: ALICE)
    yield


def target_end() -> tuple[UnixEnd, StringTransport]:
    end, transport = UnixEnd(), StringTransport()
    end.makeConnection(transport)
    return end, transport


def test_a_request_is_routed_in_the_callers_name_then_spliced() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    ((request, caller, conn_id, routing),) = daemon.router.routes
    assert (request, caller, conn_id) == (ConnectRequest("/run/s.sock", "b.test"), ALICE,
                                          protocol.conn_id)
    assert client.value() == b"" and protocol.state is State.ROUTING
    end, server = target_end()
    routing.callback(end)
    assert client.value() == b"OK\n" and protocol.state is State.SPLICED
    assert [c.conn_id for c in daemon.live] == [protocol.conn_id]
    assert daemon.sink.spliced == [protocol.conn_id]
    protocol.dataReceived(b"ping")
    end.dataReceived(b"pong")
    assert server.value() == b"ping" and client.value() == b"OK\npong"
    (connection,) = daemon.live
    assert connection.facts["uid"] == 1000 and connection.facts["direction"] == "outgoing"
    assert connection.facts["target"] == "/run/s.sock@b.test"
    assert daemon.limits.active == 1
    protocol.connectionLost(Failure(ConnectionError("client gone")))
    end.connectionLost(Failure(ConnectionError("server gone")))
    assert len(daemon.live) == 0 and daemon.limits.active == 0
    (line,) = daemon.sink.lines
    assert (line["result"], line["bytes_in"], line["bytes_out"]) == ("routed", 4, 4)


def test_bytes_sent_ahead_of_ok_are_delivered_after_the_splice() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\nearly ")
    protocol.dataReceived(b"bytes")
    end, server = target_end()
    daemon.router.routes[0][3].callback(end)
    assert server.value() == b"early bytes"


def test_reading_stops_beyond_the_bound_of_early_bytes() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    protocol.dataReceived(b"x" * MAX_EARLY)
    assert client.producerState == "producing"
    protocol.dataReceived(b"x")
    assert client.producerState == "paused"
    daemon.router.routes[0][3].callback(target_end()[0])
    assert client.producerState == "producing"


def test_a_refused_route_is_an_err_line_and_an_audit_line() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    daemon.router.routes[0][3].errback(NipcError("ENOENT", "no such socket"))
    assert client.value() == b"ERR ENOENT no such socket\n" and client.disconnecting
    assert daemon.refusals() == [("ENOENT", "no such socket")]
    assert len(daemon.live) == 0
    protocol.connectionLost(Failure(ConnectionError()))
    assert daemon.limits.active == 0


def test_an_internal_error_is_eproto_naming_the_connection() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    daemon.router.routes[0][3].errback(RuntimeError("bug"))
    assert client.value().startswith(b"ERR EPROTO internal error (logged as connection ")
    assert protocol.conn_id.encode() in client.value()


@pytest.mark.parametrize("line,errno", [(b"CONNECT\n", "EINVAL"),
                                        (b"GET / HTTP/1.0\n", "EINVAL"),
                                        (b"PEER\n", "EINVAL")])
def test_a_bad_request_is_refused(line: bytes, errno: str) -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(line)
    assert client.value().startswith(f"ERR {errno} ".encode()) and client.disconnecting
    assert not daemon.router.routes and [e for e, _ in daemon.refusals()] == [errno]


def test_no_request_line_in_time() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.so")
    daemon.reactor.advance(daemon.config.timeouts.request - 0.1)
    assert client.value() == b""
    daemon.reactor.advance(0.1)
    assert client.value().startswith(b"ERR ETIMEDOUT ") and client.disconnecting


def test_a_caller_over_its_limit_is_refused_at_once() -> None:
    daemon = Daemon(max_per_caller=1)
    daemon.connect()
    _, second = daemon.connect()
    assert second.value().startswith(b"ERR EAGAIN ") and second.disconnecting
    assert daemon.limits.active == 1


def test_a_caller_who_leaves_while_routing_cancels_the_route() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert daemon.router.cancelled == [protocol.conn_id]
    assert protocol.state is State.DONE and daemon.limits.active == 0


def test_an_end_made_after_the_caller_left_is_aborted() -> None:
    daemon = Daemon()
    protocol, _ = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    routing = daemon.router.routes[0][3]
    protocol.state = State.DONE  # as connectionLost leaves it, without the cancel
    end, server = target_end()
    routing.callback(end)
    assert server.disconnected and len(daemon.live) == 0


def test_a_descriptor_sent_while_routing_is_refused_and_closed() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    read, write = os.pipe()
    os.close(write)
    protocol.fileDescriptorReceived(read)
    with pytest.raises(OSError):
        os.fstat(read)
    assert daemon.router.cancelled == [protocol.conn_id]
    assert client.value().startswith(b"ERR EINVAL file descriptors cannot be passed")


def test_an_import_routes_at_once_and_refuses_with_a_reset() -> None:
    """An import's gate reads no request line and writes no reply: its target is fixed,
    and a refusal is a reset connection (the audit line says why)."""
    daemon = Daemon()
    target = ConnectRequest("/run/pg.sock", "b.test")
    protocol, client = daemon.connect(target)
    ((request, caller, _, routing),) = daemon.router.routes
    assert (request, caller) == (target, ALICE)
    routing.errback(NipcError("EACCES", "no"))
    assert client.value() == b"" and client.disconnected
    assert daemon.refusals() == [("EACCES", "no")]


def test_an_import_splices_without_ok() -> None:
    daemon = Daemon()
    protocol, client = daemon.connect(ConnectRequest("/run/pg.sock", "b.test"))
    protocol.dataReceived(b"early")
    end, server = target_end()
    daemon.router.routes[0][3].callback(end)
    assert client.value() == b"" and server.value() == b"early"
    assert protocol.state is State.SPLICED


def test_a_caller_who_left_is_neither_answered_nor_audited() -> None:
    """The route's cancellation, once the caller has gone, writes and audits nothing."""
    daemon = Daemon()
    protocol, client = daemon.connect()
    protocol.dataReceived(b"CONNECT /run/s.sock@b.test\n")
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert daemon.router.routes[0][3].called
    assert not daemon.sink.lines and client.value() == b""
