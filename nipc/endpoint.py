"""``NIPCClientEndpoint``: a Twisted client endpoint that reaches a socket on another host.

Any Twisted program that takes an endpoint (or an endpoint string, ``nipc:/path@host``)
can use NIPC without new code: the endpoint connects to the local daemon, sends the
``CONNECT`` line (SPEC section 2), waits for the one-line reply, and only then hands the
connection to the caller's protocol. ``ERR <ERRNO> msg`` becomes ``OSError(errno, msg)``,
the same exception the blocking ``nipc.connect`` raises.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

from twisted.internet import error as twisted_error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc.client import check_gate, daemon_socket as default_daemon_socket
from nipc.errors import NipcError
from nipc.request import MAX_LINE, ConnectRequest, parse_reply, parse_target

#: How long the daemon may take to answer: its own limits (handshake, connect) fit inside.
DEFAULT_TIMEOUT = 30.0


@implementer(IAddress)
@dataclass(frozen=True)
class NIPCAddress(ConnectRequest):
    """The routed destination, given to ``buildProtocol`` instead of the daemon's address:
    the request the daemon was sent, as a Twisted address."""


def parse_address(target: str) -> NIPCAddress:
    """``/path@host`` read as the daemon reads it (:func:`nipc.request.parse_target`).

    Raises ``ValueError`` so a bad endpoint string fails where it is written, not later.
    """
    try:
        request = parse_target(target)
    except NipcError as e:
        raise ValueError(f"bad NIPC target {target!r}: {e.message}") from None
    return NIPCAddress(request.path, request.host)


class Phase(Enum):
    CONNECTING = "connecting to the daemon"
    REQUESTING = "waiting for the daemon's reply"
    ROUTED = "routed"
    FAILED = "failed"


@implementer(IHalfCloseableProtocol)
class RouteRequest(Protocol):
    """The daemon connection until ``OK``; afterwards a transparent shim for the user's protocol.

    It always offers half-close to the transport (the choice is frozen before we know the
    user's protocol) and emulates a plain protocol's behaviour for those that do not.
    """

    def __init__(self, address: NIPCAddress, factory: IProtocolFactory,
                 result: Deferred[IProtocol]) -> None:
        self.address = address
        self.phase = Phase.CONNECTING
        self._factory = factory
        self._result = result
        self._buffer = b""
        self._user: IProtocol | None = None

    # -- until OK --

    def connectionMade(self) -> None:
        if self.phase is not Phase.CONNECTING:  # timed out or cancelled meanwhile
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.phase = Phase.REQUESTING
        self.transport.write(f"CONNECT {self.address.target}\n".encode("utf-8"))  # type: ignore[union-attr]

    def fail(self, reason: BaseException | Failure) -> None:
        """End the attempt: the result fails and the daemon connection is dropped."""
        if self.phase in (Phase.ROUTED, Phase.FAILED):
            return
        self.phase = Phase.FAILED
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        if not self._result.called:
            self._result.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._user is not None:
            self._user.dataReceived(data)
            return
        if self.phase is not Phase.REQUESTING:
            return
        self._buffer += data
        end = self._buffer.find(b"\n", 0, MAX_LINE)
        if end < 0:
            if len(self._buffer) >= MAX_LINE:
                self.fail(OSError(errno.EPROTO, "the NIPC daemon sent an overlong reply"))
            return
        line, early = self._buffer[:end], self._buffer[end + 1:]
        self._buffer = b""
        refusal = parse_reply(line)
        if refusal is not None:
            self.fail(refusal.to_oserror())
            return
        self._hand_over(early)

    def _hand_over(self, early: bytes) -> None:
        """``OK``: the user's protocol sees ``connectionMade`` now, then any early bytes."""
        user = self._factory.buildProtocol(self.address)
        if user is None:
            self.fail(twisted_error.NoProtocol())
            return
        self.phase = Phase.ROUTED
        self._user = user
        user.makeConnection(self.transport)  # type: ignore[arg-type]
        self._result.callback(user)
        if early:
            user.dataReceived(early)

    # -- either phase --

    def readConnectionLost(self) -> None:
        if self._user is None:
            self._closed_early()
        elif IHalfCloseableProtocol.providedBy(self._user):
            self._user.readConnectionLost()
        else:  # what the transport does for a protocol without half-close
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        if self._user is not None and IHalfCloseableProtocol.providedBy(self._user):
            self._user.writeConnectionLost()

    def connectionLost(self, reason: Failure = Failure(twisted_error.ConnectionDone())) -> None:
        if self._user is not None:
            self._user.connectionLost(reason)
        else:
            self._closed_early()

    def _closed_early(self) -> None:
        self.fail(OSError(errno.ECONNRESET,
                          "the NIPC daemon closed the connection without a reply"))


def _unreachable(daemon: str, reason: Failure) -> BaseException:
    """The daemon socket itself failed: an ``OSError`` like ``nipc.connect`` raises."""
    e = reason.value
    if e is None:
        return OSError(errno.ECONNREFUSED, f"cannot reach the NIPC daemon at {daemon}")
    if isinstance(e, twisted_error.ConnectError) and isinstance(e.osError, int):
        return OSError(e.osError, f"cannot reach the NIPC daemon at {daemon}: "
                                  f"{os.strerror(e.osError)}")
    if isinstance(e, (twisted_error.TimeoutError, twisted_error.ConnectError)):
        return OSError(errno.ETIMEDOUT if isinstance(e, twisted_error.TimeoutError)
                       else errno.ECONNREFUSED,
                       f"cannot reach the NIPC daemon at {daemon}: {e}")
    return e


@implementer(IStreamClientEndpoint)
class NIPCClientEndpoint:
    """Connect to ``target`` (``/path@host``) through the local NIPC daemon.

    ``daemon_socket`` defaults to ``$NIPC_SOCKET`` or ``/run/nipc/nipc.sock``; ``timeout``
    bounds the whole attempt (daemon connect, routing, reply).
    """

    def __init__(self, reactor: Any, target: str, daemon_socket: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._reactor = reactor
        self.address = parse_address(target)
        self.daemon_socket = daemon_socket or default_daemon_socket()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<NIPCClientEndpoint {self.address.target} via {self.daemon_socket}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        try:
            check_gate(self.daemon_socket)  # a few lstat() calls: nothing that blocks for long
        except OSError as e:
            return fail(e)
        request: RouteRequest
        dialing: Deferred[Any]

        def cancel(result: Deferred[IProtocol]) -> None:
            if request.phase is Phase.CONNECTING:
                request.phase = Phase.FAILED
                dialing.cancel()
            else:
                request.fail(CancelledError())

        result: Deferred[IProtocol] = Deferred(cancel)
        request = RouteRequest(self.address, protocolFactory, result)
        unix = UNIXClientEndpoint(self._reactor, self.daemon_socket, timeout=self.timeout)
        dialing = connectProtocol(unix, request)

        def unreachable(reason: Failure) -> None:
            if not reason.check(CancelledError):  # cancelled by us: the result says why
                request.fail(_unreachable(self.daemon_socket, reason))

        dialing.addErrback(unreachable)

        def expire() -> None:
            connecting = request.phase is Phase.CONNECTING
            request.fail(OSError(errno.ETIMEDOUT, f"no reply from the NIPC daemon within "
                                                  f"{self.timeout:g}s ({request.phase.value})"))
            if connecting:
                dialing.cancel()

        timer = self._reactor.callLater(self.timeout, expire)

        def stop_timer(passthrough: Any) -> Any:
            if timer.active():
                timer.cancel()
            return passthrough

        result.addBoth(stop_timer)
        return result
