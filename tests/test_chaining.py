"""Chaining A -> B -> C and the server's view of the caller (PEER, PAC), on the sandbox's
Samba AD domain: the second hop is S4U2Proxy with the evidence ticket b kept from alice's
inbound connection; no TGT for alice exists anywhere."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from acting import identity
from nipc.impersonate import become
from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer, ask_peer, audit_lines, run_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """Daemons on a, b, c. b is a middle-tier host: no protocol transition for its local
    callers (own-ccache mode), so only delegation evidence lets anyone onward as alice."""
    b = samba_hosts["b"]
    with b.reconfigured(lambda text: text.replace(
            'mode = "protocol-transition"',
            f'mode = "own-ccache"\nccache_template = "FILE:{b.dir}/ccache-%{{uid}}"')):
        for host in samba_hosts.values():
            host.start_daemon()
        yield samba_hosts
        for host in samba_hosts.values():
            host.stop_daemon()


def connect_via(daemon: str, target: str, attach: socket.socket | None = None) -> socket.socket:
    """CONNECT through ``daemon``, optionally attaching an inbound connection's fd."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon)
    line = f"CONNECT {target}\n".encode()
    if attach is None:
        s.sendall(line)
    else:
        s.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", attach.fileno()))])
    return s


def relay_reply(upstream: socket.socket, client: socket.socket) -> None:
    """Pass the daemon's reply line and everything after it back to the client."""
    upstream.shutdown(socket.SHUT_WR)
    while data := upstream.recv(65536):
        client.sendall(data)


def chaining_service(b: Host, target: str, *, explicit: bool, user: str = "alice") -> UnixServer:
    """A service on b, reachable by alice only, that calls ``target`` from a thread
    running as b's ``user`` (alice herself by default): finding her connection implicitly,
    or attaching it (explicit)."""
    alice = identity(b.user("alice"))
    runs_as = identity(b.user(user))

    def call(conn: socket.socket) -> None:
        become(runs_as)  # this handler thread only; it ends afterwards
        with connect_via(str(b.socket_path), target, conn if explicit else None) as up:
            relay_reply(up, conn)

    name = f"chain-{'explicit' if explicit else 'implicit'}-{user}.sock"
    server = UnixServer(str(b.run_dir / name), mode=0o600, behaviour="call", call=call)
    import os
    os.chown(server.path, alice.uid, alice.gid)
    return server


@pytest.fixture(scope="module")
def c_server(lan: dict[str, Host]) -> Iterator[UnixServer]:
    """On c: a socket for dnsops members that reports SO_PEERCRED and PEER."""
    c = lan["c"]
    server = UnixServer(str(c.run_dir / "dns.sock"), mode=0o660,
                        group=c.group("dnsops"), ask_peer=str(c.socket_path))
    yield server
    server.close()


def chain_through(a: Host, b: Host, target: str, *, explicit: bool, user: str = "alice") -> str:
    """alice, from a, greets a :func:`chaining_service` on b that calls ``target``."""
    service = chaining_service(b, target, explicit=explicit, user=user)
    try:
        return greet_through(a, b, service)
    finally:
        service.close()


def greet_through(a: Host, b: Host, service: UnixServer) -> str:
    out = run_client("alice", str(a.socket_path), "raw-all",
                     f"CONNECT {service.path}@{b.fqdn}\\nping\\n")
    errors = [s.error for s in service.seen if s.error]
    return str(out["reply"]) + (f"\n[service errors: {errors}]" if errors else "")


@pytest.mark.parametrize("explicit", [False, True], ids=["thread-as-alice", "fd-attached"])
def test_alice_reaches_c_through_a_service_on_b(lan: dict[str, Host], c_server: UnixServer,
                                                 sandbox: Sandbox, explicit: bool) -> None:
    """C's server sees alice in SO_PEERCRED/SO_PEERGROUPS and, via PEER, hops a and b,
    her principal and her user SID from the PAC."""
    a, b, c = lan["a"], lan["b"], lan["c"]
    reply = chain_through(a, b, f"{c_server.path}@{c.fqdn}", explicit=explicit)
    lines = reply.split("\n")
    assert lines[0] == "OK" and lines[1] == "OK", reply  # a's daemon, then b's daemon
    seen = json.loads(lines[2])
    alice = c.user("alice")  # c's numbers for her, not a's or b's
    assert alice.uid not in (a.user("alice").uid, b.user("alice").uid)
    assert (seen["uid"], seen["gid"]) == (alice.uid, alice.gid)
    assert sorted(seen["groups"]) == sorted(set(alice.groups))
    verdict, _, body = seen["peer"].partition(" ")
    assert verdict == "OK", seen["peer"]
    peer = json.loads(body)
    assert peer["principal"] == "alice@LAN.TEST"
    assert peer["hops"] == ["a.lan.test", "b.lan.test"] and peer["origin"] == "a.lan.test"
    # The KDC's own, signed record of the same chain (the PAC's delegation-info).
    assert peer["kdc_transited"] == ["A$@LAN.TEST", "B$@LAN.TEST"]
    assert peer["user"] == "alice" and peer["uid"] == alice.uid
    assert peer["user_sid"].startswith("S-1-5-21-")
    assert any(sid.endswith("-513") for sid in peer["group_sids"])  # Domain Users


