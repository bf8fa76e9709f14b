"""The destination connector: the final connect, made as the caller, as a Twisted endpoint.

``ImpersonatedConnector.endpoint(who, path, conn_id)`` is an ``IStreamClientEndpoint``
like ``unix:path=...``, except that its ``connect`` runs the walk and connect of
:mod:`nipc.destination` on a thread that has become ``who`` (a warm worker of exactly that
identity, :mod:`nipc.workers`, else a fresh thread, :mod:`nipc.impersonate`), so the
kernel's own permission checks decide; the connected socket is then handed to the reactor.
The local route (:mod:`nipc.router`) and the receiving side (:mod:`nipc.inbound`) both
reach it through ``connectProtocol``, so a routed connection reads as the design card's
Deferred chain: ticket, validation, impersonated connect, splice.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IAddress, IProtocol, IProtocolFactory, IStreamClientEndpoint,
)
from twisted.internet.protocol import ServerFactory
from zope.interface import implementer

from nipc.config import DestinationsSection, HostSection, TimeoutsSection
from nipc.destination import PathPolicy, connect_unix
from nipc.errors import NipcError, from_oserror
from nipc.identity import LocalIdentity
from nipc.interfaces import IConnectorReactor, IDestinationConnector
from nipc.stuck import StuckConnects
from nipc.workers import WARM


#: Beyond ``[timeouts] connect``, the time a thread that timed out by itself (its
#: ``connect()`` on a full backlog) has to say so before it counts as stuck in the kernel.
GRACE = 1.0


class _Remembering(ServerFactory):
    """``factory``, keeping the protocol it builds: ``adoptStreamConnection`` returns
    nothing, while an endpoint's Deferred fires with the connected protocol."""

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        assert addr is not None  # adoptStreamConnection passes the socket's own address
        self.built = self._factory.buildProtocol(addr)
        return self.built


@implementer(IStreamClientEndpoint)
class CallerEndpoint:
    """A local socket reached as ``who``: ``path`` (already expanded for ``who``) walked and
    connected on a thread that has become ``who``, within ``timeout`` seconds, the daemon's
    end bound to ``conn_id``'s abstract name; with a ``policy``, only where it permits. A
    thread that is still in the kernel at the deadline is left to ``stuck``."""

    def __init__(self, reactor: IConnectorReactor, who: LocalIdentity, path: str, conn_id: str,
                 timeout: float, policy: PathPolicy | None, stuck: StuckConnects) -> None:
        self._reactor = reactor
        self._who = who
        self._path = path
        self._conn_id = conn_id
        self._timeout = timeout
        self._policy = policy
        self._stuck = stuck

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Fires with the connected protocol, or fails with a NipcError for the caller."""
        try:
            self._stuck.admit(self._who)
        except NipcError as e:
            return fail(e)
        d = self._stuck.bounded(WARM.run(self._reactor, self._who, self._connect),
                                self._timeout + GRACE, self._who, self._path, socket.socket.close)
        return d.addCallback(self._adopt, protocolFactory)

    def _connect(self) -> socket.socket:
        return connect_unix(self._path, self._conn_id, self._timeout, self._who, self._policy)

    def _adopt(self, sock: socket.socket, factory: IProtocolFactory) -> IProtocol:
        remembering = _Remembering(factory)
        try:
            self._reactor.adoptStreamConnection(sock.fileno(), sock.family, remembering)
        except OSError as e:  # EMFILE, ENFILE: the reactor takes a duplicate of the socket
            raise from_oserror(e, "taking on the connected socket") from None
        finally:
            sock.close()
        if remembering.built is None:
            raise NipcError("ECONNABORTED", f"connection to {self._path} refused by its protocol")
        return remembering.built


@implementer(IDestinationConnector)
class ImpersonatedConnector:
    """Makes the :class:`CallerEndpoint` for each connect, with the settings in force now
    (a reload applies to the next connect). ``remote``: the callers come from other hosts,
    so ``[destinations]`` limits where they may connect."""

    def __init__(self, reactor: IConnectorReactor, host: HostSection, timeouts: TimeoutsSection,
                 destinations: DestinationsSection, *, remote: bool,
                 stuck: StuckConnects) -> None:
        self._reactor = reactor
        self._stuck = stuck
        self._host = host
        self._timeouts = timeouts
        self._destinations = destinations
        self._remote = remote

    def endpoint(self, who: LocalIdentity, path: str, conn_id: str) -> CallerEndpoint:
        allowed = self._destinations
        policy = PathPolicy(allowed.allow, allowed.deny, self._host.name) if self._remote else None
        return CallerEndpoint(self._reactor, who, path, conn_id, self._timeouts.connect, policy,
                              self._stuck)
