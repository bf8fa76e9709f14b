"""Admission limits: no caller, and no flood of peers, can take the daemon for itself.

Local callers are limited in concurrent connections (in total and per uid) and in the
rate of new handshakes per uid (a token bucket); peers in the number of links still
in their handshake and in the connections they route in (in total and per source
address). Every admission also needs file descriptors to spare (:class:`Descriptors`).
A refusal is ``EAGAIN`` naming the limit, with a log line, never a queue that grows.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from zope.interface import implementer

from nipc.config import HostSection, LimitsSection
from nipc.errors import NipcError
from nipc.interfaces import ICallerAdmission, IInboundAdmission, IPeerAdmission

#: Descriptors one admitted connection may open at once: the destination socket and its
#: duplicate while the reactor adopts it. (A local caller's own socket is open before it
#: is admitted; a peer link is shared by many connections.)
FDS_PER_CONNECTION = 2
#: Connections a local socket accepts per turn of the reactor: each refused one holds its
#: descriptor until the next turn, so the reserve below must hold two turns' worth.
ACCEPTS_PER_TURN = 32
#: Descriptors always kept free for what is not admitted one by one: accepting a
#: connection only to refuse it, a peer link, the keytab and replay cache a ticket check
#: opens, a KDC socket, the log file.
FD_RESERVE = 2 * ACCEPTS_PER_TURN
#: Counting the open descriptors costs ~10 us each, so it is done off the reactor thread
#: and not more often than this (seconds) near the limit, nor less often when busy.
RECOUNT_AFTER = 0.5
RECOUNT_STALE = 5.0


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE, read each time: ``prlimit`` may change it at run time."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, and return it. A soft limit below the
    hard one (1024 by default, for programs that use select()) only makes the daemon
    refuse early: its reactor uses epoll."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return fd_limit()


def open_fds() -> int:
    """How many descriptors this process holds (blocking: O(descriptors))."""
    return len(os.listdir("/proc/self/fd")) - 1  # not the one listdir itself used


def fds_needed(limits: LimitsSection) -> int:
    """Descriptors the daemon may need with every one of ``limits`` used up: a local
    connection holds two (the caller's socket, the destination's or its share of a
    link), an inbound one one, a peer link in its handshake up to three (its socket, the
    keytab, the replay cache)."""
    return 2 * limits.max_connections + limits.max_inbound + 3 * limits.max_pending_peers + FD_RESERVE


class Descriptors:
    """Headroom below RLIMIT_NOFILE: overload is refused up front with ``EAGAIN`` naming
    the limit, not met as ``EMFILE`` half-way through a connection (a socket that cannot
    be adopted, a replay cache that cannot be opened).

    The estimate is the last count plus what was admitted since, less what was given
    back (``FDS_PER_CONNECTION`` per connection either way: it errs on the side of
    refusing). A new count starts, in the background, once the admissions since the last
    one could have used half the room it left, when one is refused, or when the last
    count is stale: it also sees what no admission accounts for (links, the log).
    """

    def __init__(self, host: str, clock: Callable[[], float], count: Callable[[], int],
                 background: Callable[[Callable[[], int]], "Deferred[int]"],
                 limit: Callable[[], int] = fd_limit) -> None:
        self._host = host
        self._clock = clock
        self._count = count
        self._background = background
        self._limit = limit
        self.counted = count()  # at start: few descriptors, counted at once
        self._since = 0  # descriptors granted since the last count began
        self._at = clock()
        self._counting = False

    @property
    def estimate(self) -> int:
        return self.counted + self._since

    def room(self, need: int = FDS_PER_CONNECTION) -> None:
        """Grant ``need`` descriptors, or refuse with ``EAGAIN`` naming the limit."""
        limit = self._limit()
        now = self._clock()
        if self.estimate + need + FD_RESERVE > limit:
            if now - self._at >= RECOUNT_AFTER:
                self._recount(now)
            raise NipcError(
                "EAGAIN", f"{self._host} is at its file descriptor limit: about {self.estimate} "
                f"of RLIMIT_NOFILE {limit} in use, {FD_RESERVE} kept in reserve "
                "(LimitNOFILE= in nipcd.service)")
        self._since += need
        if (self._since * 2 >= limit - FD_RESERVE - self.counted
                or now - self._at >= RECOUNT_STALE):
            self._recount(now)

    def give_back(self, granted: int = FDS_PER_CONNECTION) -> None:
        """A connection that was granted room ended."""
        self._since -= granted

    def _recount(self, now: float) -> None:
        if self._counting:
            return
        self._counting = True
        self._at = now
        before = self._since

        def counted(n: int) -> None:
            self.counted = n
            self._since -= before  # those granted meanwhile may not be in the count yet

        def done(result: Any) -> Any:
            self._counting = False
            return result

        self._background(self._count).addCallback(counted).addBoth(done)


K = TypeVar("K")


def _take_one(counts: dict[K, int], key: K) -> bool:
    """One fewer under ``key``; True when none is left (the key is gone, so that the
    tables hold only who holds something)."""
    left = counts[key] - 1
    if left:
        counts[key] = left
        return False
    del counts[key]
    return True


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@implementer(ICallerAdmission, IPeerAdmission, IInboundAdmission)
@dataclass
class Limits:
    #: [limits], read at each admission (a reload replaces its fields).
    settings: LimitsSection
    #: [host]: its name, in refusals.
    host: HostSection
    clock: Callable[[], float]
    active: int = 0
    per_caller: dict[int, int] = field(default_factory=dict)
    pending_peers: int = 0
    pending_by_source: dict[str, int] = field(default_factory=dict)
    inbound: int = 0
    inbound_by_source: dict[str, int] = field(default_factory=dict)
    #: File descriptor headroom, checked last by each admission (None: not checked).
    descriptors: Descriptors | None = None
    _buckets: dict[int, _Bucket] = field(default_factory=dict)

    def _fd_room(self) -> None:
        if self.descriptors is not None:
            self.descriptors.room()

    def _fd_back(self) -> None:
        if self.descriptors is not None:
            self.descriptors.give_back()

    def admit(self, uid: int) -> None:
        """Count a new local connection of ``uid`` in, or refuse it."""
        if self.active >= self.settings.max_connections:
            raise NipcError("EAGAIN", f"daemon at its limit of {self.settings.max_connections} connections")
        if self.per_caller.get(uid, 0) >= self.settings.max_per_caller:
            raise NipcError("EAGAIN", f"uid {uid} is at its limit of {self.settings.max_per_caller} connections")
        self._fd_room()
        self.active += 1
        self.per_caller[uid] = self.per_caller.get(uid, 0) + 1

    def release(self, uid: int) -> None:
        self._fd_back()
        self.active -= 1
        if _take_one(self.per_caller, uid):
            bucket = self._buckets.get(uid)
            if bucket is not None and self._refill(bucket) >= self.settings.handshake_burst:
                del self._buckets[uid]  # a full bucket holds no state worth keeping

    def _refill(self, bucket: _Bucket) -> float:
        now = self.clock()
        rate = self.settings.handshakes_per_second
        bucket.tokens = min(float(self.settings.handshake_burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        return bucket.tokens

    def handshake(self, uid: int) -> None:
        """Take one handshake from ``uid``'s bucket, or refuse."""
        bucket = self._buckets.setdefault(uid, _Bucket(float(self.settings.handshake_burst), self.clock()))
        if self._refill(bucket) < 1:
            raise NipcError(
                "EAGAIN", f"uid {uid} exceeds {self.settings.handshakes_per_second} new connections per second")
        bucket.tokens -= 1

    def peer_arrived(self, source: str) -> bool:
        """A peer link opened from address ``source``; False if too many links are still
        in their handshake. Once half the pool is in use, one address may hold no more
        than its share: one host's flood cannot lock the others out, while a busy host's
        burst is welcome when there is room."""
        from_source = self.pending_by_source.get(source, 0)
        contended = self.pending_peers >= self.settings.max_pending_peers // 2
        if (self.pending_peers >= self.settings.max_pending_peers
                or (contended and from_source >= self.settings.max_pending_per_source)):
            return False
        self.pending_peers += 1
        self.pending_by_source[source] = from_source + 1
        return True

    def peer_settled(self, source: str) -> None:
        self.pending_peers -= 1
        _take_one(self.pending_by_source, source)

    def inbound_arrived(self, source: str) -> None:
        """Count in a connection a peer routes to this host from address ``source``, or
        refuse it: one busy or hostile host cannot take all the room."""
        host, settings = self.host.name, self.settings
        from_source = self.inbound_by_source.get(source, 0)
        if self.inbound >= settings.max_inbound:
            raise NipcError("EAGAIN", f"{host} is at its limit of {settings.max_inbound} "
                            "inbound connections (limits.max_inbound)")
        if from_source >= settings.max_inbound_per_source:
            raise NipcError("EAGAIN", f"{host} is at its limit of {settings.max_inbound_per_source} "
                            f"inbound connections from {source} (limits.max_inbound_per_source)")
        self._fd_room()
        self.inbound += 1
        self.inbound_by_source[source] = from_source + 1

    def inbound_left(self, source: str) -> None:
        self._fd_back()
        self.inbound -= 1
        _take_one(self.inbound_by_source, source)
