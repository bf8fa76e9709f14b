"""The local gate: the daemon's AF_UNIX listener and its one-line protocol (SPEC section 2).

Who may use NIPC at all is decided by the socket file's owner, group, mode and ACL, like
any other Unix-socket gate. Who is calling is what the kernel says (``SO_PEERCRED``,
``SO_PEERGROUPS``). Bytes sent after the request line are kept, within a bound, and
delivered once the connection is made.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from nipc.config import PeerSection, TimeoutsSection
from nipc.deadline import Deadline
from nipc.errors import NipcError
from nipc.gate_state import Do, Event, State, step
from nipc.identity import Caller, caller_of
from nipc.interfaces import ICallerAdmission, IConnections, IDaemonReactor, IRegistry, IRouter
from nipc.registry import Routed, check_may_chain, held_by, new_connection_id, one_caller
from nipc.request import ConnectRequest, PeerRequest, error_reply, ok_reply, parse_request, take_line
from nipc.splice import UNIX_BUFFER, End, Splice, UnixEnd

log = Logger()

#: Bytes a client may send ahead of ``OK`` before we stop reading from it; the rest waits
#: in its socket. Each of a user's max_per_caller connections may hold this while it is
#: routed (a peer may take its handshake timeout to answer).
MAX_EARLY = 64 * 1024
#: How much one read takes before the splice: the default, not UNIX_BUFFER, so that a
#: connection holds at most MAX_EARLY plus one such read ahead of OK.
EARLY_READ = 64 * 1024


@dataclass(frozen=True)
class GateServices:
    """What every local gate of one daemon shares."""

    reactor: IDaemonReactor
    #: [timeouts] (request) and [peer] (chain_accounts), read per connection.
    timeouts: TimeoutsSection
    peer: PeerSection
    router: IRouter
    registry: IRegistry
    limits: ICallerAdmission
    live: IConnections


class LocalGate(UnixEnd):
    """One client connection: request line, routing, reply, then one end of a splice.

    Its lifecycle is :mod:`nipc.gate_state`'s table: the request, the router's answer,
    the client's EOF and its loss are events; the table gives the next state and what
    to do.
    """

    def __init__(self, services: GateServices) -> None:
        self._reactor = services.reactor
        self._timeouts = services.timeouts
        self._peer_section = services.peer
        self._router = services.router
        self._registry = services.registry
        self._limits = services.limits
        self._live = services.live
        self._admitted = False
        #: A descriptor sent with the request: the connection ``PEER`` asks about, or the
        #: inbound connection a ``CONNECT`` chains from.
        self._attached: int | None = None
        self.state = State.REQUEST
        self.conn_id = new_connection_id()
        self._buffer = b""
        self._routing: Deferred[End] | None = None
        self._deadline = Deadline(self._reactor)
        #: This connection's record; its facts are the audit line's.
        self._connection = self._live.begin(log, {"conn_id": self.conn_id,
                                                   "direction": "outgoing"})
        self._facts = self._connection.facts
        self._requested = self._connection.started
        self.caller: Caller | None = None

    def _step(self, event: Event) -> Do:
        self.state, do = step(self.state, event)
        return do

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.bufferSize = EARLY_READ  # type: ignore[union-attr]
        self.caller = caller_of(self.transport.getHandle())  # type: ignore[union-attr]
        self._facts.update(pid=self.caller.pid, uid=self.caller.uid)
        try:
            self._limits.admit(self.caller.uid)
        except NipcError as e:
            self._refuse(e)
            return
        self._admitted = True
        self._deadline.arm(self._timeouts.request, self._expire)

    def _expire(self) -> None:
        if self.state is State.REQUEST:
            self._refuse(NipcError("ETIMEDOUT", f"no complete request line within {self._timeouts.request:g}s"))

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.SPLICED:
            self.splice.data(self, data)  # type: ignore[union-attr]  # spliced: it is there
            return
        if self.state is State.DONE:
            return
        self._buffer += data
        if self.state is not State.REQUEST:  # routing: held for the splice
            if len(self._buffer) > MAX_EARLY:
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        try:
            split = take_line(self._buffer)
            if split is None:
                return
            line, self._buffer = split
            request = parse_request(line)
        except NipcError as e:
            self._refuse(e)
            return
        if isinstance(request, PeerRequest):
            self._peer()
            return
        self._route(request)

    def _take_attached(self, refusal: NipcError) -> Routed | None:
        """The routed connection the attached descriptor is, if one was attached;
        ``refusal`` if it is anything else (a descriptor cannot cross hosts)."""
        fd, self._attached = self._attached, None
        if fd is None:
            return None
        try:
            routed = self._registry.for_fd(fd)
        finally:
            os.close(fd)
        if routed is None:
            raise refusal
        return routed

    def _peer(self) -> None:
        """``PEER``: who is behind the connection whose descriptor the client attached."""
        try:
            if self._attached is None:
                raise NipcError("EINVAL", "PEER needs the connection's descriptor attached (SCM_RIGHTS)")
            routed = self._take_attached(
                NipcError("ENOENT", "the attached descriptor is not a connection this daemon made"))
        except NipcError as e:
            self._refuse(e)
            return
        assert routed is not None
        self._deadline.cancel()
        self._step(Event.PEER)
        answer = json.dumps(routed.describe(), separators=(",", ":"))
        self.transport.write(f"OK {answer}\n".encode("utf-8"))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _route(self, request: ConnectRequest) -> None:
        assert self.caller is not None
        self._step(Event.CONNECT)
        self._deadline.cancel()
        self._requested = time.monotonic()
        self._facts.update(target=request.target,
                           direction="local" if self._router.is_local(request.host) else "outgoing")
        try:
            self._limits.handshake(self.caller.uid)
            explicit = self._take_attached(NipcError(
                "EINVAL", "file descriptors cannot be passed over NIPC (only an inbound NIPC "
                "connection may be attached, to chain from it)"))
            if explicit is not None:
                check_may_chain(self.caller.uid, explicit, self._peer_section.chain_accounts)
        except NipcError as e:
            self._refuse(e)
            return
        if explicit is not None and explicit.delegation is None and not self._router.is_local(request.host):
            self._refuse(NipcError("EACCES", "the attached connection carries no delegation to chain with"))
            return
        d: Deferred[Routed | None]
        candidates = self._registry.delegations_for(self.caller.uid, self._peer_section.chain_accounts)
        if explicit is not None or not candidates or self._router.is_local(request.host):
            d = succeed(explicit)
        else:
            d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), held_by,
                                  self.caller.pid, candidates).addCallback(one_caller)
        caller = self.caller

        def route(evidence: Routed | None) -> "Deferred[End]":
            if evidence is not None:
                self._facts.update(chained_from=evidence.conn_id, principal=evidence.principal)
            return self._router.route(request, caller, self.conn_id, evidence, self._facts)

        self._routing = d.addCallback(route)
        self._routing.addCallbacks(self._routed, self._route_failed)

    def _routed(self, end: End) -> None:
        self._routing = None
        do = self._step(Event.ROUTED)
        if do is Do.DISCARD:  # the client was refused or left meanwhile
            end.abort()
            return
        self._facts["handshake"] = round(time.monotonic() - self._requested, 6)
        self._announce()

        def ended(splice: Splice) -> None:
            self._registry.remove(self.conn_id)
            self._live.ended(self._connection)

        self._live.spliced(self._connection, Splice(self, end, ended), self, end)
        if do is Do.SPLICE_AND_EOF:
            assert self.splice is not None
            self.splice.eof(self)

    def start(self) -> None:
        """Deliver what the client sent ahead of ``OK``, then read again."""
        assert self.splice is not None
        self.transport.bufferSize = UNIX_BUFFER  # type: ignore[union-attr]
        if self._buffer:
            early, self._buffer = self._buffer, b""
            self.splice.data(self, early)
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def _route_failed(self, failure: Failure) -> None:
        self._routing = None
        if self.state is State.DONE:
            return
        if failure.check(NipcError):
            error: NipcError = failure.value  # type: ignore[assignment]
        else:
            log.failure("{conn_id}: routing failed", failure, conn_id=self.conn_id)
            error = NipcError("EPROTO", f"internal error (logged as connection {self.conn_id})")
        self._refuse(error)

    def _refuse(self, error: NipcError) -> None:
        self._deadline.cancel()
        if self._step(Event.REFUSE) is Do.REFUSE:
            self._refused(error)

    def _refused(self, error: NipcError) -> None:
        self._live.refused(self._connection, error)
        self._tell_refusal(error)

    def _announce(self) -> None:
        """Tell the client its connection is made."""
        self.transport.write(ok_reply())  # type: ignore[union-attr]

    def _tell_refusal(self, error: NipcError) -> None:
        self.transport.write(error_reply(error))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        do = self._step(Event.CALLER_EOF)
        if do is Do.DELIVER_EOF:
            super().readConnectionLost()
        elif do is Do.REFUSE:
            self._deadline.cancel()
            self._refused(NipcError("EINVAL", "connection closed before a complete request line"))

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self.state is State.SPLICED:
            super().fileDescriptorReceived(descriptor)
            return
        if self.state is State.REQUEST and self._attached is None:
            self._attached = descriptor
            return
        os.close(descriptor)
        # Refused first: the cancelled route then finds the connection done (else its
        # CancelledError would be answered as an internal error).
        self._refuse(NipcError("EINVAL", "file descriptors cannot be passed over NIPC"))
        self._cancel_routing()

    def _cancel_routing(self) -> None:
        if self._routing is not None:
            routing, self._routing = self._routing, None
            routing.cancel()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._deadline.cancel()
        if self._admitted:
            assert self.caller is not None
            self._admitted = False
            self._limits.release(self.caller.uid)
        if self._attached is not None:
            os.close(self._attached)
            self._attached = None
        do = self._step(Event.LOST)
        if do is Do.REPORT_LOST:
            super().connectionLost(reason)
        elif do is Do.CANCEL:
            self._cancel_routing()


class ImportGate(LocalGate):
    """A local socket that stands for one remote socket (an *import*).

    Every connection is routed to the fixed target with the identity of the process that
    connected, with no request line and no reply line, so unmodified clients (``psql -h
    DIR``, ``docker -H unix://...``) can use it. A refusal is a reset connection, the
    nearest a plain socket has to an error; the audit line says why.
    """

    def __init__(self, services: GateServices, request: ConnectRequest) -> None:
        super().__init__(services)
        self._request = request

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._admitted:
            self._route(self._request)

    def _announce(self) -> None:
        pass

    def _tell_refusal(self, error: NipcError) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


class LocalGateFactory(Factory):
    """Builds the daemon's request-line gate, or an import's gate for a fixed target."""

    def __init__(self, services: GateServices, target: ConnectRequest | None = None) -> None:
        self._services = services
        self._target = target

    def buildProtocol(self, addr: Any) -> LocalGate:
        if self._target is not None:
            return ImportGate(self._services, self._target)
        return LocalGate(self._services)
