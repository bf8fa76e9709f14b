"""Channels of a peer link without sockets: per-channel flow control (credit windows),
the channel table's rules, and what a lost link does to its channels.

One slow reader must stall only its own channel, and a peer must not be able to make
this daemon buffer more than a window per channel.
"""

from __future__ import annotations

from typing import Callable

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from nipc import wire
from nipc.channel import GRANT_AT, WINDOW, Channel
from nipc.errors import NipcError
from nipc.link import (CLIENT_IDLE, LINK_PING, MAX_SKIPPED, MAX_UNAUTHENTICATED_REFUSALS,
                       MAX_UNPROVEN_FRAMES, ServerLink)
from test_splice_unit import (
    HELLO,
    FakeEnd,
    RecordingSplice,
    TLSTransport,
    connected_client,
    frames,
    spliced,
)

K = wire.Kind


def credits(transport: StringTransport, number: int) -> list[int]:
    """The amounts of the CREDIT frames written for channel ``number``."""
    return [wire.decode_credit(p) for k, c, p in frames(transport) if k == K.CREDIT and c == number]


# ------------------------------------------------------------------- the sending side


def test_sender_pauses_its_producer_without_credit_and_resumes_on_credit() -> None:
    """The local socket is read only while the peer has granted room: once the window is
    sent the socket's transport is paused, what was read anyway waits, and a CREDIT frame
    sends it (no more than granted) and resumes reading only when all of it is out."""
    link, transport, _ = connected_client()
    channel, other, splice = spliced(link)
    n = channel.number
    transport.clear()
    splice.data(other, b"x" * WINDOW)
    assert other.transport.producerState == "paused"
    splice.data(other, b"y" * 10)  # already read when the pause came
    assert frames(transport) == [(K.DATA, n, b"x" * WINDOW)]
    transport.clear()
    link.dataReceived(wire.credit_frame(n, 4))
    assert frames(transport) == [(K.DATA, n, b"yyyy")]
    assert other.transport.producerState == "paused"
    transport.clear()
    link.dataReceived(wire.credit_frame(n, GRANT_AT))
    assert frames(transport) == [(K.DATA, n, b"y" * 6)]
    assert other.transport.producerState == "producing"


def test_credit_beyond_the_window_is_a_violation() -> None:
    """A peer granting more than the window (it never received that much) breaks the
    protocol: the link is aborted."""
    link, transport, _ = connected_client()
    channel, other, splice = spliced(link)
    splice.data(other, b"x" * 100)
    link.dataReceived(wire.credit_frame(channel.number, 100))
    assert not transport.disconnecting
    link.dataReceived(wire.credit_frame(channel.number, 1))
    assert transport.disconnected


def test_link_backpressure_pauses_the_channels_writing_to_it() -> None:
    """While TCP cannot take more (the TLS transport paused the link), a channel that
    writes stops reading its local socket; all resume with the link."""
    link, _, _ = connected_client()
    channel, other, splice = spliced(link)
    link.pauseProducing()
    splice.data(other, b"abc")
    assert other.transport.producerState == "paused" and channel in link.blocked
    link.resumeProducing()
    assert other.transport.producerState == "producing" and not link.blocked


# ----------------------------------------------------------------- the receiving side


@pytest.mark.parametrize("spliced_first", [True, False], ids=["paused consumer", "before the splice"])
def test_data_beyond_the_window_is_a_violation(spliced_first: bool) -> None:
    """A peer may send a whole window without credit, not a byte more: beyond it, the link
    is aborted (whether the bytes wait for a paused consumer or for the splice)."""
    link, transport, _ = connected_client()
    if spliced_first:
        channel = spliced(link)[0]
        channel.pauseProducing()
    else:
        channel = link.open()
        channel.exchange(HELLO)
        link.dataReceived(wire.encode(wire.Result("OK"), channel.number))
    n = channel.number
    link.dataReceived(wire.data_header(n, WINDOW) + b"x" * WINDOW)
    assert not transport.disconnecting
    link.dataReceived(wire.data_header(n, 1) + b"x")
    assert transport.disconnected


