"""The receiving side: a validated ticket becomes a local connect made as the caller.

Order matters and is the whole trust model: the ticket is accepted with this host's
keytab and bound to this TLS session; only the principal inside it counts (never the
sending daemon's word); it is projected to a local account; a fresh thread becomes that
account and connects, so the kernel's own permission check decides.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.admission import source_of
from nipc.audit import audit
from nipc.channel import Channel
from nipc.config import Config
from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.interfaces import (
    IAcceptor, IDaemonReactor, IInboundAdmission, IInboundHandler, ILiveConnections, IProjection,
    IRegistry,
)
from nipc.destination import PathPolicy, connect_unix, expand
from nipc.impersonate import on_fresh_thread, switch_to
from nipc.kerberos import Accepted
from nipc.pac import PacError, decode_delegation_info, decode_logon_info
from nipc.registry import Routed
from nipc.router import adopt_unix, new_connection_id
from nipc.splice import Splice

log = Logger()


_Decoded = TypeVar("_Decoded")


def _pac_buffer(decode: Callable[[bytes], _Decoded], raw: bytes, principal: str) -> _Decoded:
    """One PAC buffer decoded; one the KDC signed but we cannot read refuses the ticket."""
    try:
        return decode(raw)
    except PacError as e:
        raise NipcError("EKEYREJECTED", f"malformed PAC in {principal}'s ticket: {e}") from None


@dataclass
class _Admission:
    """How far one inbound handshake got: each step's result, or the refusal."""

    accepted: Accepted | None = None
    who: LocalIdentity | None = None
    sock: socket.socket | None = None
    #: The path after per-user expansion (SPEC section 2).
    path: str | None = None
    error: NipcError | None = None


@implementer(IInboundHandler)
class Inbound:
    """Handles the HELLO of every channel peers open on their links to this daemon."""

    def __init__(self, reactor: IDaemonReactor, config: Config, acceptor: IAcceptor,
                 projection: IProjection, registry: IRegistry, live: ILiveConnections,
                 limits: IInboundAdmission) -> None:
        self._reactor = reactor
        self._config = config
        self._acceptor = acceptor
        self._projection = projection
        self._registry = registry
        self._live = live
        self._limits = limits

    def _project(self, acc: Accepted) -> tuple[LocalIdentity, dict[str, Any] | None]:
        """Blocking (NSS may ask a directory): the local identity and the PAC's facts."""
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
        return self._projection.project(acc.principal), pac

    def _check_route(self, hello: wire.Hello) -> None:
        if not hello.hops:
            raise NipcError("EPROTO", "peer handshake: empty hop list")
        if hello.host != self._config.host_name:
            raise NipcError("EHOSTUNREACH", f"this NIPC daemon is {self._config.host_name}, not {hello.host}")
        if self._config.host_name in hello.hops:
            raise NipcError("ELOOP", f"routing loop: {' -> '.join(hello.hops)} -> {hello.host}")
        if len(hello.hops) > self._config.max_hops:
            raise NipcError("ELOOP", f"chain longer than {self._config.max_hops} hops")

    def hello(self, channel: Channel, binding: bytes, hello: wire.Hello) -> None:
        conn_id = new_connection_id()
        started = time.monotonic()
        facts: dict[str, Any] = {
            "conn_id": conn_id, "origin_conn_id": hello.conn_id, "target": hello.path,
            "hops": list(hello.hops), "peer": channel.peer,
            "direction": "incoming",
        }
        timeout = self._config.connect_timeout
        policy = PathPolicy(self._config.destination_allow, self._config.destination_deny,
                            self._config.host_name)
        source = source_of(channel.link.transport.getPeer())  # type: ignore[union-attr]
        counted = False

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._limits.inbound_left(source)

        def admit() -> _Admission:
            """On one fresh thread: validate, project, become the caller, connect. The
            thread ends afterwards, taking the identity with it."""
            admission = _Admission()
            try:
                admission.accepted = acc = self._acceptor.accept(hello.token, binding)
                who, pac = self._project(acc)
                admission.who = who
                # Known before the destination can accept: a server that at once asks
                # PEER, or chains by attaching the connection, must find it registered.
                blockingCallFromThread(self._reactor, self._registry.add, Routed(
                    conn_id, who, acc.principal, hello.hops, hello.hops[0], pac=pac,
                    delegation=acc.delegation))
                switch_to(who)
                admission.path = path = expand(hello.path, who)
                admission.sock = connect_unix(path, conn_id, timeout, who, policy)
            except NipcError as e:
                admission.error = e
            return admission

        def admitted(admission: _Admission) -> None:
            acc, who = admission.accepted, admission.who
            if acc is not None:
                facts["principal"] = acc.principal
                channel.authenticated()  # its link is no longer an unauthenticated one
            if who is not None:
                facts.update(user=who.user, uid=who.uid)
            if admission.path is not None and admission.path != hello.path:
                facts["expanded"] = admission.path
            if admission.error is not None:
                refused(admission.error, acc)
                return
            assert acc is not None and admission.sock is not None
            connected(admission.sock, acc)

        def connected(sock: Any, acc: Accepted) -> None:
            try:
                end = adopt_unix(self._reactor, sock)
            except NipcError as e:
                refused(e, acc)
                return
            if channel.closed:
                end.close()
                refused(NipcError("ECONNRESET", "peer closed the channel before the connection was made"), acc)
                return

            def ended(splice: Splice) -> None:
                uncount()
                self._registry.remove(conn_id)
                self._live.remove(conn_id)
                audit(log, "routed", facts, started, splice, channel, end)

            facts["handshake"] = round(time.monotonic() - started, 6)
            self._live.add(facts, Splice(channel, end, ended), channel, end)
            token = acc.token
            channel.answer(wire.Result("OK", token=token, info={"conn_id": conn_id}))

        def refused(error: NipcError, acc: Accepted | None = None) -> None:
            uncount()
            self._registry.remove(conn_id)  # if it got as far as being registered
            channel.answer(wire.Result(error.errno_name, error.message, token=acc.token if acc else b""))
            audit(log, "refused", dict(facts, errno=error.errno_name, reason=error.message), started)

        def failed(failure: Failure) -> None:
            log.failure("inbound connection {conn_id} failed", failure, conn_id=conn_id)
            refused(NipcError("EPROTO", "internal error on the receiving daemon (logged there)"))

        try:
            self._check_route(hello)
            self._limits.inbound_arrived(source)
        except NipcError as e:
            refused(e)
            return
        counted = True
        on_fresh_thread(self._reactor, admit).addCallback(admitted).addErrback(failed)
