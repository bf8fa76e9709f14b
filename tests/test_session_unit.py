"""Sessions' bookkeeping, proofs and wire form, without a KDC (the invariants on real
parts are tests/test_sessions.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from gssapi.raw.misc import GSSError
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from nipc import wire
from nipc.config import from_mapping
from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.interfaces import ITicketSource
from nipc.kerberos import Accepted
from nipc.registry import Registry
from nipc.reload import adopt
from nipc.router import Router
from nipc.session import (MAX_PER_LINK, MAX_PER_PRINCIPAL, MAX_SESSIONS, Session, Sessions,
                          proof_message, seconds_left, verify)
from test_channels_unit import Server
from test_inbound_unit import Acceptor, Daemon
from test_router_unit import CONFIG as ROUTER_CONFIG
from test_router_unit import REQUEST, ROOT, Links, answer, hellos
from test_router_unit import Initiation as RouterInitiation
from test_router_unit import Reactor as RouterReactor
from test_router_unit import link as router_link


class FakeLink:
    """A link's ``closed`` and ``when_ended``, fired by :meth:`end`."""

    closed = False

    def __init__(self) -> None:
        self._ended: list[Deferred[None]] = []

    def when_ended(self) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        self._ended.append(d)
        return d

    def end(self) -> None:
        self.closed = True
        for d in self._ended:
            d.callback(None)


class FakeContext:
    """Stands in for a GSS context: a lifetime, and a MIC check that fails as told."""

    def __init__(self, lifetime: int | None = 600, raises: int | None = None) -> None:
        self.lifetime = lifetime
        self.raises = raises

    def verify_signature(self, message: bytes, mic: bytes) -> None:
        if self.raises is not None:
            raise GSSError(self.raises, 0)


def session(principal: str = "alice@T", until: float = 100.0, context: Any = None,
            hops: tuple[str, ...] = ("a.t",)) -> Session:
    return Session("ref", principal, context or FakeContext(), until, hops)


def test_a_session_ends_at_its_time_and_with_its_link() -> None:
    now = [0.0]
    table: Sessions[str] = Sessions(600.0, lambda: now[0])
    link = FakeLink()
    assert table.add(link, "k", session(until=10.0))
    assert table.get(link, "k") is not None
    now[0] = 10.0
    assert table.get(link, "k") is None
    assert table.add(link, "k", session(until=20.0))
    link.end()
    assert table.count(link) == 0  # dropped as the link ended, before anyone asks
    assert table.get(link, "k") is None
    assert not table.add(link, "k", session(until=30.0))


def test_tables_are_per_link() -> None:
    table: Sessions[str] = Sessions(600.0, lambda: 0.0)
    one, two = FakeLink(), FakeLink()
    table.add(one, "k", session())
    assert table.get(two, "k") is None
    table.ended(one)
    assert table.get(one, "k") is None


def test_one_session_per_principal_and_a_cap_per_link() -> None:
    table: Sessions[str] = Sessions(600.0, lambda: 0.0)
    link = FakeLink()
    table.add(link, "old", session())
    table.add(link, "new", session())
    assert table.get(link, "old") is None and table.get(link, "new") is not None
    # Hops are the sender's word: another hop list replaces the principal's session too.
    table.add(link, "other-hops", session(hops=("c.t",)))
    assert table.count(link) == 1 and table.get(link, "other-hops") is not None
    for i in range(MAX_PER_LINK):
        table.add(link, f"p{i}", session(principal=f"u{i}@T"))
    assert table.count(link) == MAX_PER_LINK
    assert not table.add(link, "one-more", session(principal="late@T"))


def test_a_session_never_outlives_its_ticket_nor_the_maximum() -> None:
    assert seconds_left(FakeContext(lifetime=30), 600.0) == 30
    assert seconds_left(FakeContext(lifetime=36000), 600.0) == 600
    assert seconds_left(FakeContext(lifetime=None), 600.0) == 0
    assert seconds_left(FakeContext(lifetime=600), 0.0) == 0
    assert seconds_left(FakeContext(lifetime=320), 600.0, 300.0) == 20
    assert seconds_left(FakeContext(lifetime=200), 600.0, 300.0) == 0


