"""Short-lived answers of NSS and ``auth_to_local``, so that a busy caller does not cost a
directory lookup (and, on the sending side, a thread hop) per connection.

Only successful answers are kept, for :data:`TTL` seconds: a refused caller is asked
about afresh every time, and a change to an account's groups or mapping takes effect
within that bound, as with sssd's or nscd's own caches. Whether an account may be acted
for at all (its expiry) is never taken from here (:func:`nipc.projection.project`).
"""

from __future__ import annotations

import time
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Seconds an answer is reused.
TTL = 5.0
#: Entries kept at most; beyond that the table is emptied (callers are few in practice).
MAX_ENTRIES = 4096


class Memo(Generic[K, V]):
    """A table of recent answers. Reads and writes are single dict operations, atomic
    under the GIL, so the reactor thread may read while worker threads write."""

    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._table: dict[K, tuple[V, float]] = {}

    def get(self, key: K) -> V | None:
        entry = self._table.get(key)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def put(self, key: K, value: V) -> V:
        if len(self._table) >= MAX_ENTRIES:
            self._table = {}
        self._table[key] = (value, self._clock() + self._ttl)
        return value

    def answer(self, key: K, ask: Callable[[K], V]) -> V:
        """The recent answer for ``key``, else ``ask(key)`` (kept if it did not raise)."""
        value = self.get(key)
        return value if value is not None else self.put(key, ask(key))
