"""The sending side: turn a caller's ``CONNECT`` into a connected end ready to splice.

``path@localhost`` (or this host's own name) is a plain local connect made as the caller.
Anything else goes to the peer daemon: TCP, TLS 1.3, a ticket in the caller's name bound
to that TLS session, one HELLO/RESULT exchange, and mutual authentication of the peer
before its answer is believed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferTimeout, fail
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from nipc import wire
from nipc.config import Config, PeerAddress
from nipc.discovery import FirstReachable, PeerLocator, show
from nipc.errors import NipcError
from nipc.identity import Caller, LocalIdentity, identity_of_caller
from nipc.impersonate import connect_unix, run_as
from nipc.kerberos import Delegated, Initiation, TicketSource
from nipc.registry import Registry, Routed
from nipc.peer import PeerClient
from nipc.request import ConnectRequest
from nipc.splice import Adopted, End, UnixEnd
from nipc.tls import (UnbufferedTLSFactory, check_peer_name, client_options, tls_failure,
                      tune_tcp)

log = Logger()


def new_connection_id() -> str:
    return secrets.token_hex(8)


def adopt_unix(reactor: Any, sock: Any) -> UnixEnd:
    """Hand a connected socket to the reactor as a splice end."""
    end = UnixEnd()
    try:
        reactor.adoptStreamConnection(sock.fileno(), sock.family, Adopted(end))
    finally:
        sock.close()
    return end


@dataclass(frozen=True)
class Peers:
    """What every dial to a peer daemon shares."""

    reactor: Any
    config: Config
    #: One TLS context for every dial: building an SSL_CTX per connection cost
    #: milliseconds of CPU and tens of kilobytes that were never given back. With
    #: [peer] ca_bundle it verifies every peer's chain; the name, which differs per
    #: peer, is checked per link (tls.check_peer_name), so one context still serves all.
    tls: Any
    locator: PeerLocator


class Router:
    def __init__(self, reactor: Any, config: Config, tickets: TicketSource,
                 registry: Registry) -> None:
        self._reactor = reactor
        self._config = config
        self._tickets = tickets
        self._registry = registry
        self._peers = Peers(reactor, config, client_options(config), PeerLocator(reactor, config))

    def is_local(self, host: str) -> bool:
        return host in ("localhost", self._config.host_name)

    def route(self, request: ConnectRequest, caller: Caller, conn_id: str,
              evidence: Routed | None = None) -> "Deferred[End]":
        """Connect for ``caller``; with ``evidence`` (an inbound connection the caller
        holds), onward in that connection's original caller's name."""
        # The caller's account name comes from NSS, which may ask a directory (sssd,
        # LDAP): never on the reactor thread, where a slow directory would stall everyone.
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), identity_of_caller, caller)
        return d.addCallback(self._route_as, request, conn_id, evidence)

    def _route_as(self, who: LocalIdentity, request: ConnectRequest, conn_id: str,
                  evidence: Routed | None) -> "Deferred[End]":
        if self.is_local(request.host):
            return self.connect_as(who, request.path, conn_id)
        tickets = self._tickets
        hops: tuple[str, ...] = (self._config.host_name,)
        if evidence is not None:
            assert evidence.principal is not None
            tickets = Delegated(self._reactor, evidence.delegation, evidence.principal)
            hops = (*evidence.hops, self._config.host_name)
        if len(hops) > self._config.max_hops:
            return fail(NipcError("ELOOP", f"chain longer than {self._config.max_hops} hops"))
        return _Dial(self._peers, tickets, who, request, conn_id, hops).start()

    def connect_as(self, who: LocalIdentity, path: str, conn_id: str) -> "Deferred[End]":
        """Connect to a local socket on a thread that has become ``who``."""
        timeout = self._config.connect_timeout

        def connected(sock: Any) -> End:
            self._registry.add(Routed(conn_id, who, None, (), self._config.host_name))
            return adopt_unix(self._reactor, sock)

        d = run_as(self._reactor, who, lambda: connect_unix(path, conn_id, timeout, who.describe()))
        return d.addCallback(connected)


def tcp_endpoint(reactor: Any, address: PeerAddress, timeout: float) -> Any:
    """A TCP endpoint for a peer; an address literal skips the name resolver (a thread
    hop per connect) that ``HostnameEndpoint`` would use."""
    if isIPAddress(address.host):
        return TCP4ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    if isIPv6Address(address.host):
        return TCP6ClientEndpoint(reactor, address.host, address.port, timeout=timeout)
    return HostnameEndpoint(reactor, address.host.encode("idna"), address.port, timeout=timeout)


def _link_failure(failure: Failure, addresses: Sequence[PeerAddress], host: str) -> Failure:
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
    if failure.check(neterror.ConnectError, neterror.ConnectionLost, neterror.ConnectionDone):
        return Failure(NipcError("EHOSTUNREACH", f"{where}: {failure.getErrorMessage()}"))
    return failure


class _Dial:
    """One attempt to reach a peer daemon for one routed connection."""

    def __init__(self, peers: Peers, tickets: TicketSource, who: LocalIdentity,
                 request: ConnectRequest, conn_id: str, hops: tuple[str, ...]) -> None:
        self._tls = peers.tls
        self._locator = peers.locator
        self._reactor = peers.reactor
        self._config = peers.config
        self._addresses: list[PeerAddress] = []
        self._hops = hops
        self._tickets = tickets
        self._who = who
        self._request = request
        self._conn_id = conn_id
        self._link: PeerClient | None = None
        self._initiation: Initiation | None = None

    def start(self) -> "Deferred[End]":
        # The static table, else DNS (with its own time limit); then the session.
        d = self._locator.locate(self._request.host).addCallback(self._session)
        return d.addErrback(self._failed)

    def _session(self, addresses: list[PeerAddress]) -> "Deferred[End]":
        self._addresses = addresses
        timeout = self._config.connect_timeout
        endpoint = FirstReachable([tcp_endpoint(self._reactor, a, timeout) for a in addresses])
        link = PeerClient(lambda tls: tune_tcp(tls, self._config))
        self._link = link
        d: Deferred[Any] = endpoint.connect(UnbufferedTLSFactory(self._tls, True, Adopted(link)))
        d.addCallback(lambda _: link.ready)
        if self._config.tls_ca_bundle is not None:
            d.addCallback(self._check_name)
        d.addCallback(self._initiate)
        d.addCallback(self._hello)
        d.addCallback(self._verify)
        d.addTimeout(self._config.connect_timeout + self._config.handshake_timeout, self._reactor)
        return d

    def _check_name(self, channel: bytes) -> bytes:
        """With a CA bundle: the peer's certificate names ``<host>`` as written."""
        assert self._link is not None
        check_peer_name(self._link.transport, self._request.host)
        return channel

    def _initiate(self, channel: bytes) -> "Deferred[Initiation]":
        limit = self._config.kdc_timeout

        def slow_kdc(failure: Failure) -> Failure:
            if failure.check(DeferTimeout):
                return Failure(NipcError(
                    "ETIMEDOUT",
                    f"Kerberos KDC did not answer within {limit:g}s (ticket for {self._who.user})"))
            return failure

        d = self._tickets.initiate(self._who, self._request.host, channel)
        return d.addTimeout(limit, self._reactor).addErrback(slow_kdc)

    def _hello(self, initiation: Initiation) -> "Deferred[wire.Result]":
        self._initiation = initiation
        assert self._link is not None
        hello = wire.Hello(self._request.path, self._request.host, self._hops,
                           initiation.token, self._conn_id)
        return self._link.exchange(hello)

    def _verify(self, result: wire.Result) -> End:
        """Mutual authentication before the answer is believed. On the reactor thread:
        checking the peer's AP-REP is a local decryption, no KDC, microseconds."""
        initiation, link = self._initiation, self._link
        assert initiation is not None and link is not None
        if result.token:
            initiation.step(result.token)
        if result.ok and not initiation.complete:
            raise NipcError("EPROTO", "peer daemon did not prove its identity (mutual authentication)")
        if not result.ok:
            raise result.error()
        return link

    def _failed(self, failure: Failure) -> Failure:
        if self._link is not None and self._link.transport is not None:
            self._link.abort()
        return _link_failure(failure, self._addresses, self._request.host)
