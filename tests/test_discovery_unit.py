"""Unit tests of peer discovery (``nipc.discovery``): SRV ordering (RFC 2782), the lookup
sequence static table -> SRV -> A/AAAA against a scripted resolver, errno mapping, the
first-reachable dialer, and the ``[dns]`` configuration keys."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.python.failure import Failure

from nipc.config import ConfigError, PeerAddress, from_mapping
from nipc.discovery import FirstReachable, PeerLocator, Service, order_services, retransmissions
from nipc.errors import NipcError

BASE: dict[str, Any] = {
    "host": {"name": "a.example.com", "realm": "EXAMPLE.COM"},
    "kerberos": {"keytab": "/k", "principal": "nipc/a.example.com"},
    "peer": {"port": 7000},
}


def config(**sections: dict[str, Any]) -> Any:
    return from_mapping({**BASE, **sections})


# ----------------------------------------------------------------------- SRV ordering

services = st.lists(
    st.builds(Service, st.integers(0, 3), st.integers(0, 5), st.integers(1, 65535),
              st.sampled_from(["p.example", "q.example", "r.example", "s.example"])),
    max_size=12)


@given(services, st.integers())
def test_order_is_a_permutation_by_priority(records: list[Service], seed: int) -> None:
    ordered = order_services(records, random.Random(seed))
    assert Counter(ordered) == Counter(records)
    priorities = [r.priority for r in ordered]
    assert priorities == sorted(priorities)


def first_choices(records: list[Service], runs: int = 4000) -> Counter[str]:
    rng = random.Random(1)
    return Counter(order_services(records, rng)[0].target for _ in range(runs))


def test_weights_share_the_first_place() -> None:
    heavy, light = Service(0, 90, 1, "heavy"), Service(0, 10, 1, "light")
    seen = first_choices([light, heavy])
    assert 0.85 < seen["heavy"] / 4000 < 0.95


def test_lower_priority_always_first_whatever_the_weight() -> None:
    seen = first_choices([Service(1, 1000, 1, "backup"), Service(0, 0, 1, "primary")])
    assert seen == Counter({"primary": 4000})


def test_zero_weight_keeps_a_small_chance() -> None:
    """RFC 2782: weight 0 records go first in the running sum, chance 1/(sum+1)."""
    seen = first_choices([Service(0, 9, 1, "nine"), Service(0, 0, 1, "zero")])
    assert 0.05 < seen["zero"] / 4000 < 0.15
    all_zero = first_choices([Service(0, 0, 1, "x"), Service(0, 0, 1, "y")])
    assert all_zero == Counter({"x": 4000})  # all 0: the order given


@given(st.floats(0.01, 100))
def test_retransmissions_fill_the_timeout(total: float) -> None:
    steps = retransmissions(total)
    assert steps and all(s > 0 for s in steps)
    assert sum(steps) == pytest.approx(total)


# ------------------------------------------------------------------ the lookup sequence


def rr(name: str, payload: Any) -> dns.RRHeader:
    return dns.RRHeader(name.encode(), payload.TYPE, payload=payload)


class FakeResolver:
    """Answers from a table {(type, name): records | exception}; others are NXDOMAIN."""

    def __init__(self, table: dict[tuple[int, str], Any]) -> None:
        self.table = table
        self.asked: list[tuple[int, str]] = []

    def _answer(self, kind: int, name: str) -> "Deferred[Any]":
        self.asked.append((kind, name))
        value = self.table.get((kind, name), DNSNameError(name))
        if isinstance(value, Deferred):
            return value
        if isinstance(value, Exception):
            return fail(value)
        return succeed(([rr(name, p) for p in value], [], []))

    def lookupService(self, name: str, timeout: Any = None) -> "Deferred[Any]":
        return self._answer(dns.SRV, name)

    def lookupAddress(self, name: str, timeout: Any = None) -> "Deferred[Any]":
        return self._answer(dns.A, name)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> "Deferred[Any]":
        return self._answer(dns.AAAA, name)


def locator_of(reactor: Any, config: Any, resolver: Any, rng: Any = None) -> PeerLocator:
    return PeerLocator(reactor, config.dns, config.peers, config.peer.port, resolver, rng)


def locate(table: dict[tuple[int, str], Any], host: str, reactor: Any = None,
           **sections: dict[str, Any]) -> Any:
    """The locator's answer: a list of addresses, or the NipcError it failed with."""
    locator = locator_of(reactor or Clock(), config(**sections), FakeResolver(table),
                         random.Random(0))
    out: list[Any] = []
    locator.locate(host).addBoth(out.append)
    assert out, "did not finish"
    return out[0].value if isinstance(out[0], Failure) else out[0]


def test_static_table_first() -> None:
    table = {(dns.SRV, "_nipc._tcp.b.example"): [dns.Record_SRV(0, 0, 1, b"x.example")]}
    got = locate(table, "b.example", peers={"b.example": "192.0.2.9:8000"})
    assert got == [PeerAddress("192.0.2.9", 8000)]


