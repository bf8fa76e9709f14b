"""The peer link: one TLS connection between two daemons per routed connection.

A ``PeerLink`` speaks the framed protocol of :mod:`nipc.wire`. Until the handshake
completes it passes messages to its owner (the sending :class:`PeerClient` or the
receiving :class:`PeerServer`); once spliced, DATA and EOF frames become bytes and
half-close on the other end of the splice.
"""

from __future__ import annotations

from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.deadline import Deadline
from nipc.errors import NipcError
from nipc.splice import Splice
from nipc.tls import channel_binding, is_certificate_failure, ssl_detail

log = Logger()


@implementer(IHandshakeListener)
class PeerLink(Protocol):
    """Frame decoding and the splice-end behaviour shared by both sides."""

    splice: Splice | None = None
    #: Stream frames that arrived after the handshake but before the splice existed.
    _held: list[tuple[int, bytes]] | None = None
    closed = False

    def __init__(self, tune: Callable[[Any], None]) -> None:
        self._decoder = wire.FrameDecoder()
        self._tune = tune

    def connectionMade(self) -> None:
        self._tune(self.transport)

    def handshakeCompleted(self) -> None:
        self.tls_ready(channel_binding(self.transport))

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except NipcError as e:
            self.fail(e)
            return
        self._dispatch(frames)

    def hold(self) -> None:
        """The handshake is over: keep stream frames until :meth:`start` (bounded by
        pausing the transport, so a fast sender cannot make us buffer more)."""
        self._held = []

    def start(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._dispatch(held)
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _dispatch(self, frames: list[tuple[int, bytes]]) -> None:
        for index, (kind, payload) in enumerate(frames):
            if self._held is not None:
                self._held.extend(frames[index:])
                self.transport.pauseProducing()  # type: ignore[union-attr]
                return
            if self.splice is not None:
                if kind == wire.Kind.DATA:
                    self.splice.data(self, payload)
                elif kind == wire.Kind.EOF:
                    self.splice.eof(self)
                else:
                    self.splice.refuse(self, f"peer sent a handshake frame ({kind}) mid-stream")
                    return
            else:
                try:
                    self.message(wire.decode(kind, payload))
                except NipcError as e:
                    self.fail(e)
                    return

    def send(self, data: bytes) -> None:
        for start in range(0, len(data), wire.MAX_DATA):
            chunk = data[start : start + wire.MAX_DATA]
            self.transport.writeSequence([wire.data_header(len(chunk)), chunk])  # type: ignore[union-attr]

    def send_eof(self) -> None:
        self.transport.write(wire.EOF_FRAME)  # type: ignore[union-attr]

    def send_message(self, message: wire.Message) -> None:
        self.transport.write(wire.encode(message))  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        if not self.closed:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = True
        if self.splice is not None:
            self.splice.lost(self, reason)
        else:
            self.lost_before_splice(reason)

    # Hooks for the two sides.
    def tls_ready(self, channel: bytes) -> None:
        raise NotImplementedError

    def message(self, message: wire.Message) -> None:
        raise NotImplementedError

    def fail(self, error: NipcError) -> None:
        raise NotImplementedError

    def lost_before_splice(self, reason: Failure) -> None:
        raise NotImplementedError


class PeerClient(PeerLink):
    """The sending daemon's side: waits for TLS, sends HELLO, waits for the RESULT."""

    def __init__(self, tune: Callable[[Any], None]) -> None:
        super().__init__(tune)
        self.ready: Deferred[bytes] = Deferred()
        self._result: Deferred[wire.Result] | None = None
        #: Why the link ended before the splice, for an exchange started after that
        #: (a TLS 1.3 peer refuses our certificate only after our side of the handshake).
        self._lost: Failure | None = None

    def tls_ready(self, channel: bytes) -> None:
        self.ready.callback(channel)

    def exchange(self, hello: wire.Hello) -> "Deferred[wire.Result]":
        if self._lost is not None:
            return fail(self._lost)
        self._result = Deferred(lambda d: self.abort())
        self.send_message(hello)
        return self._result

    def message(self, message: wire.Message) -> None:
        if isinstance(message, wire.Result) and self._result is not None:
            result, self._result = self._result, None
            if message.ok:
                self.hold()
            result.callback(message)
        else:
            self.fail(NipcError("EPROTO", "peer handshake: unexpected message"))

    def fail(self, error: NipcError) -> None:
        self.abort()
        self._fire_error(error)

    def lost_before_splice(self, reason: Failure) -> None:
        # A TLS failure goes up as it is: the dialler names the host and the reason.
        self._lost = reason if reason.check(SSL.Error) else Failure(NipcError(
            "EHOSTUNREACH", "peer daemon closed the connection during the handshake"))
        self._fire_error(self._lost)

    def _fire_error(self, error: NipcError | Failure) -> None:
        if not self.ready.called:
            self.ready.errback(error)
        elif self._result is not None:
            result, self._result = self._result, None
            result.errback(error)


class PeerServer(PeerLink):
    """The receiving daemon's side: one HELLO, answered by :class:`nipc.inbound.Inbound`."""

    def __init__(self, tune: Callable[[Any], None], on_hello: Callable[["PeerServer", bytes, wire.Hello], None],
                 reactor: Any, timeout: float, settled: Callable[[], None]) -> None:
        super().__init__(tune)
        self._on_hello = on_hello
        self._settled: Callable[[], None] | None = settled
        self._timeout = timeout
        self._channel: bytes | None = None
        self._deadline = Deadline(reactor)
        self.answered = False

    def connectionMade(self) -> None:
        super().connectionMade()
        # One deadline covers TLS and the HELLO: a slow or silent peer costs little.
        self._deadline.arm(self._timeout, self._expire)

    def _expire(self) -> None:
        log.info("peer {peer} sent no complete handshake in {timeout}s; closing",
                 peer=self.transport.getPeer(), timeout=self._timeout)  # type: ignore[union-attr]
        self.abort()

    def tls_ready(self, channel: bytes) -> None:
        self._channel = channel

    def message(self, message: wire.Message) -> None:
        if not isinstance(message, wire.Hello) or self._channel is None or not self._deadline.armed:
            self.fail(NipcError("EPROTO", "peer handshake: expected one HELLO"))
            return
        self._deadline.cancel()
        self._on_hello(self, self._channel, message)

    def _settle(self) -> None:
        """The handshake is over, one way or another: it no longer counts as pending."""
        settled, self._settled = self._settled, None
        if settled is not None:
            settled()

    def answer(self, result: wire.Result) -> None:
        """Send the RESULT; an error result closes the link once it is written."""
        self._settle()
        if self.closed:
            return
        self.answered = True
        self.send_message(result)
        if not result.ok:
            self.close()

    def fail(self, error: NipcError) -> None:
        log.info("peer {peer}: {error}", peer=self.transport.getPeer(), error=str(error))  # type: ignore[union-attr]
        if not self.answered:
            self.answer(wire.Result(error.errno_name, error.message))
        self.abort()

    def lost_before_splice(self, reason: Failure) -> None:
        self._deadline.cancel()
        self._settle()
        if reason.check(SSL.Error) and is_certificate_failure(ssl_detail(reason.value)):
            log.warn("peer {peer}: TLS certificate refused: {detail}",
                     peer=self.transport.getPeer(),  # type: ignore[union-attr]
                     detail=ssl_detail(reason.value))


def source_of(addr: Any) -> str:
    """The address a peer link comes from, for per-source limits."""
    return str(getattr(addr, "host", addr))


class PeerServerFactory(Factory):
    def __init__(self, build: Callable[[Any], PeerServer]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> PeerServer:
        return self._build(addr)


class Admission(Factory):
    """In front of the TLS factory: a link is closed at once, before any TLS work, while
    too many others are still in their handshake (a flood of half-open peers)."""

    def __init__(self, inner: Any, admit: Callable[[str], bool]) -> None:
        self._inner = inner
        self._admit = admit

    def doStart(self) -> None:
        self._inner.doStart()

    def doStop(self) -> None:
        self._inner.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        if not self._admit(source_of(addr)):
            log.warn("refusing peer link from {addr}: too many handshakes in progress", addr=addr)
            return None
        return self._inner.buildProtocol(addr)
