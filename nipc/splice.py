"""The splice: two connected ends, bytes copied verbatim both ways.

Like Twisted's ``portforward``: each end's transport is the producer for the other's, so
a slow reader pauses the writer and buffering stays bounded. EOF is passed on as a
half-close; only when both directions have ended, or an end is lost, is everything closed.
File descriptors sent on a spliced connection cannot cross hosts: they are closed and the
whole connection is torn down rather than silently dropping them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import IFileDescriptorReceiver, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc.compat import producer_paused, write_now

log = Logger()


#: Bytes read from a local socket at once: fewer trips through the splice per byte.
#: (Twisted's default, 64 KiB, is also where it pauses a producer writing to it.)
UNIX_BUFFER = 256 * 1024


class End(TypingProtocol):
    """What a splice needs of each of its two ends."""

    splice: "Splice | None"
    transport: Any

    def start(self) -> None: ...
    def send(self, data: bytes) -> None: ...
    def send_eof(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Splice:
    """Joins two ends; reports once, when both are gone, through ``on_end``."""

    def __init__(self, left: End, right: End, on_end: Callable[["Splice"], None]) -> None:
        self.left, self.right = left, right
        #: Bytes received from each end (counted per message: kept to two attributes).
        self._from_left = self._from_right = 0
        self.started = time.monotonic()
        self.violation: str | None = None
        self._on_end = on_end
        self._eof: set[int] = set()
        self._lost: set[int] = set()
        left.splice = right.splice = self
        left.transport.registerProducer(right.transport, True)
        right.transport.registerProducer(left.transport, True)
        left.start()
        right.start()

    def _other(self, end: End) -> End:
        return self.right if end is self.left else self.left

    @property
    def received(self) -> dict[int, int]:
        """Bytes received from each end, by ``id()`` of the end."""
        return {id(self.left): self._from_left, id(self.right): self._from_right}

    def data(self, end: End, data: bytes) -> None:
        # Every message of both directions passes here: no lookups beyond the two ends.
        if end is self.left:
            self._from_left += len(data)
            self.right.send(data)
        else:
            self._from_right += len(data)
            self.left.send(data)

    def _unthrottle(self, end: End) -> None:
        """Stop ``end``'s reading being paused by the other end's full write buffer.

        Needed before a half-close or close: Twisted does not shut a transport down while
        a paused streaming producer is registered on it (it resumes the producer instead),
        so an EOF or close would silently never happen; and a producer left paused would
        never read again, so its own peer's close would go unnoticed.
        """
        consumer = self._other(end).transport
        paused = producer_paused(consumer)
        consumer.unregisterProducer()
        if paused:
            end.transport.resumeProducing()

    def eof(self, end: End) -> None:
        if id(end) in self._eof:
            return
        self._eof.add(id(end))
        self._unthrottle(end)
        other = self._other(end)
        if id(other) in self._eof:
            self.left.close()
            self.right.close()
        else:
            other.send_eof()

    def lost(self, end: End, reason: Failure) -> None:
        self._lost.add(id(end))
        other = self._other(end)
        if id(other) not in self._lost:
            # Deliver what the other end still has buffered, then close it: the same
            # EOF a local peer's crash would give.
            if id(end) not in self._eof:
                self._unthrottle(end)
            other.close()
        elif len(self._lost) == 2:
            self._on_end(self)

    def refuse(self, end: End, why: str) -> None:
        """Tear the whole connection down at both ends (a protocol violation)."""
        if self.violation is None:
            self.violation = why
        self.left.abort()
        self.right.abort()


@implementer(IHalfCloseableProtocol, IFileDescriptorReceiver)
class UnixEnd(Protocol):
    """A local AF_UNIX connection as one end of a splice."""

    splice: Splice | None = None

    def connectionMade(self) -> None:
        self.transport.bufferSize = UNIX_BUFFER  # type: ignore[union-attr]

    def start(self) -> None:
        """Called once the splice is in place: nothing was held back."""

    def send(self, data: bytes) -> None:
        write_now(self.transport, data)

    def send_eof(self) -> None:
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        assert self.splice is not None
        self.splice.data(self, data)

    def readConnectionLost(self) -> None:
        assert self.splice is not None
        self.splice.eof(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if self.splice is not None:
            self.splice.lost(self, reason)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        os.close(descriptor)
        self.refuse_fd()

    def refuse_fd(self) -> None:
        assert self.splice is not None
        self.splice.refuse(self, "file descriptor passing (SCM_RIGHTS) on a routed connection")


class Adopted(Factory):
    """Hands one already-built protocol (a link) to an endpoint inside a TLS factory,
    quietly: connectProtocol's factory would log a start and a stop line per link. (The
    destination connector needs none: :mod:`nipc.connector`.)"""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_instance
