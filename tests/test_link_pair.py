"""A dialling and a receiving link joined by ``iosim`` (twisted's in-memory connection
pump): the channel and link lifecycles end to end, both sides at once, without sockets.

The TLS layer is stood in for by the transport (it answers the exporter query), so what
is tested is the frames and the two state machines, not OpenSSL; the same lifecycles
over real TLS and TCP are in ``test_links_loopback.py`` and ``test_routing.py``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.python.failure import Failure

from nipc import channel_state, link_state, wire
from nipc.channel import Channel
from nipc.link import ClientLink, ServerLink
from test_splice_unit import HELLO, FakeEnd, RecordingSplice

C, L = channel_state.State, link_state.State


class TLSLike(FakeTransport):
    """An iosim transport that answers the TLS exporter query, as a TLS transport does."""

    def getHandle(self) -> "TLSLike":
        return self

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        return b"K" * length


class Pair:
    """A ClientLink and a ServerLink past TLS, joined by a pump; the server answers every
    HELLO with OK and splices the channel to a FakeEnd."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.client = ClientLink(self.clock, lambda _: None)
        self.server = ServerLink(self.clock, lambda _: None, self, self, 10.0)  # type: ignore[arg-type]
        self.pump: IOPump = connect(self.server, TLSLike(self.server, isServer=True),
                                    self.client, TLSLike(self.client, isServer=False),
                                    clock=self.clock)
        self.client.handshakeCompleted()
        self.server.handshakeCompleted()
        self.accepted: list[tuple[Channel, FakeEnd]] = []

    def settled(self) -> None:
        """The link admission's part: it takes every link and channel."""

    def channel(self) -> Callable[[], None]:
        return lambda: None

    def hello(self, channel: Channel, binding: bytes, hello: wire.Hello) -> None:
        """The inbound handler's part: OK, spliced to a FakeEnd."""
        channel.authenticated()
        channel.answer(wire.Result("OK"))
        end = FakeEnd()
        RecordingSplice(channel, end)
        self.accepted.append((channel, end))

    def open(self) -> tuple[Channel, FakeEnd, Channel, FakeEnd]:
        """A routed connection: the dialler's channel and end, the receiver's."""
        channel = self.client.open()
        answers: list[Any] = []
        channel.exchange(HELLO).addCallback(answers.append)
        self.pump.flush()
        assert answers and answers[0].ok and channel.state is C.HELD
        end = FakeEnd()
        RecordingSplice(channel, end)
        far, far_end = self.accepted[-1]
        return channel, end, far, far_end


def test_a_connection_half_closes_each_way_then_closes_on_both_sides() -> None:
    pair = Pair()
    near, near_end, far, far_end = pair.open()
    assert near.state is C.SPLICED and far.state is C.SPLICED
    assert pair.server.state is L.AUTHENTICATED and pair.client.state is L.READY

    assert near.splice is not None and far.splice is not None
    near.splice.data(near_end, b"ping")  # what the caller's end reads goes through
    pair.pump.flush()
    assert far_end.got == [b"ping"]

    near.splice.eof(near_end)  # the caller's shutdown(SHUT_WR)
    pair.pump.flush()
    assert near.state is C.OUT_SHUT and far.state is C.IN_SHUT and far_end.eof

    far.splice.data(far_end, b"pong")
    far.splice.eof(far_end)  # the destination answers, then shuts down too: both close
    pair.pump.flush()
    assert near_end.got == [b"pong"]
    assert near.state is C.CLOSED and far.state is C.CLOSED
    assert near_end.closed and far_end.closed
    assert pair.client.channels == {} and pair.server.channels == {}
    assert pair.client.state is L.READY and pair.server.state is L.AUTHENTICATED


def test_an_abort_on_one_side_ends_the_other() -> None:
    pair = Pair()
    near, near_end, far, far_end = pair.open()
    far.abort()
    pair.pump.flush()
    assert far.state is C.CLOSED and near.state is C.CLOSED
    assert near_end.closed and pair.client.channels == {}


def test_closing_a_link_ends_both_links_and_their_channels() -> None:
    pair = Pair()
    near, near_end, far, far_end = pair.open()
    ended: list[str] = []
    pair.client.when_ended().addCallback(lambda _: ended.append("client"))
    pair.server.when_ended().addCallback(lambda _: ended.append("server"))
    pair.client.close()
    assert pair.client.state is L.CLOSING
    pair.pump.flush()
    assert pair.client.state is L.CLOSED and pair.server.state is L.CLOSED
    assert near.state is C.CLOSED and far.state is C.CLOSED
    assert near_end.closed and far_end.closed
    assert sorted(ended) == ["client", "server"]


def test_a_refused_channel_leaves_the_link_up() -> None:
    pair = Pair()

    def refuse(channel: Channel, binding: bytes, hello: wire.Hello) -> None:
        channel.answer(wire.Result("EACCES", "not you"))

    pair.hello = refuse  # type: ignore[method-assign]
    channel = pair.client.open()
    answers: list[wire.Result] = []
    channel.exchange(HELLO).addCallback(answers.append)
    pair.pump.flush()
    assert answers[0].errno_name == "EACCES" and channel.state is C.CLOSED
    assert pair.client.state is L.READY and pair.server.state is L.READY
    assert pair.client.channels == {} and pair.server.channels == {}


def test_a_violation_ends_the_link_with_every_channel() -> None:
    pair = Pair()
    near, near_end, far, far_end = pair.open()
    near.link.write(wire.frame(wire.Kind.EOF, near.number) * 2)  # EOF twice: illegal
    pair.pump.flush()
    assert pair.server.state is L.CLOSED and pair.client.state is L.CLOSED
    assert far.state is C.CLOSED and near.state is C.CLOSED
    reason = pair.server.lost_reason
    assert isinstance(reason, Failure)
