"""HeapTrim gives memory back once a crowd of connections has gone, and not otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from nipc import service


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

    monkeypatch.setattr(service, "_libc", Libc())
    live = Live()
    trim = service.HeapTrim(live)  # type: ignore[arg-type]
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
    from nipc.config import from_mapping

    config: Any = from_mapping({"host": {"name": "a.test", "realm": "T"},
                                "kerberos": {"keytab": "/k", "principal": "p@T"}})
    service.NipcService(config).stopService()
