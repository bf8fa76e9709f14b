"""Admission limits, with a fake clock."""

from __future__ import annotations

from typing import Callable

import pytest
from twisted.internet.defer import Deferred

from nipc.config import from_mapping
from nipc.errors import NipcError
from nipc.limits import FD_RESERVE, FDS_PER_CONNECTION, RECOUNT_AFTER, Descriptors, Limits, fds_needed

BASE = {"host": {"name": "a.test", "realm": "T"}, "kerberos": {"keytab": "/k", "principal": "p@T"}}


def limits(**kw: int) -> tuple[Limits, list[float]]:
    now = [0.0]
    config = from_mapping({**BASE, "limits": kw})
    return Limits(config.limits, config.host, lambda: now[0]), now


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


def test_inbound_caps_in_all_and_per_source() -> None:
    """Connections peers route in: at most max_inbound in all and max_inbound_per_source
    from one address, each refusal naming its key; a release makes room again."""
    lim, _ = limits(max_inbound=5, max_inbound_per_source=3)
    for _ in range(3):
        lim.inbound_arrived("10.0.0.1")
    with pytest.raises(NipcError) as e:
        lim.inbound_arrived("10.0.0.1")
    assert e.value.errno_name == "EAGAIN" and "max_inbound_per_source" in e.value.message
    lim.inbound_arrived("10.0.0.2")
    lim.inbound_arrived("10.0.0.2")
    with pytest.raises(NipcError) as e:
        lim.inbound_arrived("10.0.0.3")
    assert e.value.errno_name == "EAGAIN" and "limits.max_inbound)" in e.value.message
    lim.inbound_left("10.0.0.1")
    lim.inbound_arrived("10.0.0.3")
    assert lim.inbound == 5 and lim.inbound_by_source == {"10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 1}


class FdWorld:
    """Open descriptors and RLIMIT_NOFILE as a test sets them; counts run when asked."""

    def __init__(self, open_now: int, limit: int) -> None:
        self.open_now, self.limit, self.counts = open_now, limit, 0
        self.queued: list[tuple[Deferred[int], Callable[[], int]]] = []

    def count(self) -> int:
        self.counts += 1
        return self.open_now

    def background(self, job: Callable[[], int]) -> "Deferred[int]":
        d: Deferred[int] = Deferred()
        self.queued.append((d, job))
        return d

    def finish_counts(self) -> None:
        queued, self.queued = self.queued, []
        for d, job in queued:
            d.callback(job())


def test_descriptor_headroom() -> None:
    """Admissions are refused with EAGAIN naming RLIMIT_NOFILE once the last count plus
    what was admitted since would eat into the reserve; a background recount (at most
    one at a time, not more often than RECOUNT_AFTER) sees what was really used."""
    now = [0.0]
    room = 30
    world = FdWorld(open_now=40, limit=40 + FD_RESERVE + room)
    fds = Descriptors("b.test", lambda: now[0], world.count, world.background, lambda: world.limit)
    base = from_mapping(BASE)
    lim = Limits(base.limits, base.host, lambda: now[0], descriptors=fds)
    first = 0
    while not world.queued:  # a count starts once half the room may be used
        lim.inbound_arrived("10.0.0.1")
        first += 1
    assert (first - 1) * FDS_PER_CONNECTION < room / 2 <= first * FDS_PER_CONNECTION
    admitted = first
    with pytest.raises(NipcError) as e:
        while True:
            lim.inbound_arrived("10.0.0.1")
            admitted += 1
    assert admitted == room // FDS_PER_CONNECTION and len(world.queued) == 1
    assert e.value.errno_name == "EAGAIN" and "RLIMIT_NOFILE" in e.value.message
    with pytest.raises(NipcError):
        lim.admit(1000)
    assert lim.active == 0 and lim.per_caller == {}  # a refusal counts nothing in
    world.open_now = 40 + admitted  # each connection took 1 descriptor
    world.finish_counts()
    assert fds.estimate == 40 + admitted + (admitted - first) * FDS_PER_CONNECTION
    lim.inbound_left("10.0.0.1")
    assert fds.estimate == 40 + admitted + (admitted - first - 1) * FDS_PER_CONNECTION
    # Connections taking 1 descriptor each, counts finishing promptly: admitted until the
    # reserve is reached, not before.
    while True:
        try:
            lim.admit(1000)
        except NipcError:
            break
        world.open_now += 1
        world.finish_counts()
    assert world.limit - FD_RESERVE - 2 * FDS_PER_CONNECTION <= world.open_now <= world.limit - FD_RESERVE
    # Refused again at once: no new count before RECOUNT_AFTER; then one, which sees the
    # descriptors closed meanwhile.
    world.finish_counts()
    world.open_now -= 20
    with pytest.raises(NipcError):
        lim.admit(1000)
    assert not world.queued
    now[0] += RECOUNT_AFTER
    with pytest.raises(NipcError):
        lim.admit(1000)
    world.finish_counts()
    lim.admit(1000)


def test_unit_file_fd_limit_covers_the_limits() -> None:
    """etc/nipcd.service's LimitNOFILE holds what the default [limits] allow, and what its
    comment's arithmetic says (so the figures there stay true)."""
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[1] / "etc" / "nipcd.service").read_text()
    limit = int(unit.split("\nLimitNOFILE=", 1)[1].split()[0])
    assert fds_needed(from_mapping(BASE).limits) == 13_120
    assert "= 13,120 with the defaults" in unit
    hub = from_mapping({**BASE, "limits": {"max_connections": 131072, "max_inbound": 131072}})
    assert fds_needed(hub.limits) == 394_048 <= limit and "(394,048)" in unit


def test_a_link_admits_channel_handshakes_under_the_peer_bounds_until_the_daemon_stops() -> None:
    """Each channel handshake on an accepted link counts as pending until it settles; a
    daemon that is stopping admits none, on old links either, and says so (the sender
    then dials again rather than taking it for an overload)."""
    from nipc.admission import PeerAdmission, Stopping

    lim, _ = limits()
    peers = PeerAdmission(lim)
    link = peers.link("192.0.2.1")
    settle = link.channel()
    assert settle is not None and lim.pending_peers == 1
    settle()
    assert lim.pending_peers == 0
    peers.close()
    with pytest.raises(Stopping):
        link.channel()
    assert lim.pending_peers == 0