def test_credit_is_granted_in_slices() -> None:
    """Room is granted back once GRANT_AT bytes were delivered, not per frame."""
    link, transport, _ = connected_client()
    channel, other, _ = spliced(link)
    n = channel.number
    transport.clear()
    link.dataReceived(wire.data_header(n, GRANT_AT - 1) + b"a" * (GRANT_AT - 1))
    assert credits(transport, n) == []
    link.dataReceived(wire.data_header(n, 2) + b"bb")
    assert credits(transport, n) == [GRANT_AT + 1]
    assert b"".join(other.got) == b"a" * (GRANT_AT - 1) + b"bb"


def test_receiver_withholds_credit_while_its_consumer_is_paused() -> None:
    """While the local socket's buffer is full (it paused the channel), nothing delivered
    is granted back, so the peer stops after a window; resuming grants what was delivered."""
    link, transport, _ = connected_client()
    channel, other, _ = spliced(link)
    n = channel.number
    transport.clear()
    channel.pauseProducing()
    link.dataReceived((wire.data_header(n, GRANT_AT) + b"z" * GRANT_AT) * 2)
    assert len(b"".join(other.got)) == 2 * GRANT_AT  # delivered, but not granted back
    assert credits(transport, n) == []
    channel.resumeProducing()
    assert credits(transport, n) == [2 * GRANT_AT]


def test_close_waits_for_credit_then_sends_data_eof_and_close_in_order() -> None:
    """Like TCP's close: what is pending is sent first (when the peer grants room), then
    EOF, then CLOSE; the channel ends only then."""
    link, transport, _ = connected_client()
    channel, other, splice = spliced(link)
    n = channel.number
    splice.data(other, b"x" * WINDOW + b"tail")
    transport.clear()
    channel.send_eof()
    channel.close()
    assert transport.value() == b"" and not channel.closed
    link.dataReceived(wire.credit_frame(n, GRANT_AT))
    assert frames(transport) == [(K.DATA, n, b"tail"), (K.EOF, n, b""), (K.CLOSE, n, b"")]
    assert channel.closed and n not in link.channels
    assert splice.lost_ends == [channel] and other.closed


def test_peer_close_ends_the_channel_only() -> None:
    """A CLOSE from the peer ends that channel (its splice sees it lost); the link and its
    other channels go on."""
    link, transport, _ = connected_client()
    first, other1, splice1 = spliced(link)
    second, other2, _ = spliced(link)
    transport.clear()
    link.dataReceived(wire.frame(K.CLOSE, first.number) + wire.data_header(second.number, 2) + b"ok")
    assert first.closed and splice1.lost_ends == [first] and other1.closed
    assert not second.closed and other2.got == [b"ok"]
    assert not transport.disconnecting
    assert transport.value() == b""  # no CLOSE echoed back for a channel the peer closed


# -------------------------------------------------------------------- the channel table


def test_channel_numbers_increase_and_are_never_reused() -> None:
    """The dialling side numbers its channels 1, 2, 3...; a closed channel's number is
    not given out again (a late frame for it must not reach a new connection)."""
    link, _, _ = connected_client()
    first, second = link.open(), link.open()
    assert (first.number, second.number) == (1, 2)
    second.abort()
    assert link.open().number == 3


def test_a_link_is_retired_at_the_last_channel_number_and_never_wraps() -> None:
    """Channel numbers are 4 bytes: the link that gives out 2^32-1 is retired (dropped from
    the dialler's table, closed once its channels end), so no number wraps to a used one."""
    link, transport, _ = connected_client()
    gone: list[object] = []
    link.on_lost = gone.append
    link.highest = 2**32 - 3
    before = link.open()
    assert not link.retired and not gone
    last = link.open()
    assert last.number == 2**32 - 1
    assert link.retired and gone == [link]
    last.exchange(HELLO)
    assert frames(transport)[-1][:2] == (K.HELLO, 2**32 - 1)  # encodable: no wrap
    before.abort()
    assert not transport.disconnecting
    last.abort()
    assert transport.disconnecting


@pytest.mark.parametrize("late", [
    wire.data_header(1, 3) + b"abc",
    wire.frame(K.EOF, 1),
    wire.frame(K.CLOSE, 1),
    wire.credit_frame(1, 5),
    wire.encode(wire.Result("OK"), 1),
], ids=["DATA", "EOF", "CLOSE", "CREDIT", "RESULT"])
def test_frame_for_a_closed_channel_is_dropped(late: bytes) -> None:
    """What the peer sent before it learnt a channel was closed is silently dropped."""
    link, transport, _ = connected_client()
    channel, other, _ = spliced(link)
    channel.abort()
    link.dataReceived(late)
    assert not transport.disconnecting and other.got == []


