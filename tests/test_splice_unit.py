"""The splice and a peer link's channels, without sockets (StringTransport, Clock).

Also the helpers of ``test_channels_unit``: a spliceable fake end, a link connected to a
StringTransport that answers the TLS exporter query, and a frame reader.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from nipc import wire
from nipc.channel import Channel
from nipc.link import ClientLink
from nipc.splice import End, Splice

HELLO = wire.Hello("/run/s.sock", "b.test", ("a.test",), b"t", "c1")


class FakeEnd:
    """A splice end that records what it is given; its transport is a StringTransport,
    so the channel's pause and resume of it show in ``transport.producerState``."""

    splice: Splice | None = None

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.got: list[bytes] = []
        self.eof = False
        self.closed = False

    def start(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        self.got.append(data)

    def send_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class RecordingSplice(Splice):
    """A splice that records which ends it was told were lost."""

    def __init__(self, left: Channel, right: FakeEnd) -> None:
        self.lost_ends: list[End] = []
        self.ended = False
        super().__init__(left, right, self._end)

    def _end(self, splice: Splice) -> None:
        self.ended = True

    def lost(self, end: End, reason: Failure) -> None:
        self.lost_ends.append(end)
        super().lost(end, reason)


class TLSTransport(StringTransport):
    """A StringTransport that also answers the TLS exporter query of ``channel_binding``."""

    EXPORTER = b"K" * 32

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def getHandle(self) -> "TLSTransport":
        return self

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        return self.EXPORTER[:length]


def connected_client() -> tuple[ClientLink, StringTransport, Clock]:
    """A ClientLink past its TLS handshake, on a StringTransport, with a Clock for a reactor."""
    clock = Clock()
    link = ClientLink(clock, lambda transport: None)
    transport: StringTransport = TLSTransport()
    link.makeConnection(transport)  # type: ignore[no-untyped-call]
    link.handshakeCompleted()
    return link, transport, clock


def frames(transport: StringTransport) -> list[wire.Frame]:
    """The frames written to ``transport`` since it was last cleared."""
    decoder = wire.FrameDecoder()
    got = decoder.feed(transport.value())
    assert decoder.buffered == 0
    return got


def spliced(link: ClientLink) -> tuple[Channel, FakeEnd, RecordingSplice]:
    """A new channel on ``link``, answered OK and spliced to a FakeEnd."""
    channel = link.open()
    channel.exchange(HELLO)
    link.dataReceived(wire.encode(wire.Result("OK"), channel.number))
    other = FakeEnd()
    return channel, other, RecordingSplice(channel, other)


def test_stream_frames_in_the_same_read_as_the_result_are_kept() -> None:
    """Regression: the peer's first bytes often arrive in the same read as its OK RESULT,
    before the splice exists; they must be held for the splice, not taken for a bad
    handshake message (which used to drop the connection)."""
    link, transport, _ = connected_client()
    channel = link.open()
    n = channel.number
    results: list[wire.Result] = []
    channel.exchange(HELLO).addCallback(results.append)
    assert [(k, c) for k, c, _ in frames(transport)] == [(wire.Kind.HELLO, n)]
    link.dataReceived(
        wire.encode(wire.Result("OK"), n) + wire.data_header(n, 5) + b"hello"
        + wire.frame(wire.Kind.EOF, n)
    )
    assert results and results[0].ok
    assert transport.connected and not transport.disconnecting
    other = FakeEnd()
    Splice(channel, other, lambda s: None)
    assert other.got == [b"hello"] and other.eof
    assert not channel.closed and n in link.channels


def test_data_is_framed_and_eof_is_a_frame() -> None:
    """Bytes from the other end go out as DATA frames of the channel; its EOF as an EOF frame."""
    link, transport, _ = connected_client()
    channel, other, splice = spliced(link)
    transport.clear()
    splice.data(other, b"abc")
    splice.eof(other)
    n = channel.number
    assert transport.value() == wire.data_header(n, 3) + b"abc" + wire.frame(wire.Kind.EOF, n)


def test_both_eofs_close_both_ends() -> None:
    """EOF both ways ends the connection: the other end is closed and the channel sends
    CLOSE; the link itself stays up for other channels."""
    link, transport, _ = connected_client()
    channel, other, splice = spliced(link)
    n = channel.number
    splice.eof(other)
    assert not other.closed and not channel.closed
    transport.clear()
    link.dataReceived(wire.frame(wire.Kind.EOF, n))
    assert other.closed and channel.closed
    assert frames(transport) == [(wire.Kind.CLOSE, n, b"")]
    assert n not in link.channels
    assert not transport.disconnecting


@pytest.mark.parametrize("message", [HELLO, wire.Result("OK")], ids=["HELLO", "second RESULT"])
def test_handshake_frame_mid_stream_tears_down(message: wire.Message) -> None:
    """A HELLO sent to the dialling side, or a second RESULT on a spliced channel, is a
    protocol violation: the whole link is aborted and every channel's splice sees it lost."""
    link, transport, _ = connected_client()
    channel, other, splice = spliced(link)
    link.dataReceived(wire.encode(message, channel.number))
    assert transport.disconnected  # abortConnection, not a graceful close
    link.connectionLost(Failure(ConnectionLost()))
    assert splice.lost_ends == [channel]
    assert channel.closed and other.closed
