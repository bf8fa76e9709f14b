"""``NIPCClientEndpoint`` and the ``nipc:`` endpoint string.

Protocol logic on a ``MemoryReactorClock`` and ``StringTransport`` (no sockets, no
sleeping); the same endpoint over real sockets against the fake daemon of test_cli; and
end to end in the sandbox, where a Twisted program knows NIPC only as an endpoint string.
"""

from __future__ import annotations

import errno
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import error as twisted_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from conftest import require_root
from nipc.endpoint import NIPCAddress, NIPCClientEndpoint
from nipc.errors import NipcError
from nipc.request import parse_target
from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer
from test_cli import FakeDaemon

REPO = Path(__file__).resolve().parents[1]


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Remembers what happened, in order; ``done`` fires with the bytes at the end."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append("data")
        self.received += data

    def readConnectionLost(self) -> None:
        self.events.append("eof")
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        self.events.append("write-closed")

    def connectionLost(self, reason: Failure = Failure(twisted_error.ConnectionDone())) -> None:
        self.events.append("lost")
        self.done.callback(self.received)


class Plain(Protocol):
    """A protocol without half-close: EOF must end its connection, as on a plain socket."""

    lost: list[Failure]

    def connectionMade(self) -> None:
        self.lost = []

    def connectionLost(self, reason: Failure = Failure(twisted_error.ConnectionDone())) -> None:
        self.lost.append(reason)


def dial(protocol: Protocol, target: str = "/srv/app.sock@b.example",
         timeout: float = 30) -> tuple[MemoryReactorClock, Deferred[Any], Protocol, StringTransport]:
    """Connect on a memory reactor and complete the daemon connection on a StringTransport."""
    reactor = MemoryReactorClock()
    endpoint = NIPCClientEndpoint(reactor, target, daemon_socket="/run/test/nipc.sock",
                                  timeout=timeout)
    d = endpoint.connect(Factory.forProtocol(lambda: protocol))
    path, factory, _, _ = reactor.unixClients[0]
    assert path == "/run/test/nipc.sock"
    wire = factory.buildProtocol(None)
    transport = StringTransport()
    wire.makeConnection(transport)
    return reactor, d, wire, transport


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


# -- the protocol, without sockets --


def test_request_line_then_user_protocol_only_after_ok() -> None:
    user = Recorder()
    _, d, wire, transport = dial(user)
    assert transport.value() == b"CONNECT /srv/app.sock@b.example\n"
    wire.dataReceived(b"O")
    assert user.events == [] and not d.called
    wire.dataReceived(b"K\r\nearly bytes")
    assert outcome(d) is user
    assert user.events == ["made", "data"] and user.received == b"early bytes"
    assert user.transport is transport
    wire.dataReceived(b" and more")
    assert user.received == b"early bytes and more"