def test_result_for_a_cancelled_handshake_is_dropped() -> None:
    """Giving up on a handshake closes the channel; the peer's RESULT that crossed the
    CLOSE is dropped, and the link stays."""
    link, transport, _ = connected_client()
    channel = link.open()
    d = channel.exchange(HELLO)
    d.addErrback(lambda f: None)
    d.cancel()
    assert channel.closed and (K.CLOSE, channel.number, b"") in frames(transport)
    link.dataReceived(wire.encode(wire.Result("OK"), channel.number))
    assert not transport.disconnecting


@pytest.mark.parametrize("frame", [
    wire.data_header(2, 3) + b"abc",
    wire.frame(K.EOF, 2),
    wire.frame(K.CLOSE, 2),
    wire.credit_frame(2, 5),
    wire.encode(wire.Result("OK"), 2),
], ids=["DATA", "EOF", "CLOSE", "CREDIT", "RESULT"])
def test_frame_for_a_never_opened_channel_aborts(frame: bytes) -> None:
    """A frame for a channel number above any opened is a protocol violation."""
    link, transport, _ = connected_client()
    channel, _, _ = spliced(link)
    assert channel.number == 1
    link.dataReceived(frame)
    assert transport.disconnected


# ---------------------------------------------------------------------- the server side


class Server:
    """A ServerLink on a StringTransport, past TLS, recording the HELLOs it hands on."""

    def __init__(self, hello_rate: float = 1000.0) -> None:
        self.clock = Clock()
        self.hellos: list[tuple[Channel, bytes, wire.Hello]] = []
        self.link_settled = 0
        self.admitted: list[list[int]] = []
        self.link = ServerLink(self.clock, lambda transport: None, self, self, 10.0,
                               hello_rate=hello_rate)
        self.transport: StringTransport = TLSTransport()
        self.link.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        self.link.handshakeCompleted()

    def hello(self, channel: Channel, binding: bytes, hello: wire.Hello) -> None:
        """The inbound handler's part (IInboundHandler)."""
        self.hellos.append((channel, binding, hello))

    def settled(self) -> None:
        """The link admission's part (ILinkAdmission), as channel() below."""
        self.link_settled += 1

    def channel(self) -> Callable[[], None]:
        count = [0]
        self.admitted.append(count)

        def settle() -> None:
            count[0] += 1

        return settle


def test_server_hands_each_hello_on_with_its_channel_binding() -> None:
    """Each HELLO opens a channel; its ticket must be bound to this link and that number."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1) + wire.encode(HELLO, 4))
    assert [(c.number, b, h) for c, b, h in server.hellos] == [
        (1, wire.binding(TLSTransport.EXPORTER, 1), HELLO),
        (4, wire.binding(TLSTransport.EXPORTER, 4), HELLO),
    ]
    assert not server.transport.disconnecting


@pytest.mark.parametrize("second", [3, 1], ids=["same number", "a skipped number used"])
def test_server_hello_reusing_a_channel_number_aborts(second: int) -> None:
    """A channel number is used once: a replayed or duplicated HELLO is refused by number,
    before any Kerberos work, and the link aborted."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1) + wire.encode(HELLO, 3))
    server.hellos[1][0].abort()  # even once that channel is over
    server.link.dataReceived(wire.encode(HELLO, second))
    assert len(server.hellos) == 2
    assert server.transport.disconnected


