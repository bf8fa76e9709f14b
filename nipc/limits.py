"""Admission limits: no caller, and no flood of peers, can take the daemon for itself.

Local callers are limited in concurrent connections (in total and per uid) and in the
rate of new handshakes per uid (a token bucket); peers in the number of links still
in their handshake. A refusal is ``EAGAIN`` with a log line, never a queue that grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from nipc.config import Config
from nipc.errors import NipcError


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Limits:
    config: Config
    clock: Callable[[], float]
    active: int = 0
    per_caller: dict[int, int] = field(default_factory=dict)
    pending_peers: int = 0
    pending_by_source: dict[str, int] = field(default_factory=dict)
    _buckets: dict[int, _Bucket] = field(default_factory=dict)

    def admit(self, uid: int) -> None:
        """Count a new local connection of ``uid`` in, or refuse it."""
        if self.active >= self.config.max_connections:
            raise NipcError("EAGAIN", f"daemon at its limit of {self.config.max_connections} connections")
        if self.per_caller.get(uid, 0) >= self.config.max_per_caller:
            raise NipcError("EAGAIN", f"uid {uid} is at its limit of {self.config.max_per_caller} connections")
        self.active += 1
        self.per_caller[uid] = self.per_caller.get(uid, 0) + 1

    def release(self, uid: int) -> None:
        self.active -= 1
        left = self.per_caller[uid] - 1
        if left:
            self.per_caller[uid] = left
        else:
            del self.per_caller[uid]
            bucket = self._buckets.get(uid)
            if bucket is not None and self._refill(bucket) >= self.config.handshake_burst:
                del self._buckets[uid]  # a full bucket holds no state worth keeping

    def _refill(self, bucket: _Bucket) -> float:
        now = self.clock()
        rate = self.config.handshakes_per_second
        bucket.tokens = min(float(self.config.handshake_burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        return bucket.tokens

    def handshake(self, uid: int) -> None:
        """Take one handshake from ``uid``'s bucket, or refuse."""
        bucket = self._buckets.setdefault(uid, _Bucket(float(self.config.handshake_burst), self.clock()))
        if self._refill(bucket) < 1:
            raise NipcError(
                "EAGAIN", f"uid {uid} exceeds {self.config.handshakes_per_second} new connections per second")
        bucket.tokens -= 1

    def peer_arrived(self, source: str) -> bool:
        """A peer link opened from address ``source``; False if too many links are still
        in their handshake. Once half the pool is in use, one address may hold no more
        than its share: one host's flood cannot lock the others out, while a busy host's
        burst is welcome when there is room."""
        from_source = self.pending_by_source.get(source, 0)
        contended = self.pending_peers >= self.config.max_pending_peers // 2
        if (self.pending_peers >= self.config.max_pending_peers
                or (contended and from_source >= self.config.max_pending_per_source)):
            return False
        self.pending_peers += 1
        self.pending_by_source[source] = from_source + 1
        return True

    def peer_settled(self, source: str) -> None:
        self.pending_peers -= 1
        left = self.pending_by_source[source] - 1
        if left:
            self.pending_by_source[source] = left
        else:
            del self.pending_by_source[source]
