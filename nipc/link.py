"""The peer link: one long-lived TLS connection between two daemons, carrying channels.

A dialling daemon keeps one :class:`ClientLink` per peer daemon (:mod:`nipc.links`) and
opens a :class:`Channel` on it for each routed connection; the receiving daemon's
:class:`ServerLink` hands each channel's HELLO to :class:`nipc.inbound.Inbound`. No TLS
handshake and no OpenSSL state per connection: the link's TLS session is shared, while
every channel still carries its own caller's ticket, bound to the link and to the channel
number (:func:`nipc.wire.binding`), and is authenticated on its own, both ways.

The link owns the framing, the channel table, liveness (PING) and link-wide flow control:
it pauses the channels that write to it while TCP cannot take more, and resumes them when
it can. Each channel (:mod:`nipc.channel`) owns its own credit window. Who may open a link
at all is :mod:`nipc.admission`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.admission import HelloRate, Stopping
from nipc.channel import Channel
from nipc.config import PeerAddress
from nipc.deadline import Deadline
from nipc.errors import NipcError
from nipc.interfaces import IInboundHandler, ILinkAdmission
from nipc.link_state import READING, Do, Event, State, step
from nipc.tls import channel_binding, is_certificate_failure, ssl_detail

log = Logger()

_DATA = int(wire.Kind.DATA)
_pack_header = wire.HEADER.pack

#: Up to this size a DATA frame goes to TLS in one piece (one record for a small message).
SMALL = 16 * 1024
#: An idle dialled link is closed after ``[timeouts] link_idle`` (this by default); a
#: receiving daemon waits this many times longer, so that the dialler, which knows when it
#: is about to reuse a link, normally closes first.
CLIENT_IDLE = 30.0
#: A link with open channels that heard nothing from its peer for ``[timeouts] link_ping``
#: (this by default) sends a PING; nothing heard for another such spell, it is aborted and
#: its channels end as a crash would: a hung (stopped) peer daemon, whose kernel still acks
#: and keeps the TCP connection alive, is found within 3 x link_ping.
LINK_PING = 10.0
SERVER_IDLE_FACTOR = 4
#: The last channel number (4 bytes on the wire): the link that gives it out is retired,
#: so numbers never wrap (a wrapped number would be refused as reused, for every connect).
LAST_CHANNEL = 2**32 - 1
#: How many channel numbers may be skipped (handshakes overtaking one another) at once.
MAX_SKIPPED = 4096
#: A closing link waits this long for the peer's TLS close_notify, then aborts: a peer that
#: never answers must not keep the connection (and its descriptor) forever.
CLOSE_GRACE = 5.0
#: Kerberos refusals a receiving link takes before any of its channels passed Kerberos;
#: then it is closed (a legitimate dialler's tickets do not keep failing on one link).
MAX_UNAUTHENTICATED_REFUSALS = 3
#: Frames a receiving link takes before any of its channels passed Kerberos; then it is
#: closed. Far more than a dialler's burst of HELLOs at a new link needs; a bound on what
#: an unauthenticated peer can make us decode and answer (PONGs, EAGAIN RESULTs) for the
#: price of one TLS handshake.
MAX_UNPROVEN_FRAMES = 1024


@implementer(IHandshakeListener, IPushProducer)
class Link(Protocol):
    """Frame decoding, channel table and link-wide flow control, for both sides.

    Its lifecycle is :mod:`nipc.link_state`'s table: TLS done, a channel authenticated,
    retire, close, abort and the connection lost are events; the table gives the next
    state and what to do. Whoever must know when the link is gone (its channels, the
    dialler's table, per-link records) asks :meth:`when_ended`.
    """

    #: Closing or closed: frames still arriving are ignored (kept with the state, as it
    #: is read for every frame).
    stopped = False
    #: True while the TLS transport cannot take more: channels stop reading.
    paused = False
    #: DATA frames go straight to their channel, past :meth:`frame` (which a receiving
    #: link needs only until one of its channels passed Kerberos).
    direct = False
    exporter: bytes | None = None
    lost_reason: Failure | None = None

    def __init__(self, reactor: IReactorTime, tune: Callable[[Any], None],
                 idle_after: float = CLIENT_IDLE, ping_every: float = LINK_PING) -> None:
        self._reactor = reactor
        self.idle_after = idle_after
        self.ping_every = ping_every
        #: Liveness: a frame arrived since the last check; a PING is unanswered.
        self._heard = False
        self._pinged = False
        self._liveness: IDelayedCall | None = None
        self._decoder = wire.FrameDecoder()
        self._tune = tune
        self.channels: dict[int, Channel] = {}
        #: Channels that stopped reading because the link was paused.
        self.blocked: set[Channel] = set()
        #: The highest channel number opened so far (numbers are never reused).
        self.highest = 0
        self.peer = "?"
        self.opened = 0.0
        self._idle: IDelayedCall | None = None
        self._grace = Deadline(reactor)
        self.state = State.PENDING
        self._ended: list[Deferred[None]] = []

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def when_ended(self) -> "Deferred[None]":
        """Fires (with None: the reason is :attr:`lost_reason`) once the connection is
        gone and its channels ended; at once if it is."""
        if self.state is State.CLOSED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ended.append(d)
        return d

    def _fire(self, event: Event, reason: Failure | None = None) -> None:
        self.state, do = step(self.state, event)
        self.stopped = self.state not in READING
        if do is Do.NOTHING:
            return
        if do is Do.TLS_READY:
            self.exporter = channel_binding(self.transport)
            self.tls_ready()
            self._idle_check()
        elif do is Do.PROVEN:
            self.proved()
        elif do is Do.RETIRE:
            self.retiring()
        elif do is Do.SHUTDOWN:
            self._grace.arm(CLOSE_GRACE, self.abort)
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            if self.paused:  # nobody will resume it now; and the peer's close_notify is to be read
                self.resumeProducing()
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif do is Do.ABORT:
            self.transport.abortConnection()  # type: ignore[union-attr]
        else:
            assert reason is not None
            self._end(reason)

    def connectionMade(self) -> None:
        self._tune(self.transport)
        addr = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer = f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '?')}"
        self.opened = self._reactor.seconds()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    def describe(self, now: float) -> dict[str, Any]:
        """For ``nipc status``: where the link goes, and how busy it is."""
        return {"peer": self.peer, "channels": len(self.channels),
                "opened_channels": self.highest, "age": round(now - self.opened, 3)}

    def handshakeCompleted(self) -> None:
        self._fire(Event.TLS_DONE)

    def dataReceived(self, data: bytes) -> None:
        self._heard = True
        try:
            one = self._decoder.single(data) if self.direct and not self.stopped else None
            if one is not None:  # the steady path of small messages: one DATA frame per read
                number, payload = one
                channel = self.channels.get(number)
                if channel is not None:
                    channel.data(payload)
                else:
                    self.frame(_DATA, number, payload)
                return
            for kind, number, payload in self._decoder.feed(data):
                if self.stopped:
                    return
                if kind == _DATA and self.direct:  # the steady path: one call per frame
                    channel = self.channels.get(number)
                    if channel is not None:
                        channel.data(payload)
                        continue
                self.frame(kind, number, payload)
        except NipcError as e:
            self.violation(e)

    def frame(self, kind: int, number: int, payload: bytes) -> None:
        if kind == wire.Kind.PING:
            self.write(wire.frame(wire.Kind.PONG, 0))
            return
        if kind == wire.Kind.PONG:
            return  # heard: that is all it is for
        channel = self.channels.get(number)
        if channel is not None:
            channel.received(kind, payload)
        else:
            self.unknown(kind, number)

    def unknown(self, kind: int, number: int) -> None:
        """A frame for a channel not open here. One that is over: what the peer sent
        before it knew is dropped."""
        if number > self.highest:
            raise NipcError("EPROTO", f"frame for channel {number}, which was never opened")

    def add(self, channel: Channel) -> Channel:
        self.channels[channel.number] = channel
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._liveness is None:
            self._heard, self._pinged = True, False
            self._liveness = self._reactor.callLater(self.ping_every, self._check_alive)
        return channel

    def _check_alive(self) -> None:
        """Every ``ping_every`` while channels are open: a silent peer gets a PING; one
        silent since the PING is taken for dead."""
        self._liveness = None
        if self.closed or self.stopped or not self.channels:
            return
        if self._heard:
            self._heard = self._pinged = False
        elif self._pinged:
            log.warn("peer link {peer}: no answer to a liveness ping in {seconds}s; "
                     "ending its {n} channels", peer=self.peer, seconds=self.ping_every,
                     n=len(self.channels))
            self.abort()
            return
        else:
            self.write(wire.frame(wire.Kind.PING, 0))
            self._pinged = True
        self._liveness = self._reactor.callLater(self.ping_every, self._check_alive)

    def forget(self, channel: Channel) -> None:
        self.channels.pop(channel.number, None)
        self.blocked.discard(channel)
        self._idle_check()

    def _idle_check(self) -> None:
        if not self.channels and self._idle is None and not self.closed:
            self._idle = self._reactor.callLater(self.idle_after, self.idle)

    def idle(self) -> None:
        """No channel for a while: close the link."""
        self._idle = None
        self.close()

    def send_data(self, number: int, data: bytes) -> None:
        size = len(data)
        if 0 < size <= SMALL:  # the steady path of small messages: one write, one record
            self.transport.write(_pack_header(_DATA, number, size) + data)  # type: ignore[union-attr]
            return
        for start in range(0, size, wire.MAX_DATA):
            chunk = data if size <= wire.MAX_DATA else data[start : start + wire.MAX_DATA]
            # no copy of a large chunk just to put 9 bytes in front of it
            self.transport.writeSequence([wire.data_header(number, len(chunk)), chunk])  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    # -- the TLS transport's producer: pause and resume the channels that write to it
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        blocked, self.blocked = self.blocked, set()
        for channel in blocked:
            channel.throttle()

    def stopProducing(self) -> None:
        pass

    def violation(self, error: NipcError) -> None:
        log.warn("peer link {peer}: {error}; closing it and its {n} channels",
                 peer=self.peer, error=error.message, n=len(self.channels))
        self.abort()

    def close(self) -> None:
        """Send TLS close_notify and close TCP once the peer answers it, or abort after
        :data:`CLOSE_GRACE`. The link first stops being the transport's producer: Twisted's
        TLS does not start its shutdown while a producer is registered."""
        self._fire(Event.CLOSE)

    def abort(self) -> None:
        self._fire(Event.ABORT)

    def authenticated(self) -> None:
        """One of its channels passed Kerberos."""
        self._fire(Event.AUTHENTICATED)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._fire(Event.LOST, reason)

    def _end(self, reason: Failure) -> None:
        """The connection is gone: its channels end as a crash would, then the side and
        whoever asked :meth:`when_ended` are told."""
        self.lost_reason = reason
        self._grace.cancel()
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            channel.link_lost(reason)
        self.link_lost(reason)
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)

    # Hooks for the two sides.
    def tls_ready(self) -> None:
        pass

    def proved(self) -> None:
        pass

    def retiring(self) -> None:
        pass

    def refused(self) -> None:
        pass

    def link_lost(self, reason: Failure) -> None:
        pass


class ClientLink(Link):
    """The dialling daemon's side: opens channels, one per routed connection."""

    direct = True

    def __init__(self, reactor: IReactorTime, tune: Callable[[Any], None],
                 idle_after: float = CLIENT_IDLE, ping_every: float = LINK_PING,
                 addresses: Sequence[PeerAddress] = (),
                 on_lost: Callable[[ClientLink], None] | None = None) -> None:
        super().__init__(reactor, tune, idle_after, ping_every)
        self.ready: Deferred[ClientLink] = Deferred()
        #: Where the peer daemon was looked for (for error messages).
        self.addresses = addresses
        #: Told when the link is lost or retired: the dialler's table drops it.
        self.on_lost = on_lost

    def tls_ready(self) -> None:
        self.ready.callback(self)

    def open(self) -> Channel:
        self.highest += 1
        channel = self.add(Channel(self, self.highest))
        if self.highest == LAST_CHANNEL:
            self.retire()  # the next connect dials a new link
        return channel

    @property
    def retired(self) -> bool:
        """No new channels (a handshake on it timed out, or it is closing): closed once
        its last one ends."""
        return self.state in (State.RETIRED, State.CLOSING, State.CLOSED)

    def retire(self) -> None:
        self._fire(Event.RETIRE)

    def retiring(self) -> None:
        if self.on_lost is not None:
            self.on_lost(self)
        if not self.channels:
            self.close()

    def _idle_check(self) -> None:
        if self.retired and not self.channels:
            self.close()
        else:
            super()._idle_check()

    def frame(self, kind: int, number: int, payload: bytes) -> None:
        if kind == wire.Kind.HELLO:
            raise NipcError("EPROTO", "peer daemon sent a HELLO")
        if kind != wire.Kind.RESULT:
            super().frame(kind, number, payload)
            return
        channel = self.channels.get(number)
        if channel is None:
            if number > self.highest:
                raise NipcError("EPROTO", f"RESULT for channel {number}, which was never opened")
            return  # we gave up on that channel (cancelled); the peer answered anyway
        message = wire.decode(kind, payload)
        assert isinstance(message, wire.Result)
        channel.answered(message)

    def link_lost(self, reason: Failure) -> None:
        if self.on_lost is not None:
            self.on_lost(self)
        if not self.ready.called:
            # A TLS failure goes up as it is: the dialler names the host and the reason.
            self.ready.errback(reason if reason.check(SSL.Error) else Failure(NipcError(
                "EHOSTUNREACH", "peer daemon closed the connection during the TLS handshake")))


class ServerLink(Link):
    """The receiving daemon's side: each HELLO opens a channel, answered by
    :class:`nipc.inbound.Inbound`."""

    def __init__(self, reactor: IReactorTime, tune: Callable[[Any], None], handler: IInboundHandler,
                 admission: ILinkAdmission, timeout: float,
                 table: set["ServerLink"] | None = None,
                 dialler_idle: float = CLIENT_IDLE, hello_rate: float = 1000.0,
                 ping_every: float = LINK_PING) -> None:
        super().__init__(reactor, tune, SERVER_IDLE_FACTOR * dialler_idle, ping_every)
        #: The daemon's accepted links (for ``nipc status``): in it while connected.
        self._table = table if table is not None else set()
        self._handler = handler
        self._admission = admission
        #: The link's own handshake still counts as pending (see _settle).
        self._unsettled = True
        self._timeout = timeout
        self._deadline = Deadline(reactor)
        #: Channel numbers below ``highest`` not used yet (see _claim).
        self.skipped: set[int] = set()
        self._refusals = 0
        #: HELLOs taken, and frames for channels already over, before any channel passed
        #: Kerberos: the dialler may send one CLOSE for a channel we refused as it gave up
        #: on it, never more; other frames for such channels only cost us work.
        self._hellos_taken = 0
        self._late = 0
        self._unproven_frames = 0
        #: Reading stopped while TCP cannot take our output.
        self._unread = False
        # No DATA is due before a channel is authenticated: a partial frame held for an
        # unauthenticated peer costs at most a handshake frame's size.
        self._decoder.data_limit = wire.MAX_HANDSHAKE
        self._hellos = HelloRate(reactor.seconds, hello_rate)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._table.add(self)
        # One deadline covers TLS and the HELLOs up to the first that passes Kerberos: an
        # unauthenticated peer holds a link for no longer than this.
        self._deadline.arm(self._timeout, self._expire)

    def _expire(self) -> None:
        log.info("peer {peer}: no channel authenticated in {timeout}s; closing",
                 peer=self.peer, timeout=self._timeout)
        self.abort()

    @property
    def proven(self) -> bool:
        """One of its channels passed Kerberos: until then the link counts as pending
        (per-source and global caps) and the handshake deadline holds."""
        return self.state is State.AUTHENTICATED

    def proved(self) -> None:
        self.direct = True
        self._decoder.data_limit = wire.MAX_DATA
        self._deadline.cancel()
        self._settle()
        self._idle_check()

    # -- the TLS transport's producer: also stop reading while TCP cannot take our output.
    # Each HELLO read is answered; a peer that sends HELLOs but reads no RESULTs would
    # otherwise grow our write buffer without bound. Only the receiving side stops: the
    # dialler keeps reading (what it reads makes bounded output: credit), so the two never
    # wait on each other. A pause from TLS itself (a record it cannot write before it has
    # read) is not one: stopping reading then would wait for ever.
    def pauseProducing(self) -> None:
        super().pauseProducing()
        tcp = self.transport.transport  # type: ignore[union-attr]
        if tcp.producerPaused and not self._unread:  # TCP's send buffer is full
            self._unread = True
            tcp.pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._unread:
            self._unread = False
            if not self.closed:
                self.transport.transport.resumeProducing()  # type: ignore[union-attr]

    def refused(self) -> None:
        if self.proven:
            return
        self._refusals += 1
        if self._refusals >= MAX_UNAUTHENTICATED_REFUSALS:
            log.info("peer {peer}: {n} handshakes refused and none authenticated; closing",
                     peer=self.peer, n=self._refusals)
            self.close()

    def _idle_check(self) -> None:
        if self._deadline.armed:
            return  # before the first HELLO, the handshake deadline is what counts
        super()._idle_check()

    def _settle(self) -> None:
        """The link's own handshake is over: it no longer counts as pending."""
        if self._unsettled:
            self._unsettled = False
            self._admission.settled()

    def frame(self, kind: int, number: int, payload: bytes) -> None:
        if not self.proven:
            self._unproven_frames += 1
            if self._unproven_frames > MAX_UNPROVEN_FRAMES:
                raise NipcError("EPROTO", f"more than {MAX_UNPROVEN_FRAMES} frames before "
                                          "any channel authenticated")
        if kind == wire.Kind.RESULT:
            raise NipcError("EPROTO", "peer sent a RESULT")
        if kind != wire.Kind.HELLO:
            super().frame(kind, number, payload)
            return
        if self.exporter is None:
            raise NipcError("EPROTO", "HELLO before the TLS handshake completed")
        self._claim(number)
        self._hellos_taken += 1
        channel = self.add(Channel(self, number))
        try:
            hello = wire.decode(kind, payload)
            if not isinstance(hello, wire.Hello):
                raise NipcError("EPROTO", "peer handshake: expected a HELLO")
        except NipcError as e:
            log.info("peer {peer}: {error}", peer=self.peer, error=e.message)
            channel.answer(wire.Result(e.errno_name, e.message))
            self.close()
            return
        if not self._hellos.take():
            channel.answer(wire.Result("EAGAIN", f"peer link exceeds {self._hellos.rate:g} "
                                                 "new connections per second"))
            return
        try:
            settle = self._admission.channel()
        except Stopping as e:
            channel.answer(e.result())
            return
        if settle is None:
            channel.answer(wire.Result("EAGAIN", "receiving daemon has too many handshakes in progress"))
            return
        channel.on_settle = settle
        self._handler.hello(channel, wire.binding(self.exporter, number), hello)

    def _claim(self, number: int) -> None:
        """Use channel ``number`` once. The dialler numbers channels in order but sends
        their HELLOs as each one's Kerberos work ends, so a lower number may come later:
        the numbers skipped so far are remembered (a bounded set) until they are used, or
        given up with a CLOSE."""
        if number > self.highest:
            if number - self.highest + len(self.skipped) > MAX_SKIPPED:
                raise NipcError("EPROTO", f"channel {number} skips too many numbers")
            self.skipped.update(range(self.highest + 1, number))
            self.highest = number
        elif number in self.skipped:
            self.skipped.remove(number)
        else:
            raise NipcError("EPROTO", f"HELLO reuses channel number {number}")

    def unknown(self, kind: int, number: int) -> None:
        if number > self.highest or number in self.skipped:
            if kind != wire.Kind.CLOSE:
                raise NipcError("EPROTO", f"frame for channel {number}, which was never opened")
            self._claim(number)  # given up before its HELLO was sent
        elif not self.proven:
            self._late += 1
            if kind != wire.Kind.CLOSE or self._late > self._hellos_taken:
                raise NipcError("EPROTO", f"frame of type {kind} for channel {number}, which "
                                          "is over, before any channel authenticated")

    def violation(self, error: NipcError) -> None:
        log.info("peer {peer}: {error}", peer=self.peer, error=error.message)
        self.abort()

    def link_lost(self, reason: Failure) -> None:
        self._table.discard(self)
        self._deadline.cancel()
        self._settle()
        if reason.check(SSL.Error) and is_certificate_failure(ssl_detail(reason.value)):
            log.warn("peer {peer}: TLS certificate refused: {detail}",
                     peer=self.peer, detail=ssl_detail(reason.value))