def test_srv_targets_in_priority_order_each_at_its_port() -> None:
    table: dict[tuple[int, str], Any] = {
        (dns.SRV, "_nipc._tcp.b.example"): [dns.Record_SRV(20, 0, 7001, b"backup.example"),
                                            dns.Record_SRV(10, 5, 7002, b"main.example.")],
        (dns.A, "main.example"): [dns.Record_A("192.0.2.1")],
        (dns.AAAA, "main.example"): [dns.Record_AAAA("2001:db8::1")],
        (dns.A, "backup.example"): [dns.Record_A("192.0.2.2")],
    }
    assert locate(table, "b.example") == [
        PeerAddress("192.0.2.1", 7002), PeerAddress("2001:db8::1", 7002),
        PeerAddress("192.0.2.2", 7001)]


def test_without_srv_the_address_records_at_the_default_port() -> None:
    table: dict[tuple[int, str], Any] = {
        (dns.SRV, "_nipc._tcp.b.example"): DNSServerError("SERVFAIL"),
        (dns.A, "b.example"): [dns.Record_A("192.0.2.7")],
    }
    assert locate(table, "b.example") == [PeerAddress("192.0.2.7", 7000)]


def test_nothing_found_names_every_lookup() -> None:
    e = locate({}, "nowhere.example", dns={"servers": ["192.0.2.53"]})
    assert isinstance(e, NipcError) and e.errno_name == "EHOSTUNREACH"
    for part in ("[peers]", "SRV record _nipc._tcp.nowhere.example",
                 "A/AAAA record nowhere.example", "192.0.2.53:53"):
        assert part in e.message


def test_srv_target_without_address() -> None:
    table = {(dns.SRV, "_nipc._tcp.b.example"): [dns.Record_SRV(0, 0, 1, b"gone.example")]}
    e = locate(table, "b.example")
    assert e.errno_name == "EHOSTUNREACH" and "gone.example" in e.message


def test_srv_dot_means_no_service() -> None:
    table = {(dns.SRV, "_nipc._tcp.b.example"): [dns.Record_SRV(0, 0, 0, b".")]}
    e = locate(table, "b.example")
    assert e.errno_name == "EHOSTUNREACH" and "no NIPC service" in e.message


def test_silent_dns_is_etimedout_at_the_timeout() -> None:
    clock = Clock()
    table: dict[tuple[int, str], Any] = {(dns.SRV, "_nipc._tcp.b.example"): Deferred()}
    locator = locator_of(clock, config(dns={"timeout": 2}), FakeResolver(table))
    out: list[Any] = []
    locator.locate("b.example").addBoth(out.append)
    clock.advance(1.9)
    assert not out
    clock.advance(0.2)
    e = out[0].value
    assert isinstance(e, NipcError) and e.errno_name == "ETIMEDOUT"
    assert "within 2s" in e.message


def test_address_literal_skips_dns() -> None:
    assert locate({}, "192.0.2.4") == [PeerAddress("192.0.2.4", 7000)]


# --------------------------------------------------------------------- first reachable


class Endpoint:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.tried = False

    def connect(self, factory: Any) -> "Deferred[Any]":
        self.tried = True
        return fail(self.result) if isinstance(self.result, Exception) else succeed(self.result)


def test_first_reachable_skips_dead_addresses() -> None:
    eps = [Endpoint(neterror.ConnectionRefusedError()), Endpoint(neterror.TCPTimedOutError()),
           Endpoint("proto"), Endpoint("never")]
    out: list[Any] = []
    FirstReachable(eps).connect(None).addBoth(out.append)
    assert out == ["proto"] and not eps[3].tried


def test_first_reachable_reports_the_last_failure() -> None:
    eps = [Endpoint(neterror.TCPTimedOutError()), Endpoint(neterror.ConnectionRefusedError())]
    out: list[Any] = []
    FirstReachable(eps).connect(None).addBoth(out.append)
    assert out[0].check(neterror.ConnectionRefusedError)


# ---------------------------------------------------------------------------- [dns] keys


def test_dns_keys() -> None:
    cfg = config(dns={"servers": ["10.77.0.2", "192.0.2.1:5353"], "timeout": 1.5})
    assert cfg.dns.servers == (("10.77.0.2", 53), ("192.0.2.1", 5353))
    assert cfg.dns.timeout == 1.5
    plain = config()
    assert plain.dns.servers == () and plain.dns.timeout == 5.0


@pytest.mark.parametrize("dns_section", [
    {"servers": ["dns.example"]}, {"servers": ["::1"]}, {"servers": "10.0.0.1"},
    {"servers": [53]}, {"timeout": 0}, {"timeout": True}, {"retries": 2},
    {"servers": ["10.0.0.1:0"]},
])
def test_bad_dns_keys(dns_section: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="dns"):
        config(dns=dns_section)