def test_every_field_is_under_the_proof() -> None:
    base = (b"exporter/channel/\0\0\0\1", "ref", "/run/x.sock", "b.t", "c1", ("a.t",))
    seen = {proof_message(*base)}
    for i, other in enumerate([b"exporter/channel/\0\0\0\2", "ref2", "/run/y.sock", "c.t", "c2",
                               ("a.t", "b2.t")]):
        changed = list(base)
        changed[i] = other
        seen.add(proof_message(*changed))  # type: ignore[arg-type]
    assert len(seen) == 7
    # Length prefixes: moving a boundary between fields changes the message.
    assert proof_message(b"x", "ab", "/c", "d", "e", ()) != proof_message(b"x", "a", "b/c", "d", "e", ())


GSS_S_BAD_SIG = 6 << 16
GSS_S_DUPLICATE_TOKEN, GSS_S_OLD_TOKEN, GSS_S_UNSEQ_TOKEN, GSS_S_GAP_TOKEN = 2, 4, 8, 16


@pytest.mark.parametrize("status", [GSS_S_GAP_TOKEN, GSS_S_UNSEQ_TOKEN, GSS_S_OLD_TOKEN])
def test_a_valid_proof_out_of_order_passes(status: int) -> None:
    verify(session(context=FakeContext(raises=status)), b"m", b"mic")


@pytest.mark.parametrize("status", [GSS_S_BAD_SIG, GSS_S_BAD_SIG | GSS_S_GAP_TOKEN,
                                    GSS_S_DUPLICATE_TOKEN, GSS_S_DUPLICATE_TOKEN | GSS_S_GAP_TOKEN])
def test_a_bad_or_duplicate_proof_is_refused(status: int) -> None:
    with pytest.raises(NipcError) as refused:
        verify(session(context=FakeContext(raises=status)), b"m", b"mic")
    assert refused.value.errno_name == "EKEYREJECTED"


def test_a_session_hello_on_the_wire() -> None:
    hello = wire.Hello("/run/x.sock", "b.t", ("a.t",), b"", "c1", "0123abcd", b"\x01mic")
    kind, channel, payload = wire.FrameDecoder().feed(wire.encode(hello, 3))[0]
    assert channel == 3 and b'"version":3' in payload and b'"token"' not in payload
    assert wire.decode(kind, payload) == hello
    full = wire.Hello("/run/x.sock", "b.t", ("a.t",), b"tok", "c1")
    assert b'"version":2' in wire.encode(full, 1)


@pytest.mark.parametrize("body", [
    b'{"version":3,"path":"/x","host":"b.t","hops":["a.t"],"conn_id":"c","mic":"AA=="}',
    b'{"version":3,"path":"/x","host":"b.t","hops":["a.t"],"conn_id":"c","session":"a b","mic":"AA=="}',
    b'{"version":3,"path":"/x","host":"b.t","hops":["a.t"],"conn_id":"c","session":"ab","mic":"!"}',
    b'{"version":4,"path":"/x","host":"b.t","hops":["a.t"],"conn_id":"c","token":""}',
])
def test_malformed_session_hellos_are_refused(body: bytes) -> None:
    with pytest.raises(NipcError) as refused:
        wire.decode(wire.Kind.HELLO, body)
    assert refused.value.errno_name == "EPROTO"


def test_a_principal_and_the_daemon_hold_a_bounded_number_of_sessions() -> None:
    table: Sessions[str] = Sessions(600.0, lambda: 0.0)
    links = [FakeLink() for _ in range(MAX_PER_PRINCIPAL + 1)]
    assert all(table.add(link, "k", session()) for link in links[:-1])
    assert not table.add(links[-1], "k", session())  # one ticket, no more links' worth
    assert table.add(links[-1], "k", session(principal="bob@T"))
    links[0].end()
    assert table.add(links[-1], "k2", session())  # a share freed as a link ended
    filled = MAX_PER_PRINCIPAL + 1
    while filled < MAX_SESSIONS:
        links.append(link := FakeLink())  # held: a link collected takes its sessions along
        for i in range(min(MAX_PER_LINK, MAX_SESSIONS - filled)):
            assert table.add(link, f"k{i}", session(principal=f"u{filled}-{i}@T"))
        filled += MAX_PER_LINK
    assert not table.add(FakeLink(), "k", session(principal="carol@T"))


class _Context:
    lifetime = 36000  # a 10 h ticket


class _SessionAcceptor(Acceptor):
    def accept(self, token: bytes, channel: bytes) -> Accepted:
        acc = super().accept(token, channel)
        return Accepted(acc.principal, acc.token, object(), None, None, _Context())


