"""Admission of unauthenticated peers: who may open a peer link, and how fast a link may
open channels, before any of its channels passed Kerberos.

:class:`Admission` sits in front of the TLS factory and refuses a link before any TLS work
while too many others are still in their handshake; :class:`HelloRate` bounds the HELLOs
one link may send. The per-source and global counts themselves are :mod:`nipc.limits`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.protocol import Factory
from twisted.logger import Logger

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


def source_of(addr: Any) -> str:
    """The address a peer link comes from, for per-source limits."""
    return str(getattr(addr, "host", addr))


class ServerLinkFactory(Factory):
    def __init__(self, build: Callable[[Any], ServerLink]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> ServerLink:
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
