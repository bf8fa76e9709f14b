"""The sandbox's hosts are hosts: each has its own /etc, accounts, /run, /tmp and name, so
the same principal has different numbers on each, and the daemon must project the principal
onto the receiving host's account (a daemon that forwarded the caller's uid would fail here).

Inside each host the daemon and the client run as docs/OPERATING.md installs them: the
daemon at /etc/nipc/nipcd.toml and /run/nipc/nipc.sock, the client as the ``nipc`` command
and ``import nipc`` for the system Python, usable by any user."""

from __future__ import annotations

import json
import pwd
from collections.abc import Iterator

import pytest

from nipc_testbed.sandbox import CONFIG_FILE, DAEMON_SOCKET, LOCAL_GROUP, ONLY_ON_A, Host, Sandbox
from support import UnixServer, run_client

pytestmark = pytest.mark.integration

#: As a user's login shell has it: nothing from the test's virtualenv.
USER_PATH = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    for host in samba_hosts.values():
        host.start_daemon()
    yield samba_hosts
    for host in samba_hosts.values():
        host.stop_daemon()


def test_each_host_has_its_own_accounts_and_name(sandbox: Sandbox) -> None:
    """alice, her own group and dnsops have other numbers on every host, as the host's own
    NSS (``id``) says inside it; none of them is an account of the machine's."""
    uids, gids, dnsops = set(), set(), set()
    machine = {p.pw_uid for p in pwd.getpwall()}
    for host in sandbox.hosts.values():
        alice = host.user("alice")
        ids = host.run(["id", "alice"]).stdout
        assert f"uid={alice.uid}(alice) gid={alice.gid}(alice)" in ids, ids
        assert f"{host.group(LOCAL_GROUP)}({LOCAL_GROUP})" in ids, ids
        assert alice.uid not in machine
        uids.add(alice.uid)
        gids.add(alice.gid)
        dnsops.add(host.group(LOCAL_GROUP))
        assert host.run(["hostname"]).stdout.strip() == host.fqdn
    assert len(uids) == len(gids) == len(dnsops) == len(sandbox.hosts)


def test_the_daemon_runs_at_the_documented_paths(lan: dict[str, Host]) -> None:
    """nipcd reads /etc/nipc/nipcd.toml and serves /run/nipc/nipc.sock inside b, and nothing
    in its environment points krb5 elsewhere: b's own /etc/krb5.conf is the one it uses."""
    b = lan["b"]
    pid = b.daemon_pid()
    assert pid is not None
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert str(CONFIG_FILE).encode() in argv
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.partition(b"=")[::2] for v in f.read().split(b"\0") if v)
    assert not {b"KRB5_CONFIG", b"KRB5_KTNAME", b"KRB5_CLIENT_KTNAME"} & set(env)
    b.run(["test", "-S", str(DAEMON_SOCKET)])
    assert not lan["a"].path(DAEMON_SOCKET).samefile(b.socket_path)


def test_the_server_on_b_sees_bs_numbers(lan: dict[str, Host]) -> None:
    """alice calls from a; the server on b sees b's uid, gid and groups for her in
    SO_PEERCRED/SO_PEERGROUPS and in PEER, never a's."""
    a, b = lan["a"], lan["b"]
    server = UnixServer(str(b.run_dir / "numbers.sock"), mode=0o660, group=b.group(LOCAL_GROUP),
                        ask_peer=str(b.socket_path))
    try:
        out = run_client("alice", str(a.socket_path), "greet", f"{server.path}@{b.fqdn}")
    finally:
        server.close()
    assert "error" not in out, out
    seen, on_a, on_b = out["server"], a.user("alice"), b.user("alice")
    assert (seen["uid"], seen["gid"], seen["groups"]) == (on_b.uid, on_b.gid, list(on_b.groups))
    assert not {on_a.uid, on_a.gid, *on_a.groups} & {seen["uid"], seen["gid"], *seen["groups"]}
    verdict, _, body = seen["peer"].partition(" ")
    assert verdict == "OK", seen["peer"]
    peer = json.loads(body)
    assert (peer["user"], peer["uid"], peer["gid"]) == ("alice", on_b.uid, on_b.gid)
    assert sorted(peer["groups"]) == list(on_b.groups)