def test_each_hop_is_its_own_gate(lan: dict[str, Host], sandbox: Sandbox) -> None:
    """b admits alice, but c's socket excludes her: the service on b gets ERR EACCES."""
    a, b, c = lan["a"], lan["b"], lan["c"]
    closed = UnixServer(str(c.run_dir / "root-only.sock"), mode=0o600)
    try:
        reply = chain_through(a, b, f"{closed.path}@{c.fqdn}", explicit=False)
    finally:
        closed.close()
    assert reply.startswith("OK\nERR EACCES "), reply
    assert not closed.seen


def test_a_chain_expands_per_user_paths_at_the_last_hop(lan: dict[str, Host],
                                                        sandbox: Sandbox) -> None:
    """%{uid}/%{user} travel literally through b and are expanded by c, the host that
    makes the final connect, with alice's account there."""
    a, b, c = lan["a"], lan["b"], lan["c"]
    alice = c.user("alice")  # c's numbers: c makes the final connect
    home = c.run_dir / "user" / str(alice.uid)
    home.mkdir(parents=True, exist_ok=True)
    server = UnixServer(str(home / "alice.sock"), mode=0o600)
    os.chown(server.path, alice.uid, alice.gid)
    path = f"{c.run_dir}/user/%{{uid}}/%{{user}}.sock"
    try:
        reply = chain_through(a, b, f"{path}@{c.fqdn}", explicit=False)
    finally:
        server.close()
    assert reply.startswith("OK\nOK\n"), reply
    assert len(server.seen) == 1 and server.seen[0].uid == alice.uid
    onward = [f for f in audit_lines(b.log_path) if f.get("target") == f"{path}@{c.fqdn}"]
    assert onward and all("expanded" not in f for f in onward), onward
    final = [f for f in audit_lines(c.log_path) if f.get("target") == path]
    assert final and final[-1]["expanded"] == server.path, final


def test_no_inbound_connection_no_delegation(lan: dict[str, Host], c_server: UnixServer) -> None:
    """A process on b running as alice that holds no inbound connection, and a root
    process on b, get a clear refusal, not alice's access on c."""
    b, c = lan["b"], lan["c"]
    target = f"{c_server.path}@{c.fqdn}"
    as_alice = run_client("alice", str(b.socket_path), "greet", target)
    assert as_alice["error"] == "ENOKEY", as_alice
    as_root = run_client(None, str(b.socket_path), "greet", target)
    assert as_root.get("error") in ("ENOKEY", "EPERM"), as_root


def test_a_loop_is_refused(lan: dict[str, Host]) -> None:
    """a -> b -> back to a: a finds itself in the hop chain and answers ELOOP."""
    a, b = lan["a"], lan["b"]
    back = UnixServer(str(a.run_dir / "loop.sock"))
    try:
        reply = chain_through(a, b, f"{back.path}@{a.fqdn}", explicit=False)
    finally:
        back.close()
    assert reply.startswith("OK\nERR ELOOP "), reply
    assert not back.seen


