"""Every place nipc overrides or reads a private Twisted name, in one module.

Twisted keeps no promise about these names: a release may rename or drop any of them, and
an override of a method Twisted no longer calls fails silently (the code still runs, only
slower, or a systemd socket is no longer found). So they live here alone, each with why,
and :data:`PRIVATE_NAMES` lists them for ``tests/test_compat.py``, which fails naming the
name when the installed Twisted lacks one.

Checked against Twisted 24.7.0 to 26.10.0 (:data:`CHECKED_WITH`; the range setup.cfg
allows). When moving the range, run ``tests/test_compat.py`` against the new release and
read the overridden methods' new source: the test sees names and signatures, not meaning.
"""

from __future__ import annotations

import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet import tcp, unix
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IProtocolFactory, IReactorFDSet
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.python.systemd import ListenFDs

from nipc.limits import ACCEPTS_PER_TURN

log = Logger()

#: The Twisted releases this module was read against, oldest and newest.
CHECKED_WITH = ("24.7.0", "26.10.0")

#: Twisted class -> the private (or undocumented) names this module overrides or reads.
#: A class with no names is one whose existence is relied on.
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    # BulkTLSProtocol: bulk SSL_write/recv instead of 16 KiB slices.
    "twisted.protocols.tls.TLSMemoryBIOProtocol": (
        "_write", "_flushSendBIO", "_flushReceiveBIO", "_bufferedWrite", "_shutdownTLS",
        "_tlsShutdownFinished", "_tlsConnection", "_lostTLSConnection", "_aborted", "_producer",
        "_producerPaused"),
    # UnbufferedTLSFactory replaces this default protocol (write aggregation).
    "twisted.protocols.tls.BufferingTLSTransport": (),
    # write_now: whether anything is queued ahead of a write.
    "twisted.internet.abstract.FileDescriptor": (
        "_writeDisconnected", "_tempDataLen", "dataBuffer", "offset"),
    # systemd_listen_fds: the only holder of systemd's LISTEN_FDS once endpoints is imported.
    "twisted.internet.endpoints._SystemdParser": ("_sddaemon",),
    # GatePort: the accept batch Twisted grows per turn; AdoptedUNIXPort: adopting a
    # listening socket, and a connectionLost that skips unix.Port's unlink.
    "twisted.internet.tcp.Port": ("numberAccepts", "connectionLost"),
    "twisted.internet.unix.Port": ("_fromListeningDescriptor", "connectionLost"),
    # lean_poll: the epoll reactor's own loop, without its per-event log context.
    "twisted.internet.epollreactor.EPollReactor": ("_poller", "_selectables", "_doReadOrWrite"),
}
#: The overridden methods' parameters, as Twisted calls them.
SIGNATURES: dict[tuple[str, str], list[str]] = {
    ("twisted.protocols.tls.TLSMemoryBIOProtocol", "_write"): ["self", "bytes"],
    ("twisted.protocols.tls.TLSMemoryBIOProtocol", "_flushSendBIO"): ["self"],
    ("twisted.protocols.tls.TLSMemoryBIOProtocol", "_flushReceiveBIO"): ["self"],
    ("twisted.internet.unix.Port", "_fromListeningDescriptor"): [
        "cls", "reactor", "fd", "factory"],
    ("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite"): [
        "self", "selectable", "fd", "event"],
}


# -- write-through ---------------------------------------------------------------------------


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once what the socket takes when nothing is
    queued ahead of it. Twisted queues every write until the reactor's next turn (an
    epoll round and two epoll_ctl calls per message): on a relay that is most of the
    latency of a small message. What the socket does not take, or any error, goes the
    transport's own way, which reports it."""
    if (getattr(transport, "connected", False) and not transport.disconnecting
            and not getattr(transport, "_writeDisconnected", True)
            and transport.offset == len(transport.dataBuffer) and not transport._tempDataLen):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def producer_paused(consumer: Any) -> bool:
    """Whether ``consumer`` has paused the producer registered on it: a socket transport
    says so publicly, a TLS transport only in ``_producerPaused``."""
    return bool(getattr(consumer, "producerPaused", False)
                or getattr(consumer, "_producerPaused", False))


# -- bulk TLS --------------------------------------------------------------------------------


class BulkTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's memory-BIO TLS, moving bytes in bulk: a whole write is encrypted in one
    ``SSL_write`` and its records handed to TCP in one piece, and everything one TCP read
    decrypts is delivered in one call. Twisted slices writes into 16 KiB (a copy, an
    ``SSL_write``, a BIO read and a TCP write each) and delivers records one by one, which
    on a link carrying many connections' data cost more CPU than the cipher."""

    def _write(self, *pieces: bytes) -> None:
        if self._lostTLSConnection:
            return
        sent = 0
        for index, piece in enumerate(pieces):
            view = memoryview(piece)
            while view:
                try:
                    done = self._tlsConnection.send(view)
                except SSL.WantReadError:
                    self._bufferedWrite(b"".join([bytes(view), *pieces[index + 1:]]))  # type: ignore[no-untyped-call]
                    self._flushSendBIO(sent)
                    return
                except SSL.Error:
                    self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
                    return
                view = view[done:]
                sent += done
        self._flushSendBIO(sent)

    def writeSequence(self, iovec: Any) -> None:
        """The pieces encrypted one after the other, then sent as one: no join."""
        if self.disconnecting and self._producer is None:
            return
        self._write(*iovec)

    def _flushSendBIO(self, sent: int = 0) -> None:
        # Room for what was written plus each record's overhead (under 256 bytes).
        size = max(2**15, sent + (sent >> 14) * 256 + 1024)
        while True:
            try:
                data = self._tlsConnection.bio_read(size)
            except SSL.WantReadError:
                return
            write_now(self.transport, data)
            if len(data) < size:  # the BIO is empty: spare the WantReadError (~3 us)
                return

    def _flushReceiveBIO(self) -> None:
        received: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                received.append(self._tlsConnection.recv(2**16))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # as Twisted does, after what came before it
                self._deliver(received)
                received = []
                self._shutdownTLS()  # type: ignore[no-untyped-call]
                self._tlsShutdownFinished(None)  # type: ignore[no-untyped-call]
            except SSL.Error:
                failure = Failure()
                self._deliver(received)
                received = []
                self._tlsShutdownFinished(failure)  # type: ignore[no-untyped-call]
        self._deliver(received)
        self._flushSendBIO()

    def _deliver(self, received: list[bytes]) -> None:
        if received and not self._aborted:
            ProtocolWrapper.dataReceived(self, received[0] if len(received) == 1 else b"".join(received))


class UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """TLS without Twisted's write aggregation: that buffers each write until the end of
    the reactor iteration, a whole extra loop turn of latency per message, while the
    splice already hands TLS whole reads at a time."""

    protocol = BulkTLSProtocol
    noisy = False


# -- the reactor's poll ---------------------------------------------------------------------


def lean_poll(reactor: Any) -> None:
    """Make an epoll reactor hand each ready descriptor straight to its handler.

    Twisted wraps every event in ``log.callWithLogger``: a ``logPrefix()`` call and a
    copied context dict, a dozen Python calls (~3 us) per event, and a relay's small
    message is two events per daemon. That context only names the ``system`` of legacy
    ``twisted.python.log`` lines, which nipc does not write (its lines are
    ``twisted.logger`` events, which never read it). What the wrapper caught is still
    logged: an exception out of a handler's own error handling. Any other reactor (a
    test's) is left as it is."""
    if not isinstance(reactor, EPollReactor):
        return
    epoll: Any = reactor  # its private names have no types
    poll, selectables, handle = epoll._poller.poll, epoll._selectables, epoll._doReadOrWrite

    def do_poll(timeout: float | None) -> None:
        # epoll retries itself on EINTR (PEP 475); Twisted's check for it never fires.
        for fd, event in poll(-1 if timeout is None else timeout, len(selectables)):
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.failure("reactor: unhandled error from {selectable!r}", selectable=selectable)

    epoll.doIteration = do_poll


# -- systemd socket activation and the local listening ports ---------------------------------


def systemd_listen_fds() -> ListenFDs:
    """The descriptors systemd passed (socket activation). Twisted's ``systemd:`` endpoint
    parser reads the environment (and removes LISTEN_PID and LISTEN_FDS from it) when
    twisted.internet.endpoints is imported, long before any service starts: ask it, it is
    the only one left who knows."""
    from twisted.internet.endpoints import _SystemdParser

    fds: ListenFDs = _SystemdParser._sddaemon
    return fds


class GatePort(unix.Port):
    """A local socket the daemon routes from (the gate, an import). It accepts at most
    ``ACCEPTS_PER_TURN`` connections per turn of the reactor (Twisted grows its batch
    without bound): a connection refused for want of descriptors holds its own until the
    next turn, so a burst never meets EMFILE at accept(), where Twisted would close the
    callers still waiting without a word; each gets its ``ERR EAGAIN`` line."""

    _accepts = ACCEPTS_PER_TURN
    #: The socket file is systemd's socket unit's (socket activation), not the config's:
    #: its owner, group and mode are never changed.
    socket_unit = False

    @property
    def numberAccepts(self) -> int:
        return self._accepts

    @numberAccepts.setter
    def numberAccepts(self, wanted: int) -> None:
        self._accepts = min(wanted, ACCEPTS_PER_TURN)


class AdoptedUNIXPort(GatePort):
    """A Unix socket systemd listens on for the daemon (socket activation). The file is the
    socket unit's: it keeps the owner, group and mode systemd gave it and outlives the daemon,
    so clients queue on it across restarts."""

    socket_unit = True

    @classmethod
    def adopt(cls, reactor: IReactorFDSet, sock: socket.socket,
              factory: IProtocolFactory) -> "AdoptedUNIXPort":
        """What ``reactor.adoptStreamPort`` does, with this class; not yet listening. The
        port holds its own duplicate of ``sock``."""
        port: AdoptedUNIXPort = cls._fromListeningDescriptor(  # type: ignore[no-untyped-call]
            reactor, sock.fileno(), factory)
        return port

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # not unix.Port's, which unlinks the file
