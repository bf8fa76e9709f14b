"""The router's dial without sockets or a KDC: a fake ILinks hands out links on
StringTransports, a fake ITicketSource gives tokens, a MemoryReactorClock keeps time.

What only root-only integration tests covered: the HELLO a dial sends, one retry when a
link handed out again turns out lost, no retry on a fresh link, and a link retired when a
handshake on it times out (new connections get a new link)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from nipc import wire
from nipc.config import from_mapping
from nipc.errors import NipcError
from nipc.identity import Caller, LocalIdentity
from nipc.interfaces import ILinks, ITicketSource
from nipc.admission import Stopping
from nipc.links import Reused
from nipc.channel import Channel
from nipc.link import ClientLink
from nipc.registry import Registry
from nipc.request import ConnectRequest
from nipc.router import Router
from test_splice_unit import TLSTransport, frames

CONFIG = from_mapping({"host": {"name": "a.test", "realm": "T"},
                       "kerberos": {"keytab": "/k", "principal": "p@T"},
                       "timeouts": {"handshake": 5}})
REQUEST = ConnectRequest("/run/s.sock", "b.test")
ROOT = Caller(4242, 0, 0, (0,))


class SyncPool:
    """A thread pool that runs its work at once, on the calling thread."""

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class Reactor(MemoryReactorClock):
    """Time from the Clock; pool "threads" run at once. Work a real thread hands back
    (``callFromThread``, as ``on_fresh_thread`` does) waits for :meth:`from_threads`."""

    def __init__(self) -> None:
        super().__init__()
        self._handed: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def getThreadPool(self) -> SyncPool:
        return SyncPool()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            f(*args)
        else:
            self._handed.put((f, args))

    def from_threads(self, timeout: float = 30.0) -> None:
        """Run what one thread handed back, waiting (a bound) for it."""
        f, args = self._handed.get(timeout=timeout)
        f(*args)


class Initiation:
    """A GSS initiation that the peer's answer completes (mutual authentication)."""

    token = b"ap-req"
    complete = False

    def step(self, token: bytes) -> None:
        self.complete = token == b"ap-rep"


@implementer(ITicketSource)
class Tickets:
    def __init__(self) -> None:
        self.bindings: list[bytes] = []

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes
                 ) -> "Deferred[Initiation]":
        self.bindings.append(channel)
        return succeed(Initiation())


@implementer(ILinks)
class Links:
    """Hands out the links it is given, in order; notes each ``get``."""

    def __init__(self, *links: ClientLink | Reused) -> None:
        self._links = list(links)
        self.asked: list[str] = []

    def get(self, host: str) -> "Deferred[ClientLink | Reused]":
        self.asked.append(host)
        return succeed(self._links.pop(0))

    def describe(self, now: float) -> list[dict[str, Any]]:
        return []

    def reconfigure(self, tls: Any, locator: Any) -> None:
        pass

    def close(self) -> None:
        pass


def link(reactor: Reactor) -> ClientLink:
    """A ClientLink past its TLS handshake on a StringTransport."""
    made = ClientLink(reactor, lambda transport: None)
    made.makeConnection(TLSTransport())  # type: ignore[no-untyped-call]
    made.handshakeCompleted()
    return made


def dial(reactor: Reactor, links: Links, tickets: Tickets | None = None
         ) -> tuple[list[Any], list[Failure]]:
    # No local connects here: no destination connector.
    router = Router(reactor, CONFIG.host, CONFIG.peer, CONFIG.timeouts, tickets or Tickets(),
                    Registry(), links, None)  # type: ignore[arg-type]
    ok: list[Any] = []
    failed: list[Failure] = []
    router.route(REQUEST, ROOT, "c1").addCallbacks(ok.append, failed.append)
    return ok, failed


def hellos(on: ClientLink) -> list[tuple[int, wire.Hello]]:
    transport = on.transport
    assert isinstance(transport, TLSTransport)
    found = [(n, wire.decode(k, p)) for k, n, p in frames(transport) if k == wire.Kind.HELLO]
    return [(n, hello) for n, hello in found if isinstance(hello, wire.Hello)]


def answer(on: ClientLink, number: int, result: wire.Result) -> None:
    on.dataReceived(wire.encode(result, number))


def test_a_dial_sends_one_hello_bound_to_its_channel_and_believes_a_proven_answer() -> None:
    reactor = Reactor()
    peer = link(reactor)
    tickets = Tickets()
    ok, failed = dial(reactor, Links(peer), tickets)
    ((number, hello),) = hellos(peer)
    assert (hello.path, hello.host, hello.hops, hello.token, hello.conn_id) == (
        "/run/s.sock", "b.test", ("a.test",), b"ap-req", "c1")
    assert tickets.bindings == [wire.binding(TLSTransport.EXPORTER, number)]
    answer(peer, number, wire.Result("OK", token=b"ap-rep"))
    assert not failed
    (channel,) = ok
    assert isinstance(channel, Channel) and channel.link is peer and not channel.closed


