"""The destination connector (nipc/connector.py): an IStreamClientEndpoint that connects as
the caller, over real Unix sockets, real per-thread identities and the real reactor."""

from __future__ import annotations

import socket
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyClass, verifyObject

from conftest import require_root
from nipc.config import from_mapping
from nipc.connector import CallerEndpoint, ImpersonatedConnector
from nipc.errors import NipcError
from nipc.identity import identity_of_user
from nipc.interfaces import IDestinationConnector
from nipc.registry import abstract_name, new_connection_id

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
                                 remote=remote)


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