def test_a_socket_that_exists_only_on_b(lan: dict[str, Host]) -> None:
    """A socket made on b is reached on b, and is not there on a under the same path."""
    a, b = lan["a"], lan["b"]
    inside = "/run/only-on-b.sock"
    server = UnixServer(str(b.path(inside)))
    try:
        assert not a.path(inside).exists()
        out = run_client("alice", str(a.socket_path), "greet", f"{inside}@{b.fqdn}")
        assert "error" not in out and out["server"]["uid"] == b.user("alice").uid, out
        local = run_client("alice", str(a.socket_path), "greet", f"{inside}@localhost")
        assert local["error"] == "ENOENT", local
    finally:
        server.close()


def test_a_user_who_exists_only_on_a(lan: dict[str, Host]) -> None:
    """dave is a domain user with an account on a only: on b the daemon finds no account
    for him and answers EPERM (docs/OPERATING.md's errno table), naming him."""
    a, b = lan["a"], lan["b"]
    a.user(ONLY_ON_A)
    with pytest.raises(KeyError):
        b.user(ONLY_ON_A)
    assert b.run(["id", ONLY_ON_A], check=False).returncode != 0
    server = UnixServer(str(b.run_dir / "dave.sock"))
    try:
        out = run_client(ONLY_ON_A, str(a.socket_path), "greet", f"{server.path}@{b.fqdn}")
    finally:
        server.close()
    assert out["error"] == "EPERM", out
    assert ONLY_ON_A in out["message"], out
    assert not server.seen


def test_the_same_path_on_two_hosts_is_two_files(sandbox: Sandbox) -> None:
    """/tmp, /run and /etc are each host's own: what a writes there, b does not see."""
    a, b = sandbox.hosts["a"], sandbox.hosts["b"]
    for path in ("/tmp/nipc-same-path", "/run/nipc-same-path", "/etc/nipc-same-path"):
        try:
            for host in (a, b):
                host.run(["sh", "-c", f"echo {host.name} > {path}"])
            assert [h.run(["cat", path]).stdout for h in (a, b)] == ["a\n", "b\n"]
            assert a.path(path).read_text() == "a\n" and b.path(path).read_text() == "b\n"
        finally:
            for host in (a, b):
                host.path(path).unlink(missing_ok=True)
    assert a.run(["cat", "/etc/hostname"]).stdout != b.run(["cat", "/etc/hostname"]).stdout


def test_another_hosts_directory_is_hidden(sandbox: Sandbox) -> None:
    """Inside b, a's directory of the sandbox is empty: b cannot read a's keytab or config."""
    a, b = sandbox.hosts["a"], sandbox.hosts["b"]
    assert a.keytab.exists()
    assert b.run(["ls", "-A", str(a.dir)]).stdout == ""
    assert b.run(["test", "-e", str(a.keytab)], check=False).returncode != 0


def test_a_user_has_the_client_as_on_a_real_host(lan: dict[str, Host]) -> None:
    """alice on a: ``nipc`` is on the ordinary PATH and ``import nipc`` works in the system
    Python, neither through the test's virtualenv nor PYTHONPATH, with the daemon's socket
    at its default place."""
    a, b = lan["a"], lan["b"]
    where = a.run(["sh", "-c", "command -v nipc"], "alice", env=USER_PATH).stdout.strip()
    assert where == "/usr/local/bin/nipc"
    module = a.run(["/usr/bin/python3", "-c", "import nipc; print(nipc.__file__)"], "alice",
                   env=USER_PATH).stdout.strip()
    assert module.startswith("/usr/local/lib/python3") and "dist-packages/nipc/" in module
    server = UnixServer(str(b.run_dir / "client.sock"), ask_peer=str(b.socket_path))
    try:
        out = a.run(["nipc", "connect", f"{server.path}@{b.fqdn}"], "alice", input="hi\n",
                    env=USER_PATH)
    finally:
        server.close()
    greeting, echo = out.stdout.splitlines()[:2]
    assert json.loads(greeting)["uid"] == b.user("alice").uid
    assert echo == "hi"
