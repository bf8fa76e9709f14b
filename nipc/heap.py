"""Memory: short pauses while thousands of connections open, memory back once they close.

Two things kept a crowd's memory and stalled the reactor. Python's cyclic collector made
full (generation 2) passes over every live object while thousands of connections were
being opened: 25-75 ms each, every routed connection waiting behind it. And the objects
of closed connections (cycles: transports and protocols refer to each other) stayed in
the oldest generation until the next full pass, while glibc kept the freed heap.

:func:`take_over_memory` (the daemon process, ``twistd nipc``; an embedding
application keeps its own policy) limits glibc's malloc arenas, freezes what start-up
made and stops automatic full passes; :class:`HeapTrim`, sampled every second, makes the full pass when a crowd has
left (then ``malloc_trim``), or at the latest every :data:`FULL_EVERY` seconds.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Sized
from typing import Callable

from twisted.logger import Logger

log = Logger()

#: Longest time between full collections once the daemon owns the collector (seconds).
FULL_EVERY = 60.0
_owned = False
_libc = ctypes.CDLL(None)


#: glibc's ``mallopt`` parameter for the number of malloc arenas.
M_ARENA_MAX = -8
#: Arenas for the daemon: glibc's default (8 per core) gave each short-lived thread that
#: accepted a connection an arena of its own, and freed memory in those was neither
#: reused by the reactor thread nor given back by ``malloc_trim``: half of what a crowd
#: of 5,000 connections took stayed after they closed; with 2, about a sixth.
ARENAS = 2


def take_over_memory() -> None:
    """For the daemon process only (an embedding application keeps its own policies):
    two malloc arenas; young generations as usual, no automatic full pass (HeapTrim makes
    them), start-up objects out of the collector's way for good."""
    global _owned
    _libc.mallopt(M_ARENA_MAX, ARENAS)
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)
    gc.freeze()
    _owned = True


class HeapTrim:
    """Give freed memory back to the system once a crowd of connections has gone.

    When the live count has fallen to half of the peak seen since the last trim: a full
    collection (the closed connections' cycles), then ``malloc_trim``. Each trim is logged
    with the resident size before and after: what it gave back is visible to an operator
    (what stays is mostly pymalloc arenas that a few live objects pin, docs/DESIGN.md).
    """

    INTERVAL = 1.0
    CROWD = 64

    def __init__(self, live: Sized, clock: Callable[[], float] = time.monotonic) -> None:
        self._live = live
        self._clock = clock
        self._peak = 0
        self._last_full = clock()

    def __call__(self) -> None:
        now = len(self._live)
        self._peak = max(self._peak, now)
        if self._peak >= self.CROWD and now <= self._peak // 2:
            before = resident_kib()
            self._full()
            _libc.malloc_trim(0)
            log.info("heap trimmed: {live} connections live (peak {peak}); resident "
                     "{rss_before_kib} KiB -> {rss_after_kib} KiB", live=now, peak=self._peak,
                     rss_before_kib=before, rss_after_kib=resident_kib(), nipc_heap_trim=True)
            self._peak = now
        elif _owned and self._clock() - self._last_full >= FULL_EVERY:
            self._full()

    def _full(self) -> None:
        gc.collect()
        self._last_full = self._clock()


def resident_kib() -> int:
    """This process's resident set size (KiB), from ``/proc/self/statm``."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
