"""The core promise, end to end on real parts (issue: route CONNECT path@host).

Hosts are network namespaces of the sandbox domain, tickets come from a real Samba AD DC
(protocol transition) or a real MIT KDC (the caller's own credential cache), callers are
real local users in their own processes, and the kernel's own permission check on the
destination socket decides.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer, digest_of, run_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """Daemons running on a and b of the Samba AD realm."""
    for name in ("a", "b"):
        samba_hosts[name].start_daemon()
    yield samba_hosts
    for name in ("a", "b"):
        samba_hosts[name].stop_daemon()


@pytest.fixture(scope="module")
def dns_server(lan: dict[str, Host]) -> Iterator[UnixServer]:
    """A socket on b that only members of group dnsops may connect to (mode 0660)."""
    server = UnixServer(str(lan["b"].run_dir / "dns.sock"), mode=0o660,
                        group=lan["b"].group("dnsops"))
    yield server
    server.close()


def target(host: Host, name: str) -> str:
    return f"{host.run_dir / name}@{host.fqdn}"


def test_alice_reaches_b_as_herself(lan: dict[str, Host], dns_server: UnixServer,
                                    sandbox: Sandbox) -> None:
    """OK, and the server's SO_PEERCRED/SO_PEERGROUPS show alice's projected identity,
    although no TGT for alice exists anywhere (protocol transition)."""
    alice = lan["b"].user("alice")  # b's numbers for her
    out = run_client("alice", str(lan["a"].socket_path), "greet", target(lan["b"], "dns.sock"))
    assert "error" not in out, out
    seen = out["server"]
    assert (seen["uid"], seen["gid"]) == (alice.uid, alice.gid)
    assert lan["b"].group("dnsops") in seen["groups"]
    assert sorted(seen["groups"]) == sorted(set(alice.groups))
    assert seen["peername"].startswith("\0nipc/")
    assert out["echo"] == "ping\n"


@pytest.mark.parametrize(
    ("user", "name", "errno_name"),
    [
        ("bob", "dns.sock", "EACCES"),          # mode 0660 group dnsops excludes bob
        ("alice", "missing.sock", "ENOENT"),
        ("alice", "dead.sock", "ECONNREFUSED"),  # bound, nobody listening
        ("carol", "dns.sock", "EPERM"),         # no local account for carol on b
    ],
)
def test_refusals(lan: dict[str, Host], dns_server: UnixServer, user: str, name: str,
                  errno_name: str) -> None:
    """Each refusal has its own errno, and the daemon keeps serving afterwards."""
    dead = lan["b"].run_dir / "dead.sock"
    if not dead.exists():
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(dead))
        os.chmod(dead, 0o666)
        s.close()
    out = run_client(user, str(lan["a"].socket_path), "greet", target(lan["b"], name))
    assert out.get("error") == errno_name, out
    again = run_client("alice", str(lan["a"].socket_path), "greet", target(lan["b"], "dns.sock"))
    assert "error" not in again, again


def test_unknown_host(lan: dict[str, Host]) -> None:
    out = run_client("alice", str(lan["a"].socket_path), "greet", "/x.sock@nowhere.lan.test")
    assert out["error"] == "EHOSTUNREACH", out


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        (r"CONNECT relative.sock@b.lan.test\n", "ERR EINVAL"),
        (r"CONNECT @abstract@b.lan.test\n", "ERR EINVAL"),
        (r"CONNECT \x00abstract@b.lan.test\n", "ERR EINVAL"),
        (r"HELLO\n", "ERR EINVAL"),
        ("CONNECT /" + "x" * 200 + r"@b.lan.test\n", "ERR ENAMETOOLONG"),
        (r"CONNECT /x.sock@bad_host!\n", "ERR EINVAL"),
    ],
)
def test_malformed_requests(lan: dict[str, Host], line: str, expect: str) -> None:
    out = run_client("alice", str(lan["a"].socket_path), "raw", line)
    assert out["reply"].startswith(expect + " "), out
    assert out["reply"].endswith("\n") and out["reply"].count("\n") == 1


def test_64_mib_each_way_at_once(lan: dict[str, Host]) -> None:
    """Verbatim bytes both ways concurrently: digests equal at both ends."""
    size = 64 * 1024 * 1024
    server = UnixServer(str(lan["b"].run_dir / "bulk.sock"), behaviour=f"bulk:{size}:2")
    try:
        out = run_client("alice", str(lan["a"].socket_path), "bulk",
                         target(lan["b"], "bulk.sock"), str(size), "1", timeout=300)
        assert out["received"] == digest_of(2, size)
        assert server.seen[0].received == digest_of(1, size)
    finally:
        server.close()


def test_half_close(lan: dict[str, Host]) -> None:
    """The client shuts its write side; the server reads to EOF, then answers."""
    server = UnixServer(str(lan["b"].run_dir / "eof.sock"), behaviour="eof-reply")
    try:
        out = run_client("alice", str(lan["a"].socket_path), "halfclose",
                         target(lan["b"], "eof.sock"), str(3 * 1024 * 1024), "7")
        assert out["reply"] == f"{digest_of(7, 3 * 1024 * 1024)} {3 * 1024 * 1024}\n"
    finally:
        server.close()


def test_localhost_is_a_plain_local_connect(lan: dict[str, Host], sandbox: Sandbox) -> None:
    """path@localhost: connected locally with the caller's own credentials, no Kerberos."""
    server = UnixServer(str(lan["a"].run_dir / "local.sock"), mode=0o600)
    try:
        denied = run_client("alice", str(lan["a"].socket_path), "greet",
                            f"{lan['a'].run_dir / 'local.sock'}@localhost")
        assert denied["error"] == "EACCES"
        os.chown(server.path, lan["a"].user("alice").uid, 0)
        for host in ("localhost", lan["a"].fqdn):
            out = run_client("alice", str(lan["a"].socket_path), "greet",
                             f"{lan['a'].run_dir / 'local.sock'}@{host}")
            assert out["server"]["uid"] == lan["a"].user("alice").uid, out
    finally:
        server.close()


