"""Protocol transition's credential cache: reused while valid, renewed before expiry,
expired entries dropped. Fake credentials stand in for the KDC; the clock is faked."""

from __future__ import annotations

from typing import Any

import pytest

from nipc import kerberos
from nipc.config import from_mapping

CONFIG = from_mapping({"host": {"name": "a.test", "realm": "T.TEST"},
                       "kerberos": {"keytab": "/nonexistent", "principal": "A$@T.TEST"}})


class FakeCreds:
    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime


class FakeDaemon:
    """The daemon's own credential: counts S4U2Self round trips."""

    def __init__(self, ticket_life: int) -> None:
        self.calls: list[str] = []
        self.ticket_life = ticket_life

    def impersonate(self, name: Any, usage: str) -> FakeCreds:
        self.calls.append(str(name))
        return FakeCreds(self.ticket_life)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(kerberos.time, "monotonic", lambda: now[0])
    return now


def transition(daemon: FakeDaemon, config: Any = CONFIG) -> kerberos.ProtocolTransition:
    """Protocol transition whose own ticket (from the keytab) is ``daemon``."""
    source = kerberos.ProtocolTransition(None, config.host, config.kerberos)
    source._own_ticket = lambda: daemon  # type: ignore[method-assign]
    return source


def test_cached_until_shortly_before_expiry(clock: list[float]) -> None:
    daemon = FakeDaemon(ticket_life=600)
    source = transition(daemon)
    first = source._impersonated("alice@T.TEST")
    assert source._impersonated("alice@T.TEST") is first and len(daemon.calls) == 1
    clock[0] += 600 - kerberos.RENEW_MARGIN - 1
    assert source._impersonated("alice@T.TEST") is first and len(daemon.calls) == 1
    clock[0] += 2  # within the renewal margin: a fresh S4U2Self, transparently
    renewed = source._impersonated("alice@T.TEST")
    assert renewed is not first and len(daemon.calls) == 2


def test_expired_entries_are_dropped(clock: list[float]) -> None:
    source = transition(FakeDaemon(ticket_life=600))
    for user in ("alice", "bob", "carol"):
        source._impersonated(f"{user}@T.TEST")
    clock[0] += 10_000
    source._impersonated("dave@T.TEST")
    assert set(source._cache) == {"dave@T.TEST"}


@pytest.mark.parametrize(("minutes", "reused_for"), [(None, 600.0), (0.5, 30.0)])
def test_reuse_is_bounded_by_the_setting(clock: list[float], minutes: float | None,
                                         reused_for: float) -> None:
    """A 10-hour ticket is reused at most kerberos.caller_ticket_reuse (default 10 min):
    then the KDC is asked again, and can refuse a user locked since."""
    krb: dict[str, Any] = {"keytab": "/nonexistent", "principal": "A$@T.TEST"}
    if minutes is not None:
        krb["caller_ticket_reuse"] = minutes
    config = from_mapping({"host": {"name": "a.test", "realm": "T.TEST"}, "kerberos": krb})
    daemon = FakeDaemon(ticket_life=36000)
    source = transition(daemon, config)
    first = source._impersonated("alice@T.TEST")
    clock[0] += reused_for - 1
    assert source._impersonated("alice@T.TEST") is first and len(daemon.calls) == 1
    clock[0] += 2
    assert source._impersonated("alice@T.TEST") is not first and len(daemon.calls) == 2
