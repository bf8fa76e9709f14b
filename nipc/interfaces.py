"""The contracts at NIPC's seams, as zope.interface interfaces (as magic-wormhole's
``_interfaces.py``): what one component needs of another, and nothing of how it is done.

The service (:mod:`nipc.service`) builds every component and hands each the providers it
needs; tests hand it fakes instead. ``zope.interface.verify`` checks each provider
(tests/test_interfaces.py), and mypy-zope checks the signatures against these. Methods
are written without ``self``, as zope.interface wants. Which way the arrows go::

    gate --IRouter--> router --ILinks--> links --IPeerLocator--> discovery
                        |--ITicketSource--> kerberos          (sending side)
    link --IInboundHandler--> inbound --IAcceptor--> kerberos  (receiving side)
                                 |--IProjection--> projection
    gate, router, inbound --IDestinationConnector--> the local connect as the caller
    gate, inbound --IRegistry, IConnections, I*Admission--> the service's own
    connections --IAuditSink--> metrics
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import (
    IReactorCore, IReactorFDSet, IReactorFromThreads, IReactorSocket, IReactorTCP,
    IReactorThreads, IReactorTime, IReactorUNIX, IStreamClientEndpoint,
)
from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.ssl import CertificateOptions
    from twisted.logger import Logger

    from nipc import wire
    from nipc.channel import Channel
    from nipc.config import PeerAddress
    from nipc.connections import Connection
    from nipc.errors import NipcError
    from nipc.identity import Caller, LocalIdentity
    from nipc.kerberos import Accepted, Initiation
    from nipc.link import ClientLink
    from nipc.links import Reused
    from nipc.registry import Routed
    from nipc.request import ConnectRequest
    from nipc.splice import End, Splice


class IConnectorReactor(IReactorFromThreads, IReactorSocket):
    """What the destination connector needs of the reactor: a thread's result back, a
    socket adopted."""


class IDaemonReactor(IConnectorReactor, IReactorCore, IReactorTime, IReactorThreads,
                     IReactorTCP, IReactorUNIX, IReactorFDSet):
    """What the daemon's components use of their reactor, in one name: timers, the thread
    pool, TCP and Unix sockets, adopting sockets (the default reactor provides it all). A
    component that needs less is typed by less (:class:`~nipc.deadline.Deadline`: time)."""


# -- Kerberos ----------------------------------------------------------------------------


class ITicketSource(Interface):
    """Where a routed connection's first GSS token comes from, in the caller's name: the
    daemon's protocol transition, the caller's own cache, or a delegation it chains with."""

    def initiate(who: LocalIdentity, target_host: str, channel: bytes) -> Deferred[Initiation]:
        """The first token for ``nipc@target_host``, bound to ``channel`` (the link's
        exporter and the channel number); fails with a NipcError the caller can act on."""

    def holder(who: LocalIdentity) -> Deferred[str] | None:
        """Before a later channel on a session of ``who`` (:mod:`nipc.session`): the
        principal ``who`` may act as now, if that must be asked each time (the caller's
        own cache must still hold a valid ticket); None: nothing to ask, the session's
        own bounds decide."""


class IDaemonTickets(ITicketSource):
    """The daemon's own ticket source, which lives as long as the daemon does (a
    per-connection delegation is only an :class:`ITicketSource`)."""

    def warm() -> Deferred[None]:
        """Work the first caller should not wait for (the daemon's own TGT); never fails:
        trouble is logged, and callers retry."""

    def stop() -> None:
        """Release what it holds (threads); the daemon is stopping."""


class IAcceptor(Interface):
    """The receiving side's Kerberos: this host's keytab. Blocking calls (keytab, replay
    cache): made on a worker thread."""

    def warm() -> None:
        """Load the keytab's credential now; raises a NipcError when it does not work."""

    def accept(token: bytes, channel: bytes) -> Accepted:
        """Validate a peer's token bound to ``channel``; raises a NipcError if refused."""


class IProjection(Interface):
    """A Kerberos principal becomes the local account it acts as on this host."""

    def project(principal: str) -> LocalIdentity:
        """Blocking (NSS may ask a directory): the account, or a NipcError (EACCES for an
        untrusted realm, EPERM for no mapping, an expired account or refused root)."""


# -- routing -----------------------------------------------------------------------------


class IDestinationConnector(Interface):
    """Connects to a local destination socket as a local account, so the kernel's own
    permission check decides (SPEC section 2)."""

    def endpoint(who: LocalIdentity, path: str, conn_id: str) -> IStreamClientEndpoint:
        """An endpoint whose ``connect`` walks to and connects ``path`` on a thread that
        has become ``who`` (``conn_id`` names the caller's end for ``PEER``), then hands
        the connected socket to the reactor."""


class IRouter(Interface):
    """Turns a caller's ``CONNECT`` into a connected end ready to splice."""

    def is_local(host: str) -> bool:
        """Whether ``host`` names this daemon (a local connect, no peer)."""

    def route(request: ConnectRequest, caller: Caller, conn_id: str,
              evidence: Routed | None = None,
              facts: dict[str, Any] | None = None) -> Deferred[End]:
        """Connect for ``caller``; with ``evidence``, onward in the name of that inbound
        connection's original caller. Notes what it learns in ``facts``."""


class IPeerLocator(Interface):
    """Finds a peer daemon's addresses: the static table, else DNS."""

    def locate(host: str) -> Deferred[list[PeerAddress]]:
        """The addresses to try, in order; fails with a NipcError (EHOSTUNREACH)."""


class ILinks(Interface):
    """The dialling side's links: one per peer daemon, shared by its connections."""

    def get(host: str) -> Deferred[ClientLink | Reused]:
        """The link to ``host``'s daemon: :class:`~nipc.links.Reused` when handed out
        again (worth one retry if it turns out lost), else a freshly dialled one."""

    def describe(now: float) -> list[dict[str, Any]]:
        """The open links, for ``nipc status``."""

    def reconfigure(tls: CertificateOptions, locator: IPeerLocator) -> None:
        """A reload: links dialled from now on use ``tls`` (client options) and
        ``locator`` (the new [peers] and [dns])."""

    def close() -> None:
        """Close every link (the daemon is stopping)."""


class IInboundHandler(Interface):
    """Handles the HELLO of each channel a peer opens on a link accepted here."""

    def hello(channel: Channel, binding: bytes, hello: wire.Hello) -> None:
        """Answer ``hello`` on ``channel`` (RESULT), ``binding`` being what its ticket
        must be bound to; the channel is spliced to the destination on success."""


# -- admission ---------------------------------------------------------------------------


class ICallerAdmission(Interface):
    """Bounds on local callers (the gate): per user and in all."""

    def admit(uid: int) -> None:
        """Take a slot for a new connection of ``uid``; raises a NipcError (EAGAIN)."""

    def release(uid: int) -> None:
        """Give back the slot :meth:`admit` took."""

    def handshake(uid: int) -> None:
        """Take one of ``uid``'s handshakes (a rate); raises a NipcError (EAGAIN)."""


class IPeerAdmission(Interface):
    """Bounds on peer links still in their (unauthenticated) handshake, per source."""

    def peer_arrived(source: str) -> bool:
        """Whether a new handshake from ``source`` may start (it is counted if so)."""

    def peer_settled(source: str) -> None:
        """The handshake :meth:`peer_arrived` counted is over, either way."""


class IInboundAdmission(Interface):
    """Bounds on routed connections coming in from peers, per source and in all."""

    def inbound_arrived(source: str) -> None:
        """Count a new inbound connection; raises a NipcError (EAGAIN) when over a bound."""

    def inbound_left(source: str) -> None:
        """The connection :meth:`inbound_arrived` counted has ended."""


class ILinkAdmission(Interface):
    """What one accepted peer link may take: its own handshake, then its channels'."""

    def settled() -> None:
        """The link's TLS and first authentication are over (or it ended before)."""

    def channel() -> Callable[[], None] | None:
        """Admit one more channel handshake on the link: None when refused (overload),
        else what to call when that handshake is over; raises
        :class:`nipc.admission.Stopping` once the daemon stops."""


# -- bookkeeping -------------------------------------------------------------------------


class IRegistry(Interface):
    """The routed connections this daemon made, by connection id (``PEER``, chaining)."""

    def add(routed: Routed) -> None:
        """Register a connection (before its destination can ask about it)."""

    def remove(conn_id: str) -> None:
        """Forget a connection (it ended, or was refused); unknown ids are ignored."""

    def for_fd(fd: int) -> Routed | None:
        """The connection whose socket ``fd`` is, if this daemon made it."""

    def delegations_for(uid: int, accounts: frozenset[int] = frozenset()) -> dict[str, Routed]:
        """Inbound connections with a delegation that ``uid`` (or ``accounts``) may chain from."""


class IConnections(Interface):
    """One daemon's connection records (:mod:`nipc.connections`), shared by the gate and
    the receiving side: each connection begins, then is refused, or spliced and ended.
    The table writes the audit line and tells the daemon's audit sinks."""

    def begin(logger: Logger, facts: dict[str, Any]) -> Connection:
        """A request arrived; ``facts`` (``conn_id`` at least) grow as it is handled, and
        ``logger`` is whose audit line it is."""

    def refused(connection: Connection, error: NipcError) -> None:
        """It was refused, for ``error``: the audit line."""

    def spliced(connection: Connection, splice: Splice, caller_end: End,
                target_end: End) -> None:
        """It got through (``OK`` sent) and is spliced."""

    def ended(connection: Connection) -> None:
        """The spliced connection ended: the audit line, with its bytes."""

    def abort_all() -> None:
        """Close every spliced connection at both ends (the drain's deadline)."""

    def snapshot() -> list[dict[str, Any]]:
        """Every spliced connection's facts and counters, as ``nipc status`` shows them."""

    def __iter__() -> Iterator[Connection]:
        """The spliced connections, oldest first."""

    def __len__() -> int:
        """How many connections are spliced now."""


class IAuditSink(Interface):
    """Sees every connection of one daemon: as it is spliced, and its audit line (its end
    or its refusal). The metrics are one; each daemon hands its own to its own table."""

    def opened(connection: Connection) -> None:
        """A connection was spliced (the handshake's latency is in its facts)."""

    def audited(connection: Connection, fields: dict[str, Any]) -> None:
        """Its audit line's ``fields`` (``result``, ``direction``, ``errno``, bytes...)."""
