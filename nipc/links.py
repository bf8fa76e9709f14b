"""The dialling side's links: one TLS link per peer daemon, shared by every routed
connection to it.

The first connect to a peer dials it (the static table, else DNS; TCP; TLS 1.3; with a CA
bundle, the peer's name); later connects open a channel on the same link at once. A link
that loses its TCP connection, or on which a handshake timed out, is never handed out
again; an idle one is closed after ``[timeouts] link_idle``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferTimeout, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc.compat import UnbufferedTLSFactory
from nipc.config import PeerAddress, PeerSection, TimeoutsSection
from nipc.discovery import FirstReachable, show
from nipc.errors import NipcError, from_oserror
from nipc.interfaces import IDaemonReactor, ILinks, IPeerLocator
from nipc.link import ClientLink
from nipc.splice import Adopted
from nipc.tls import check_peer_name, client_options, tls_failure, tune_tcp


def tcp_endpoint(reactor: IDaemonReactor, address: PeerAddress, timeout: float
                 ) -> IStreamClientEndpoint:
    """A TCP endpoint for a peer; an address literal skips the name resolver (a thread
    hop per connect) that ``HostnameEndpoint`` would use."""
    if isIPAddress(address.host):
        return TCP4ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    if isIPv6Address(address.host):
        return TCP6ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    return HostnameEndpoint(reactor, address.host.encode("idna"), address.port, timeout=timeout)


def link_failure(failure: Failure, addresses: Sequence[PeerAddress], host: str) -> Failure:
    """Network-level failures as the caller's errno."""
    where = f"NIPC daemon of {host} at {', '.join(show(a) for a in addresses)}"
    if failure.check(NipcError):
        return failure
    tls = tls_failure(failure, host, where)
    if tls is not None:
        return Failure(tls)
    if failure.check(neterror.ConnectionRefusedError):
        return Failure(NipcError("EHOSTUNREACH", f"{where} refused the connection (is nipcd running?)"))
    if failure.check(neterror.TimeoutError, DeferTimeout, CancelledError):
        return Failure(NipcError("ETIMEDOUT", f"{where} did not answer in time"))
    if failure.check(neterror.DNSLookupError):
        return Failure(NipcError(
            "EHOSTUNREACH", f"cannot resolve {', '.join(a.host for a in addresses)}"))
    cause = failure.value
    if isinstance(cause, neterror.ConnectError) and cause.osError in (errno.EMFILE, errno.ENFILE):
        # No socket for the dial: this host's overload, not the peer's absence.
        return Failure(from_oserror(OSError(cause.osError, os.strerror(cause.osError)),
                                    f"dialling the {where}"))
    if failure.check(neterror.ConnectError, neterror.ConnectionLost, neterror.ConnectionDone):
        return Failure(NipcError("EHOSTUNREACH", f"{where}: {failure.getErrorMessage()}"))
    return failure


@dataclass(frozen=True)
class Reused:
    """A link handed out again: a failure on it before any answer may be the link's
    (the peer restarted or closed it idle), and is worth one retry on a new link."""

    link: ClientLink


@implementer(ILinks)
class Links:
    """One :class:`ClientLink` per peer host name, dialled on first use."""

    def __init__(self, reactor: IDaemonReactor, timeouts: TimeoutsSection, peer: PeerSection,
                 locator: IPeerLocator) -> None:
        self._reactor = reactor
        self._timeouts = timeouts
        self._peer = peer
        #: One TLS context for every dial: building an SSL_CTX per link costs
        #: milliseconds of CPU. With [peer] ca_bundle it verifies every peer's chain;
        #: the name, which differs per peer, is checked per link (check_peer_name).
        self._tls = client_options(peer)
        self._locator = locator
        self._links: dict[str, ClientLink] = {}
        self._dialling: dict[str, list[Deferred[ClientLink | Reused]]] = {}

    def reconfigure(self, tls: CertificateOptions, locator: IPeerLocator) -> None:
        """A reload: links dialled from now on use ``tls`` (client_options of the new
        settings) and look peers up with ``locator`` (the new [peers] and [dns]); open
        links carry on."""
        self._tls = tls
        self._locator = locator

    def get(self, host: str) -> "Deferred[ClientLink | Reused]":
        """The link to ``host``'s daemon: the open one, else one being dialled for it."""
        link = self._links.get(host)
        if link is not None and not link.stopped:
            return succeed(Reused(link))
        waiters = self._dialling.get(host)
        first = waiters is None
        if waiters is None:
            waiters = self._dialling[host] = []

        def cancel(d: Deferred[ClientLink | Reused]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiter: Deferred[ClientLink | Reused] = Deferred(cancel)
        waiters.append(waiter)
        if first:
            self._dial(host)  # may finish at once (an address that cannot be reached)
        return waiter

    def _dial(self, host: str) -> None:
        def connect(found: list[PeerAddress]) -> "Deferred[ClientLink]":
            timeouts = self._timeouts
            link = ClientLink(self._reactor, partial(tune_tcp, timeouts=timeouts),
                              timeouts.link_idle, timeouts.link_ping, found,
                              partial(self._drop, host))
            timeout = timeouts.connect
            endpoint = FirstReachable([tcp_endpoint(self._reactor, a, timeout) for a in found])
            d: Deferred[Any] = endpoint.connect(UnbufferedTLSFactory(self._tls, True, Adopted(link)))
            d.addCallback(lambda _: link.ready)
            if self._peer.ca_bundle is not None:
                d.addCallback(lambda _: check_peer_name(link.transport, host))
            d.addTimeout(timeout + timeouts.handshake, self._reactor)

            def abandoned(failure: Failure) -> Failure:
                if link.transport is not None:
                    link.abort()
                return link_failure(failure, found, host)

            return d.addCallbacks(lambda _: link, abandoned)

        def done(link: ClientLink) -> None:
            self._links[host] = link
            for waiter in self._dialling.pop(host):
                waiter.callback(link)

        def failed(failure: Failure) -> None:
            mapped = link_failure(failure, (), host)  # unless connect mapped it already
            for waiter in self._dialling.pop(host):
                waiter.errback(mapped)

        self._locator.locate(host).addCallback(connect).addCallbacks(done, failed)

    def _drop(self, host: str, link: ClientLink) -> None:
        if self._links.get(host) is link:
            del self._links[host]

    def describe(self, now: float) -> list[dict[str, Any]]:
        """The open links, for ``nipc status``."""
        return [dict(link.describe(now), host=host, direction="dialled")
                for host, link in sorted(self._links.items())]

    def close(self) -> None:
        """Close every link (the daemon is stopping)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
