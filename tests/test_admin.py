"""``nipc status`` and the admin socket: who may ask, what the table shows.

Unit tests of the live table, the authorisation rule and the admin protocol; a real
daemon on this host (local connects, root); and in the sandbox a routed connection a->b
seen from both ends, with bob refused.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from conftest import require_root
from local_daemon import LocalDaemon, environ_for_cli
import nipc
from nipc import admin, cli
from nipc.admin import AdminProtocol, fill_user_names, may_administer
from nipc.cli.status import status_table
from nipc.config import ConfigError, from_mapping
from nipc.identity import Caller
from nipc_testbed.sandbox import Host, Sandbox
from support import CLIENT_PYTHON, UnixServer, client_dir

MINIMAL: dict[str, Any] = {
    "host": {"name": "a.example.com", "realm": "EXAMPLE.COM"},
    "kerberos": {"keytab": "/k", "principal": "nipc/a.example.com"},
}


# -- configuration --


def test_admin_socket_defaults_next_to_the_gate() -> None:
    cfg = from_mapping({**MINIMAL, "local": {"socket": "/run/x/nipc.sock"}})
    assert cfg.admin_socket_path == Path("/run/x/admin.sock")
    assert cfg.admin.group is None
    assert from_mapping(MINIMAL).admin_socket_path == Path("/run/nipc/admin.sock")


def test_admin_keys() -> None:
    cfg = from_mapping({**MINIMAL, "admin": {"socket": "/srv/a.sock", "group": 0}})
    assert (cfg.admin_socket_path, cfg.admin.group) == (Path("/srv/a.sock"), 0)
    assert from_mapping({**MINIMAL, "admin": {"group": "root"}}).admin.group == 0
    assert from_mapping({**MINIMAL, "admin": {"socket": ""}}).admin_socket_path is None


@pytest.mark.parametrize("section", [{"group": "no-such-group-x"}, {"group": True}, {"socket": 3},
                                     {"sokcet": "/x"}, {"group": -1}])
def test_bad_admin_keys(section: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="admin"):
        from_mapping({**MINIMAL, "admin": section})


# -- the rule --


def test_who_may_administer() -> None:
    assert may_administer(Caller(1, 0, 0, ()), None)
    assert may_administer(Caller(1, os.geteuid(), 5, ()), None)
    stranger = 54321 if os.geteuid() != 54321 else 54322
    assert not may_administer(Caller(1, stranger, 100, (100, 200)), None)
    assert not may_administer(Caller(1, stranger, 100, (100, 200)), 300)
    assert may_administer(Caller(1, stranger, 100, (100, 200)), 200)  # supplementary
    assert may_administer(Caller(1, stranger, 300, ()), 300)          # primary


# -- the protocol --


def admin_exchange(monkeypatch: pytest.MonkeyPatch, uid: int, request: bytes,
                   group: int | None = None) -> bytes:
    monkeypatch.setattr(admin, "caller_of", lambda sock: Caller(99, uid, uid, (uid,)))
    clock = Clock()
    proto = AdminProtocol(clock, group, lambda: {"connections": [], "host": "h"}, 10)
    transport = StringTransport()
    transport.getHandle = lambda: None  # type: ignore[method-assign]
    proto.makeConnection(transport)
    proto.dataReceived(request)
    clock.advance(11)
    value: bytes = transport.value()
    return value


def test_protocol_answers_status(monkeypatch: pytest.MonkeyPatch) -> None:
    line = admin_exchange(monkeypatch, 0, b"STATUS\r\n")
    assert line.startswith(b"OK ") and line.count(b"\n") == 1
    assert json.loads(line[3:]) == {"connections": [], "host": "h"}


def test_user_names_are_looked_up_off_the_reactor_and_within_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """NSS may hang on a directory: the names come from ``fill`` (a thread in the daemon),
    and an answer that does not come in time is ETIMEDOUT, not a stuck admin client."""
    from twisted.internet.defer import Deferred

    monkeypatch.setattr(admin, "caller_of", lambda sock: Caller(99, 0, 0, (0,)))
    clock = Clock()
    slow: Deferred[dict[str, object]] = Deferred()
    proto = AdminProtocol(clock, None, lambda: {"connections": []}, 10, lambda status: slow)
    transport = StringTransport()
    transport.getHandle = lambda: None  # type: ignore[method-assign]
    proto.makeConnection(transport)
    proto.dataReceived(b"STATUS\n")
    assert transport.value() == b""
    clock.advance(11)
    assert transport.value().startswith(b"ERR ETIMEDOUT ")
    slow.callback({"connections": []})  # too late: nothing more is written
    assert transport.value().count(b"\n") == 1


def test_protocol_refuses_others(monkeypatch: pytest.MonkeyPatch) -> None:
    line = admin_exchange(monkeypatch, 54321, b"STATUS\n")
    assert line.startswith(b"ERR EACCES ") and b"connections" not in line
    assert admin_exchange(monkeypatch, 54321, b"STATUS\n", group=54321).startswith(b"OK ")


@pytest.mark.parametrize("request_line,expect", [(b"CONNECT /x@y\n", b"ERR EINVAL "),
                                                 (b"S" * 100, b"ERR EINVAL "),
                                                 (b"STAT", b"ERR ETIMEDOUT ")])
def test_protocol_refuses_other_requests(monkeypatch: pytest.MonkeyPatch, request_line: bytes,
                                         expect: bytes) -> None:
    assert admin_exchange(monkeypatch, 0, request_line).startswith(expect)


# -- the table as printed --


def test_status_table() -> None:
    text = status_table({
        "host": "b.example", "version": "0.1.0", "pid": 7, "uptime": 3700, "local_clients": 0,
        "pending_peer_handshakes": 0,
        "connections": [
            {"conn_id": "abc", "direction": "incoming", "user": "alice", "uid": 1001,
             "principal": "alice@EXAMPLE", "hops": ["a.example"], "target": "/run/x.sock",
             "bytes_in": 2048, "bytes_out": 5, "age": 61},
        ]})
    head, columns, row, legend = text.splitlines()
    assert head.startswith("nipcd 0.1.0 on b.example") and "up 1h01m" in head
    assert "1 connection" in head
    assert columns.split() == ["CONN", "DIR", "USER", "PRINCIPAL", "FROM", "TARGET", "IN", "OUT", "AGE"]
    assert row.split() == ["abc", "incoming", "alice(1001)", "alice@EXAMPLE", "a.example",
                           "/run/x.sock", "2.0K", "5B", "1m01s"]
    assert "IN:" in legend


def test_status_table_shows_links() -> None:
    text = status_table({
        "host": "a.example", "pid": 7, "uptime": 5, "local_clients": 0,
        "pending_peer_handshakes": 0, "connections": [],
        "links": [{"host": "b.example", "direction": "dialled", "peer": "10.0.0.2:7445",
                   "channels": 2, "opened_channels": 40, "age": 75}]})
    head, link = text.splitlines()
    assert link == "link dialled b.example 10.0.0.2:7445: 2 open of 40 channel(s), up 1m15s"


def test_status_without_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--admin", str(tmp_path / "admin.sock")]) == 1
    assert "ENOENT" in capsys.readouterr().err


# -- a real daemon on this host --


@pytest.fixture(scope="module")
def solo() -> Iterator[LocalDaemon]:
    require_root()
    root = Path(tempfile.mkdtemp(prefix="nipc-solo-"))
    daemon = LocalDaemon(root, '[admin]\ngroup = "nogroup"\n')
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.root, ignore_errors=True)


def status(daemon: LocalDaemon, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """``nipc status`` as root (this interpreter) or as ``user`` (setpriv, system Python)."""
    if user is None:
        argv = [sys.executable, "-m", "nipc.cli", "status", "--admin", str(daemon.admin), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=environ_for_cli())
    entry = pwd.getpwnam(user)
    argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--",
            CLIENT_PYTHON, "-m", "nipc.cli", "status", "--admin", str(daemon.admin), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/",
                          env={"PYTHONPATH": str(client_dir()), "PATH": "/usr/bin:/bin"})


def test_status_lists_a_live_local_connection(solo: LocalDaemon) -> None:
    server = UnixServer(str(solo.root / "echo.sock"))
    try:
        from nipc.client import connect

        with connect(f"{solo.root / 'echo.sock'}@localhost", daemon=str(solo.socket), timeout=10) as sock:
            sock.recv(4096)  # the greeting
            sock.sendall(b"x" * 1000)
            time.sleep(0.2)
            out = status(solo, "--json")
            assert out.returncode == 0, out.stderr
            (row,) = json.loads(out.stdout)["connections"]
            assert (row["direction"], row["user"], row["uid"]) == ("local", "root", 0)
            assert row["target"] == f"{solo.root / 'echo.sock'}@localhost"
            assert row["bytes_in"] == 1000 and row["bytes_out"] > 0
            assert row["pid"] == os.getpid() and row["handshake"] >= 0
            sock.sendall(b"y" * 500)
            time.sleep(0.2)
            table = status(solo)
            assert table.returncode == 0
            assert "local" in table.stdout and "root(0)" in table.stdout and "1.5K" in table.stdout
        time.sleep(0.3)
        answer = json.loads(status(solo, "--json").stdout)
        assert answer["connections"] == [] and answer["version"] == nipc.__version__
    finally:
        server.close()


def test_admin_socket_mode_and_group(solo: LocalDaemon) -> None:
    st = os.stat(solo.admin)
    assert st.st_mode & 0o777 == 0o660 and st.st_gid == 65534


def test_admin_group_member_may_ask_others_may_not(solo: LocalDaemon) -> None:
    """nobody (group nogroup, the admin group) may ask; a user outside it is refused by the
    socket's mode and, with the mode widened, by the daemon itself."""
    assert status(solo, user="nobody").returncode == 0
    stranger = "daemon"  # uid 1, not in nogroup
    out = status(solo, user=stranger)
    assert out.returncode == 1 and "EACCES" in out.stderr
    os.chmod(solo.admin, 0o666)
    try:
        out = status(solo, user=stranger)
        assert out.returncode == 1
        assert out.stderr.startswith("nipc: EACCES: only root or a member")
    finally:
        os.chmod(solo.admin, 0o660)


