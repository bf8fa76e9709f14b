"""HeapTrim gives memory back once a crowd of connections has gone, and not otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.python.failure import Failure

from nipc import heap, service


class Live:
    def __init__(self) -> None:
        self.n = 0

    def __len__(self) -> int:
        return self.n


def test_trims_after_a_crowd_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []

    class Libc:
        def malloc_trim(self, pad: int) -> int:
            trims.append(pad)
            return 1

    monkeypatch.setattr(heap, "_libc", Libc())
    live = Live()
    trim = heap.HeapTrim(live)
    for n in (10, 20, 5, 0):  # never a crowd: nothing to give back
        live.n = n
        trim()
    assert trims == []
    for n in (100, 5000, 3000, 2600):  # a crowd, not yet halved
        live.n = n
        trim()
    assert trims == []
    live.n = 2000
    trim()
    assert trims == [0]
    trim()  # the peak starts again from here: no repeated trimming
    assert trims == [0]


def test_service_stops_cleanly_without_starting() -> None:
    """A service stopped before it started (an embedding that gives up early) stops at
    once, without error, and leaves nothing scheduled on the reactor."""
    from twisted.internet.testing import MemoryReactorClock

    from nipc.config import from_mapping

    config: Any = from_mapping({"host": {"name": "a.test", "realm": "T"},
                                "kerberos": {"keytab": "/k", "principal": "p@T"}})
    reactor = MemoryReactorClock()
    stopping = service.NipcService(config, reactor=reactor).stopService()
    reactor.advance(0)
    results: list[object] = []
    stopping.addBoth(results.append)
    assert results == [results[0]] and not isinstance(results[0], Failure)
    assert reactor.getDelayedCalls() == []


def test_full_collections_when_a_crowd_leaves_or_at_the_latest_every_minute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The closed connections' cycles sit in the oldest generation: a full collection
    goes with the trim; once the daemon owns the collector, one at least every minute."""
    collections: list[float] = []
    now = [0.0]
    monkeypatch.setattr(heap, "_libc", type("Libc", (), {"malloc_trim": lambda self, pad: 1})())
    monkeypatch.setattr(heap.gc, "collect", lambda *a: collections.append(now[0]) or 0)
    live = Live()
    trim = heap.HeapTrim(live, clock=lambda: now[0])
    live.n = 5000
    trim()
    live.n = 100
    now[0] = 1.0
    trim()
    assert collections == [1.0]
    now[0] = 1.0 + heap.FULL_EVERY
    trim()
    assert collections == [1.0]  # the collector is Python's own in an embedding process
    monkeypatch.setattr(heap, "_owned", True)
    trim()
    assert collections == [1.0, 1.0 + heap.FULL_EVERY]


def test_taking_over_limits_arenas_and_stops_automatic_full_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    options: list[tuple[int, int]] = []
    monkeypatch.setattr(heap, "_libc", type("Libc", (), {
        "mallopt": lambda self, option, value: options.append((option, value)) or 1})())
    before = gc.get_threshold()
    try:
        heap.take_over_memory()
        assert options == [(heap.M_ARENA_MAX, heap.ARENAS)]
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] >= 1 << 30
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        heap._owned = False
