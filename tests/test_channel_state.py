"""The channel's lifecycle table (``nipc.channel_state``) and a Channel driven through
every (state, event) pair with its public calls, on a StringTransport.

Every pair is either a transition of the table, which the channel takes, or illegal:
``Illegal`` (EPROTO) is raised and the state does not change.
"""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from nipc import wire
from nipc.channel import WINDOW, Channel
from nipc.channel_state import HOLDING, PEER_SENDS, TABLE, Do, Event, State, step
from nipc.errors import NipcError
from nipc.machine import Illegal
from nipc.link import ClientLink
from test_splice_unit import HELLO, connected_client, frames

K = wire.Kind
S, E = State, Event




def test_one_way_to_end() -> None:
    """Every open state can be aborted and lose its link; a channel enters CLOSED only
    through an ending action, and nothing leaves CLOSED."""
    for state in State:
        if state is not S.CLOSED:
            assert TABLE[state, E.ABORT] == (S.CLOSED, Do.END_AND_TELL)
            assert TABLE[state, E.LINK_LOST] == (S.CLOSED, Do.END)
    for (state, _), (after, do) in TABLE.items():
        if state is S.CLOSED:
            assert after is S.CLOSED and do in (Do.NOTHING, Do.REPORT_LOST)
        elif after is S.CLOSED:
            assert do in (Do.END, Do.END_AND_TELL)
        else:
            assert do not in (Do.END, Do.END_AND_TELL)




def test_frames_are_held_exactly_until_the_splice_starts() -> None:
    assert HOLDING == {s for s in State if (s, E.START) in TABLE and s is not S.CLOSED} | {S.OPENING}
    assert all(TABLE[s, E.PEER_EOF][1] is Do.HOLD for s in HOLDING)
    # the peer may send DATA until its EOF; never once it is half-closed or gone
    assert {S.IN_SHUT, S.BOTH_SHUT, S.CLOSING_IN_SHUT, S.CLOSED}.isdisjoint(PEER_SENDS)


# ------------------------------------------------------- a Channel in every state


