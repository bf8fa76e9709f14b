"""The operators' view of the daemon: the admin socket (``nipc status``, ``nipc reload``).

The admin socket is separate from the gate, so the public local protocol (SPEC section 2)
stays exactly as it is. It speaks one request line, ``STATUS`` or ``RELOAD``, answered by
one line: ``OK <json>`` or ``ERR <ERRNO-NAME> <message>``. Who may ask is decided twice: by the
socket file's owner, group and mode, and by the kernel's word for the caller
(``SO_PEERCRED``, ``SO_PEERGROUPS``): root, the daemon's own uid, or a member of
``[admin] group``. A mode widened by hand, or an ACL, still shows nobody else who is
connected to what. ``RELOAD`` (``nipc reload``, the unit's ExecReload=) changes what the
daemon does, so only root and the daemon's own uid may ask for it: its answer is the
reload's outcome, which is how ``systemctl reload`` learns that a configuration was refused.
"""

from __future__ import annotations

import json
import os
import pwd
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from nipc.deadline import Deadline
from nipc.errors import NipcError
from nipc.identity import Caller, caller_of
from nipc.interfaces import IDaemonReactor
from nipc.request import error_reply

log = Logger()

#: The longest admin request line we read ("STATUS" and room to spare).
MAX_ADMIN_LINE = 64


def fill_user_names(status: dict[str, Any]) -> dict[str, Any]:
    """Name the local callers of a status answer's connections through NSS. Blocking (NSS
    may ask a directory): run off the reactor thread."""
    names: dict[int, str | None] = {}
    for info in status.get("connections", []):
        uid = info.get("uid")
        if info.get("user") is None and isinstance(uid, int):
            if uid not in names:
                try:
                    names[uid] = pwd.getpwuid(uid).pw_name
                except KeyError:
                    names[uid] = None
            info["user"] = names[uid]
    return status


def may_administer(caller: Caller, group: int | None) -> bool:
    """Root, the daemon's own uid, or a member of the admin group (primary or not)."""
    if caller.uid in (0, os.geteuid()):
        return True
    return group is not None and (caller.gid == group or group in caller.groups)


class AdminProtocol(Protocol):
    """One admin connection: authorisation at accept, one request, one answer line."""

    def __init__(self, reactor: IReactorTime, group: int | None,
                 status: Callable[[], dict[str, Any]], timeout: float, fill: Callable[[dict[str, Any]], "Deferred[dict[str, Any]]"] = succeed,
                 reload: Callable[[], "Deferred[dict[str, Any]]"] | None = None) -> None:
        self._group = group
        self._status = status
        self._reload = reload
        self._caller: Caller | None = None
        self._fill = fill
        self._timeout = timeout
        self._buffer = b""
        self._deadline = Deadline(reactor)
        self._done = False
        self._done_reading = False

    def connectionMade(self) -> None:
        self._caller = caller = caller_of(self.transport.getHandle())  # type: ignore[union-attr]
        if not may_administer(caller, self._group):
            log.info("admin socket: uid {uid} (pid {pid}) is not an administrator; refused",
                     uid=caller.uid, pid=caller.pid)
            self._answer(error_reply(NipcError(
                "EACCES", "only root or a member of the daemon's [admin] group may ask")))
            return
        self._deadline.arm(self._timeout, self._expire)

    def _expire(self) -> None:
        self._answer(error_reply(NipcError("ETIMEDOUT", "no complete request line in time")))

    def dataReceived(self, data: bytes) -> None:
        if self._done or self._done_reading:
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_ADMIN_LINE:
                self._answer(error_reply(NipcError("EINVAL", "admin request line too long")))
            return
        request = self._buffer[:end].rstrip(b"\r")
        if request == b"STATUS":
            self._done_reading = True
            # Taken now, on the reactor; user names are looked up off it (within the deadline).
            d = self._fill(self._status())
            d.addCallback(lambda status: self._answer("OK {}\n".format(
                json.dumps(status, separators=(",", ":"), sort_keys=True)).encode("utf-8")))
            d.addErrback(self._failed)
        elif request == b"RELOAD":
            self._done_reading = True
            self._reload_now()
        else:
            self._answer(error_reply(NipcError(
                "EINVAL", "unknown admin request (expected STATUS or RELOAD)")))

    def _reload_now(self) -> None:
        caller = self._caller
        if caller is None or caller.uid not in (0, os.geteuid()):
            self._answer(error_reply(NipcError("EPERM", "only root may reload the daemon")))
            return
        if self._reload is None:
            self._answer(error_reply(NipcError("EINVAL", "this daemon has no file to reload")))
            return
        self._deadline.cancel()  # a reload takes as long as it takes; it always answers
        d = self._reload()
        d.addCallback(lambda outcome: self._answer("OK {}\n".format(
            json.dumps(outcome, separators=(",", ":"), sort_keys=True)).encode("utf-8")))
        d.addErrback(lambda f: self._answer(error_reply(NipcError(
            "EINVAL", f"configuration refused, the running one stays: {f.getErrorMessage()}"))))

    def _failed(self, failure: Failure) -> None:
        log.failure("admin STATUS failed", failure)
        self._answer(error_reply(NipcError("EPROTO", "internal error (logged by the daemon)")))

    def _answer(self, line: bytes) -> None:
        if self._done:
            return
        self._done = True
        self._deadline.cancel()
        transport = self.transport
        assert transport is not None  # connected: the answer comes after the request
        transport.write(line)
        transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._done = True
        self._deadline.cancel()


class AdminFactory(Factory):
    noisy = False

    def __init__(self, reactor: IDaemonReactor, group: int | None,
                 status: Callable[[], dict[str, Any]], timeout: float, reload: Callable[[], "Deferred[dict[str, Any]]"] | None = None
                 ) -> None:
        self._reactor = reactor
        self._group = group
        self._status = status
        self._timeout = timeout
        self._reload = reload

    def _fill(self, status: dict[str, Any]) -> "Deferred[dict[str, Any]]":
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fill_user_names, status)

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        return AdminProtocol(self._reactor, self._group, self._status, self._timeout, self._fill,
                             self._reload)