@pytest.fixture(scope="module")
def mit(mit_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """Daemons on x and y of the plain MIT realm, in own-ccache mode."""
    for name in ("x", "y"):
        mit_hosts[name].start_daemon()
    yield mit_hosts
    for name in ("x", "y"):
        mit_hosts[name].stop_daemon()


def test_own_ccache_mode(mit: dict[str, Host], sandbox: Sandbox) -> None:
    """A user who ran kinit connects; one who did not gets ENOKEY saying what to do, and
    never anyone else's (root's) credentials."""
    server = UnixServer(str(mit["y"].run_dir / "svc.sock"))
    try:
        sandbox.kinit("alice", "x")
        sandbox.kdestroy("bob", "x")
        # The daemon's own default cache (root's) holds a ticket: bob must not get it.
        mit["x"].run(["kinit", "alice@MIT.TEST"], input=sandbox.password + "\n",
                     env={"KRB5CCNAME": "FILE:/tmp/krb5cc_0"})
        out = run_client("alice", str(mit["x"].socket_path), "greet", target(mit["y"], "svc.sock"))
        assert out["server"]["uid"] == mit["y"].user("alice").uid, out
        refused = run_client("bob", str(mit["x"].socket_path), "greet", target(mit["y"], "svc.sock"))
        assert refused["error"] == "ENOKEY", refused
        assert "kinit" in refused["message"]
    finally:
        server.close()
        sandbox.kdestroy("alice", "x")
        mit["x"].path("/tmp/krb5cc_0").unlink(missing_ok=True)


FORGE = Path(__file__).with_name("forge_tool.py")


@pytest.mark.parametrize(("attack", "verdict", "reached"), [
    ("garbage-token", "EKEYREJECTED", 0),
    ("other-channel", "EKEYREJECTED", 0),
    ("replay", "EKEYREJECTED", 1),  # on another link
    ("replay-other-channel", "EKEYREJECTED", 1),  # on the next channel of the same link
    ("reuse-channel", "CLOSED", 1),  # a channel number used twice: the link is closed
])
def test_forged_handshakes_are_refused(lan: dict[str, Host], dns_server: UnixServer,
                                       attack: str, verdict: str, reached: int) -> None:
    """A daemon's word is worth nothing: only a ticket the receiver validates with its own
    keytab, bound to this very TLS link and channel, counts."""
    a, b = lan["a"], lan["b"]
    before = len(dns_server.seen)
    proc = a.run([sys.executable, str(FORGE), attack, b.address, str(b.port),
                  b.fqdn, str(b.run_dir / "dns.sock"), a.principal], check=False, timeout=60,
                 env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    results = proc.stdout.split()
    assert results == [verdict], proc.stdout
    # Only the replay's first, legitimate use of the ticket may reach the server.
    assert len(dns_server.seen) - before == reached


def test_connects_do_not_grow_the_sending_daemon(lan: dict[str, Host]) -> None:
    """Regression: every remote CONNECT used to build a TLS context of its own, ~35 KB
    the sending daemon never gave back. 300 handshakes (answered ENOENT by b, after
    validating the ticket) must leave a's memory about where it was."""
    import threading

    import nipc
    from acting import identity
    from nipc.impersonate import become

    a = lan["a"]
    pid = a.daemon_pid()
    assert pid

    from acting import rss_kib

    def connects(n: int) -> None:
        def job() -> None:
            become(identity(a.user("alice")))
            for _ in range(n):
                with pytest.raises(FileNotFoundError):
                    nipc.connect(f"/nonexistent@{lan['b'].fqdn}", daemon=str(a.socket_path), timeout=30)

        t = threading.Thread(target=job)
        t.start()
        t.join(300)

    connects(50)  # warm: tickets cached, pools and caches filled
    before = rss_kib(pid)
    connects(300)
    growth = rss_kib(pid) - before
    assert growth < 3 * 1024, f"a's RSS grew {growth} KiB over 300 connects"


def test_an_expired_local_account_is_not_acted_for(lan: dict[str, Host], dns_server: UnixServer) -> None:
    """bob's account on b has expired (chage -E 0): EPERM, although the KDC still issues
    tickets for bob@LAN.TEST (a disabled account must not be acted for)."""
    b = lan["b"]
    server = UnixServer(str(b.run_dir / "open.sock"))
    b.run(["chage", "-E", "0", "bob"])  # in b's own /etc/shadow
    try:
        out = run_client("bob", str(lan["a"].socket_path), "greet", target(b, "open.sock"))
    finally:
        b.run(["chage", "-E", "-1", "bob"])
        server.close()
    assert out.get("error") == "EPERM" and "expired" in out.get("message", ""), out
    assert not server.seen


def test_bytes_sent_before_ok_are_delivered(lan: dict[str, Host], sandbox: Sandbox) -> None:
    """The request line, the first bytes and EOF in one write: the server gets the bytes
    after the connection is made, then EOF; nothing is lost (SPEC 2)."""
    server = UnixServer(str(lan["b"].run_dir / "early.sock"), behaviour="eof-reply")
    try:
        early = "hello before OK\\n" * 1000
        out = run_client("alice", str(lan["a"].socket_path), "raw-all",
                         f"CONNECT {target(lan['b'], 'early.sock')}\\n{early}")
    finally:
        server.close()
    import hashlib

    body = ("hello before OK\n" * 1000).encode()
    assert out["reply"] == f"OK\n{hashlib.sha256(body).hexdigest()} {len(body)}\n", out


def test_one_link_carries_every_connection_and_status_shows_it(lan: dict[str, Host],
                                                                dns_server: UnixServer) -> None:
    """Three connections a -> b at once travel on one link (a dialled it, b accepted it);
    ``nipc status`` on both daemons shows the link and its channels."""
    import nipc
    from acting import as_user
    from nipc.cli.status import ask_status, status_table

    a, b = lan["a"], lan["b"]
    socks = [as_user(a.user("alice"), lambda: nipc.connect(target(b, "dns.sock"), daemon=str(a.socket_path),
                                                   timeout=30)) for _ in range(3)]
    try:
        for s in socks:
            assert s.recv(1)  # the server's greeting: spliced
        mine = ask_status(str(a.run_dir / "admin.sock"), 10)
        theirs = ask_status(str(b.run_dir / "admin.sock"), 10)
    finally:
        for s in socks:
            s.close()
    dialled = [link for link in mine["links"] if link["host"] == b.fqdn]  # type: ignore[union-attr,index]
    assert len(dialled) == 1 and dialled[0]["direction"] == "dialled", mine["links"]
    assert dialled[0]["channels"] >= 3 and dialled[0]["peer"] == f"{b.address}:{b.port}"
    accepted = [link for link in theirs["links"]  # type: ignore[union-attr]
                if link["direction"] == "accepted" and link["peer"].startswith(a.address + ":")]
    assert len(accepted) == 1 and accepted[0]["channels"] >= 3, theirs["links"]
    assert f"link dialled {b.fqdn} {b.address}:{b.port}: " in status_table(mine)