def test_an_answer_from_an_unproven_peer_is_not_believed() -> None:
    reactor = Reactor()
    peer = link(reactor)
    ok, failed = dial(reactor, Links(peer))
    ((number, _),) = hellos(peer)
    answer(peer, number, wire.Result("OK", token=b"forged"))
    assert not ok
    (failure,) = failed
    assert failure.check(NipcError) and failure.value.errno_name == "EPROTO"
    assert not peer.channels  # the channel was aborted


def test_a_refusal_is_the_peers_errno() -> None:
    reactor = Reactor()
    peer = link(reactor)
    ok, failed = dial(reactor, Links(peer))
    ((number, _),) = hellos(peer)
    answer(peer, number, wire.Result("ENOENT", "no such socket", token=b"ap-rep"))
    assert not ok and failed[0].value.errno_name == "ENOENT"


@pytest.mark.parametrize("how", ["lost", "stopping"])
def test_a_reused_link_failing_before_the_answer_is_retried_once_on_a_new_link(how: str) -> None:
    """Lost: the peer restarted, or closed the link as idle just as it was handed out
    again. Stopping: the peer daemon began stopping (a restart) and refuses new channels
    on the link it accepted before, saying so; the link is retired (no new channel on it,
    closed once empty). Either way the connection is not lost: it is dialled again."""
    reactor = Reactor()
    stale, fresh = link(reactor), link(reactor)
    gone: list[ClientLink] = []
    stale.on_lost = gone.append
    links = Links(Reused(stale), fresh)
    ok, failed = dial(reactor, links)
    ((number, _),) = hellos(stale)
    if how == "lost":
        stale.connectionLost(Failure(ConnectionLost("the peer restarted")))
    else:
        answer(stale, number, Stopping().result())
        assert stale.retired and not stale.channels
    assert gone == [stale]
    assert links.asked == ["b.test", "b.test"] and not ok and not failed
    ((number, _),) = hellos(fresh)
    answer(fresh, number, wire.Result("OK", token=b"ap-rep"))
    assert not failed and ok[0].link is fresh


def test_the_retry_is_once() -> None:
    reactor = Reactor()
    first, second = link(reactor), link(reactor)
    links = Links(Reused(first), Reused(second))
    ok, failed = dial(reactor, links)
    first.connectionLost(Failure(ConnectionLost("gone")))
    second.connectionLost(Failure(ConnectionLost("gone again")))
    assert links.asked == ["b.test", "b.test"] and not ok
    assert failed[0].value.errno_name == "EHOSTUNREACH"


def test_a_fresh_link_lost_is_not_retried() -> None:
    reactor = Reactor()
    fresh = link(reactor)
    links = Links(fresh)
    ok, failed = dial(reactor, links)
    fresh.connectionLost(Failure(ConnectionLost("gone")))
    assert links.asked == ["b.test"] and not ok
    assert failed[0].value.errno_name == "EHOSTUNREACH"


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
def test_a_handshake_timeout_retires_the_link(reused: bool) -> None:
    """No answer within the handshake timeout on a link that is up: it may be dead
    without TCP knowing yet, so it is retired (new connections get a new link) and
    closed once its last channel ends; the caller gets ETIMEDOUT, not a retry."""
    reactor = Reactor()
    hung = link(reactor)
    gone: list[ClientLink] = []
    hung.on_lost = gone.append
    links = Links(Reused(hung) if reused else hung)
    ok, failed = dial(reactor, links)
    assert len(hellos(hung)) == 1
    reactor.advance(CONFIG.timeouts.handshake)
    assert not ok and failed[0].value.errno_name == "ETIMEDOUT"
    assert links.asked == ["b.test"]
    assert hung.retired and gone == [hung]


def test_a_peer_daemon_still_stopping_on_the_new_link_is_not_reachable() -> None:
    reactor = Reactor()
    first, second = link(reactor), link(reactor)
    links = Links(first, second)
    ok, failed = dial(reactor, links)
    for peer in (first, second):
        ((number, _),) = hellos(peer)
        answer(peer, number, Stopping().result())
    assert links.asked == ["b.test", "b.test"] and not ok
    assert failed[0].value.errno_name == "EHOSTUNREACH" and "stopping" in failed[0].value.message
