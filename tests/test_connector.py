"""The destination connector (nipc/connector.py): an IStreamClientEndpoint that connects as
the caller, over real Unix sockets, real per-thread identities and the real reactor."""

from __future__ import annotations

import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyClass, verifyObject

from conftest import require_root
from nipc.config import from_mapping
import nipc.connector
from nipc.connector import GRACE, CallerEndpoint, ImpersonatedConnector
from nipc.destination import connect_unix as real_connect_unix
from nipc.errors import NipcError
from nipc.identity import identity_of_user
from nipc.interfaces import IDestinationConnector
from nipc.registry import abstract_name, new_connection_id
from nipc.stuck import StuckConnects

reactor: Any = _reactor
#: The machine's own unprivileged account the connects are made as.
CALLER = "nobody"


def config(**destinations: list[str]) -> Any:
    return from_mapping({
        "host": {"name": "a.test", "realm": "T"},
        "kerberos": {"keytab": "/k", "principal": "p@T"},
        **({"destinations": destinations} if destinations else {}),
    })


def connector_of(config: Any, remote: bool) -> ImpersonatedConnector:
    return ImpersonatedConnector(reactor, config.host, config.timeouts, config.destinations,
                                 remote=remote, stuck=StuckConnects(reactor, config.limits))


class Received(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


@dataclass
class Place:
    top: Path
    #: The listening sockets, by their path.
    listeners: dict[Path, socket.socket]


@pytest.fixture
def place() -> Iterator[Place]:
    """A directory with a listening socket anyone may connect to (``open.sock``) and a 0700
    directory holding another (``locked/closed.sock``)."""
    require_root()
    top = Path(tempfile.mkdtemp(prefix="nipc-connector-"))
    top.chmod(0o755)
    (top / "locked").mkdir(mode=0o700)
    listeners = {}
    for where in (top / "open.sock", top / "locked" / "closed.sock"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(where))
        where.chmod(0o666)
        sock.listen(8)
        listeners[where] = sock
    yield Place(top, listeners)
    for sock in listeners.values():
        sock.close()
    for p in sorted(top.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    top.rmdir()


def test_the_connector_and_its_endpoints_provide_their_interfaces() -> None:
    assert verifyClass(IDestinationConnector, ImpersonatedConnector)
    assert verifyClass(IStreamClientEndpoint, CallerEndpoint)
    connector = connector_of(config(), remote=False)
    endpoint = connector.endpoint(identity_of_user(CALLER), "/run/x.sock", "c0")
    assert verifyObject(IStreamClientEndpoint, endpoint)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_connect_protocol_connects_as_the_caller_bound_to_the_connection_id(
        place: Place) -> None:
    """The server sees the caller's uid (SO_PEERCRED) and the abstract name of the
    connection id; the protocol connectProtocol was given is connected and carries bytes
    both ways."""
    who, conn_id = identity_of_user(CALLER), new_connection_id()
    endpoint = connector_of(config(), remote=False).endpoint(
        who, str(place.top / "open.sock"), conn_id)
    ours = Received()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert await connectProtocol(endpoint, ours) is ours
    finally:
        globalLogPublisher.removeObserver(events.append)
    # connectProtocol's factory is never started: no "Starting factory" line per connect.
    assert not [e for e in events if "factory" in str(e.get("log_format", "")).lower()]
    server, peer_name = place.listeners[place.top / "open.sock"].accept()
    with server:
        pid, uid, gid = struct.unpack("3i", server.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        assert (uid, gid) == (who.uid, who.gid) and peer_name == abstract_name(conn_id)
        assert ours.transport is not None and ours.transport.connected
        ours.transport.write(b"ping")
        server.settimeout(10)
        assert await deferToThread(server.recv, 4) == b"ping"  # the reactor must run to send
        server.sendall(b"pong")
        for _ in range(100):
            if ours.data == b"pong":
                break
            await deferLater(reactor, 0.05)
        assert ours.data == b"pong"
        ours.transport.loseConnection()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
@pytest.mark.parametrize(("target", "remote", "errno_name"), [
    ("locked/closed.sock", False, "EACCES"),     # the kernel's own check, as the caller
    ("missing.sock", False, "ENOENT"),
    ("open.sock", True, "EACCES"),               # [destinations] for callers from elsewhere
])
async def test_a_refused_connect_fails_the_deferred_with_the_callers_errno(
        place: Place, target: str, remote: bool, errno_name: str) -> None:
    connector = connector_of(config(allow=["/run/**"]), remote=remote)
    endpoint = connector.endpoint(identity_of_user(CALLER), str(place.top / target), "c1")
    with pytest.raises(NipcError) as refused:
        await connectProtocol(endpoint, Received())
    assert refused.value.errno_name == errno_name, refused.value.message


@dataclass
class Hung:
    """``connect_unix`` replaced by a walk that waits until released (as one on a hung
    mount waits in the kernel), then really connects: the seam the deadline wraps."""

    release: threading.Event
    #: The sockets the released walks made, to see that late ones are closed.
    made: list[socket.socket]
    #: Paths whose walks started.
    started: list[str]


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hung]:
    state = Hung(threading.Event(), [], [])

    def blocking(path: str, conn_id: str, timeout: float, who: Any, policy: Any) -> socket.socket:
        state.started.append(path)
        state.release.wait(60)
        sock = real_connect_unix(path.replace("hung", "open"), conn_id, timeout, who, policy)
        state.made.append(sock)
        return sock

    monkeypatch.setattr(nipc.connector, "connect_unix", blocking)
    yield state
    state.release.set()


def limited(**limits: int) -> Any:
    return from_mapping({"host": {"name": "a.test", "realm": "T"},
                         "kerberos": {"keytab": "/k", "principal": "p@T"},
                         "timeouts": {"connect": 0.3}, "limits": limits})


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_walk_that_never_returns_times_out_and_its_late_socket_is_closed(
        place: Place, hung: Hung) -> None:
    """F4: ETIMEDOUT naming the path at timeouts.connect (+ GRACE), the thread counted as
    stuck until it returns; what it returns then is closed, never handed on."""
    c = limited()
    stuck = StuckConnects(reactor, c.limits)
    connector = ImpersonatedConnector(reactor, c.host, c.timeouts, c.destinations,
                                      remote=False, stuck=stuck)
    path = str(place.top / "hung.sock")
    started = time.monotonic()
    with pytest.raises(NipcError) as refused:
        await connectProtocol(connector.endpoint(identity_of_user(CALLER), path, "c2"),
                              Received())
    took = time.monotonic() - started
    assert refused.value.errno_name == "ETIMEDOUT" and path in refused.value.message
    assert 0.3 + GRACE - 0.05 <= took < 0.3 + GRACE + 5  # generous: shared CPU
    assert len(stuck) == 1 and path in stuck.summary()
    hung.release.set()
    for _ in range(200):
        if not len(stuck):
            break
        await deferLater(reactor, 0.05)
    assert not len(stuck) and len(hung.made) == 1
    assert hung.made[0].fileno() == -1  # closed on its return
    server, _ = place.listeners[place.top / "open.sock"].accept()
    with server:
        server.settimeout(10)
        assert server.recv(1) == b""  # the server saw it closed


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_stuck_connects_are_capped_per_caller_and_in_all(place: Place, hung: Hung) -> None:
    """At max_stuck_per_caller, that uid's next connect is EAGAIN naming its oldest stuck
    path, before any thread starts; another uid still connects, until max_stuck (EAGAIN
    naming no path: that is in the operator's log)."""
    c = limited(max_stuck=3, max_stuck_per_caller=2)
    stuck = StuckConnects(reactor, c.limits)
    connector = ImpersonatedConnector(reactor, c.host, c.timeouts, c.destinations,
                                      remote=False, stuck=stuck)
    path = str(place.top / "hung.sock")
    nobody, root = identity_of_user(CALLER), identity_of_user("root")

    async def attempt(who: Any) -> str:
        try:
            await connectProtocol(connector.endpoint(who, path, new_connection_id()), Received())
        except NipcError as e:
            return f"{e.errno_name} {e.message}"
        return "OK"

    for _ in range(2):
        assert (await attempt(nobody)).startswith("ETIMEDOUT ")
    assert len(stuck) == 2
    before = len(hung.started)
    over = await attempt(nobody)
    assert over.startswith("EAGAIN ") and "max_stuck_per_caller" in over and path in over
    assert len(hung.started) == before  # refused before a thread started
    assert (await attempt(root)).startswith("ETIMEDOUT ")
    over_all = await attempt(root)
    assert over_all.startswith("EAGAIN ") and "limits.max_stuck;" in over_all
    assert "3 destination connects stuck in the kernel" in over_all
    assert path not in over_all  # root is told of no one else's paths (nobody's are older)
    assert "3 destination connects stuck in the kernel, oldest " + path in stuck.summary()
    hung.release.set()
    for _ in range(200):
        if not len(stuck):
            break
        await deferLater(reactor, 0.05)
    assert not len(stuck)
    place.listeners[place.top / "open.sock"].setblocking(False)
    for _ in range(3):  # the late connections, closed
        place.listeners[place.top / "open.sock"].accept()[0].close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_connect_cancelled_while_walking_closes_what_its_thread_returns(
        place: Place, hung: Hung) -> None:
    """The gate cancels a route whose client left: the thread's socket, when it comes, is
    closed, and a thread back before the deadline was never counted as stuck."""
    c = limited()
    stuck = StuckConnects(reactor, c.limits)
    connector = ImpersonatedConnector(reactor, c.host, c.timeouts, c.destinations,
                                      remote=False, stuck=stuck)
    d = connectProtocol(connector.endpoint(identity_of_user(CALLER),
                                           str(place.top / "hung.sock"), "c3"), Received())
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    hung.release.set()
    for _ in range(200):
        if hung.made and hung.made[0].fileno() == -1:
            break
        await deferLater(reactor, 0.05)
    assert len(hung.made) == 1 and hung.made[0].fileno() == -1 and not len(stuck)
    place.listeners[place.top / "open.sock"].accept()[0].close()