def test_a_chain_longer_than_the_cap_is_refused(lan: dict[str, Host]) -> None:
    """A HELLO with a valid ticket but more hops than c allows: ELOOP."""
    a, c = lan["a"], lan["c"]
    forge = Path(__file__).with_name("forge_tool.py")
    proc = a.run([sys.executable, str(forge), "long-chain", c.address, str(c.port), c.fqdn,
                  str(c.run_dir / "dns.sock"), a.principal], check=False, timeout=60,
                 env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout.split() == ["ELOOP"], proc.stdout + proc.stderr


@pytest.fixture
def bob_may_chain(lan: dict[str, Host]) -> Iterator[Host]:
    """b's daemon restarted with bob as a service account that may act for others."""
    b = lan["b"]
    with b.reconfigured(lambda text: text.replace("[peer]\n", '[peer]\nchain_accounts = ["bob"]\n', 1)):
        yield b


def test_a_service_may_not_attach_someone_elses_connection(lan: dict[str, Host],
                                                           c_server: UnixServer) -> None:
    """A service on b running as bob attaches alice's inbound connection: EPERM (SPEC
    section 6), c is never asked. (It used to reach c as alice.)"""
    a, b, c = lan["a"], lan["b"], lan["c"]
    before = len(c_server.seen)
    reply = chain_through(a, b, f"{c_server.path}@{c.fqdn}", explicit=True, user="bob")
    assert reply.startswith("OK\nERR EPERM uid "), reply
    assert "may not act for alice@LAN.TEST" in reply and "chain_accounts" in reply, reply
    assert len(c_server.seen) == before


def test_a_listed_service_account_may_chain(lan: dict[str, Host], c_server: UnixServer,
                                            bob_may_chain: Host, sandbox: Sandbox) -> None:
    """With bob in [peer] chain_accounts, the same service reaches c as alice."""
    a, b, c = lan["a"], bob_may_chain, lan["c"]
    reply = chain_through(a, b, f"{c_server.path}@{c.fqdn}", explicit=True, user="bob")
    lines = reply.split("\n")
    assert lines[0] == "OK" and lines[1] == "OK", reply
    assert json.loads(lines[2])["uid"] == c.user("alice").uid


def test_the_implicit_form_refuses_to_guess(lan: dict[str, Host], c_server: UnixServer,
                                            bob_may_chain: Host) -> None:
    """A service account's process holding inbound connections of bob and of alice asks
    without attaching one: EINVAL telling it to attach the fd; attaching works."""
    a, b, c = lan["a"], bob_may_chain, lan["c"]
    held = threading.Event()
    release = threading.Event()

    def keep(conn: socket.socket) -> None:
        held.set()
        release.wait(60)

    keeper = UnixServer(str(b.run_dir / "keeper-bob.sock"), behaviour="call", call=keep)
    bobs: dict[str, object] = {}
    bob_client = threading.Thread(target=lambda: bobs.update(run_client(
        "bob", str(a.socket_path), "raw-all", f"CONNECT {keeper.path}@{b.fqdn}\\n")))
    bob_client.start()
    before = len(c_server.seen)
    try:
        assert held.wait(60), "bob's connection did not reach the keeper"
        for explicit in (False, True):
            reply = chain_through(a, b, f"{c_server.path}@{c.fqdn}", explicit=explicit, user="bob")
            if explicit:
                assert reply.split("\n")[:2] == ["OK", "OK"], reply
            else:
                assert reply.startswith("OK\nERR EINVAL "), reply
                assert "2 callers" in reply and "attach the one" in reply, reply
    finally:
        release.set()
        bob_client.join(60)
        keeper.close()
    assert len(c_server.seen) == before + 1  # only the attached one reached c
    assert bobs.get("reply") == "OK\n", bobs


def test_peer_refuses_what_it_did_not_make(lan: dict[str, Host]) -> None:
    """PEER on a plain local connection, on a non-socket fd, and without an fd: ERR."""
    b = lan["b"]
    server = UnixServer(str(b.run_dir / "plain.sock"), behaviour="call",
                        call=lambda conn: conn.sendall(ask_peer(str(b.socket_path), conn).encode()))
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(server.path)
            answer = s.recv(4096).decode()
        assert answer.startswith("ERR ENOENT "), answer
        with open("/dev/null") as f, socket.socket(socket.AF_UNIX) as s:
            s.connect(str(b.socket_path))
            s.sendmsg([b"PEER\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", f.fileno()))])
            assert s.recv(4096).startswith(b"ERR ENOENT ")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(b.socket_path))
            s.sendall(b"PEER\n")
            assert s.recv(4096).startswith(b"ERR EINVAL ")
    finally:
        server.close()


