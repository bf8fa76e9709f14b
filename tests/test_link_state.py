"""The peer link's lifecycle table (``nipc.link_state``) and links driven through every
(state, event) pair with their public calls, on a StringTransport and a Clock.

Every pair is either a transition of the table, which the link takes, or illegal:
``Illegal`` (EPROTO) is raised and the state does not change.
"""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from nipc import wire
from nipc.errors import NipcError
from nipc.link import CLOSE_GRACE, ClientLink, Link, ServerLink
from nipc.link_state import READING, TABLE, Do, Event, State, step
from nipc.machine import Illegal
from test_splice_unit import HELLO, TLSTransport

S, E = State, Event




def test_a_link_ends_only_when_its_connection_is_lost() -> None:
    """close and abort only start the end (frames are ignored from then on); the end,
    channels and listeners told, is the connection lost, from every state but CLOSED."""
    for (state, event), (after, do) in TABLE.items():
        assert (do is Do.END) == (after is S.CLOSED and state is not S.CLOSED) == (event is E.LOST)
    for state in State:
        if state is not S.CLOSED:
            assert TABLE[state, E.ABORT] == (S.CLOSING, Do.ABORT)
            assert TABLE[state, E.LOST] == (S.CLOSED, Do.END)
    assert READING == {s for s in State if s not in (S.CLOSING, S.CLOSED)}


# ------------------------------------------------------------ links in every state


def client() -> tuple[Link, StringTransport]:
    link = ClientLink(Clock(), lambda transport: None)
    link.ready.addErrback(lambda _: None)
    transport = TLSTransport()
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    return link, transport


class Peer:
    """The inbound handler and link admission a receiving link is given: it takes all."""

    def hello(self, channel: object, binding: bytes, hello: wire.Hello) -> None:
        pass

    def settled(self) -> None:
        pass

    def channel(self) -> Callable[[], None]:
        return lambda: None


def server() -> tuple[Link, StringTransport]:
    peer = Peer()
    link = ServerLink(Clock(), lambda transport: None, peer, peer, 10.0)  # type: ignore[arg-type]
    transport = TLSTransport()
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    return link, transport


def ready(make: Callable[[], tuple[Link, StringTransport]]) -> tuple[Link, StringTransport]:
    link, transport = make()
    link.handshakeCompleted()
    return link, transport


def authenticated() -> tuple[Link, StringTransport]:
    link, transport = ready(server)
    link.authenticated()
    return link, transport


def retired() -> tuple[Link, StringTransport]:
    link, transport = ready(client)
    assert isinstance(link, ClientLink)
    link.open()  # a channel open: a retired link waits for it
    link.retire()
    return link, transport


def closing() -> tuple[Link, StringTransport]:
    """Closed before its TLS handshake completed (its handshake may still complete)."""
    link, transport = client()
    link.close()
    return link, transport


def closed() -> tuple[Link, StringTransport]:
    link, transport = ready(client)
    link.connectionLost(Failure(ConnectionLost()))
    return link, transport


IN_STATE: dict[State, Callable[[], tuple[Link, StringTransport]]] = {
    S.PENDING: client,
    S.READY: lambda: ready(client),
    S.AUTHENTICATED: authenticated,
    S.RETIRED: retired,
    S.CLOSING: closing,
    S.CLOSED: closed,
}


def retire(link: Link) -> None:
    if isinstance(link, ClientLink):
        link.retire()
    else:  # a receiving link has no retire(); the table still answers for it
        step(link.state, E.RETIRE)


FIRE: dict[Event, Callable[[Link], None]] = {
    E.TLS_DONE: lambda link: link.handshakeCompleted(),
    E.AUTHENTICATED: lambda link: link.authenticated(),
    E.RETIRE: retire,
    E.CLOSE: lambda link: link.close(),
    E.ABORT: lambda link: link.abort(),
    E.LOST: lambda link: link.connectionLost(Failure(ConnectionLost())),
}


def test_each_state_is_where_its_calls_lead() -> None:
    for state, make in IN_STATE.items():
        assert make()[0].state is state


@pytest.mark.parametrize("state,event", list(itertools.product(State, Event)),
                         ids=lambda v: v.name)
def test_link_takes_the_table_transition_or_refuses(state: State, event: Event) -> None:
    link, transport = IN_STATE[state]()
    if (state, event) not in TABLE:
        with pytest.raises(NipcError) as raised:
            FIRE[event](link)
        assert raised.value.errno_name == "EPROTO"
        assert link.state is state
        return
    after, do = TABLE[state, event]
    if do is Do.RETIRE and not link.channels:  # nothing open on it: closed at once
        after, do = TABLE[after, E.CLOSE]
    FIRE[event](link)
    assert link.state is after
    assert link.stopped == (after not in READING)
    if do is Do.SHUTDOWN:
        assert transport.disconnecting and not transport.disconnected  # type: ignore[attr-defined]
    if do is Do.ABORT:
        assert transport.disconnected  # type: ignore[attr-defined]
    if do is Do.END:
        assert link.channels == {}


# --------------------------------------------------------- what the actions do


def test_when_ended_fires_once_the_channels_ended() -> None:
    link, _ = ready(client)
    assert isinstance(link, ClientLink)
    channel = link.open()
    seen: list[bool] = []
    link.when_ended().addCallback(lambda _: seen.append(channel.closed))
    link.close()
    assert seen == []
    link.connectionLost(Failure(ConnectionLost()))
    assert seen == [True] and link.lost_reason is not None
    assert link.lost_reason.check(ConnectionLost)
    late: list[None] = []
    link.when_ended().addCallback(late.append)
    assert late == [None]


def test_a_closing_link_aborts_after_the_grace() -> None:
    clock = Clock()
    link = ClientLink(clock, lambda transport: None)
    transport = TLSTransport()
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    link.handshakeCompleted()
    link.close()
    assert transport.disconnecting and not transport.disconnected  # type: ignore[attr-defined]
    clock.advance(CLOSE_GRACE)
    assert transport.disconnected and link.state is S.CLOSING  # type: ignore[attr-defined]


def test_frames_are_ignored_once_closing() -> None:
    link, transport = ready(server)
    link.close()
    transport.clear()
    link.dataReceived(wire.frame(wire.Kind.PING, 0) + wire.encode(HELLO, 1))
    assert transport.value() == b"" and link.channels == {}


def test_a_receiving_link_is_proven_by_its_first_authenticated_channel() -> None:
    link, _ = ready(server)
    assert isinstance(link, ServerLink) and not link.proven
    link.authenticated()
    link.authenticated()
    assert link.proven and link.state is S.AUTHENTICATED


def test_a_dialled_link_retired_with_no_channel_closes() -> None:
    link, transport = ready(client)
    assert isinstance(link, ClientLink)
    gone: list[ClientLink] = []
    link.on_lost = gone.append
    link.retire()
    assert gone == [link] and link.state is S.CLOSING and transport.disconnecting  # type: ignore[attr-defined]