def test_one_principal_cannot_fill_a_links_table_by_varying_hops() -> None:
    """The red team's: hops are the sender's word, so they key nothing; chained
    connections and senders that would not resume one are offered no session."""
    daemon = Daemon()
    daemon.inbound._acceptor = daemon.acceptor = _SessionAcceptor()
    daemon.inbound.sessions = Sessions(600.0)
    total = 0
    for _ in range(3):
        daemon.server = Server()
        for n in range(1, MAX_PER_LINK + 10):
            hops = (f"x{n}.test", "a.test") if n % 2 else (f"x{n}.test",)
            daemon.hello(wire.Hello("/run/s.sock", "b.test", hops, b"t", "c1", resumes=True), n)
            daemon.reactor.from_threads()
        total += daemon.inbound.sessions.count(daemon.server.link)
        assert all("session" not in r.info for r in daemon.results()[::2])  # n odd: two hops
    assert total == 3  # alice@T: one live session a link
    daemon.server = Server()
    daemon.hello(wire.Hello("/run/s.sock", "b.test", ("a.test",), b"t", "c1"), 1)
    daemon.reactor.from_threads()
    (result,) = daemon.results()
    assert result.ok and "session" not in result.info  # an older sender's HELLO
    assert daemon.inbound.sessions.count(daemon.server.link) == 0


def test_a_reloaded_session_max_applies_to_sessions_held() -> None:
    """Sessions read the running [kerberos] section, which a reload updates in place."""
    config = from_mapping({"host": {"name": "b.test", "realm": "T"},
                           "kerberos": {"keytab": "/k", "principal": "p@T", "session_max": 10}})
    kerberos, now = config.kerberos, [0.0]
    table: Sessions[str] = Sessions(lambda: kerberos.session_max, lambda: now[0])
    link = FakeLink()
    assert table.add(link, "k", session(until=600.0))
    now[0] = 100.0
    assert table.get(link, "k") is not None
    adopt(config, from_mapping({"host": {"name": "b.test", "realm": "T"},
                                "kerberos": {"keytab": "/k", "principal": "p@T", "session_max": 1}}))
    assert table.maximum == 60.0
    assert table.get(link, "k") is None  # kept 100 s, more than the new maximum
    adopt(config, from_mapping({"host": {"name": "b.test", "realm": "T"},
                                "kerberos": {"keytab": "/k", "principal": "p@T", "session_max": 0}}))
    assert table.maximum == 0.0  # sessions off: nothing new offered or kept


@pytest.mark.parametrize("allowance", [0.0, 300.0])
def test_a_session_ends_with_its_gss_contexts_ticket(allowance: float) -> None:
    """Whatever the monotonic end set at the offer says: a ticket's end is wall-clock time
    (a clock stepped forward, a suspended host), and MIT still signs and verifies MICs
    with a context whose ticket has expired."""
    context = FakeContext(lifetime=int(allowance) + 100)
    table: Sessions[str] = Sessions(600.0, lambda: 0.0, allowance)
    link = FakeLink()
    assert table.add(link, "k", session(context=context, until=500.0))
    assert table.get(link, "k") is not None
    context.lifetime = int(allowance)  # the ticket is over; the acceptor adds its skew
    assert table.get(link, "k") is None and table.count(link) == 0


def test_a_sender_keeps_a_session_no_longer_than_its_impersonated_credentials() -> None:
    """Protocol transition: credentials reused for 20 s more give a session of at most
    20 s, whatever the offer and session_max say (the lockout bound stays one window)."""
    reactor = RouterReactor()
    peer = router_link(reactor)

    class Ending(RouterInitiation):
        principal = "root@T"
        context = _Context()
        reuse_until = time.monotonic() + 20

    @implementer(ITicketSource)
    class Tickets:
        def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> Any:
            return succeed(Ending())

        def holder(self, who: LocalIdentity) -> None:
            return None

    router = Router(reactor, ROUTER_CONFIG.host, ROUTER_CONFIG.peer, ROUTER_CONFIG.timeouts,
                    Tickets(), Registry(), Links(peer), None, Sessions(600.0))  # type: ignore[arg-type]
    router.route(REQUEST, ROOT, "c1")
    ((number, hello),) = hellos(peer)
    assert hello.resumes
    answer(peer, number, wire.Result("OK", token=b"ap-rep",
                                     info={"session": "ref", "session_seconds": 600}))
    assert router.sessions.count(peer) == 1
    (kept,) = router.sessions._links[peer].values()
    assert kept.until <= time.monotonic() + 20