# -- the sandbox: a routed connection seen from both ends --


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    with samba_hosts["a"].running(), samba_hosts["b"].running():
        yield samba_hosts


#: A user's PATH on a host: its ``nipc`` command is the one installed in /usr/local.
HOST_PATH = "/usr/local/bin:/usr/bin:/bin"


def host_status(host: Host, user: Any = None) -> subprocess.CompletedProcess[str]:
    """``nipc status`` on ``host``, as its installed command, at the default admin socket."""
    return host.run(["nipc", "status", "--json"], user, check=False, env={"PATH": HOST_PATH})


def hold(host: Host, user: Any, target: str) -> subprocess.Popen[bytes]:
    """``nipc connect`` as ``user`` on ``host``, kept open by its stdin."""
    return subprocess.Popen(
        host.exec_argv(["nipc", "connect", target], user),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": HOST_PATH})


def wait_for(predicate: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.mark.integration
def test_status_on_both_ends_of_a_routed_connection(lan: dict[str, Host], sandbox: Sandbox) -> None:
    require_root()
    a, b = lan["a"], lan["b"]
    server = UnixServer(str(b.run_dir / "status-echo.sock"))
    client = hold(a, a.user("alice"), f"{b.run_dir / 'status-echo.sock'}@{b.fqdn}")
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"x" * 3000)
        client.stdin.flush()
        client.stdout.readline()  # the greeting: the connection is made

        def mine(host: Host) -> list[dict[str, Any]]:
            out = host_status(host)
            assert out.returncode == 0, out.stderr
            return [c for c in json.loads(out.stdout)["connections"]
                    if str(c["target"]).startswith(str(b.run_dir / "status-echo.sock"))]

        rows = wait_for(lambda: [r for r in mine(a) if r["bytes_in"] >= 3000])
        (out_row,) = rows
        alice = a.user("alice")
        assert (out_row["direction"], out_row["user"], out_row["uid"]) == ("outgoing", "alice", alice.uid)
        assert out_row["target"] == f"{b.run_dir / 'status-echo.sock'}@{b.fqdn}"
        (in_row,) = wait_for(lambda: mine(b))
        assert in_row["direction"] == "incoming"
        assert in_row["principal"] == f"alice@{b.realm}"
        assert (in_row["user"], in_row["uid"]) == ("alice", b.user("alice").uid)
        assert in_row["hops"] == [a.fqdn] and in_row["origin_conn_id"] == out_row["conn_id"]
        client.stdin.write(b"y" * 5000)
        client.stdin.flush()
        grown = wait_for(lambda: [r for r in mine(a) if r["bytes_in"] >= 8000])
        assert grown and grown[0]["bytes_out"] >= out_row["bytes_out"]
        assert grown[0]["age"] >= out_row["age"]
    finally:
        if client.stdin is not None:
            client.stdin.close()
        client.wait(30)
        server.close()
    assert wait_for(lambda: not [r for r in json.loads(host_status(a).stdout)["connections"]
                                 if "status-echo" in str(r["target"])])


@pytest.mark.integration
def test_bob_is_not_an_operator(lan: dict[str, Host], sandbox: Sandbox) -> None:
    require_root()
    out = host_status(lan["a"], "bob")
    assert out.returncode == 1 and "EACCES" in out.stderr, out
    assert "connections" not in out.stdout


def test_status_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"])
    out = capsys.readouterr().out
    assert "usage: nipc status" in out and "--admin" in out and "--json" in out
