"""Destination connects that outlive their deadline: the caller answered, the thread counted.

The walk and connect of :mod:`nipc.destination` run on a thread that can wait in the
kernel: a path on a hung mount (a FUSE server that never answers, an NFS server gone) leaves
``openat``/``fstat`` there, and no signal a daemon may send ends one thread's system call.
A thread cannot be taken back, so everything around it is bounded instead (SECURITY.md F4):
the caller gets ``ETIMEDOUT`` naming the path at the deadline (``[timeouts] connect``),
which also gives its admission slot back at once; the thread is counted here until it
returns, and its late socket is closed then; while one caller (``[limits]
max_stuck_per_caller``) or the whole host (``max_stuck``) has as many threads stuck, new
connects are refused with ``EAGAIN`` naming the oldest stuck path, before a thread starts.
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


@dataclass(frozen=True)
class _Stuck:
    path: str
    uid: int
    #: ``reactor.seconds()`` when the job started.
    since: float


class StuckConnects:
    """The daemon's connect threads past their deadline, by job; the caps read from
    ``limits`` at each decision (a reload applies at once)."""

    def __init__(self, reactor: IReactorTime, limits: LimitsSection) -> None:
        self._reactor = reactor
        self._limits = limits
        self._stuck: dict[int, _Stuck] = {}
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._stuck)

    def summary(self, uid: int | None = None) -> str:
        """"N destination connects stuck in the kernel, oldest ...": all of them for the
        operator's log, or only ``uid``'s (a caller is told of no one else's paths)."""
        stuck = [s for s in self._stuck.values() if uid is None or s.uid == uid]
        oldest = min(stuck, key=lambda s: s.since)
        return (f"{len(stuck)} destination connects stuck in the kernel, oldest "
                f"{oldest.path} (uid {oldest.uid}) for {self._reactor.seconds() - oldest.since:.0f}s: "
                "a mount on that path does not answer")

    def admit(self, who: LocalIdentity) -> None:
        """``EAGAIN`` if ``who`` or the host has as many stuck connects as allowed."""
        if len(self._stuck) >= self._limits.max_stuck:
            raise NipcError("EAGAIN", f"this host has {len(self._stuck)} destination connects "
                                      "stuck in the kernel on a mount that does not answer "
                                      "(limits.max_stuck; its log names the path)")
        if sum(1 for s in self._stuck.values() if s.uid == who.uid) >= self._limits.max_stuck_per_caller:
            raise NipcError("EAGAIN", f"{who.describe()} has {self.summary(who.uid)} "
                                      "(limits.max_stuck_per_caller)")

    def bounded(self, job: "Deferred[T]", seconds: float, who: LocalIdentity, path: str,
                discard: Callable[[T], object]) -> "Deferred[T]":
        """``job``'s outcome if it comes within ``seconds``; else ``ETIMEDOUT`` then, the job
        counted as stuck until it ends, and a late result given to ``discard``."""
        answer: Deferred[T] = Deferred()
        since = self._reactor.seconds()
        key = next(self._keys)

        def expire() -> None:
            self._stuck[key] = _Stuck(path, who.uid, since)
            log.warn("{summary}", summary=self.summary(), path=path, uid=who.uid,
                     stuck=len(self._stuck))
            if not answer.called:  # (cancelled)
                answer.errback(NipcError("ETIMEDOUT", f"connect to {path} as {who.describe()}: "
                                                      f"no answer in {seconds:g}s (is a mount "
                                                      "on the path hung?)"))

        timer = self._reactor.callLater(seconds, expire)

        def ended(result: "T | Failure") -> None:
            if timer.active():
                timer.cancel()
            elif self._stuck.pop(key, None) is not None:
                log.info("a destination connect to {path} returned after {seconds:.0f}s stuck "
                         "in the kernel ({stuck} still stuck)", path=path,
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
