"""The local gate's lifecycle table (``nipc.gate_state``) and a LocalGate driven through
its transitions with its public calls, on a StringTransport (over a socketpair, for
``SO_PEERCRED``) and a MemoryReactorClock.

Every pair is either a transition of the table, which the gate takes, or illegal:
``Illegal`` (EPROTO) is raised and the state does not change.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterator

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from nipc.config import from_mapping
from nipc.connections import Connections
from nipc.errors import NipcError
from nipc.gate import GateServices, LocalGate
from nipc.gate_state import TABLE, Do, Event, State
from nipc.machine import Illegal
from nipc.splice import End
from test_splice_unit import FakeEnd

S, E = State, Event
CONFIG: dict[str, Any] = {"host": {"name": "a.test", "realm": "T"},
                          "kerberos": {"keytab": "/k", "principal": "p@T"}}




def test_done_is_the_end_and_every_state_reaches_it() -> None:
    for (state, _), (after, _) in TABLE.items():
        if state is S.DONE:
            assert after is S.DONE
    for state in State:
        assert TABLE[state, E.LOST][0] is S.DONE
    # once done, a late answer from the router is dropped, not spliced
    assert TABLE[S.DONE, E.ROUTED] == (S.DONE, Do.DISCARD)


# ------------------------------------------------------------ a LocalGate


class Router:
    def __init__(self) -> None:
        self.routing: list[Deferred[End]] = []

    def is_local(self, host: str) -> bool:
        return False

    def route(self, *args: Any) -> "Deferred[End]":
        d: Deferred[End] = Deferred()
        self.routing.append(d)
        return d


class Registry:
    def remove(self, conn_id: str) -> None:
        pass

    def for_fd(self, fd: int) -> None:
        return None

    def delegations_for(self, uid: int, accounts: frozenset[int] = frozenset()) -> dict[str, Any]:
        return {}


class Limits:
    def admit(self, uid: int) -> None:
        pass

    def release(self, uid: int) -> None:
        pass

    def handshake(self, uid: int) -> None:
        pass


class UnixTransport(StringTransport):
    """A StringTransport whose handle is a real AF_UNIX socket (the gate asks the kernel
    who is calling), and that can be half-closed."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._sock = sock
        self.bufferSize = 0

    def getHandle(self) -> socket.socket:
        return self._sock


@pytest.fixture
def make() -> Iterator[Callable[[], tuple[LocalGate, UnixTransport, Router]]]:
    socks: list[socket.socket] = []

    def build() -> tuple[LocalGate, UnixTransport, Router]:
        near, far = socket.socketpair(socket.AF_UNIX)
        socks.extend((near, far))
        clock = MemoryReactorClock()
        router = Router()
        config = from_mapping(CONFIG)
        services = GateServices(clock, config.timeouts, config.peer, router,  # type: ignore[arg-type]
                                Registry(), Limits(), Connections(clock.seconds))
        gate = LocalGate(services)
        transport = UnixTransport(near)
        gate.makeConnection(transport)
        return gate, transport, router

    yield build
    for s in socks:
        s.close()


def request(gate: LocalGate, then: State = S.ROUTING) -> None:
    """CONNECT; then, for ROUTING_EOF, the client's EOF."""
    gate.dataReceived(b"CONNECT /run/x.sock@b.test\n")
    if then is S.ROUTING_EOF:
        gate.readConnectionLost()


def routed(router: Router) -> FakeEnd:
    end = FakeEnd()
    router.routing[-1].callback(end)
    return end


def test_request_routing_spliced_done(make: Callable[[], tuple[LocalGate, UnixTransport, Router]]) -> None:
    gate, transport, router = make()
    assert gate.state is S.REQUEST
    request(gate)
    assert gate.state is S.ROUTING
    gate.dataReceived(b"early")
    end = routed(router)
    assert gate.state is S.SPLICED and transport.value() == b"OK\n" and end.got == [b"early"]
    gate.readConnectionLost()
    assert gate.state is S.SPLICED and end.eof
    gate.connectionLost(Failure(ConnectionLost()))
    assert gate.state is S.DONE and end.closed


def test_the_clients_eof_while_routing_follows_its_bytes(
        make: Callable[[], tuple[LocalGate, UnixTransport, Router]]) -> None:
    gate, _, router = make()
    request(gate)
    gate.dataReceived(b"all of it")
    gate.readConnectionLost()
    assert gate.state is S.ROUTING_EOF
    with pytest.raises(Illegal):
        gate.readConnectionLost()  # one EOF only
    assert gate.state is S.ROUTING_EOF
    end = routed(router)
    assert gate.state is S.SPLICED and end.got == [b"all of it"] and end.eof


@pytest.mark.parametrize("before", [S.ROUTING, S.ROUTING_EOF])
def test_a_refusal_while_routing_is_told_and_ends(
        make: Callable[[], tuple[LocalGate, UnixTransport, Router]], before: State) -> None:
    gate, transport, router = make()
    request(gate, before)
    router.routing[-1].errback(Failure(NipcError("EACCES", "no")))
    assert gate.state is S.DONE and transport.value().startswith(b"ERR EACCES")
    assert transport.disconnecting


@pytest.mark.parametrize("before", [S.ROUTING, S.ROUTING_EOF])
def test_the_client_gone_while_routing_cancels_it(
        make: Callable[[], tuple[LocalGate, UnixTransport, Router]], before: State) -> None:
    gate, _, router = make()
    request(gate, before)
    routing = router.routing[-1]
    gate.connectionLost(Failure(ConnectionLost()))
    assert gate.state is S.DONE and routing.called  # cancelled


def test_a_route_that_ends_after_the_client_was_refused_is_dropped(
        make: Callable[[], tuple[LocalGate, UnixTransport, Router]]) -> None:
    gate, _, router = make()
    request(gate)
    gate.connectionLost(Failure(ConnectionLost()))
    end = FakeEnd()
    gate._routed(end)  # what the router's answer does when it comes anyway
    assert gate.state is S.DONE and end.closed


def test_an_incomplete_request_then_eof_is_refused(
        make: Callable[[], tuple[LocalGate, UnixTransport, Router]]) -> None:
    gate, transport, _ = make()
    gate.dataReceived(b"CONN")
    gate.readConnectionLost()
    assert gate.state is S.DONE and transport.value().startswith(b"ERR EINVAL")
    gate.readConnectionLost()  # after the end: nothing more
    gate.connectionLost(Failure(ConnectionLost()))
    assert gate.state is S.DONE


def test_a_bad_request_line_is_refused(make: Callable[[], tuple[LocalGate, UnixTransport, Router]]) -> None:
    gate, transport, _ = make()
    gate.dataReceived(b"HELLO\n")
    assert gate.state is S.DONE and transport.value().startswith(b"ERR EINVAL")
    gate.dataReceived(b"CONNECT /run/x.sock@b.test\n")  # ignored once done
    assert gate.state is S.DONE
