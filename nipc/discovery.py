"""Where a peer daemon listens (SPEC section 4): the static ``[peers]`` table, else DNS.

DNS means the SRV records ``_nipc._tcp.<host>`` first, their targets tried in RFC 2782
order (lowest priority first, a weighted random choice among equals), each at its own
port; without SRV records, the A and AAAA records of ``<host>`` at the default port
(``peer.port``). Lookups use Twisted's own DNS client, so nothing blocks the reactor or
holds a thread. Only addresses come from here: the Kerberos name stays ``nipc/<host>`` as
the caller wrote it.

:func:`order_services` is the pure selection logic; :class:`PeerLocator` does the lookups;
:class:`FirstReachable` dials the addresses in order until one accepts.
"""

from __future__ import annotations

import random
from socket import AF_INET, AF_INET6, inet_ntop
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    TimeoutError as DeferTimeout,
    succeed,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.names import client, dns, hosts, resolve
from twisted.names.error import DomainError
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc.config import DnsSection, PeerAddress
from nipc.errors import NipcError
from nipc.interfaces import IDaemonReactor, IPeerLocator

SERVICE_PREFIX = "_nipc._tcp."


@dataclass(frozen=True)
class Service:
    """One SRV record."""

    priority: int
    weight: int
    port: int
    target: str


def order_services(records: Sequence[Service], rng: random.Random) -> list[Service]:
    """The order to try SRV targets in (RFC 2782): by priority, lowest first; within one
    priority, repeatedly a random pick weighted by ``weight``, where weight-0 records keep
    a small chance (they go first in the running sum)."""
    groups: dict[int, list[Service]] = {}
    for record in records:
        groups.setdefault(record.priority, []).append(record)
    ordered: list[Service] = []
    for priority in sorted(groups):
        group = sorted(groups[priority], key=lambda r: r.weight != 0)  # stable: 0s first
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    break
            ordered.append(group.pop(index))
    return ordered


def retransmissions(total: float) -> tuple[float, ...]:
    """When to resend an unanswered query: after 1 s, 2 s, 4 s..., adding up to ``total``."""
    steps: list[float] = []
    step = 1.0
    while sum(steps) < total:
        steps.append(min(step, total - sum(steps)))
        step *= 2
    return tuple(steps)


def show(address: PeerAddress) -> str:
    return f"[{address.host}]:{address.port}" if ":" in address.host else f"{address.host}:{address.port}"


def _is_timeout(failure: Failure) -> bool:
    return failure.check(DeferTimeout, neterror.TimeoutError) is not None


