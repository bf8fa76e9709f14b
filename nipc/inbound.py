"""The receiving side: a validated ticket becomes a local connect made as the caller.

Order matters and is the whole trust model: the ticket is accepted with this host's
keytab and bound to this TLS session; only the principal inside it counts (never the
sending daemon's word); it is projected to a local account (both on a thread that stays the
daemon, :mod:`nipc.workers`, within half of ``[timeouts] handshake``: an NSS lookup that hangs
in sssd or LDAP is bounded as :mod:`nipc.stuck` bounds connects); then the destination
connector's endpoint connects on a thread that has become that account, so the kernel's
own permission check decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.admission import PeerAdmission, Refusal, Stopping, source_of
from nipc.channel import Channel
from nipc.config import HostSection, PeerSection, TimeoutsSection
from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.interfaces import (
    IAcceptor, IConnections, IDaemonReactor, IDestinationConnector, IInboundAdmission,
    IInboundHandler, IProjection, IRegistry,
)
from nipc.destination import expand
from nipc.kerberos import Accepted
from nipc.pac import PacError, decode_delegation_info, decode_logon_info
from nipc.registry import Routed, new_connection_id
from nipc.session import (ENDED, LIFETIME, OFFERED, Session, Sessions, new_reference,
                          proof_message, seconds_left, verify)
from nipc.splice import Splice, UnixEnd
from nipc.stuck import StuckConnects
from nipc.workers import WARM

log = Logger()

#: The share of ``[timeouts] handshake`` a ticket's validation and projection may take: a
#: new link is closed by its own deadline (the same setting, counted from before its TLS
#: handshake) unless a channel passed by then, so a hung lookup must be answered sooner
#: for its caller to hear what hung rather than that the link closed.
VALIDATION_SHARE = 0.5


_Decoded = TypeVar("_Decoded")


def _pac_buffer(decode: Callable[[bytes], _Decoded], raw: bytes, principal: str) -> _Decoded:
    """One PAC buffer decoded; one the KDC signed but we cannot read refuses the ticket."""
    try:
        return decode(raw)
    except PacError as e:
        raise NipcError("EKEYREJECTED", f"malformed PAC in {principal}'s ticket: {e}") from None


class _Ended(Refusal):
    """A later channel names a session this link does not hold (any more): the RESULT says
    so, and the sender drops its session and makes a full exchange."""

    info = {OFFERED: ENDED}

    def __init__(self) -> None:
        super().__init__("EKEYREJECTED", "no such session on this link (it ended, or was "
                                         "never offered): a new Kerberos exchange is due")


@dataclass
class _Admission:
    """How far one inbound validation got: each step's result, or the refusal."""

    accepted: Accepted | None = None
    who: LocalIdentity | None = None
    #: What the PAC says, for ``PEER``.
    pac: dict[str, Any] | None = None
    error: NipcError | None = None


