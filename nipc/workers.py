"""Warm threads, each bound for life to one exact identity: a connect without a new thread.

Starting a thread per connect (:func:`nipc.impersonate.run_as`) costs tens of microseconds
of CPU. A worker here becomes its identity once (groups and effective ids, as every switch:
see :func:`nipc.impersonate.become` for why never the real ids) and from then on runs only
jobs for that exact (uid, gid, groups). After its switch and after every job (so before
the next) it asks the kernel for its credentials: if they are not exactly what it became,
it runs nothing more and ends. A worker left idle for ``idle`` seconds ends; there are at
most ``per_identity`` of one identity and ``total`` in all: past that, a job gets a fresh
thread as before.

``None`` as the identity means "as the daemon": workers that never switch (for blocking
work such as accepting a ticket), checked against the credentials they started with.
"""

from __future__ import annotations

import _thread
import os
import queue
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.impersonate import deliver, on_fresh_thread, run_as, start_thread, switch_to

T = TypeVar("T")

#: Seconds a worker waits for its next job before it ends.
IDLE = 5.0
#: Warm workers of one identity (concurrent connects beyond that get fresh threads).
PER_IDENTITY = 4
#: Warm workers in all, every identity together.
TOTAL = 64

_Key = tuple[int, int, tuple[int, ...]] | None
_Creds = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, ...]]


def _credentials() -> _Creds:
    """The calling thread's credentials as the kernel has them now."""
    return os.getresuid(), os.getresgid(), tuple(sorted(os.getgroups()))


def _as(daemon: _Creds, identity: LocalIdentity | None) -> _Creds:
    """What a worker of ``identity`` must hold: the daemon's real and saved ids, the
    identity's effective ids and groups (the daemon's own credentials for None)."""
    if identity is None:
        return daemon
    (ruid, _, suid), (rgid, _, sgid), _ = daemon
    return ((ruid, identity.uid, suid), (rgid, identity.gid, sgid),
            tuple(sorted(identity.groups)))


class _Task(Generic[T]):
    """One job and where its outcome goes (the reactor thread, through ``callFromThread``)."""

    def __init__(self, reactor: IReactorFromThreads, job: Callable[[], T]) -> None:
        self.reactor = reactor
        self.job = job
        self.done: Deferred[T] = Deferred()

    def run(self) -> None:
        deliver(self.reactor, self.job, self.done)

    def refuse(self, error: NipcError) -> None:
        self.reactor.callFromThread(self.done.errback, Failure(error))


class _Worker:
    """One warm thread: its identity's key and its inbox."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.inbox: queue.SimpleQueue[_Task[Any]] = queue.SimpleQueue()


class WarmThreads:
    """The daemon's warm workers, by identity. Thread-safe: jobs are handed out on the
    reactor thread, workers file themselves back as idle from their own threads."""

    def __init__(self, idle: float = IDLE, per_identity: int = PER_IDENTITY,
                 total: int = TOTAL) -> None:
        self.idle = idle
        self.per_identity = per_identity
        self.total = total
        self._lock = _thread.allocate_lock()
        #: Workers waiting for a job, by key, the most recently used last (the others
        #: idle out first).
        self._waiting: dict[_Key, list[_Worker]] = {}
        #: Live workers by key, waiting or busy.
        self._alive: dict[_Key, int] = {}

    def alive(self) -> int:
        """How many warm workers exist now (for tests and metrics)."""
        with self._lock:
            return sum(self._alive.values())

    def run(self, reactor: IReactorFromThreads, identity: LocalIdentity | None,
            job: Callable[[], T]) -> "Deferred[T]":
        """Run ``job`` as ``identity`` (None: as the daemon) on a warm worker of exactly
        that identity, or on a fresh thread when the caps are reached."""
        key: _Key = None if identity is None else (identity.uid, identity.gid,
                                                   tuple(sorted(identity.groups)))
        task = _Task(reactor, job)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting:
                waiting.pop().inbox.put(task)
                return task.done
            count = self._alive.get(key, 0)
            start = count < self.per_identity and sum(self._alive.values()) < self.total
            if start:
                self._alive[key] = count + 1
        if not start:
            if identity is None:
                return on_fresh_thread(reactor, job)
            return run_as(reactor, identity, job)
        if not start_thread(self._main, (_Worker(key), identity, task), task.done):
            self._gone(key)
        return task.done

    def _gone(self, key: _Key) -> None:
        with self._lock:
            self._alive[key] -= 1
            if not self._alive[key]:
                del self._alive[key]

    def _main(self, worker: _Worker, identity: LocalIdentity | None, task: _Task[Any]) -> None:
        try:
            expected = _as(_credentials(), identity)
            if identity is not None:
                try:
                    switch_to(identity)
                except NipcError as e:
                    task.refuse(e)
                    return
                if _credentials() != expected:  # e.g. other groups than asked for
                    task.refuse(NipcError("EPERM", f"a thread switched to {identity.describe()} "
                                                   "does not hold exactly its credentials"))
                    return
            while True:
                task.run()
                # Checked after every job, so before the next: a job that changed this
                # thread's credentials ends it; it never takes another job, nor waits.
                if _credentials() != expected:
                    return
                next_task = self._next(worker)
                if next_task is None:
                    return
                task = next_task
        finally:
            self._gone(worker.key)

    def _next(self, worker: _Worker) -> _Task[Any] | None:
        """The worker's next job, or None once it has idled out (and left the table)."""
        with self._lock:
            self._waiting.setdefault(worker.key, []).append(worker)
        try:
            return worker.inbox.get(timeout=self.idle)
        except queue.Empty:
            pass
        with self._lock:
            waiting = self._waiting.get(worker.key, [])
            if worker in waiting:
                waiting.remove(worker)
                if not waiting:
                    del self._waiting[worker.key]
                return None
        # Handed a job just as it timed out: the job is in its inbox (put under the lock).
        return worker.inbox.get()


#: The daemon's one set of warm workers.
WARM = WarmThreads()