@implementer(IPeerLocator)
class PeerLocator:
    """Finds the addresses of a peer daemon; one per daemon (the resolver is made once)."""

    def __init__(self, reactor: IDaemonReactor, dns: DnsSection, peers: Mapping[str, PeerAddress],
                 port: int, resolver: Any = None, rng: random.Random | None = None) -> None:
        """``peers``: [peers]; ``port``: [peer] port, where a peer found by its address
        alone listens."""
        self._reactor = reactor
        self._settings = dns
        self._peers = peers
        self._port = port
        self._resolver = resolver
        self._rng = rng or random.SystemRandom()
        self._timeouts = retransmissions(dns.timeout)

    def _dns(self) -> Any:
        """The configured servers only, or /etc/hosts then /etc/resolv.conf's servers."""
        if self._resolver is None:
            if self._settings.servers:
                self._resolver = client.Resolver(servers=list(self._settings.servers),
                                                 reactor=self._reactor)
            else:
                self._resolver = resolve.ResolverChain([
                    hosts.Resolver(b"/etc/hosts"),
                    client.Resolver(resolv="/etc/resolv.conf", reactor=self._reactor),
                ])
        return self._resolver

    def _servers(self) -> str:
        servers = self._settings.servers
        return ", ".join(f"{h}:{p}" for h, p in servers) if servers else "/etc/resolv.conf"

    def locate(self, host: str) -> "Deferred[list[PeerAddress]]":
        """Addresses to dial for ``host``, best first; fails with ``NipcError``
        (``EHOSTUNREACH``: nothing found; ``ETIMEDOUT``: DNS did not answer in time)."""
        static = self._peers.get(host)
        if static is not None:
            return succeed([static])
        if isIPAddress(host) or isIPv6Address(host):
            return succeed([PeerAddress(host, self._port)])
        d = Deferred.fromCoroutine(self._lookup(host))
        d.addTimeout(self._settings.timeout, self._reactor)
        return d.addErrback(self._failed, host)

    def _failed(self, failure: Failure, host: str) -> Failure:
        if failure.check(NipcError):
            return failure
        if _is_timeout(failure):
            return Failure(NipcError(
                "ETIMEDOUT", f"DNS ({self._servers()}) did not answer within "
                f"{self._settings.timeout:g}s looking up the NIPC daemon of {host}"))
        return Failure(NipcError(
            "EHOSTUNREACH", f"DNS lookup for {host} failed ({self._servers()}): "
            f"{failure.getErrorMessage()}"))

    async def _lookup(self, host: str) -> list[PeerAddress]:
        srv = SERVICE_PREFIX + host
        services = await self._services(srv)
        if len(services) == 1 and services[0].target in ("", "."):
            raise NipcError("EHOSTUNREACH", f"DNS: {srv} says {host} offers no NIPC service")
        if services:
            ordered = [s for s in order_services(services, self._rng) if s.target not in ("", ".")]
            found = await self._gather([s.target for s in ordered])
            result = [PeerAddress(ip, s.port) for s, ips in zip(ordered, found) for ip in ips]
            if not result:
                targets = ", ".join(sorted({s.target for s in ordered}))
                raise NipcError("EHOSTUNREACH", f"DNS ({self._servers()}): SRV {srv} names "
                                f"{targets}, which have no A/AAAA record")
            return result
        ips = await self._addresses(host)
        if not ips:
            raise NipcError(
                "EHOSTUNREACH", f"no address for the NIPC daemon of {host}: not in [peers], and "
                f"DNS ({self._servers()}) has no SRV record {srv} and no A/AAAA record {host}")
        return [PeerAddress(ip, self._port) for ip in ips]

    async def _services(self, name: str) -> list[Service]:
        try:
            answers, _, _ = await self._dns().lookupService(name, self._timeouts)
        except DomainError:  # NXDOMAIN, SERVFAIL, REFUSED...: no usable SRV records
            return []
        return [Service(r.payload.priority, r.payload.weight, r.payload.port,
                        r.payload.target.name.decode("ascii").lower().removesuffix("."))
                for r in answers if r.type == dns.SRV]

    async def _addresses(self, name: str) -> list[str]:
        """IPv4 addresses first, then IPv6; no record is an empty list."""
        resolver = self._dns()
        results = await DeferredList([resolver.lookupAddress(name, self._timeouts),
                                      resolver.lookupIPV6Address(name, self._timeouts)],
                                     consumeErrors=True)
        found: list[str] = []
        failures: list[Failure] = []
        for (ok, value), kind, family in zip(results, (dns.A, dns.AAAA), (AF_INET, AF_INET6)):
            if ok:
                found += [inet_ntop(family, r.payload.address) for r in value[0] if r.type == kind]
            elif not value.check(DomainError):  # NXDOMAIN or the like just means no records
                failures.append(value)
        if not found and failures:
            failures[0].raiseException()
        return found

    async def _gather(self, names: Sequence[str]) -> list[list[str]]:
        """The addresses of each name, looked up side by side; a name whose lookup failed
        has none, unless no name has any (then that failure is the answer)."""
        results: list[tuple[bool, Any]] = await DeferredList(
            [Deferred.fromCoroutine(self._addresses(n)) for n in names], consumeErrors=True)
        failures = [value for _, value in results if isinstance(value, Failure)]
        found = [[] if isinstance(value, Failure) else value for _, value in results]
        if failures and not any(found):
            failures[0].raiseException()
        return found


@implementer(IStreamClientEndpoint)
class FirstReachable:
    """Connects through the first of several endpoints that accepts (RFC 2782: a target
    that cannot be reached is skipped for the next)."""

    def __init__(self, endpoints: Sequence[Any]) -> None:
        self._endpoints = endpoints

    def connect(self, factory: Any) -> "Deferred[Any]":
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        last: BaseException = neterror.ConnectError("no address to connect to")
        for endpoint in self._endpoints:
            try:
                return await endpoint.connect(factory)
            except (neterror.ConnectError, neterror.DNSLookupError) as e:
                last = e  # not ConnectingCancelledError: the whole attempt was cancelled
        raise last