def test_factory_sees_the_routed_address() -> None:
    addresses: list[Any] = []

    class Factory_(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            addresses.append(addr)
            return Protocol()

    reactor = MemoryReactorClock()
    d = NIPCClientEndpoint(reactor, "/srv/a@b.example.", "/d.sock").connect(Factory_())
    wire = reactor.unixClients[0][1].buildProtocol(None)
    wire.makeConnection(StringTransport())
    wire.dataReceived(b"OK\n")
    assert outcome(d)
    assert addresses == [NIPCAddress("/srv/a", "b.example")]


@pytest.mark.parametrize(("reply", "exc", "code"), [
    (b"ERR EACCES nope\n", PermissionError, errno.EACCES),
    (b"ERR ENOENT no such socket\n", FileNotFoundError, errno.ENOENT),
    (b"ERR ENOKEY run kinit\n", OSError, errno.ENOKEY),
    (b"HELLO\n", OSError, errno.EPROTO),
])
def test_refusal_is_an_oserror_with_errno(reply: bytes, exc: type[OSError], code: int) -> None:
    user = Recorder()
    _, d, wire, transport = dial(user)
    wire.dataReceived(reply)
    failure = outcome(d)
    assert isinstance(failure.value, exc) and failure.value.errno == code
    if reply.startswith(b"ERR"):
        assert failure.value.strerror == reply.decode().split(" ", 2)[2].strip()
    assert user.events == [] and transport.disconnecting


def test_overlong_reply_is_eproto() -> None:
    _, d, wire, transport = dial(Recorder())
    wire.dataReceived(b"O" * 5000)
    assert outcome(d).value.errno == errno.EPROTO
    assert transport.disconnecting


def test_close_before_reply_is_econnreset() -> None:
    _, d, wire, _ = dial(Recorder())
    wire.connectionLost(Failure(twisted_error.ConnectionDone()))
    assert outcome(d).value.errno == errno.ECONNRESET


def test_no_reply_in_time_is_etimedout() -> None:
    reactor, d, _, transport = dial(Recorder(), timeout=5)
    reactor.advance(4.9)
    assert not d.called
    reactor.advance(0.2)
    assert outcome(d).value.errno == errno.ETIMEDOUT
    assert transport.disconnecting


def test_timer_stops_once_routed() -> None:
    reactor, d, wire, transport = dial(Recorder(), timeout=5)
    wire.dataReceived(b"OK\n")
    assert outcome(d)
    assert reactor.getDelayedCalls() == []


def test_cancel_while_waiting_for_reply() -> None:
    user = Recorder()
    _, d, wire, transport = dial(user)
    d.cancel()
    assert outcome(d).check(CancelledError)
    assert transport.disconnecting
    wire.dataReceived(b"OK\n")  # too late: nobody gets it
    assert user.events == []


def test_cancel_while_connecting_to_daemon() -> None:
    reactor = MemoryReactorClock()
    d = NIPCClientEndpoint(reactor, "/srv/a@b.example", "/d.sock").connect(
        Factory.forProtocol(Protocol))
    connector = reactor.connectors[0]
    d.cancel()
    assert outcome(d).check(CancelledError)
    assert connector.stoppedConnecting


def test_factory_declining_is_noprotocol() -> None:
    class Declining(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    reactor = MemoryReactorClock()
    d = NIPCClientEndpoint(reactor, "/srv/a@b.example", "/d.sock").connect(Declining())
    wire = reactor.unixClients[0][1].buildProtocol(None)
    transport = StringTransport()
    wire.makeConnection(transport)
    wire.dataReceived(b"OK\n")
    assert outcome(d).check(twisted_error.NoProtocol)
    assert transport.disconnecting


def test_half_close_reaches_a_half_closeable_protocol() -> None:
    user = Recorder()
    _, d, wire, transport = dial(user)
    wire.dataReceived(b"OK\n")
    wire.readConnectionLost()  # type: ignore[attr-defined]
    assert user.events == ["made", "eof"]


def test_eof_ends_a_plain_protocol() -> None:
    user = Plain()
    _, d, wire, transport = dial(user)
    wire.dataReceived(b"OK\n")
    wire.readConnectionLost()  # type: ignore[attr-defined]
    assert transport.disconnecting


@pytest.mark.parametrize("target", ["relative@b.example", "/x.sock", "/x.sock@bad_host",
                                    "@abstract@b.example"])
def test_bad_targets_fail_where_written(target: str) -> None:
    with pytest.raises(ValueError):
        NIPCClientEndpoint(MemoryReactorClock(), target)


# -- the endpoint string --


@pytest.mark.parametrize(("text", "path", "host", "daemon", "timeout"), [
    ("nipc:/run/x.sock@b.example", "/run/x.sock", "b.example", None, 30.0),
    ("nipc:target=/run/x.sock@B.Example.:daemon=/tmp/d.sock:timeout=2.5",
     "/run/x.sock", "b.example", "/tmp/d.sock", 2.5),
    (r"nipc:/run/a\:b\=c.sock@b.example:daemon=/tmp/d.sock", "/run/a:b=c.sock", "b.example",
     "/tmp/d.sock", 30.0),
    ("nipc:/srv/me@work.sock@b.example", "/srv/me@work.sock", "b.example", None, 30.0),
])
def test_endpoint_strings(text: str, path: str, host: str, daemon: str | None,
                          timeout: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIPC_SOCKET", "/run/env/nipc.sock")
    endpoint = clientFromString(MemoryReactorClock(), text)
    assert isinstance(endpoint, NIPCClientEndpoint)
    assert endpoint.address == NIPCAddress(path, host)
    assert endpoint.daemon_socket == (daemon or "/run/env/nipc.sock")
    assert endpoint.timeout == timeout


@pytest.mark.parametrize(("text", "message"), [
    ("nipc:/run/a:b.sock@b.example", r"write ':' inside the path as '\:'"),
    ("nipc:", "must be '/path@host'"),
    ("nipc:daemon=/d.sock", "exactly one"),
    ("nipc:/x@b.example:port=1", "unknown parameter"),
    ("nipc:/x@b.example:timeout=soon", "timeout"),
    ("nipc:/x@b.example:timeout=0", "positive"),
])
def test_bad_endpoint_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        clientFromString(MemoryReactorClock(), text)
    assert message in str(e.value)


@settings(max_examples=300)
@given(st.text(st.characters(codec="utf-8"), max_size=150))
@example("/s@h")
@example("/s")
@example("relative@h")
def test_the_endpoint_reads_a_target_as_the_daemon_does(target: str) -> None:
    """The endpoint refuses exactly the targets the daemon would, with the daemon's reason,
    and otherwise asks for what the daemon would route to."""
    try:
        wanted = parse_target(target)
    except NipcError as e:
        with pytest.raises(ValueError) as refused:
            NIPCClientEndpoint(MemoryReactorClock(), target)
        assert str(refused.value).endswith(e.message)
    else:
        endpoint = NIPCClientEndpoint(MemoryReactorClock(), target)
        assert endpoint.address == NIPCAddress(wanted.path, wanted.host)


# -- over real sockets --


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_echo_with_early_bytes_and_half_close(tmp_path: Path) -> None:
    from twisted.internet import reactor

    daemon = FakeDaemon(tmp_path / "d.sock", reply=b"OK\nearly\n")
    try:
        endpoint = clientFromString(reactor, f"nipc:/srv/echo.sock@b.example:daemon={daemon.path}")
        user = Recorder()
        assert await connectProtocol(endpoint, user) is user
        user.transport.write(b"ping " * 1000)
        user.transport.loseWriteConnection()
        received = await user.done
        assert received == b"early\n" + b"ping " * 1000 + b"END 5000\n"
        assert user.events[0] == "made" and user.events[-2:] == ["eof", "lost"]
        assert daemon.requests == [b"CONNECT /srv/echo.sock@b.example\n"]
    finally:
        daemon.close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_refusal_over_a_real_socket(tmp_path: Path) -> None:
    from twisted.internet import reactor

    daemon = FakeDaemon(tmp_path / "d.sock", reply=b"ERR EACCES nope\n")
    try:
        user = Recorder()
        with pytest.raises(PermissionError) as e:
            await NIPCClientEndpoint(reactor, "/srv/x@b.example", str(daemon.path)).connect(
                Factory.forProtocol(lambda: user))
        assert (e.value.errno, e.value.strerror) == (errno.EACCES, "nope")
        assert user.events == []
    finally:
        daemon.close()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_missing_daemon_is_an_oserror_naming_it(tmp_path: Path) -> None:
    from twisted.internet import reactor

    where = tmp_path / "none.sock"
    with pytest.raises(FileNotFoundError) as e:
        await NIPCClientEndpoint(reactor, "/srv/x@b.example", str(where)).connect(
            Factory.forProtocol(Protocol))
    assert str(where) in str(e.value)


# -- end to end in the sandbox --

#: A Twisted program that knows NIPC only as an endpoint string. Started as root so it can
#: use the virtualenv's interpreter, it becomes the user before it connects.
PROGRAM = textwrap.dedent("""
    import json, os, sys
    from twisted.internet import defer, endpoints, protocol, task

    class Greeted(protocol.Protocol):
        def connectionMade(self):
            self.data, self.done = b"", defer.Deferred()
            self.transport.write(b"ping\\n")
            self.transport.loseWriteConnection()
        def dataReceived(self, data):
            self.data += data
        def connectionLost(self, reason):
            self.done.callback(self.data)

    async def main(reactor, description, uid, gid, groups):
        endpoint = endpoints.clientFromString(reactor, description)
        os.setgroups([int(g) for g in groups.split(",")])
        os.setresgid(int(gid), int(gid), int(gid))
        os.setresuid(int(uid), int(uid), int(uid))
        try:
            proto = await endpoints.connectProtocol(endpoint, Greeted())
        except OSError as e:
            print(json.dumps({"errno": e.errno, "message": e.strerror}))
            return
        first, _, rest = (await proto.done).partition(b"\\n")
        print(json.dumps({"server": json.loads(first), "echo": rest.decode()}))

    task.react(lambda reactor, *a: defer.ensureDeferred(main(reactor, *a)), sys.argv[1:])
""")


@pytest.mark.integration
def test_twisted_program_reaches_b_with_an_endpoint_string(
        samba_hosts: dict[str, Host], sandbox: Sandbox, tmp_path: Path) -> None:
    require_root()
    a, b = samba_hosts["a"], samba_hosts["b"]
    server = UnixServer(str(b.run_dir / "twisted.sock"), mode=0o666)
    program = Path("/tmp/nipc-endpoint-program.py")  # in a's own /tmp
    a.path(program).write_text(PROGRAM)
    try:
        with a.running(), b.running():
            def run(user: str, description: str) -> dict[str, Any]:
                who = a.user(user)
                out = a.run([sys.executable, str(program), description, str(who.uid), str(who.gid),
                             ",".join(map(str, who.groups))], env={"PYTHONPATH": str(REPO)},
                            timeout=120)
                result: dict[str, Any] = json.loads(out.stdout)
                return result

            target = f"{b.run_dir / 'twisted.sock'}@{b.fqdn}"
            out = run("alice", f"nipc:{target}:daemon={a.socket_path}")
            assert out["server"]["uid"] == b.user("alice").uid, out
            assert out["echo"] == "ping\n"  # the server saw our EOF and still answered

            missing = run("alice", f"nipc:target={b.run_dir / 'missing.sock'}@{b.fqdn}"
                                   f":daemon={a.socket_path}")
            assert missing["errno"] == errno.ENOENT, missing
    finally:
        server.close()