def test_server_takes_hellos_that_overtook_one_another() -> None:
    """The dialler numbers channels in order but sends each HELLO when its Kerberos work
    is done: a lower number may come later, once; a number given up is CLOSEd unopened."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 3) + wire.encode(HELLO, 1)
                             + wire.frame(K.CLOSE, 2))
    assert [c.number for c, _, _ in server.hellos] == [3, 1]
    assert not server.transport.disconnecting
    server.link.dataReceived(wire.encode(HELLO, 2))  # given up: never usable again
    assert server.transport.disconnected


def test_server_refuses_data_for_a_skipped_number_and_bounds_the_skipped() -> None:
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 3) + wire.data_header(2, 1) + b"x")
    assert server.transport.disconnected
    far = Server()
    far.link.dataReceived(wire.encode(HELLO, MAX_SKIPPED + 2))
    assert far.transport.disconnected and not far.hellos


def test_server_close_during_the_handshake_ends_the_channel_at_once() -> None:
    """A dialler that gives up on a handshake sends CLOSE: the receiving side must drop
    the channel at once (Inbound checks ``channel.closed`` before connecting; the
    handshake's admission slot is freed), as a lost connection did before links."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1))
    channel = server.hellos[0][0]
    server.link.dataReceived(wire.frame(K.CLOSE, 1))
    assert channel.closed
    assert server.admitted[0] == [1]


@pytest.mark.parametrize("frame", [wire.data_header(1, 0), wire.frame(K.EOF, 1)], ids=["empty DATA", "EOF"])
def test_server_frames_held_before_the_splice_are_bounded(frame: bytes) -> None:
    """During the handshake (Kerberos, the local connect) frames are held for the splice;
    a peer must not be able to grow that without limit, with frames that carry no bytes."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1))
    channel = server.hellos[0][0]
    server.link.dataReceived(frame * 100_000)
    held = getattr(channel, "_held") or []
    assert server.transport.disconnected or len(held) <= 2


# -------------------------------------------------------------------- losing the link


def test_link_loss_finishes_every_channel() -> None:
    """When the link is lost every channel ends: a spliced one's splice sees it lost, a
    handshake in progress fails, an answered one not yet spliced is lost at its splice."""
    link, _, _ = connected_client()
    lost_links: list[object] = []
    link.on_lost = lost_links.append
    running, other, splice = spliced(link)
    waiting = link.open()
    errors: list[Failure] = []
    waiting.exchange(HELLO).addErrback(errors.append)
    answered = link.open()
    answered.exchange(HELLO)
    link.dataReceived(wire.encode(wire.Result("OK"), answered.number))

    link.connectionLost(Failure(ConnectionLost()))

    assert splice.lost_ends == [running] and other.closed
    assert len(errors) == 1 and isinstance(errors[0].value, NipcError)
    assert errors[0].value.errno_name == "EHOSTUNREACH"
    assert running.closed and waiting.closed and answered.closed
    assert link.channels == {} and lost_links == [link]
    late_other = FakeEnd()
    late = RecordingSplice(answered, late_other)
    assert late.lost_ends == [answered] and late_other.closed


def test_server_link_loss_settles_handshakes_in_progress() -> None:
    """A link lost while HELLOs are being handled frees their admission slots."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1) + wire.encode(HELLO, 2))
    server.link.connectionLost(Failure(ConnectionLost()))
    assert server.admitted == [[1], [1]]
    assert all(channel.closed for channel, _, _ in server.hellos)


# ------------------------------------------------------ unauthenticated links (issue 14)


def test_a_link_is_pending_until_a_channel_passes_kerberos() -> None:
    """HELLOs alone neither free the link's pending slot nor stop the handshake deadline:
    a link whose HELLOs never authenticate is aborted by it."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1) + wire.encode(HELLO, 2))
    assert server.link_settled == 0
    server.clock.advance(10.0)
    assert server.transport.disconnected


def test_an_authenticated_channel_settles_the_link_and_stops_the_deadline() -> None:
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1))
    server.hellos[0][0].authenticated()
    assert server.link_settled == 1
    server.clock.advance(10.0)
    assert not server.transport.disconnecting
    server.hellos[0][0].answer(wire.Result("ENOENT", "no such socket"))  # after Kerberos
    server.link.dataReceived(wire.encode(HELLO, 2))
    assert server.link_settled == 1 and len(server.hellos) == 2


def test_refusals_before_any_authentication_close_the_link() -> None:
    """MAX_UNAUTHENTICATED_REFUSALS Kerberos refusals with no success: the link is closed
    (its RESULTs sent first); after a success, refusals leave it open."""
    server = Server()
    for number in range(1, MAX_UNAUTHENTICATED_REFUSALS + 1):
        assert not server.transport.disconnecting
        server.link.dataReceived(wire.encode(HELLO, number))
        server.hellos[-1][0].answer(wire.Result("EKEYREJECTED", "bad ticket"))
    assert server.transport.disconnecting
    results = [f for f in frames(server.transport) if f[0] == K.RESULT]
    assert len(results) == MAX_UNAUTHENTICATED_REFUSALS
    proven = Server()
    proven.link.dataReceived(wire.encode(HELLO, 1))
    proven.hellos[0][0].authenticated()
    for number in range(2, MAX_UNAUTHENTICATED_REFUSALS + 3):
        proven.link.dataReceived(wire.encode(HELLO, number))
        proven.hellos[-1][0].answer(wire.Result("EKEYREJECTED", "bad ticket"))
    assert not proven.transport.disconnecting


def test_overload_refusals_do_not_close_an_unproven_link() -> None:
    """EAGAIN after admission (this host at a limit: inbound connections, descriptors) is
    no sign against the peer: a new link from a legitimate host stays open however many
    it gets (issue 14 item 11: they came back as EHOSTUNREACH when it closed)."""
    server = Server()
    for number in range(1, MAX_UNAUTHENTICATED_REFUSALS + 3):
        server.link.dataReceived(wire.encode(HELLO, number))
        server.hellos[-1][0].answer(wire.Result("EAGAIN", "b is at its file descriptor limit"))
    assert not server.transport.disconnecting


@pytest.mark.parametrize("late", [lambda n: wire.frame(K.CLOSE, n), lambda n: wire.credit_frame(n, 10)],
                         ids=["second-close", "credit"])
def test_frames_for_ended_channels_close_an_unproven_link(late: Callable[[int], bytes]) -> None:
    """Before any channel authenticated, the dialler may send one CLOSE for a channel we
    refused (it gave up on it meanwhile), never more, and nothing else for it: such frames
    cost us work and answer nothing, so a flood of them closes the link. Once a channel
    authenticated, frames for ended channels are dropped as before."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1))
    server.hellos[-1][0].answer(wire.Result("ENOENT", "no such socket"))
    server.link.dataReceived(wire.frame(K.CLOSE, 1))
    assert not server.transport.disconnecting
    server.link.dataReceived(late(1))
    assert server.transport.disconnecting
    proven = Server()
    proven.link.dataReceived(wire.encode(HELLO, 1) + wire.encode(HELLO, 2))
    proven.hellos[0][0].authenticated()
    proven.hellos[1][0].answer(wire.Result("ENOENT", "no such socket"))
    proven.link.dataReceived(wire.frame(K.CLOSE, 2) + late(2) * 3)
    assert not proven.transport.disconnecting


def test_an_unproven_link_gets_a_bounded_number_of_frames() -> None:
    """Before any channel authenticated, MAX_UNPROVEN_FRAMES frames (here PINGs, each
    answered), then the link is closed; once one did, there is no such bound."""
    ping = wire.frame(K.PING, 0)
    server = Server()
    server.link.dataReceived(ping * MAX_UNPROVEN_FRAMES)
    assert not server.transport.disconnecting
    server.link.dataReceived(ping)
    assert server.transport.disconnecting
    proven = Server()
    proven.link.dataReceived(wire.encode(HELLO, 1))
    proven.hellos[0][0].authenticated()
    proven.link.dataReceived(ping * (MAX_UNPROVEN_FRAMES + 1))
    assert not proven.transport.disconnecting


def test_hellos_per_link_are_rate_limited() -> None:
    """Beyond twice the per-second rate at once, a HELLO is EAGAIN before any Kerberos
    work; the bucket refills with time."""
    server = Server(hello_rate=2)
    server.link.dataReceived(b"".join(wire.encode(HELLO, n) for n in range(1, 7)))
    assert len(server.hellos) == 4
    refused = [wire.decode(k, p) for k, n, p in frames(server.transport) if k == K.RESULT]
    assert [r.errno_name for r in refused] == ["EAGAIN", "EAGAIN"]  # type: ignore[union-attr]
    assert not server.transport.disconnecting  # not Kerberos refusals
    server.clock.advance(1.0)
    server.link.dataReceived(wire.encode(HELLO, 7) + wire.encode(HELLO, 8))
    assert len(server.hellos) == 6


def test_a_receiving_link_stops_reading_while_its_output_is_paused() -> None:
    """A peer that sends HELLOs and reads no RESULT: the link stops reading TCP while TCP
    cannot take more, and reads again once it can; a pause that TLS asks for itself (it
    must read before it can write) leaves reading on."""
    server = Server()
    tcp = StringTransport()  # type: ignore[no-untyped-call]
    server.transport.transport = tcp  # type: ignore[attr-defined]
    tcp.producerPaused = True  # type: ignore[attr-defined]  # as TCP sets it when full
    server.link.pauseProducing()
    assert tcp.producerState == "paused"
    server.link.resumeProducing()
    assert tcp.producerState == "producing"
    tcp.producerPaused = False  # type: ignore[attr-defined]
    server.link.pauseProducing()
    assert tcp.producerState == "producing"


def test_partial_data_frames_are_capped_until_a_channel_authenticated() -> None:
    """Before any channel passed Kerberos no DATA is due: a DATA frame announcing more than
    a handshake frame's size aborts the link at its header; afterwards 1 MiB is fine."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1) + wire.data_header(1, wire.MAX_HANDSHAKE + 1))
    assert server.transport.disconnected
    proven = Server()
    proven.link.dataReceived(wire.encode(HELLO, 1))
    proven.hellos[0][0].authenticated()
    proven.link.dataReceived(wire.data_header(1, wire.MAX_DATA) + b"x" * 1000)
    assert not proven.transport.disconnecting


# ------------------------------------------------------------- liveness (issue 14 item 6)


def test_a_silent_peer_is_pinged_then_its_channels_end() -> None:
    """With channels open: a spell of link_ping without a frame from the peer sends a PING,
    another one without an answer aborts the link, ending its channels (a hung peer)."""
    link, transport, clock = connected_client()
    channel, _, splice = spliced(link)
    transport.clear()
    clock.advance(LINK_PING)  # heard since the channel opened: nothing to do
    clock.advance(LINK_PING)
    assert frames(transport) == [(K.PING, 0, b"")]
    assert not transport.disconnecting
    clock.advance(LINK_PING)
    assert transport.disconnected  # aborted
    link.connectionLost(Failure(ConnectionLost()))
    assert channel.closed and splice.lost_ends == [channel]


def test_any_frame_is_an_answer_and_a_ping_gets_a_pong() -> None:
    link, transport, clock = connected_client()
    spliced(link)
    for _ in range(5):
        clock.advance(LINK_PING)
        link.dataReceived(wire.frame(K.PONG, 0))
    assert not transport.disconnecting
    transport.clear()
    link.dataReceived(wire.frame(K.PING, 0))
    assert frames(transport) == [(K.PONG, 0, b"")]


def test_a_link_without_channels_is_not_pinged() -> None:
    link, transport, clock = connected_client()
    channel, _, _ = spliced(link)
    channel.abort()
    transport.clear()
    clock.advance(3 * LINK_PING)
    assert frames(transport) == []


# ---------------------------------------------------------------------------- idleness


def test_idle_link_closes_and_a_new_channel_keeps_it() -> None:
    """A dialled link with no channel for CLIENT_IDLE seconds is closed; a channel opened
    meanwhile cancels that."""
    link, transport, clock = connected_client()
    clock.advance(CLIENT_IDLE - 1)
    channel = link.open()
    clock.advance(CLIENT_IDLE)
    assert not transport.disconnecting
    channel.abort()
    clock.advance(CLIENT_IDLE - 1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_receiving_side_waits_four_times_the_dialler_idle_time() -> None:
    """The dialler, which knows when it will reuse a link, should be the one to close it:
    a receiving link closes after 4 x the configured link_idle without a channel."""
    server = Server()
    server.link.dataReceived(wire.encode(HELLO, 1))
    server.hellos[0][0].authenticated()
    server.hellos[0][0].abort()
    server.clock.advance(4 * CLIENT_IDLE - 1)
    assert not server.transport.disconnecting
    server.clock.advance(1)
    assert server.transport.disconnecting


def test_retired_link_closes_when_its_last_channel_ends() -> None:
    """A retired link (a handshake on it timed out) serves its channels to their end,
    then closes."""
    link, transport, _ = connected_client()
    channel, _, _ = spliced(link)
    link.retire()
    assert not transport.disconnecting
    channel.abort()
    assert transport.disconnecting
