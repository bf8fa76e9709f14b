"""The sandbox really is the domain the integration tests assume.

The GSS calls run in subprocesses inside each host's namespace, because krb5 reads
``KRB5_CONFIG`` from the environment and one process can only hold one host's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nipc import config
from nipc_testbed.sandbox import (
    DAEMON_SOCKET, MIT_REALM, SAMBA_REALM, STATE_DIR, Host, Sandbox, SandboxBusy, SandboxError,
)

pytestmark = pytest.mark.integration

# Initiator: prints the first context token (base64) for argv[2] from the credential in argv[1].
_INITIATE = """
import base64, gssapi, sys
mode, target = sys.argv[1], sys.argv[2]
if mode == "impersonate":
    principal, keytab, user = sys.argv[3:6]
    store = {"client_keytab": keytab, "keytab": keytab, "ccache": "MEMORY:sandbox-test"}
    own = gssapi.Credentials(
        name=gssapi.Name(principal, gssapi.NameType.kerberos_principal), usage="both", store=store
    )
    creds = own.impersonate(gssapi.Name(user, gssapi.NameType.kerberos_principal), usage="initiate")
else:
    creds = gssapi.Credentials(usage="initiate", store={"ccache": sys.argv[3]})
ctx = gssapi.SecurityContext(
    name=gssapi.Name(target, gssapi.NameType.hostbased_service), creds=creds, usage="initiate"
)
print(base64.b64encode(ctx.step()).decode())
"""

# Acceptor: reads a token (base64) on stdin, accepts it with the keytab in argv[1].
_ACCEPT = """
import base64, gssapi, json, sys
creds = gssapi.Credentials(usage="both", store={"keytab": sys.argv[1]})
ctx = gssapi.SecurityContext(creds=creds, usage="accept")
ctx.step(base64.b64decode(sys.stdin.read()))
name = ctx.initiator_name
print(json.dumps({
    "complete": ctx.complete,
    "initiator": str(name),
    "attributes": [a.decode() for a in name.attributes],
    "delegated": ctx.delegated_creds is not None,
}))
"""


def _accept(host: Host, token: str) -> dict[str, object]:
    proc = host.run([sys.executable, "-c", _ACCEPT, str(host.keytab)], input=token)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_layout(sandbox: Sandbox) -> None:
    assert set(sandbox.hosts) == {"a", "b", "c", "x", "y", "p", "q", "r"}
    assert sandbox.root.stat().st_mode & 0o777 == 0o755
    for host in sandbox.hosts.values():
        assert host.dir.stat().st_mode & 0o777 == 0o755
        assert host.run_dir.stat().st_mode & 0o777 == 0o755
        assert host.keytab.stat().st_mode & 0o777 == 0o600
        cfg = config.load(host.config_path)
        assert cfg.host.name == host.fqdn
        assert cfg.kerberos.principal == host.principal
        assert cfg.local.socket == DAEMON_SOCKET
        assert set(cfg.peers) == {
            p.fqdn for p in sandbox.hosts.values() if p.realm == host.realm and p is not host
        }
    for host in sandbox.hosts.values():
        alice = host.user("alice")
        assert alice.gid in alice.groups and len(alice.groups) == 2  # own group + dnsops
        assert alice.group_names == ("alice", "dnsops")
        assert len(host.user("bob").groups) == 1


def test_protocol_transition_and_constrained_delegation(sandbox: Sandbox) -> None:
    a, b = sandbox.hosts["a"], sandbox.hosts["b"]
    token = a.run(
        [
            sys.executable, "-c", _INITIATE, "impersonate", b.service,
            a.principal, str(a.keytab), f"alice@{SAMBA_REALM}",
        ]
    ).stdout
    result = _accept(b, token)
    assert result["complete"]
    assert result["initiator"] == f"alice@{SAMBA_REALM}"
    assert "urn:mspac:logon-info" in result["attributes"]  # type: ignore[operator]
    assert result["delegated"]  # the evidence ticket B needs to chain onward


def test_own_ccache_on_mit(sandbox: Sandbox) -> None:
    x, y = sandbox.hosts["x"], sandbox.hosts["y"]
    alice = x.user("alice")
    ccache = sandbox.kinit("alice", "x")
    try:
        path = x.path(ccache.removeprefix("FILE:"))
        assert path.stat().st_uid == alice.uid
        token = x.run(
            ["/usr/bin/python3", "-c", _INITIATE, "ccache", y.service, ccache], user=alice
        ).stdout
        result = _accept(y, token)
        assert result["complete"]
        assert result["initiator"] == f"alice@{MIT_REALM}"
    finally:
        sandbox.kdestroy("alice", "x")
    assert not x.path(ccache.removeprefix("FILE:")).exists()


def test_kinit_on_samba_host(sandbox: Sandbox) -> None:
    bob = sandbox.hosts["a"].user("bob")
    ccache = sandbox.kinit("bob", "a")
    try:
        listing = sandbox.hosts["a"].run(["klist", ccache], user=bob).stdout
        assert f"bob@{SAMBA_REALM}" in listing
    finally:
        sandbox.kdestroy("bob", "a")


# krb5's own auth_to_local mapping, as the daemon will apply it.
_LOCALNAME = """
import ctypes, sys
k = ctypes.CDLL("libkrb5.so.3")
ctx, princ = ctypes.c_void_p(), ctypes.c_void_p()
assert k.krb5_init_context(ctypes.byref(ctx)) == 0
assert k.krb5_parse_name(ctx, sys.argv[1].encode(), ctypes.byref(princ)) == 0
buf = ctypes.create_string_buffer(256)
rc = k.krb5_aname_to_localname(ctx, princ, len(buf), buf)
print(buf.value.decode() if rc == 0 else "-")
"""


@pytest.mark.parametrize(
    ("host", "user", "local"),
    [("a", "carol", "carol"), ("b", "carol", "carol-nowhere"), ("c", "carol", "carol-nowhere"),
     ("b", "alice", "alice")],
)
def test_auth_to_local(sandbox: Sandbox, host: str, user: str, local: str) -> None:
    h = sandbox.hosts[host]
    out = h.run([sys.executable, "-c", _LOCALNAME, f"{user}@{h.realm}"]).stdout
    assert out.strip() == local


def _connects(src: Host, dst: str, port: int) -> bool:
    probe = (
        "import socket, sys\n"
        f"socket.create_connection(({dst!r}, {port}), timeout=1.5).close()\n"
    )
    return src.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_cut_link_partitions_a_host(sandbox: Sandbox) -> None:
    a, b = sandbox.hosts["a"], sandbox.hosts["b"]
    port = 7999
    listener = (
        "import socket\n"
        f"s = socket.create_server(({b.address!r}, {port}))\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    s.accept()[0].close()\n"
    )
    server = subprocess.Popen(
        b.exec_argv([sys.executable, "-c", listener]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        assert _connects(a, b.address, port)
        b.cut_link()
        try:
            assert not _connects(a, b.address, port)
        finally:
            b.restore_link()
        deadline = time.monotonic() + 5
        while not _connects(a, b.address, port):
            assert time.monotonic() < deadline, "link did not come back"
    finally:
        server.kill()
        server.wait()


def test_nothing_in_the_root_namespace(sandbox: Sandbox) -> None:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    assert "10.77.0." not in run("ip", "-o", "addr")
    assert "p-a" not in run("ip", "-o", "link")
    assert f"{sandbox.prefix}sw" in run("ip", "netns", "list")
    assert "10.77.0.11/24" in run("ip", "-n", f"{sandbox.prefix}a", "-o", "addr")


def test_a_prefix_has_one_owner(sandbox: Sandbox) -> None:
    """A second up or down with a live session's prefix fails at once and deletes nothing
    (without the lock, its clean-up removed the root in the middle of samba provisioning)."""
    smb_conf = sandbox.dc_dir / "etc" / "smb.conf"
    for action in (Sandbox(prefix=sandbox.prefix).up, Sandbox(prefix=sandbox.prefix).down):
        with pytest.raises(SandboxBusy, match=str(os.getpid())):
            action()
        assert smb_conf.exists()
        assert f"{sandbox.prefix}dc" in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_down_never_deletes_another_prefixs_files(sandbox: Sandbox, tmp_path: Path) -> None:
    """Even pointed at them (a stale state file), down leaves another prefix's root alone,
    and in a root it was given deletes only what up put there."""
    other = f"nipt{os.getpid()}-"
    state = STATE_DIR / f"{other}root"
    try:
        state.write_text(f"{sandbox.root}\n")
        pids = {p.name: p.read_text() for p in (sandbox.root / "pids").glob("*.pid")}
        Sandbox(prefix=other).down()
        assert (sandbox.dc_dir / "etc" / "smb.conf").exists()
        assert {p.name: p.read_text() for p in (sandbox.root / "pids").glob("*.pid")} == pids
        for text in pids.values():  # nor its processes (the KDCs)
            pid, _, start = text.strip().partition(" ")
            assert Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19] == start

        given = tmp_path / "given"
        (given / "a").mkdir(parents=True)
        (given / "mine.txt").write_text("not the sandbox's\n")
        (given / ".nipc-sandbox").write_text(f"given {other}\n")
        state.write_text(f"{given}\n")
        Sandbox(prefix=other).down()
        assert sorted(p.name for p in given.iterdir()) == ["mine.txt"]
    finally:
        state.unlink(missing_ok=True)
        (STATE_DIR / f"{other}lock").unlink(missing_ok=True)


@pytest.mark.parametrize("prefix", ["nipc", "Nipc-", "nipc/-", "-", "a" * 40 + "-"])
def test_bad_prefixes(prefix: str) -> None:
    """Prefixes end in '-', so two of them never make the same namespace name."""
    with pytest.raises(SandboxError, match="bad sandbox prefix"):
        Sandbox(prefix=prefix)