@implementer(IInboundHandler)
class Inbound:
    """Handles the HELLO of every channel peers open on their links to this daemon."""

    def __init__(self, reactor: IDaemonReactor, host: HostSection, peer: PeerSection,
                 acceptor: IAcceptor, projection: IProjection, registry: IRegistry,
                 live: IConnections, limits: IInboundAdmission,
                 connector: IDestinationConnector,
                 sessions: "Sessions[str] | None" = None,
                 peers: PeerAdmission | None = None, *,
                 stuck: StuckConnects, timeouts: TimeoutsSection) -> None:
        self._reactor = reactor
        self._host = host
        self._peer = peer
        self._acceptor = acceptor
        self._projection = projection
        self._connector = connector
        self._registry = registry
        self._live = live
        self._limits = limits
        #: Peers' callers' sessions on the links they dialled, by reference; none by default.
        self.sessions: Sessions[str] = sessions or Sessions(0.0)
        #: Closed once the daemon stops: a channel still in its handshake then gets no OK
        #: (its splice would end with the process) but a refusal its sender retries.
        self._peers = peers
        #: A validation past its share of ``timeouts.handshake`` is counted there (the
        #: sender gives up its own handshake after that setting).
        self._stuck = stuck
        self._timeouts = timeouts

    def _pac(self, acc: Accepted) -> dict[str, Any] | None:
        """The PAC's facts, decoded once per ticket (a session's channels reuse them)."""
        pac: dict[str, Any] | None = None
        if acc.delegation_info is not None:
            delegation = _pac_buffer(decode_delegation_info, acc.delegation_info, acc.principal)
            # The KDC's own, signed record of the services that delegated, first hop first
            # (beside "hops", which is only the sending daemon's word).
            pac = {"kdc_transited": list(delegation.transited)}
        if acc.logon_info is not None:
            info = _pac_buffer(decode_logon_info, acc.logon_info, acc.principal)
            pac = {
                **(pac or {}),
                "user_sid": info.user_sid,
                "group_sids": list(info.group_sids),
                "extra_sids": list(info.extra_sids),
                "logon_domain": info.logon_domain_name,
                # S-1-18-2: asserted by a service (protocol transition), not proved by the user.
                "protocol_transition": "S-1-18-2" in info.extra_sids,
            }
        return pac

    def _session_of(self, channel: Channel, binding: bytes, hello: wire.Hello) -> Session:
        """The session a later channel claims, its proof checked (on the reactor thread:
        a MIC is microseconds). An unknown or ended one is answered so that the sender
        starts a new session with a full exchange; a bad proof is refused."""
        session = self.sessions.get(channel.link, hello.session)
        if session is None:
            raise _Ended()
        verify(session, proof_message(binding, hello.session, hello.path, hello.host,
                                      hello.conn_id, hello.hops), hello.mic)
        if hello.hops != session.hops:
            raise NipcError("EKEYREJECTED", "a session's channels must come the way it did")
        return session

    def _offer(self, channel: Channel, acc: Accepted, pac: dict[str, Any] | None,
               hops: tuple[str, ...]) -> dict[str, Any]:
        """A session for the caller just authenticated on this link, for the RESULT's info
        (none if sessions are off, the ticket nearly over, or the tables full; none for a
        chained connection or a sender that would not resume it, which would only hold
        its context and evidence here)."""
        if self.sessions.maximum <= 0 or len(hops) != 1:
            return {}
        seconds = seconds_left(acc.context, self.sessions.maximum, self.sessions.allowance)
        if seconds <= 0:
            return {}
        reference = new_reference()
        session = Session(reference, acc.principal, acc.context, time.monotonic() + seconds,
                          hops, pac, acc.delegation)
        if not self.sessions.add(channel.link, reference, session):
            return {}
        return {OFFERED: reference, LIFETIME: int(seconds)}

    def _stopping(self) -> bool:
        return self._peers is not None and self._peers.closed

    def _check_route(self, hello: wire.Hello) -> None:
        if not hello.hops:
            raise NipcError("EPROTO", "peer handshake: empty hop list")
        if hello.host != self._host.name:
            raise NipcError("EHOSTUNREACH", f"this NIPC daemon is {self._host.name}, not {hello.host}")
        if self._host.name in hello.hops:
            raise NipcError("ELOOP", f"routing loop: {' -> '.join(hello.hops)} -> {hello.host}")
        if len(hello.hops) > self._peer.max_hops:
            raise NipcError("ELOOP", f"chain longer than {self._peer.max_hops} hops")

    def hello(self, channel: Channel, binding: bytes, hello: wire.Hello) -> None:
        conn_id = new_connection_id()
        connection = self._live.begin(log, {
            "conn_id": conn_id, "origin_conn_id": hello.conn_id, "target": hello.path,
            "hops": list(hello.hops), "peer": channel.peer,
            "direction": "incoming",
        })
        facts = connection.facts
        source = source_of(channel.link.transport.getPeer())  # type: ignore[union-attr]
        counted = False
        #: The accepted ticket, once it is: its AP-REP goes back with any answer.
        accepted: Accepted | None = None
        #: The caller's session on this link, for a later channel of theirs.
        session: Session | None = None
        pac: dict[str, Any] | None = None
        #: Filled in by the thread, step by step (read at the deadline to name the principal).
        admission = _Admission()

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._limits.inbound_left(source)

        def validate() -> _Admission:
            """On a thread as the daemon (the keytab, the replay cache and NSS block): the
            ticket accepted, its principal projected to a local account."""
            try:
                if session is None:
                    admission.accepted = acc = self._acceptor.accept(hello.token, binding)
                    admission.pac = self._pac(acc)
                else:  # its first ticket's word: principal, PAC, delegation evidence
                    admission.accepted = acc = Accepted(session.principal, b"", session.delegation,
                                                        None, None, session.context)
                    admission.pac = session.pac
                admission.who = self._projection.project(acc.principal)
            except NipcError as e:
                admission.error = e
            return admission

        def validating() -> str:
            """What a validation that hangs was doing, for the caller and the operator."""
            known = session.principal if session is not None else (
                admission.accepted.principal if admission.accepted is not None else None)
            return (f"validating/projecting {known}" if known is not None
                    else "validating a ticket (its principal not yet known)")

        def validated(admission: _Admission) -> "Deferred[UnixEnd]":
            """The caller is known: register the connection, then connect as the caller."""
            nonlocal accepted, pac
            accepted, who, pac = admission.accepted, admission.who, admission.pac
            if accepted is not None:
                facts["principal"] = accepted.principal
                channel.authenticated()  # its link is no longer an unauthenticated one
            if who is not None:
                facts.update(user=who.user, uid=who.uid)
            if admission.error is not None:
                raise admission.error
            if self._stopping():
                raise Stopping()
            assert accepted is not None and who is not None
            # Known before the destination can accept: a server that at once asks PEER, or
            # chains by attaching the connection, must find it registered.
            self._registry.add(Routed(conn_id, who, accepted.principal, hello.hops, hello.hops[0],
                                      pac=admission.pac, delegation=accepted.delegation))
            path = expand(hello.path, who)
            if path != hello.path:
                facts["expanded"] = path
            end = UnixEnd()
            d: Deferred[object] = connectProtocol(self._connector.endpoint(who, path, conn_id), end)
            return d.addCallback(lambda _: end)

        def connected(end: UnixEnd) -> None:
            assert accepted is not None
            if channel.closed:
                end.close()
                refused(NipcError("ECONNRESET", "peer closed the channel before the connection was made"), accepted)
                return
            if self._stopping():  # it began while this one connected
                end.close()
                refused(Stopping(), accepted)
                return

            def ended(splice: Splice) -> None:
                uncount()
                self._registry.remove(conn_id)
                self._live.ended(connection)

            info: dict[str, Any] = {"conn_id": conn_id}
            if session is None and hello.resumes:
                info.update(self._offer(channel, accepted, pac, hello.hops))
            facts["session"] = "resumed" if session is not None else "new" if info.get(OFFERED) else "none"
            if OFFERED in info:
                facts["session_seconds"] = info[LIFETIME]
            facts["handshake"] = round(time.monotonic() - connection.started, 6)
            # Answered first: the splice starts a channel whose handshake is over.
            channel.answer(wire.Result("OK", token=accepted.token, info=info))
            self._live.spliced(connection, Splice(channel, end, ended), channel, end)

        def refused(error: NipcError, acc: Accepted | None = None) -> None:
            uncount()
            self._registry.remove(conn_id)  # if it got as far as being registered
            token = acc.token if acc else b""
            channel.answer(error.result(token) if isinstance(error, Refusal) else
                           wire.Result(error.errno_name, error.message, token=token))
            self._live.refused(connection, error)

        def refusal(failure: Failure) -> Failure | None:
            if not isinstance(failure.value, NipcError):
                return failure
            refused(failure.value, accepted)
            return None

        def failed(failure: Failure) -> None:
            log.failure("inbound connection {conn_id} failed", failure, conn_id=conn_id)
            refused(NipcError("EPROTO", "internal error on the receiving daemon (logged there)"))

        try:
            if hello.session:
                session = self._session_of(channel, binding, hello)
            self._check_route(hello)
            self._stuck.admit(None)
            self._limits.inbound_arrived(source)
        except NipcError as e:
            refused(e)
            return
        counted = True
        seconds = self._timeouts.handshake * VALIDATION_SHARE
        d = self._stuck.deadline(
            WARM.run(self._reactor, None, validate), seconds, None, validating,
            "the keytab's replay cache or the account lookup (NSS: sssd, LDAP) does not answer",
            lambda _: None,  # the late admission holds nothing to give back
            lambda: f"{validating()} on {self._host.name}: no answer in {seconds:g}s (is its "
                    "account lookup, sssd or LDAP, hung? its log says)").addCallback(validated)
        d.addCallbacks(connected, refusal).addErrback(failed)
