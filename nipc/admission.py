"""Admission of unauthenticated peers: who may open a peer link, and how fast a link may
open channels, before any of its channels passed Kerberos.

:class:`Admission` sits in front of the TLS factory and refuses a link before any TLS work
while too many others are still in their handshake; :class:`HelloRate` bounds the HELLOs
one link may send. The per-source and global counts themselves are :mod:`nipc.limits`.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.protocol import Factory, ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from nipc import wire
from nipc.errors import NipcError
from nipc.interfaces import ILinkAdmission, IPeerAdmission

if TYPE_CHECKING:
    from nipc.link import ServerLink

log = Logger()


class HelloRate:
    """A token bucket of HELLOs per link: ``rate`` a second, bursts of twice that."""

    def __init__(self, clock: Callable[[], float], rate: float) -> None:
        self._clock = clock
        self.rate = rate
        self._tokens = 2 * rate
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(2 * self.rate, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


#: A RESULT's ``info`` key: refused because the receiving daemon is stopping.
STOPPING = "stopping"


class Refusal(NipcError):
    """A channel's refusal that tells the sender more than its errno: ``info`` rides in the
    RESULT, so the sender can act on it (retry elsewhere, drop a session)."""

    info: dict[str, Any] = {}

    def result(self, token: bytes = b"") -> wire.Result:
        return wire.Result(self.errno_name, self.message, token=token, info=self.info)


class Stopping(Refusal):
    """The receiving daemon is stopping: no new channel, not even on a link it accepted
    before, and no OK for one still in its handshake (its process is about to end). The
    sender retires the link and dials once more: a restarted daemon answers on the new
    link; if none listens, the dial says so."""

    info = {STOPPING: True}

    def __init__(self) -> None:
        super().__init__("EHOSTUNREACH", "the receiving NIPC daemon is stopping")


def source_of(addr: Any) -> str:
    """The address a peer link comes from, for per-source limits."""
    return str(getattr(addr, "host", addr))


class PeerAdmission:
    """The daemon's admission of peers, under its bounds on handshakes in progress (per
    source and in all, :class:`~nipc.interfaces.IPeerAdmission`): links as they connect,
    then each channel's handshake. Closed once the daemon stops: no new connection, on old
    links either."""

    def __init__(self, limits: IPeerAdmission) -> None:
        self.limits = limits
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def link(self, source: str) -> LinkAdmission:
        """What one accepted link from ``source`` may take."""
        return LinkAdmission(self, source)


@implementer(ILinkAdmission)
class LinkAdmission:
    """One accepted link's share: its own handshake (counted as it connected, by
    :class:`Admission`), then each of its channels' handshakes (each costs a thread)."""

    def __init__(self, peers: PeerAdmission, source: str) -> None:
        self._peers = peers
        self._source = source

    def settled(self) -> None:
        self._peers.limits.peer_settled(self._source)

    def channel(self) -> Callable[[], None] | None:
        peers, source = self._peers, self._source
        if peers.closed:
            raise Stopping()
        if not peers.limits.peer_arrived(source):
            return None
        return partial(peers.limits.peer_settled, source)


class ServerLinkFactory(Factory):
    def __init__(self, build: Callable[[Any], ServerLink]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> ServerLink:
        return self._build(addr)


class Admission(ServerFactory):
    """In front of the TLS factory: a link is closed at once, before any TLS work, while
    too many others are still in their handshake (a flood of half-open peers)."""

    def __init__(self, inner: Any, limits: IPeerAdmission) -> None:
        self._inner = inner
        self._limits = limits

    def doStart(self) -> None:
        self._inner.doStart()

    def doStop(self) -> None:
        self._inner.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        if not self._limits.peer_arrived(source_of(addr)):
            log.warn("refusing peer link from {addr}: too many handshakes in progress", addr=addr)
            return None
        return self._inner.buildProtocol(addr)