def test_delegation_is_dropped_when_the_connection_closes(lan: dict[str, Host],
                                                          c_server: UnixServer) -> None:
    """Once alice's inbound connection is gone, the service holding nothing more gets no
    delegation: the evidence lived only as long as the connection."""
    a, b, c = lan["a"], lan["b"], lan["c"]
    held: list[socket.socket] = []
    release = threading.Event()

    def keep(conn: socket.socket) -> None:
        held.append(conn.dup())
        release.wait(30)

    keeper = UnixServer(str(b.run_dir / "keeper.sock"), behaviour="call", call=keep)
    try:
        out = run_client("alice", str(a.socket_path), "raw",
                         f"CONNECT {keeper.path}@{b.fqdn}\\n")
        assert out["reply"].startswith("OK"), out
        # The client is gone: b's daemon sees EOF from a and closes its end; the copy
        # the keeper holds now leads nowhere.
        release.set()
        for conn in held:
            conn.close()
        assert keeper.seen[-1].ended.wait(30)  # the keeper's own end is closed too
        alice = identity(b.user("alice"))
        result: dict[str, str] = {}

        def as_alice() -> None:
            become(alice)
            with connect_via(str(b.socket_path), f"{c_server.path}@{c.fqdn}") as up:
                result["reply"] = up.recv(4096).decode()

        t = threading.Thread(target=as_alice)
        t.start()
        t.join(30)
        assert result["reply"].startswith("ERR ENOKEY "), result
    finally:
        keeper.close()


def test_peer_identity_library_call_and_cli(lan: dict[str, Host], sandbox: Sandbox) -> None:
    """``nipc.peer_identity(conn)`` and ``nipc peer --fd N`` give a server the same
    answer as the raw PEER request: alice, from a, with her SID."""
    import subprocess

    import nipc

    a, c = lan["a"], lan["c"]
    answers: dict[str, dict[str, object]] = {}

    def both(conn: socket.socket) -> None:
        answers["library"] = nipc.peer_identity(conn, daemon=str(c.socket_path))
        cli = subprocess.run([sys.executable, "-m", "nipc.cli", "peer", "--fd", str(conn.fileno()),
                              "--daemon", str(c.socket_path)],
                             pass_fds=[conn.fileno()], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        answers["cli"] = json.loads(cli.stdout)
        conn.sendall(b"done\n")

    server = UnixServer(str(c.run_dir / "ask.sock"), behaviour="call", call=both)
    try:
        out = run_client("alice", str(a.socket_path), "raw-all",
                         f"CONNECT {server.path}@{c.fqdn}\\n")
        assert out["reply"] == "OK\ndone\n", (out, [s.error for s in server.seen])
    finally:
        server.close()
    for answer in answers.values():
        assert answer["principal"] == "alice@LAN.TEST" and answer["hops"] == ["a.lan.test"]
        assert answer["uid"] == c.user("alice").uid
        assert str(answer["user_sid"]).startswith("S-1-5-21-")
        assert answer["kdc_transited"] == ["A$@LAN.TEST"]  # the KDC's record of the hop
    with socket.socket(socket.AF_UNIX) as plain, socket.socket(socket.AF_UNIX) as other:
        plain.bind(str(c.run_dir / "plain-peer.sock"))
        plain.listen()
        other.connect(str(c.run_dir / "plain-peer.sock"))
        conn, _ = plain.accept()
        with conn, pytest.raises(FileNotFoundError):
            nipc.peer_identity(conn, daemon=str(c.socket_path))
        (c.run_dir / "plain-peer.sock").unlink()


def test_chaining_works_with_only_the_needed_capabilities(lan: dict[str, Host], c_server: UnixServer,
                                                          sandbox: Sandbox) -> None:
    """b's daemon under setpriv with only CAP_SETUID, CAP_SETGID, CAP_CHOWN and
    CAP_SYS_PTRACE (the systemd unit's set) still finds the caller's inbound connection
    (pidfd_getfd) and chains onward as alice."""
    from acting import launch_daemon

    a, b, c = lan["a"], lan["b"], lan["c"]
    b.stop_daemon()
    proc = launch_daemon(b, ["setpriv", "--inh-caps=-all",
                             "--bounding-set=-all,+setuid,+setgid,+chown,+sys_ptrace"])
    service = None
    try:
        service = chaining_service(b, f"{c_server.path}@{c.fqdn}", explicit=False)
        reply = greet_through(a, b, service)
        lines = reply.split("\n")
        assert lines[0] == "OK" and lines[1] == "OK", reply
        assert json.loads(lines[2])["uid"] == c.user("alice").uid
    finally:
        if service is not None:
            service.close()
        proc.terminate()
        proc.wait(10)
        b.start_daemon()
