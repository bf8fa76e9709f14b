"""The sending side: turn a caller's ``CONNECT`` into a connected end ready to splice.

``path@localhost`` (or this host's own name) is a plain local connect made as the caller.
Anything else goes to the peer daemon: a channel on the TLS link to it (:mod:`nipc.links`),
a ticket in the caller's name bound to that link and channel, one HELLO/RESULT exchange,
and mutual authentication of the peer before its answer is believed.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferTimeout, fail
from twisted.internet.endpoints import connectProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.admission import STOPPING, Stopping
from nipc.config import HostSection, PeerSection, TimeoutsSection
from nipc.errors import NipcError
from nipc.identity import Caller, LocalIdentity, identity_of_caller, name_of_uid
from nipc.destination import expand
from nipc.interfaces import IDaemonReactor, IDestinationConnector, ILinks, IRegistry, IRouter, ITicketSource
from nipc.kerberos import Delegated, Initiation
from nipc.links import Reused, link_failure
from nipc.memo import Memo
from nipc.channel import Channel
from nipc.link import ClientLink
from nipc.registry import Routed
from nipc.request import ConnectRequest
from nipc.session import (ENDED, LIFETIME, MARGIN, OFFERED, Session, Sessions, proof_message,
                          seconds_left, sign)
from nipc.splice import End, UnixEnd

#: A sender's session key within a link: the local caller (uid and name).
SessionKey = tuple[int, str]

log = Logger()


@implementer(IRouter)
class Router:
    def __init__(self, reactor: IDaemonReactor, host: HostSection, peer: PeerSection,
                 timeouts: TimeoutsSection, tickets: ITicketSource, registry: IRegistry,
                 links: ILinks, connector: IDestinationConnector,
                 sessions: "Sessions[SessionKey] | None" = None) -> None:
        self._reactor = reactor
        self._host = host
        self._peer = peer
        self._timeouts = timeouts
        self._tickets = tickets
        self._connector = connector
        self._registry = registry
        self.links = links
        #: Callers' sessions on the links to peers (:mod:`nipc.session`); none by default.
        self.sessions: Sessions[SessionKey] = sessions or Sessions(0.0)
        self._names: Memo[int, str] = Memo()

    def is_local(self, host: str) -> bool:
        return host in ("localhost", self._host.name)

    def route(self, request: ConnectRequest, caller: Caller, conn_id: str,
              evidence: Routed | None = None,
              facts: dict[str, Any] | None = None) -> "Deferred[End]":
        """Connect for ``caller``; with ``evidence`` (an inbound connection the caller
        holds), onward in that connection's original caller's name. A local connect
        notes its expanded path in ``facts`` (the audit line's)."""
        # The caller's account name comes from NSS, which may ask a directory (sssd,
        # LDAP): never on the reactor thread, where a slow directory would stall everyone.
        # A recent answer is reused without the thread hop.
        name = self._names.get(caller.uid)
        if name is not None:
            return self._route_as(identity_of_caller(caller, name), request, conn_id, evidence,
                                  facts)
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              self._names.answer, caller.uid, name_of_uid)
        return d.addCallback(lambda found: self._route_as(
            identity_of_caller(caller, found), request, conn_id, evidence, facts))

    def _route_as(self, who: LocalIdentity, request: ConnectRequest, conn_id: str,
                  evidence: Routed | None, facts: dict[str, Any] | None) -> "Deferred[End]":
        if self.is_local(request.host):
            return self.connect_as(who, request.path, conn_id, facts)
        tickets = self._tickets
        hops: tuple[str, ...] = (self._host.name,)
        if evidence is not None:
            assert evidence.principal is not None
            tickets = Delegated(self._reactor, evidence.delegation, evidence.principal)
            hops = (*evidence.hops, self._host.name)
        if len(hops) > self._peer.max_hops:
            return fail(NipcError("ELOOP", f"chain longer than {self._peer.max_hops} hops"))
        return _Dial(self, tickets, who, request, conn_id, hops, evidence is None).start()

    def connect_as(self, who: LocalIdentity, path: str, conn_id: str,
                   facts: dict[str, Any] | None = None) -> "Deferred[End]":
        """Connect to a local socket as ``who`` (the connector's endpoint); ``%{uid}`` and
        ``%{user}`` in ``path`` are ``who``'s (SPEC section 2), noted in ``facts``."""
        try:
            expanded = expand(path, who)
        except NipcError as e:
            return fail(e)
        if facts is not None and expanded != path:
            facts["expanded"] = expanded

        end = UnixEnd()

        def connected(_: object) -> End:
            self._registry.add(Routed(conn_id, who, None, (), self._host.name))
            return end

        d: Deferred[object] = connectProtocol(self._connector.endpoint(who, expanded, conn_id), end)
        return d.addCallback(connected)