class Splice:
    """Records what a splice is told by the channel it joins."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.eofs = 0
        self.losses: list[Failure] = []

    def data(self, end: object, data: bytes) -> None:
        self.got.append(data)

    def eof(self, end: object) -> None:
        self.eofs += 1

    def lost(self, end: object, reason: Failure) -> None:
        self.losses.append(reason)


def attach(channel: Channel) -> Splice:
    splice = Splice()
    channel.splice = splice  # type: ignore[assignment]
    return splice


def opening() -> tuple[Channel, StringTransport]:
    link, transport, _ = connected_client()
    channel = link.open()
    channel.exchange(HELLO).addErrback(lambda _: None)
    return channel, transport


def held() -> tuple[Channel, StringTransport]:
    channel, transport = opening()
    channel.link.dataReceived(wire.encode(wire.Result("OK"), channel.number))
    attach(channel)
    return channel, transport


def started(channel: Channel, transport: StringTransport) -> tuple[Channel, StringTransport]:
    channel.start()
    return channel, transport


def queued(channel: Channel, transport: StringTransport) -> tuple[Channel, StringTransport]:
    """Bytes waiting for credit, then close: CLOSING until the peer grants room."""
    channel.send(b"x" * (WINDOW + 1))
    channel.close()
    return channel, transport


def peer_eof(channel: Channel, transport: StringTransport) -> tuple[Channel, StringTransport]:
    channel.received(K.EOF, b"")
    return channel, transport


def our_eof(channel: Channel, transport: StringTransport) -> tuple[Channel, StringTransport]:
    channel.send_eof()
    return channel, transport


IN_STATE: dict[State, Callable[[], tuple[Channel, StringTransport]]] = {
    S.OPENING: opening,
    S.HELD: held,
    S.HELD_OUT_SHUT: lambda: our_eof(*held()),
    S.SPLICED: lambda: started(*held()),
    S.IN_SHUT: lambda: peer_eof(*started(*held())),
    S.OUT_SHUT: lambda: our_eof(*started(*held())),
    S.BOTH_SHUT: lambda: peer_eof(*our_eof(*started(*held()))),
    S.CLOSING: lambda: queued(*started(*held())),
    S.CLOSING_IN_SHUT: lambda: queued(*peer_eof(*started(*held()))),
    S.CLOSED: lambda: aborted(*held()),
}


def aborted(channel: Channel, transport: StringTransport) -> tuple[Channel, StringTransport]:
    channel.abort()
    return channel, transport


def test_each_state_is_where_its_calls_lead() -> None:
    for state, make in IN_STATE.items():
        assert make()[0].state is state


FIRE: dict[Event, Callable[[Channel], None]] = {
    E.ANSWERED: lambda c: c.answer(wire.Result("OK")),
    E.REFUSED: lambda c: c.answer(wire.Result("EACCES", "no")),
    E.START: lambda c: c.start(),
    E.PEER_EOF: lambda c: c.received(K.EOF, b""),
    E.PEER_CLOSE: lambda c: c.received(K.CLOSE, b""),
    E.LOCAL_EOF: lambda c: c.send_eof(),
    E.LOCAL_CLOSE: lambda c: c.close(),
    E.DRAINED: lambda c: c.received(K.CREDIT, wire.CREDIT.pack(WINDOW)),
    E.ABORT: lambda c: c.abort(),
    E.LINK_LOST: lambda c: c.link_lost(Failure(ConnectionLost())),
}


@pytest.mark.parametrize("state,event", list(itertools.product(State, Event)),
                         ids=lambda v: v.name)
def test_channel_takes_the_table_transition_or_refuses(state: State, event: Event) -> None:
    """Each event, fed through the channel's own method, leads where the table says; an
    illegal one raises (EPROTO) and leaves the channel as it was. Ending tells the peer
    (one CLOSE frame) exactly when the table says so."""
    channel, transport = IN_STATE[state]()
    transport.clear()
    if event is E.DRAINED and state not in (S.CLOSING, S.CLOSING_IN_SHUT):
        # not an outside call: credit elsewhere only flushes; the table refuses it
        with pytest.raises(Illegal):
            step(state, event)
        return
    if (state, event) not in TABLE:
        with pytest.raises(NipcError) as raised:
            FIRE[event](channel)
        assert raised.value.errno_name == "EPROTO"
        assert channel.state is state
        assert transport.value() == b""  # nothing sent for an illegal event
        return
    after, do = TABLE[state, event]
    if do is Do.FLUSH:  # nothing is queued in these states: drained at once
        after, do = TABLE[after, E.DRAINED]
    FIRE[event](channel)
    assert channel.state is after
    closes = [f for f in frames(transport) if f[0] == K.CLOSE]
    assert len(closes) == (1 if do is Do.END_AND_TELL else 0)
    if after is S.CLOSED:
        assert channel.number not in channel.link.channels


# --------------------------------------------------------- what the actions do


def test_held_frames_reach_the_splice_in_order_when_it_starts() -> None:
    channel, _ = held()
    splice = channel.splice
    channel.link.dataReceived(wire.data_header(channel.number, 3) + b"abc"
                              + wire.frame(K.EOF, channel.number)
                              + wire.frame(K.CLOSE, channel.number))
    assert channel.state is S.HELD and splice.got == []  # type: ignore[union-attr]
    channel.start()
    assert splice.got == [b"abc"] and splice.eofs == 1  # type: ignore[union-attr]
    assert channel.state is S.CLOSED and len(splice.losses) == 1  # type: ignore[union-attr]


def test_a_frame_after_a_held_eof_ends_the_link() -> None:
    channel, transport = held()
    channel.link.dataReceived(wire.frame(K.EOF, channel.number) + wire.data_header(channel.number, 1) + b"x")
    assert transport.disconnected  # type: ignore[attr-defined]


def test_a_channel_ended_before_its_splice_started_reports_the_loss_at_start() -> None:
    channel, _ = held()
    channel.link_lost(Failure(ConnectionLost()))
    splice = channel.splice
    assert splice.losses == []  # type: ignore[union-attr]
    channel.start()
    assert len(splice.losses) == 1 and splice.losses[0].check(ConnectionLost)  # type: ignore[union-attr]
    with pytest.raises(AssertionError):
        channel.start()  # once only


def test_close_waits_for_what_is_queued() -> None:
    channel, transport = queued(*started(*held()))
    transport.clear()
    assert channel.state is S.CLOSING
    channel.received(K.CREDIT, wire.CREDIT.pack(1))
    kinds = [f[0] for f in frames(transport)]
    assert kinds == [K.DATA, K.CLOSE] and channel.state is S.CLOSED


def test_our_eof_waits_for_what_is_queued() -> None:
    channel, transport = started(*held())
    channel.send(b"x" * (WINDOW + 1))
    channel.send_eof()
    transport.clear()
    assert channel.state is S.OUT_SHUT and frames(transport) == []
    channel.received(K.CREDIT, wire.CREDIT.pack(1))
    assert [f[0] for f in frames(transport)] == [K.DATA, K.EOF]


def test_a_refusal_fails_nothing_else() -> None:
    """A refused handshake ends the channel silently: no CLOSE (the peer knows), the
    Deferred gets the RESULT, not an error."""
    link, transport, _ = connected_client()
    channel = link.open()
    results: list[wire.Result] = []
    channel.exchange(HELLO).addCallback(results.append)
    transport.clear()
    link.dataReceived(wire.encode(wire.Result("EACCES", "no"), channel.number))
    assert channel.state is S.CLOSED and results[0].errno_name == "EACCES"
    assert frames(transport) == [] and channel.number not in link.channels


def test_a_second_answer_is_refused_before_anything_is_sent() -> None:
    channel, transport = held()
    transport.clear()
    with pytest.raises(Illegal):
        channel.answer(wire.Result("OK"))
    assert transport.value() == b"" and channel.state is S.HELD


def test_the_link_lost_mid_handshake_fails_the_exchange() -> None:
    link: ClientLink
    link, _, _ = connected_client()
    channel = link.open()
    errors: list[Failure] = []
    channel.exchange(HELLO).addErrback(errors.append)
    link.connectionLost(Failure(ConnectionLost()))
    assert channel.state is S.CLOSED and errors[0].value.errno_name == "EHOSTUNREACH"
