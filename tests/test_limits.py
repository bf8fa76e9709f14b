"""Admission limits, with a fake clock."""

from __future__ import annotations

import pytest

from nipc.config import from_mapping
from nipc.errors import NipcError
from nipc.limits import Limits

BASE = {"host": {"name": "a.test", "realm": "T"}, "kerberos": {"keytab": "/k", "principal": "p@T"}}


def limits(**kw: int) -> tuple[Limits, list[float]]:
    now = [0.0]
    config = from_mapping({**BASE, "limits": kw})
    return Limits(config, lambda: now[0]), now


def test_per_caller_and_global_caps() -> None:
    lim, _ = limits(max_connections=3, max_per_caller=2)
    lim.admit(1000)
    lim.admit(1000)
    with pytest.raises(NipcError) as e:
        lim.admit(1000)
    assert e.value.errno_name == "EAGAIN"
    lim.admit(1001)
    with pytest.raises(NipcError):
        lim.admit(1002)  # global cap
    lim.release(1000)
    lim.admit(1002)


def test_handshake_rate_is_a_token_bucket() -> None:
    lim, now = limits(handshakes_per_second=2, handshake_burst=3)
    for _ in range(3):
        lim.handshake(7)
    with pytest.raises(NipcError) as e:
        lim.handshake(7)
    assert e.value.errno_name == "EAGAIN" and "per second" in e.value.message
    lim.handshake(8)  # another caller is not affected
    now[0] += 0.5
    lim.handshake(7)  # one token back after half a second at 2/s


def test_pending_peers() -> None:
    """A burst from one source is welcome while there is room; under contention (half the
    pool used) a source at its share is refused, others are still admitted."""
    lim, _ = limits(max_pending_peers=6, max_pending_per_source=2)
    assert all(lim.peer_arrived("10.0.0.1") for _ in range(3))  # no contention yet
    assert not lim.peer_arrived("10.0.0.1")  # contended, and over its share
    assert lim.peer_arrived("10.0.0.2") and lim.peer_arrived("10.0.0.2")
    assert lim.peer_arrived("10.0.0.3")
    assert not lim.peer_arrived("10.0.0.4")  # the global cap
    lim.peer_settled("10.0.0.1")
    assert lim.peer_arrived("10.0.0.4")


def test_bad_limits_are_refused() -> None:
    from nipc.config import ConfigError

    for bad in ({"max_connections": 0}, {"max_per_caller": "5"}, {"nope": 1}):
        with pytest.raises(ConfigError):
            from_mapping({**BASE, "limits": bad})