class _Dial:
    """One routed connection to a peer daemon: a channel on the link to it, a ticket in
    the caller's name bound to that channel, one HELLO/RESULT exchange, and mutual
    authentication of the peer before its answer is believed."""

    def __init__(self, router: "Router", tickets: ITicketSource, who: LocalIdentity,
                 request: ConnectRequest, conn_id: str, hops: tuple[str, ...],
                 resumable: bool) -> None:
        self._reactor = router._reactor
        self._timeouts = router._timeouts
        self._links = router.links
        #: The caller's sessions, if this connection may use or start one: not onward in
        #: an inbound caller's name, whose delegation evidence is that connection's own.
        self._sessions = router.sessions if resumable and router.sessions.maximum > 0 else None
        self._key: SessionKey = (who.uid, who.user)
        self._hops = hops
        self._tickets = tickets
        self._who = who
        self._request = request
        self._conn_id = conn_id
        self._link: ClientLink | None = None
        self._channel: Channel | None = None
        self._initiation: Initiation | None = None
        self._reused: ClientLink | None = None

    def start(self) -> "Deferred[End]":
        # Each step has its own time limit: locating and dialling the peer (Links), the
        # KDC (_initiate) and the peer's answer (_hello).
        d = self._attempt()
        d.addErrback(self._retry)
        return d.addErrback(self._failed)

    def _attempt(self) -> "Deferred[End]":
        self._reused = None
        return self._links.get(self._request.host).addCallback(self._open)

    def _retry(self, failure: Failure) -> "Deferred[End] | Failure":
        """A link handed out again that was lost before any answer (the peer restarted,
        or closed it as idle as we reused it), or a peer daemon that is stopping (it
        retired the link): once more, on a new link."""
        if failure.check(Stopping):
            log.info("peer daemon of {host} is stopping; dialling again", host=self._request.host)
            assert self._channel is not None
            self._channel.abort()  # the retired link closes once it has no channel left
            return self._attempt()
        reused = self._reused
        if reused is not None and reused.closed and not failure.check(CancelledError):
            log.info("link to {host} lost under a new connection; dialling again",
                     host=self._request.host)
            return self._attempt()
        return failure

    def _open(self, got: "ClientLink | Reused") -> "Deferred[End]":
        if isinstance(got, Reused):
            self._reused = got = got.link
        self._link = got
        session = self._sessions.get(got, self._key) if self._sessions is not None else None
        if session is not None:
            return self._resume(got, session)
        return self._full(got)

    def _full(self, link: ClientLink) -> "Deferred[End]":
        """The full exchange: a ticket bound to this channel, mutual authentication."""
        self._channel = channel = link.open()
        binding = wire.binding(link.exporter or b"", channel.number)
        return self._initiate(binding).addCallback(self._hello).addCallback(self._verify)

    def _resume(self, link: ClientLink, session: Session) -> "Deferred[End]":
        """A later channel on the caller's session: its reference and a proof, no ticket.
        What the ticket source must check each time (the caller's own cache still holds
        the principal's valid ticket) is checked first."""
        self._channel = channel = link.open()
        asked = self._tickets.holder(self._who)
        if asked is None:
            return self._prove(link, session, channel, session.principal)

        def lost(failure: Failure) -> Failure:
            # No valid ticket any more (kdestroy, expiry): the session ends with it, so a
            # later kinit starts a new one rather than reviving this one.
            assert self._sessions is not None
            self._sessions.drop(link, self._key)
            return failure

        return asked.addErrback(lost).addCallback(
            lambda holder: self._prove(link, session, channel, holder))

    def _prove(self, link: ClientLink, session: Session, channel: Channel,
               holder: str) -> "Deferred[End]":
        """On the reactor thread, sent at once: proofs leave in their sequence order."""
        if holder != session.principal:  # the caller's cache holds another principal now
            assert self._sessions is not None
            self._sessions.drop(link, self._key)
            channel.abort()
            return self._full(link)
        binding = wire.binding(link.exporter or b"", channel.number)
        request, hops = self._request, self._hops
        mic = sign(session, proof_message(binding, session.reference, request.path,
                                          request.host, self._conn_id, hops))
        hello = wire.Hello(request.path, request.host, hops, b"", self._conn_id,
                           session.reference, mic)
        d = channel.exchange(hello).addTimeout(self._timeouts.handshake, self._reactor)
        return d.addCallback(self._resumed, link)

    def _resumed(self, result: wire.Result, link: ClientLink) -> "End | Deferred[End]":
        if result.ok:
            assert self._channel is not None
            return self._channel
        if result.info.get(OFFERED) == ENDED:
            # The peer no longer holds the session (it ended there first): a new one.
            assert self._sessions is not None
            self._sessions.drop(link, self._key)
            return self._full(link)
        raise self._refusal(result, link)

    def _initiate(self, binding: bytes) -> "Deferred[Initiation]":
        limit = self._timeouts.kdc

        def slow_kdc(failure: Failure) -> Failure:
            if failure.check(DeferTimeout):
                return Failure(NipcError(
                    "ETIMEDOUT",
                    f"Kerberos KDC did not answer within {limit:g}s (ticket for {self._who.user})"))
            return failure

        d = self._tickets.initiate(self._who, self._request.host, binding)
        return d.addTimeout(limit, self._reactor).addErrback(slow_kdc)

    def _hello(self, initiation: Initiation) -> "Deferred[wire.Result]":
        self._initiation = initiation
        assert self._channel is not None
        hello = wire.Hello(self._request.path, self._request.host, self._hops,
                           initiation.token, self._conn_id, resumes=self._sessions is not None)
        return self._channel.exchange(hello).addTimeout(self._timeouts.handshake, self._reactor)

    def _verify(self, result: wire.Result) -> End:
        """Mutual authentication before the answer is believed. On the reactor thread:
        checking the peer's AP-REP is a local decryption, no KDC, microseconds."""
        initiation, channel = self._initiation, self._channel
        assert initiation is not None and channel is not None
        if result.token:
            initiation.step(result.token)
        if result.ok and not initiation.complete:
            channel.abort()
            raise NipcError("EPROTO", "peer daemon did not prove its identity (mutual authentication)")
        if not result.ok:
            assert self._link is not None
            raise self._refusal(result, self._link)
        self._keep(initiation, channel, result)
        return channel

    def _refusal(self, result: wire.Result, link: ClientLink) -> NipcError:
        """The peer's refusal as the caller's error. One saying the peer daemon is
        stopping retires the link: no new channel on it, and the retry dials a new one."""
        if result.info.get(STOPPING) is True:
            if not link.closed:
                link.retire()
            return Stopping()
        return result.error()

    def _keep(self, initiation: Initiation, channel: Channel, result: wire.Result) -> None:
        """The peer offered a session for the caller just authenticated: keep it, for no
        longer than the peer's bound, ours and the ticket's (and, with protocol
        transition, the reuse bound of the caller's impersonated credentials)."""
        reference, seconds = result.info.get(OFFERED), result.info.get(LIFETIME)
        if self._sessions is None or not isinstance(reference, str) or not reference:
            return
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            return
        limit = min(float(seconds), self._sessions.maximum)
        lifetime = min(seconds_left(initiation.context, limit) - MARGIN,
                       initiation.reuse_until - time.monotonic())
        if lifetime > 0:
            self._sessions.add(channel.link, self._key, Session(
                reference, initiation.principal, initiation.context,
                time.monotonic() + lifetime, self._hops))

    def _failed(self, failure: Failure) -> Failure:
        channel, link = self._channel, self._link
        if channel is None or link is None:
            return link_failure(failure, (), self._request.host)
        if failure.check(DeferTimeout) and not link.closed:
            # No answer within the handshake timeout on a link that is up: it may be dead
            # without TCP knowing yet. New connections get a new link. (The timeout has
            # closed the channel already; a caller who went away says nothing of the link.)
            link.retire()
        channel.abort()
        return link_failure(failure, link.addresses, self._request.host)
