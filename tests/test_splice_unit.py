"""The splice and the peer link's state changes, without sockets (StringTransport)."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from nipc import wire
from nipc.peer import PeerClient
from nipc.splice import Splice


class FakeEnd:
    """A splice end that records what it is given."""

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


def connected_client() -> tuple[PeerClient, StringTransport]:
    link = PeerClient(lambda transport: None)
    transport = StringTransport()
    link.makeConnection(transport)
    return link, transport


def test_stream_frames_in_the_same_read_as_the_result_are_kept() -> None:
    """Regression: the peer's first bytes often arrive in the same read as its OK RESULT,
    before the splice exists; they used to be taken for a bad handshake message and the
    connection was dropped."""
    link, transport = connected_client()
    results: list[wire.Result] = []
    link.exchange(wire.Hello("/s", "b.test", ("a.test",), b"t", "c1")).addCallback(results.append)
    link.dataReceived(
        wire.encode(wire.Result("OK")) + wire.data_header(5) + b"hello" + wire.EOF_FRAME
    )
    assert results and results[0].ok
    assert transport.connected and not transport.disconnecting
    assert transport.producerState == "paused"  # nothing more is read until spliced
    other = FakeEnd()
    Splice(link, other, lambda s: None)
    assert other.got == [b"hello"] and other.eof
    assert transport.producerState == "producing"


def test_data_is_framed_and_eof_is_a_frame() -> None:
    link, transport = connected_client()
    other = FakeEnd()
    Splice(link, other, lambda s: None)
    transport.clear()
    other.splice.data(other, b"abc")  # type: ignore[union-attr]
    other.splice.eof(other)  # type: ignore[union-attr]
    assert transport.value() == wire.data_header(3) + b"abc" + wire.EOF_FRAME


def test_both_eofs_close_both_ends() -> None:
    link, transport = connected_client()
    other = FakeEnd()
    splice = Splice(link, other, lambda s: None)
    splice.eof(other)
    assert not other.closed
    link.dataReceived(wire.EOF_FRAME)
    assert other.closed and transport.disconnecting


def test_handshake_frame_mid_stream_tears_down() -> None:
    link, transport = connected_client()
    other = FakeEnd()
    splice = Splice(link, other, lambda s: None)
    link.dataReceived(wire.encode(wire.Result("OK")))
    assert other.closed and splice.violation is not None
