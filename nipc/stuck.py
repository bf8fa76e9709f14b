"""Thread jobs that outlive their deadline: the caller answered, the thread counted.

The walk and connect of :mod:`nipc.destination` run on a thread that can wait in the
kernel: a path on a hung mount (a FUSE server that never answers, an NFS server gone) leaves
``openat``/``fstat`` there, and no signal a daemon may send ends one thread's system call.
A thread cannot be taken back, so everything around it is bounded instead (SECURITY.md F4):
the caller gets ``ETIMEDOUT`` naming the path at the deadline (``[timeouts] connect``),
which also gives its admission slot back at once; the thread is counted here until it
returns, and its late socket is closed then; while one caller (``[limits]
max_stuck_per_caller``) or the whole host (``max_stuck``) has as many threads stuck, new
connects are refused with ``EAGAIN`` naming the oldest stuck path, before a thread starts.
The receiving side's ticket validation and account projection (:mod:`nipc.inbound`) can
wait the same way (a hung sssd or LDAP server under NSS): it is bounded by half of
``[timeouts] handshake`` and counted in the same caps, as no one's (no local account is
known yet).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from nipc.config import LimitsSection
from nipc.errors import NipcError
from nipc.identity import LocalIdentity

log = Logger()

T = TypeVar("T")


#: What a stuck destination connect's thread most likely waits for.
MOUNT = "a mount on that path does not answer"


@dataclass(frozen=True)
class _Stuck:
    #: The path connected to, or the validation (``validating/projecting PRINCIPAL``).
    what: str
    #: The caller's, or None for a validation (no local account yet).
    uid: int | None
    #: What the thread most likely waits for, for the operator.
    hint: str
    #: ``reactor.seconds()`` when the job started.
    since: float


class StuckConnects:
    """The daemon's connect and validation threads past their deadline, by job; the caps
    read from ``limits`` at each decision (a reload applies at once)."""

    def __init__(self, reactor: IReactorTime, limits: LimitsSection) -> None:
        self._reactor = reactor
        self._limits = limits
        self._stuck: dict[int, _Stuck] = {}
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._stuck)

    def _noun(self) -> str:
        if all(s.hint == MOUNT for s in self._stuck.values()):
            return "destination connects"
        return "threads (destination connects, ticket validations)"

    def summary(self, uid: int | None = None) -> str:
        """"N destination connects stuck in the kernel, oldest ...": all of them for the
        operator's log, or only ``uid``'s (a caller is told of no one else's paths)."""
        stuck = [s for s in self._stuck.values() if uid is None or s.uid == uid]
        oldest = min(stuck, key=lambda s: s.since)
        owner = "" if oldest.uid is None else f" (uid {oldest.uid})"
        return (f"{len(stuck)} {self._noun()} stuck in the kernel, oldest "
                f"{oldest.what}{owner} for {self._reactor.seconds() - oldest.since:.0f}s: "
                f"{oldest.hint}")

    def admit(self, who: LocalIdentity | None) -> None:
        """``EAGAIN`` if ``who`` (None: a validation, only the host's cap) or the host has
        as many stuck threads as allowed."""
        if len(self._stuck) >= self._limits.max_stuck:
            raise NipcError("EAGAIN", f"this host has {len(self._stuck)} {self._noun()} "
                                      "stuck in the kernel on a mount or an account lookup "
                                      "that does not answer (limits.max_stuck; its log says "
                                      "which)")
        if who is not None and sum(1 for s in self._stuck.values() if s.uid == who.uid) >= self._limits.max_stuck_per_caller:
            raise NipcError("EAGAIN", f"{who.describe()} has {self.summary(who.uid)} "
                                      "(limits.max_stuck_per_caller)")

    def bounded(self, job: "Deferred[T]", seconds: float, who: LocalIdentity, path: str,
                discard: Callable[[T], object]) -> "Deferred[T]":
        """``job``'s outcome if it comes within ``seconds``; else ``ETIMEDOUT`` then, the job
        counted as stuck until it ends, and a late result given to ``discard``."""
        return self.deadline(job, seconds, who.uid, lambda: path, MOUNT, discard,
                             lambda: f"connect to {path} as {who.describe()}: no answer in "
                                     f"{seconds:g}s (is a mount on the path hung?)")

    def deadline(self, job: "Deferred[T]", seconds: float, uid: int | None,
                 what: Callable[[], str], hint: str, discard: Callable[[T], object],
                 message: Callable[[], str]) -> "Deferred[T]":
        """:meth:`bounded` for any job: ``what`` names it at the deadline (it may have
        learned more by then), ``message`` is the caller's ``ETIMEDOUT``."""
        answer: Deferred[T] = Deferred()
        since = self._reactor.seconds()
        key = next(self._keys)

        def expire() -> None:
            named = what()
            self._stuck[key] = _Stuck(named, uid, hint, since)
            log.warn("{summary}", summary=self.summary(), path=named, uid=uid,
                     stuck=len(self._stuck))
            if not answer.called:  # (cancelled)
                answer.errback(NipcError("ETIMEDOUT", message()))

        timer = self._reactor.callLater(seconds, expire)

        def ended(result: "T | Failure") -> None:
            if timer.active():
                timer.cancel()
            elif (gone := self._stuck.pop(key, None)) is not None:
                log.info("the thread for {path} returned after {seconds:.0f}s stuck in the kernel ("
                         "{stuck} still stuck)", path=gone.what,
                         seconds=self._reactor.seconds() - since, stuck=len(self._stuck))
            if not answer.called:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)
            elif not isinstance(result, Failure):
                discard(result)

        job.addBoth(ended)
        return answer
