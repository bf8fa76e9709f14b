"""One routed connection on a peer link: its credit window, what it holds before its
splice exists, and its two ends (the link's frames, the local splice).

Flow control is per channel (credit windows): a channel stops reading its local socket
while the peer has granted no room, and grants room only while its own local socket keeps
up. One slow reader stalls only its own channel. The link (:mod:`nipc.link`) owns the
framing and the channel table; a channel only writes its frames to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.errors import NipcError
from nipc.splice import Splice

if TYPE_CHECKING:
    from nipc.link import Link

#: Bytes a channel's sender may have unacknowledged: enough to keep a local link busy,
#: small enough that a stalled reader holds little.
WINDOW = 1024 * 1024
#: Room is granted back in slices of this size (one CREDIT frame per slice).
GRANT_AT = WINDOW // 4


@implementer(IPushProducer)
class Channel:
    """One routed connection on a link: an end of a splice.

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
        self.closed = False
        self.producerPaused = False
        #: Server side: called once when the handshake is over, whichever way.
        self.on_settle: Callable[[], None] | None = None
        self._producer: Any = None
        self._credit = WINDOW  # bytes we may still send
        self._room = WINDOW  # bytes the peer may still send before our next grant
        self._owed = 0  # bytes delivered locally, not yet granted back
        self._granting = True
        self._pending = bytearray()  # read locally, waiting for credit
        self._eof_pending = False
        self._close_pending = False
        #: What arrives before the splice exists (bounded by the window): data, then
        #: whether EOF and CLOSE came.
        self._holding = True
        self._held = bytearray()
        self._held_eof = False
        self._held_close = False
        self._eof_received = False
        #: The handshake is over (RESULT OK sent or received): a CLOSE before that ends
        #: the channel at once, since no splice will come to take it.
        self.established = False
        self._reason: Failure | None = None
        self._result: Deferred[wire.Result] | None = None

    @property
    def peer(self) -> str:
        return self.link.peer

    # -- frames from the link
    def received(self, kind: int, payload: bytes) -> None:
        if kind == wire.Kind.CREDIT:
            self._credit += wire.decode_credit(payload)
            if self._credit > WINDOW:
                raise NipcError("EPROTO", f"channel {self.number}: credit beyond the window")
            self._flush()
            return
        if kind == wire.Kind.CLOSE:
            if not self.established:
                self.finish(Failure(ConnectionDone("the peer closed the channel during its handshake")))
            elif self._holding:
                self._held_close = True
            else:
                self.finish(Failure(ConnectionDone("the peer closed the channel")))
            return
        if self._eof_received:
            raise NipcError("EPROTO", f"channel {self.number}: frame of type {kind} after EOF")
        if kind == wire.Kind.EOF:
            self._eof_received = True
            if self._holding:
                self._held_eof = True
            else:
                self.splice.eof(self)  # type: ignore[union-attr]
            return
        # DATA: never empty (an empty frame would cost us without counting against the window)
        if not payload or len(payload) > self._room:
            raise NipcError("EPROTO", f"channel {self.number}: empty data, or beyond the granted window")
        self._room -= len(payload)
        if self._holding:
            self._held += payload
        else:
            self._deliver(payload)

    def _deliver(self, data: bytes) -> None:
        assert self.splice is not None
        self.splice.data(self, data)
        self._owed += len(data)
        self._grant()

    def _grant(self) -> None:
        if self._granting and self._owed >= GRANT_AT and not self.closed:
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
        if self.closed:  # its link was lost since the channel was opened
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
            self.established = True
        else:
            self._drop()
        d.callback(result)

    # -- the handshake (receiving side)
    def authenticated(self) -> None:
        """The peer's ticket for this channel passed Kerberos (whatever comes next)."""
        self.link.authenticated()

    def answer(self, result: wire.Result) -> None:
        """Send the RESULT; a refusal ends the channel (the link stays, unless it has
        taken too many refusals before any channel authenticated)."""
        tried = self.on_settle is not None  # admitted to the Kerberos work
        self._settle()
        if self.closed:
            return
        self.link.write(wire.encode(result, self.number))
        if result.ok:
            self.established = True
        else:
            self._drop()
            if tried and result.errno_name != "EAGAIN":  # this host's overload: not the peer's
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
        if self._producer is None or self.closed:
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
        assert self.splice is not None
        self._holding = False
        held, self._held = bytes(self._held), bytearray()
        if held and not self.closed:
            self._deliver(held)
        if self._held_eof and not self.closed:
            self.splice.eof(self)
        if self._held_close:
            self.finish(Failure(ConnectionDone("the peer closed the channel")))
        elif self.closed and self._reason is not None:
            self.splice.lost(self, self._reason)  # lost while the splice was being made

    def send(self, data: bytes) -> None:
        if self.closed:
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
        while self._pending and self._credit > 0 and not self.closed:
            size = min(len(self._pending), self._credit, wire.MAX_DATA)
            self.link.send_data(self.number, bytes(self._pending[:size]))
            del self._pending[:size]
            self._credit -= size
        if self.closed:
            return
        if not self._pending:
            if self._eof_pending:
                self._eof_pending = False
                self.link.write(wire.frame(wire.Kind.EOF, self.number))
            if self._close_pending:
                self._end()
                return
        self.throttle()

    def send_eof(self) -> None:
        if not self.closed:
            self._eof_pending = True
            self._flush()

    def close(self) -> None:
        """Close once what is pending has been sent (as TCP's close does)."""
        if not self.closed:
            self._close_pending = True
            self._flush()

    def abort(self) -> None:
        if not self.closed:
            self._pending.clear()
            self._end()

    def _end(self) -> None:
        """Tell the peer this channel is over, and end it here."""
        if not self.link.closed:
            self.link.write(wire.frame(wire.Kind.CLOSE, self.number))
        self.finish(Failure(ConnectionDone("channel closed")))

    def _drop(self) -> None:
        """End a channel the peer knows is over (a refused handshake): nothing to say."""
        self.closed = True
        self.link.forget(self)

    def finish(self, reason: Failure) -> None:
        """The channel is over: closed by either side, or its link lost."""
        if self.closed:
            return
        self.closed = True
        self._reason = reason
        self._pending.clear()
        self.link.forget(self)
        self._settle()
        if self.splice is not None:
            if not self._holding:
                self.splice.lost(self, reason)
        else:
            self._handshake_failed(reason)

    def _handshake_failed(self, reason: Failure) -> None:
        if self._result is not None:
            d, self._result = self._result, None
            d.errback(reason if reason.check(SSL.Error, NipcError) else Failure(NipcError(
                "EHOSTUNREACH", "peer daemon closed the connection during the handshake")))
