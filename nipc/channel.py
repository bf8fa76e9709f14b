"""One routed connection on a peer link: its credit window, what it holds before its
splice exists, and its two ends (the link's frames, the local splice).

Flow control is per channel (credit windows): a channel stops reading its local socket
while the peer has granted no room, and grants room only while its own local socket keeps
up. One slow reader stalls only its own channel. The link (:mod:`nipc.link`) owns the
framing and the channel table; a channel only writes its frames to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.channel_state import PEER_SENDS, Do, Event, State, step
from nipc.errors import NipcError
from nipc.splice import Splice

if TYPE_CHECKING:
    from nipc.link import Link

#: Bytes a channel's sender may have unacknowledged: enough to keep a local link busy,
#: small enough that a stalled reader holds little.
WINDOW = 1024 * 1024
#: Room is granted back in slices of this size (one CREDIT frame per slice).
GRANT_AT = WINDOW // 4


@dataclass
class Held:
    """The peer's frames that arrive before the splice starts (bounded by the window):
    its bytes, then whether its EOF and CLOSE came. Nothing but a CLOSE follows an EOF."""

    data: bytearray = field(default_factory=bytearray)
    eof: bool = False
    close: bool = False

    def __len__(self) -> int:
        return len(self.data)

    def take(self, number: int, kind: int, payload: bytes) -> None:
        if self.eof and kind != wire.Kind.CLOSE:
            raise NipcError("EPROTO", f"channel {number}: frame of type {kind} after EOF")
        if kind == wire.Kind.DATA:
            self.data += payload
        elif kind == wire.Kind.EOF:
            self.eof = True
        else:
            self.close = True


@implementer(IPushProducer)
class Channel:
    """One routed connection on a link: an end of a splice.

    Its lifecycle is :mod:`nipc.channel_state`'s table: each frame from the peer and each
    call from the splice or the link is an event; the table gives the next state and
    what to do, and every ending goes through :meth:`_end`. What stays here is the window
    (credit both ways, bytes queued for credit) and the frames held for the splice.

    It is its own ``transport`` for the splice: the local socket's transport is registered
    as its producer (paused while the peer has granted no room) and it is registered as
    the producer of the local socket's transport (paused while that socket's buffer is
    full, which withholds the peer's credit).
    """

    splice: Splice | None = None

    def __init__(self, link: "Link", number: int) -> None:
        self.link = link
        self.number = number
        self.transport = self
        self.state = State.OPENING
        self.producerPaused = False
        #: Server side: called once when the handshake is over, whichever way.
        self.on_settle: Callable[[], None] | None = None
        self._producer: Any = None
        self._credit = WINDOW  # bytes we may still send
        self._room = WINDOW  # bytes the peer may still send before our next grant
        self._owed = 0  # bytes delivered locally, not yet granted back
        self._granting = True
        self._pending = bytearray()  # read locally, waiting for credit
        self._eof_pending = False  # our EOF, queued behind _pending
        #: The peer's frames until the splice starts; None once given to it.
        self._held: Held | None = Held()
        self._reason: Failure | None = None
        self._result: Deferred[wire.Result] | None = None

    @property
    def peer(self) -> str:
        return self.link.peer

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- the lifecycle: events in, the table's actions out
    def _fire(self, event: Event, reason: Failure | None = None) -> None:
        self.state, do = step(self.state, event)
        if do is Do.NOTHING:
            return
        if do is Do.HOLD:
            assert self._held is not None
            kind = wire.Kind.EOF if event is Event.PEER_EOF else wire.Kind.CLOSE
            self._held.take(self.number, kind, b"")
        elif do is Do.RELEASE:
            self._release()
        elif do is Do.REPORT_LOST:
            assert self.splice is not None and self._held is not None and self._reason is not None
            self._held = None
            self.splice.lost(self, self._reason)
        elif do is Do.DELIVER_EOF:
            assert self.splice is not None
            self.splice.eof(self)
        elif do is Do.QUEUE_EOF:
            self._eof_pending = True
            self._flush()
        elif do is Do.FLUSH:
            self._flush()
        else:
            self._end(reason or Failure(ConnectionDone("channel closed")), do is Do.END_AND_TELL)

    def _end(self, reason: Failure, tell: bool) -> None:
        """The one way a channel ends (the state is CLOSED already): CLOSE to the peer if
        it does not know, out of the link's table, and the splice or the handshake told."""
        if tell and not self.link.closed:
            self.link.write(wire.frame(wire.Kind.CLOSE, self.number))
        self._reason = reason
        self._pending.clear()
        self.link.forget(self)
        self._settle()
        if self.splice is not None:
            if self._held is None:  # started: otherwise its start reports the loss
                self.splice.lost(self, reason)
        else:
            self._handshake_failed(reason)

    # -- frames from the link
    def received(self, kind: int, payload: bytes) -> None:
        if kind == wire.Kind.CREDIT:
            self._credit += wire.decode_credit(payload)
            if self._credit > WINDOW:
                raise NipcError("EPROTO", f"channel {self.number}: credit beyond the window")
            self._flush()
            return
        if kind == wire.Kind.CLOSE:
            self._fire(Event.PEER_CLOSE, Failure(ConnectionDone(
                "the peer closed the channel during its handshake" if self.state is State.OPENING
                else "the peer closed the channel")))
            return
        if kind == wire.Kind.EOF:
            self._fire(Event.PEER_EOF)  # a second one is illegal, held or not
            return
        self.data(payload)

    def data(self, payload: bytes) -> None:
        """A DATA frame from the peer. The link's steady path calls this directly: while
        spliced it costs one call on to the splice (room is granted back in slices)."""
        if self.state is not State.SPLICED and self.state not in PEER_SENDS:
            raise NipcError("EPROTO", f"channel {self.number}: frame of type {wire.Kind.DATA} after EOF")
        # never empty: an empty frame would cost us without counting against the window
        size = len(payload)
        if not size or size > self._room:
            raise NipcError("EPROTO", f"channel {self.number}: empty data, or beyond the granted window")
        self._room -= size
        if self._held is not None:
            self._held.take(self.number, wire.Kind.DATA, payload)
            return
        assert self.splice is not None
        self.splice.data(self, payload)
        self._owed += size
        if self._owed >= GRANT_AT:
            self._grant()

    def _deliver(self, data: bytes) -> None:
        """What was held, once the splice starts."""
        assert self.splice is not None
        self.splice.data(self, data)
        self._owed += len(data)
        self._grant()

    def _grant(self) -> None:
        if self._granting and self._owed >= GRANT_AT and self.state is not State.CLOSED:
            self.link.write(wire.credit_frame(self.number, self._owed))
            self._room += self._owed
            self._owed = 0

    # -- the handshake (dialling side)
    def exchange(self, hello: wire.Hello) -> "Deferred[wire.Result]":
        """Send the HELLO; the peer's RESULT fires the Deferred. Cancelling it closes the
        channel (the peer drops whatever it was doing for it)."""

        def cancel(_: Deferred[wire.Result]) -> None:
            self._result = None
            self.abort()

        result: Deferred[wire.Result] = Deferred(cancel)
        self._result = result
        if self.state is State.CLOSED:  # its link was lost since the channel was opened
            assert self._reason is not None
            self._handshake_failed(self._reason)
        else:
            self.link.write(wire.encode(hello, self.number))
        return result

    def answered(self, result: wire.Result) -> None:
        if self._result is None:
            raise NipcError("EPROTO", f"channel {self.number}: unexpected RESULT")
        d, self._result = self._result, None
        if result.ok:
            self._fire(Event.ANSWERED)
        else:
            self._fire(Event.REFUSED, Failure(ConnectionDone("the peer refused the channel")))
        d.callback(result)

    # -- the handshake (receiving side)
    def authenticated(self) -> None:
        """The peer's ticket for this channel passed Kerberos (whatever comes next)."""
        self.link.authenticated()

    def answer(self, result: wire.Result) -> None:
        """Send the RESULT; a refusal ends the channel (the link stays, unless it has
        taken too many refusals before any channel authenticated). A channel the peer
        gave up on meanwhile is answered with nothing."""
        tried = self.on_settle is not None  # admitted to the Kerberos work
        self._settle()
        event = Event.ANSWERED if result.ok else Event.REFUSED
        if self.state is State.CLOSED:
            self._fire(event)
            return
        step(self.state, event)  # a second answer raises before anything is sent
        self.link.write(wire.encode(result, self.number))
        self._fire(event, None if result.ok else Failure(ConnectionDone("the channel was refused")))
        # EAGAIN is this host's overload, not the peer's fault
        if not result.ok and tried and result.errno_name != "EAGAIN":
            self.link.refused()

    def _settle(self) -> None:
        settle, self.on_settle = self.on_settle, None
        if settle is not None:
            settle()

    # -- producer and consumer, for the splice
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self.producerPaused = False
        self.throttle()

    def unregisterProducer(self) -> None:
        self._producer = None
        self.producerPaused = False

    def pauseProducing(self) -> None:
        self._granting = False

    def resumeProducing(self) -> None:
        self._granting = True
        self._grant()

    def stopProducing(self) -> None:
        pass

    def throttle(self) -> None:
        """Read the local socket only while the peer has room and the link keeps up."""
        if self._producer is None or self.state is State.CLOSED:
            return
        if self.link.paused:
            self.link.blocked.add(self)
        hold = bool(self._pending) or self._credit <= 0 or self.link.paused
        if hold != self.producerPaused:
            self.producerPaused = hold
            if hold:
                self._producer.pauseProducing()
            else:
                self._producer.resumeProducing()

    # -- the splice's End
    def start(self) -> None:
        self._fire(Event.START)

    def _release(self) -> None:
        """Give the splice what was held, in the order it came."""
        assert self.splice is not None and self._held is not None
        held, self._held = self._held, None
        if held.data:
            self._deliver(bytes(held.data))
        if held.eof and self.state is not State.CLOSED:
            self._fire(Event.PEER_EOF)
        if held.close and self.state is not State.CLOSED:
            self._fire(Event.PEER_CLOSE, Failure(ConnectionDone("the peer closed the channel")))

    def send(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if not self._pending and len(data) <= self._credit:
            self._credit -= len(data)
            self.link.send_data(self.number, data)
            if self._credit <= 0 or self.link.paused:
                self.throttle()
        else:
            self._pending += data
            self._flush()

    def _flush(self) -> None:
        while self._pending and self._credit > 0 and self.state is not State.CLOSED:
            size = min(len(self._pending), self._credit, wire.MAX_DATA)
            self.link.send_data(self.number, bytes(self._pending[:size]))
            del self._pending[:size]
            self._credit -= size
        if self.state is State.CLOSED:
            return
        if not self._pending:
            if self._eof_pending:
                self._eof_pending = False
                self.link.write(wire.frame(wire.Kind.EOF, self.number))
            if self.state in (State.CLOSING, State.CLOSING_IN_SHUT):
                self._fire(Event.DRAINED)
                return
        self.throttle()

    def send_eof(self) -> None:
        self._fire(Event.LOCAL_EOF)

    def close(self) -> None:
        """Close once what is pending has been sent (as TCP's close does)."""
        self._fire(Event.LOCAL_CLOSE)

    def abort(self) -> None:
        self._fire(Event.ABORT)

    def link_lost(self, reason: Failure) -> None:
        """Its link is gone: the channel ends as a crash would."""
        self._fire(Event.LINK_LOST, reason)

    def _handshake_failed(self, reason: Failure) -> None:
        if self._result is not None:
            d, self._result = self._result, None
            d.errback(reason if reason.check(SSL.Error, NipcError) else Failure(NipcError(
                "EHOSTUNREACH", "peer daemon closed the connection during the handshake")))
