"""The final connect's destination (issue 14 item 4): resolved as the caller, never through
the daemon's own /proc entries, so a 0700 directory holds whatever the path says.

The in-process tests call the resolver on a thread that has become a local user, as the
daemon does; the sandbox tests ask real daemons, started with their working directory
inside a 0700 directory, over the local protocol (path@localhost) and over a peer link.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acting import as_user, launch_daemon
from conftest import require_root
from local_daemon import reload_daemon, stop_process
from nipc.config import ConfigError, from_mapping
from nipc.destination import MAX_SYMLINKS, PathPolicy, connect_unix, expand
from nipc.errors import NipcError
from nipc.identity import LocalIdentity, identity_of_user
from nipc_testbed.sandbox import Host
from support import UnixServer, audit_lines, read_line, run_client


#: The machine's own unprivileged account the tests off the sandbox act as (the sandbox's
#: users exist only inside its hosts).
CALLER = "nobody"


def attempt(user: str, path: str, policy: PathPolicy | None = None) -> str:
    """``connect_unix`` as ``user`` (an account of the machine's): "OK" or "<ERRNO> <message>"."""

    def job() -> str:
        try:
            connect_unix(path, "t0", 5, identity_of_user(user), policy).close()
        except NipcError as e:
            return f"{e.errno_name} {e.message}"
        return "OK"

    return as_user(user, job)


@pytest.fixture
def vault() -> Iterator[Path]:
    """A directory inside a 0700 root directory, holding a socket anyone could write to
    (mode 0666): only the outer directory keeps callers out."""
    require_root()
    top = Path(tempfile.mkdtemp(prefix="nipc-vault-"))
    top.chmod(0o755)
    (top / "locked").mkdir(mode=0o700)
    secret = top / "locked" / "inner"
    secret.mkdir(mode=0o755)
    server = UnixServer(str(secret / "secret.sock"), mode=0o666)
    yield secret
    server.close()
    for p in sorted(top.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    top.rmdir()


def test_the_vault_is_closed_by_its_directory(vault: Path) -> None:
    assert attempt(CALLER, str(vault / "secret.sock")).startswith("EACCES ")


def test_proc_self_cwd_does_not_reach_into_the_daemons_working_directory(
        vault: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread runs in the daemon's process: /proc/self/cwd is the daemon's."""
    monkeypatch.chdir(vault)
    for path in ("/proc/self/cwd/secret.sock", "/proc/thread-self/cwd/secret.sock",
                 f"/proc/{os.getpid()}/cwd/secret.sock",
                 f"/proc/{os.getpid()}/task/{os.getpid()}/cwd/secret.sock"):
        assert attempt(CALLER, path).startswith("EACCES "), path


def test_a_symlink_into_proc_is_refused_the_same_way(vault: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(vault)
    links = vault.parent.parent / "links"
    links.mkdir(mode=0o755)
    (links / "cwd").symlink_to("/proc/self/cwd")
    (links / "proc").symlink_to("../../../../../../proc")
    for path in (links / "cwd" / "secret.sock", links / "proc" / "self" / "cwd" / "secret.sock"):
        assert attempt(CALLER, str(path)).startswith("EACCES "), path


def test_the_daemons_descriptors_all_answer_alike(vault: Path) -> None:
    """/proc/self/fd/N, fdinfo/N, /dev/fd/N: one answer for every N, open or not."""
    held = os.open(vault, os.O_RDONLY | os.O_DIRECTORY)  # an fd into the vault
    try:
        for form in ("/proc/self/fd/{}/secret.sock", "/proc/self/fd/{}", "/dev/fd/{}",
                     "/dev/fd/{}/secret.sock", "/proc/self/fdinfo/{}", "/proc/self/fdinfo/{}/x",
                     "/dev/stdin"):
            answers = {attempt(CALLER, form.format(n)).replace(form.format(n), "PATH")
                       for n in range(0, 40)}
            assert len(answers) == 1 and answers.pop().startswith("EACCES "), (form, answers)
        assert attempt(CALLER, f"/proc/self/fd/{held}/secret.sock").startswith("EACCES ")
    finally:
        os.close(held)


def test_symlinks_and_dotdot_still_lead_where_the_caller_may_go(vault: Path) -> None:
    open_dir = vault.parent.parent / "open"
    open_dir.mkdir(mode=0o755)
    server = UnixServer(str(open_dir / "app.sock"), mode=0o666)
    try:
        (open_dir / "rel").symlink_to("app.sock")
        (open_dir / "abs").symlink_to(open_dir / "rel")
        (open_dir / "sub").mkdir()
        assert attempt(CALLER, str(open_dir / "abs")) == "OK"
        assert attempt(CALLER, f"{open_dir}/sub/../sub/./../app.sock") == "OK"
        assert attempt(CALLER, f"{open_dir}/../../../../../../..{open_dir}/app.sock") == "OK"
        # ... and only there: through a link, the vault is still the vault.
        (open_dir / "secret").symlink_to(vault / "secret.sock")
        assert attempt(CALLER, str(open_dir / "secret")).startswith("EACCES ")
        assert attempt("root", str(open_dir / "secret")) == "OK"
        (open_dir / "loop").symlink_to("loop")
        assert attempt(CALLER, str(open_dir / "loop")).startswith("ELOOP ")
        for n in range(MAX_SYMLINKS + 1):
            (open_dir / f"l{n}").symlink_to(f"l{n + 1}" if n < MAX_SYMLINKS else "app.sock")
        assert attempt(CALLER, str(open_dir / "l1")) == "OK"
        assert attempt(CALLER, str(open_dir / "l0")).startswith("ELOOP ")
        assert attempt(CALLER, f"{open_dir}/missing.sock").startswith("ENOENT ")
        assert attempt(CALLER, f"{open_dir}/app.sock/x").startswith("ENOENT ")
        (open_dir / "file").touch()
        (open_dir / "file").chmod(0o666)
        assert attempt(CALLER, str(open_dir / "file")).startswith("ENOTSOCK ")
    finally:
        server.close()


# -- on the sandbox: real daemons, started inside the vault --


def replies(user: str, daemon: Path, lines: list[str]) -> list[str]:
    """Each request line sent to ``daemon`` by a thread that has become ``user`` of the host
    whose gate ``daemon`` is; the daemon's reply lines (SO_PEERCRED shows the thread's
    identity)."""
    who = Host.owning(daemon).user(user)

    def job() -> list[str]:
        answers = []
        for line in lines:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(60)
                s.connect(str(daemon))
                s.sendall(line.encode() + b"\n")
                answers.append(read_line(s).decode().rstrip("\n"))
        return answers

    return as_user(who, job)


#: On b, alice@LAN.TEST is the local account www-data: another uid than hers on a, and a
#: name longer than "%{user}", so an expansion can overflow sun_path.
ALICE_ON_B = "www-data"
ALICE_RULE = r"RULE:[1:$1@$0](alice@LAN\.TEST)s/.*/" + ALICE_ON_B + "/"


@pytest.fixture(scope="module")
def vaulted(samba_hosts: dict[str, Host]) -> Iterator[tuple[Host, Host, Path, int]]:
    """a's daemon, and b's started with its working directory in b's vault (a directory
    inside a 0700 one, with a 0666 socket); b's daemon pid. On b, alice is www-data."""
    a, b = samba_hosts["a"], samba_hosts["b"]
    (b.dir / "locked").mkdir(mode=0o700, exist_ok=True)
    inner = b.dir / "locked" / "inner"
    inner.mkdir(mode=0o755, exist_ok=True)
    server = UnixServer(str(inner / "secret.sock"), mode=0o666)
    krb5 = b.krb5_conf.read_text()
    b.krb5_conf.write_text(krb5.replace("auth_to_local = ", f"auth_to_local = {ALICE_RULE}\n"
                                        "        auth_to_local = ", 1))
    a.start_daemon()
    proc = launch_daemon(b, ["sh", "-c", 'cd "$0" && exec "$@"', str(inner)])
    try:
        with socket.socket(socket.AF_UNIX) as s:  # the daemon's pid, whatever wraps it
            s.connect(str(b.socket_path))
            pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        yield a, b, inner, pid
    finally:
        stop_process(proc)
        a.stop_daemon()
        b.krb5_conf.write_text(krb5)
        server.close()


@pytest.mark.integration
def test_the_daemon_works_from_the_root_directory(vaulted: tuple[Host, Host, Path, int]) -> None:
    _, _, inner, pid = vaulted
    assert os.readlink(f"/proc/{pid}/cwd") == "/"


@pytest.mark.integration
def test_no_detour_through_the_daemons_proc_entries(vaulted: tuple[Host, Host, Path, int]) -> None:
    """Over a peer link and locally: the vault's socket stays out of reach through every
    /proc form, and the daemon's descriptors all answer alike."""
    a, b, inner, pid = vaulted
    for gate, host in ((a.socket_path, b.fqdn), (b.socket_path, "localhost")):
        direct = replies("alice", gate, [f"CONNECT {inner}/secret.sock@{host}"])[0]
        assert direct.startswith("ERR EACCES "), direct
        for path in ("/proc/self/cwd/secret.sock", f"/proc/{pid}/cwd/secret.sock",
                     f"/proc/self/root{inner}/secret.sock", f"/proc/{pid}/root{inner}/secret.sock"):
            answer = replies("alice", gate, [f"CONNECT {path}@{host}"])[0]
            assert answer.startswith("ERR EACCES ") and "/proc" in answer, (path, answer)
        for form in ("/proc/self/fd/{}/secret.sock", "/dev/fd/{}/secret.sock", "/dev/fd/{}",
                     "/proc/self/fdinfo/{}"):
            paths = [form.format(n) for n in range(48)]
            answers = replies("alice", gate, [f"CONNECT {p}@{host}" for p in paths])
            alike = {answer.replace(p, "PATH") for p, answer in zip(paths, answers)}
            assert len(alike) == 1 and alike.pop().startswith("ERR EACCES "), (form, host, alike)


# -- per-user destinations (issue 11, SPEC section 2) --


def test_expansion_replaces_exactly_the_two_placeholders() -> None:
    who = LocalIdentity("alice", 4321, 100, (100,))
    assert expand("/run/user/%{uid}/%{user}.sock", who) == "/run/user/4321/alice.sock"
    untouched = "/srv/%u/%{UID}/%{uid/%%{x}/100%"
    assert expand(untouched, who) == untouched
    assert expand("/a/%{user}%{uid}%{user}", who) == "/a/alice4321alice"


def test_an_expansion_past_sun_path_is_enametoolong() -> None:
    path = "/" + "p" * 99 + "%{user}"  # 107 bytes: fits; with "www-data" 108: does not
    assert expand(path, LocalIdentity("alice", 1, 1, ())) == "/" + "p" * 99 + "alice"
    with pytest.raises(NipcError) as e:
        expand(path, LocalIdentity("www-data", 33, 33, ()))
    assert e.value.errno_name == "ENAMETOOLONG" and "www-data" in e.value.message


@pytest.mark.parametrize("name", ["a/b", "..", "."])
def test_an_account_name_that_would_change_the_path_is_refused(name: str) -> None:
    with pytest.raises(NipcError) as e:
        expand("/run/%{user}/x.sock", LocalIdentity(name, 1, 1, ()))
    assert e.value.errno_name == "EINVAL"
    # ... only where the name would be used: paths and patterns without it are unaffected.
    assert expand("/run/x.sock", LocalIdentity(name, 1, 1, ())) == "/run/x.sock"
    assert PathPolicy(("/run/**",), (), "b").permits("/run/x.sock", LocalIdentity(name, 1, 1, ()))


def b_account(b: Host, name: str) -> tuple[int, int]:
    """``name``'s uid and gid on b, as b's NSS says."""
    uid, gid = b.run(["id", "-u", name]).stdout.split()[0], b.run(["id", "-g", name]).stdout
    return int(uid), int(gid)


@pytest.fixture(scope="module")
def homes(vaulted: tuple[Host, Host, Path, int]) -> Iterator[dict[str, UnixServer]]:
    """On b, ``run/user/<uid>/<user>.sock`` for www-data (alice's account there) and bob,
    each in a 0700 directory of its own, like /run/user."""
    b = vaulted[1]
    servers = {}
    for name in (ALICE_ON_B, "bob"):
        uid, gid = b_account(b, name)
        home = b.run_dir / "user" / str(uid)
        home.mkdir(parents=True, exist_ok=True)
        (b.run_dir / "user").chmod(0o755)
        os.chown(home, uid, gid)
        home.chmod(0o700)
        servers[name] = UnixServer(str(home / f"{name}.sock"), mode=0o666)
    yield servers
    for server in servers.values():
        server.close()


@pytest.mark.integration
def test_one_request_line_reaches_each_callers_own_socket(
        vaulted: tuple[Host, Host, Path, int], homes: dict[str, UnixServer]) -> None:
    """alice and bob send the same line; each lands in their own directory on b, found
    with b's numbers (alice is www-data there); the audit line shows both forms."""
    a, b, _, _ = vaulted
    line = f"{b.run_dir}/user/%{{uid}}/%{{user}}.sock@{b.fqdn}"
    for caller, account in (("alice", ALICE_ON_B), ("bob", "bob")):
        out = run_client(caller, str(a.socket_path), "greet", line)
        assert "error" not in out, out
        assert out["server"]["uid"] == b_account(b, account)[0]
        assert len(homes[account].seen) == 1
        uid = b_account(b, account)[0]
        expanded = f"{b.run_dir}/user/{uid}/{account}.sock"
        assert any(f.get("direction") == "incoming" and f.get("target") == line.rpartition("@")[0]
                   and f.get("expanded") == expanded and f.get("result") == "routed"
                   for f in audit_lines(b.log_path)), audit_lines(b.log_path)[-3:]


@pytest.mark.integration
def test_path_at_localhost_expands_with_the_local_callers_identity(
        vaulted: tuple[Host, Host, Path, int], homes: dict[str, UnixServer]) -> None:
    b = vaulted[1]
    before = len(homes["bob"].seen)
    out = run_client("bob", str(b.socket_path), "greet",
                     f"{b.run_dir}/user/%{{uid}}/%{{user}}.sock@localhost")
    assert "error" not in out, out
    assert len(homes["bob"].seen) == before + 1
    local = [f for f in audit_lines(b.log_path) if f.get("direction") == "local" and "expanded" in f]
    assert local and local[-1]["expanded"].endswith(f"/user/{b_account(b, 'bob')[0]}/bob.sock")


@pytest.mark.integration
def test_an_expansion_past_sun_path_is_refused_by_the_receiving_host(
        vaulted: tuple[Host, Host, Path, int]) -> None:
    """107 bytes as sent fit; as www-data on b they do not: ENAMETOOLONG from b."""
    a, b, _, _ = vaulted
    path = "/" + "p" * 99 + "%{user}"
    out = run_client("alice", str(a.socket_path), "greet", f"{path}@{b.fqdn}")
    assert out.get("error") == "ENAMETOOLONG", out
    out = run_client("bob", str(a.socket_path), "greet", f"{path}@{b.fqdn}")
    assert out.get("error") == "ENOENT", out


# -- path policy (issue 11, SPEC section 5) --

ALICE = LocalIdentity("alice", 1001, 1001, (1001,))


@pytest.mark.parametrize(("allow", "deny", "path", "permitted"), [
    (("/**",), (), "/anything/at/all.sock", True),  # the default
    ((), (), "/run/x.sock", False),
    (("/run/*.sock",), (), "/run/x.sock", True),
    (("/run/*.sock",), (), "/run/sub/x.sock", False),  # * stays within one name
    (("/run/**",), (), "/run/a/b/c.sock", True),
    (("/run/**/c.sock",), (), "/run/c.sock", True),  # ** may be no name at all
    (("/run/**/c.sock",), (), "/run/a/b/d.sock", False),
    (("/run/**",), ("/run/secret/**",), "/run/secret/x.sock", False),  # deny wins
    (("/run/**",), ("/run/secret/**",), "/run/public/x.sock", True),
    (("/run/user/%{uid}/**",), (), "/run/user/1001/bus", True),
    (("/run/user/%{uid}/**",), (), "/run/user/1002/bus", False),
    (("/home/%{user}/*.sock",), (), "/home/alice/x.sock", True),
    (("/run/[ab]?.sock",), (), "/run/a1.sock", True),
    (("/run/%{uid}",), (), "/run/%{uid}", False),  # the pattern's %{uid} is the caller's
], ids=lambda v: repr(v))
def test_pattern_semantics(allow: tuple[str, ...], deny: tuple[str, ...], path: str,
                           permitted: bool) -> None:
    assert PathPolicy(allow, deny, "b").permits(path, ALICE) is permitted


def test_an_account_name_in_a_pattern_is_literal() -> None:
    star = LocalIdentity("a*", 7, 7, ())
    policy = PathPolicy(("/home/%{user}/x.sock",), (), "b")
    assert policy.permits("/home/a*/x.sock", star)
    assert not policy.permits("/home/abc/x.sock", star)


@pytest.mark.parametrize(("pattern", "problem"), [
    ("run/*.sock", "absolute"), ("/run/../etc/*", "'..'"), ("/run/./x", "'.'"),
    ("/run/**x", "whole path component"), ("/run/\nx", "control character"),
])
def test_patterns_that_could_never_match_are_refused_at_load(pattern: str, problem: str) -> None:
    doc = {"host": {"name": "b.test", "realm": "T"},
           "kerberos": {"keytab": "/k", "principal": "nipc/b.test"},
           "destinations": {"allow": ["/ok/**"], "deny": [pattern]}}
    with pytest.raises(ConfigError) as e:
        from_mapping(doc)
    assert "destinations.deny" in str(e.value) and problem in str(e.value)
    doc["destinations"] = {"allow": "/run/**"}
    with pytest.raises(ConfigError, match="destinations.allow: expected a list"):
        from_mapping(doc)
    doc["destinations"] = {"deny": ["/run/x/**"]}
    config = from_mapping(doc)
    assert (config.destinations.allow, config.destinations.deny) == (("/**",), ("/run/x/**",))


def test_the_connect_goes_where_the_policy_looked(vault: Path) -> None:
    """The race closed: a symlink swapped in after the path was checked (here: by the
    check itself, the worst moment) does not redirect the connect; it reaches the socket
    that was checked, held open since its resolution."""
    top = vault.parent.parent
    (top / "allowed").mkdir(mode=0o755)
    (top / "elsewhere").mkdir(mode=0o755)
    checked = UnixServer(str(top / "allowed" / "app.sock"), mode=0o666)
    other = UnixServer(str(top / "elsewhere" / "app.sock"), mode=0o666)
    (top / "allowed" / "current").symlink_to("app.sock")

    class Swapping(PathPolicy):
        def check(self, path: str, resolved: str, who: LocalIdentity) -> None:
            link = top / "allowed" / "current"
            link.unlink()
            link.symlink_to(other.path)
            super().check(path, resolved, who)

    alice = identity_of_user(CALLER)
    os.chown(top / "allowed", alice.uid, alice.gid)
    allowed = (f"{top}/allowed/**",)
    try:
        assert attempt(CALLER, str(top / "allowed" / "current"), Swapping(allowed, (), "b")) == "OK"
        for server in (checked, other):  # the server thread records the accept
            for _ in range(200):
                if server.seen:
                    break
                time.sleep(0.01)
        assert len(checked.seen) == 1 and not other.seen
        assert attempt(CALLER, str(top / "allowed" / "current"),
                       PathPolicy(allowed, (), "b")).startswith("EACCES ")
    finally:
        checked.close()
        other.close()



@pytest.mark.integration
def test_a_path_policy_decides_on_where_the_path_leads(
        vaulted: tuple[Host, Host, Path, int], homes: dict[str, UnixServer]) -> None:
    """[destinations] on b, applied by a reload: allowed, outside the allow list, denied,
    and a symlink or '..' from an allowed place to elsewhere (refused: the policy sees the
    resolved path). Removed by another reload, everything is reachable again."""
    a, b, _, _ = vaulted
    run = b.run_dir
    for name in ("open", "elsewhere"):
        (run / name).mkdir(mode=0o755, exist_ok=True)
    servers = [UnixServer(str(run / p), mode=0o666) for p in
               ("open/public.sock", "open/private-1.sock", "elsewhere/app.sock")]
    (run / "open" / "sub").mkdir(exist_ok=True)
    for link, to in (("escape.sock", run / "elsewhere" / "app.sock"),
                     ("to-private.sock", "private-1.sock"), ("to-public.sock", "sub/../public.sock")):
        (run / "open" / link).unlink(missing_ok=True)
        (run / "open" / link).symlink_to(to)

    def answer(caller: str, path: str) -> str:
        out = run_client(caller, str(a.socket_path), "greet", f"{path}@{b.fqdn}")
        return out.get("error") or "OK"

    try:
        with b.reconfigured(lambda text: text + f"""
[destinations]
allow = ["{run}/user/%{{uid}}/**", "{run}/open/**"]
deny = ["{run}/open/private-*"]
""", restart=False) as original:
            reload_daemon(b.socket_path)
            bob_uid = b_account(b, "bob")[0]
            cases = [
                ("alice", f"{run}/user/%{{uid}}/%{{user}}.sock", "OK"),
                ("bob", f"{run}/user/%{{uid}}/%{{user}}.sock", "OK"),
                ("alice", f"{run}/user/{bob_uid}/bob.sock", "EACCES"),  # bob's place, not hers
                ("alice", f"{run}/open/public.sock", "OK"),
                ("alice", f"{run}/open/to-public.sock", "OK"),
                ("alice", f"{run}/open/private-1.sock", "EACCES"),
                ("alice", f"{run}/open/to-private.sock", "EACCES"),
                ("alice", f"{run}/open/escape.sock", "EACCES"),
                ("alice", f"{run}/open/../elsewhere/app.sock", "EACCES"),
                ("alice", f"{run}/open/sub/../../elsewhere/app.sock", "EACCES"),
                ("alice", f"{run}/elsewhere/app.sock", "EACCES"),
            ]
            got = [(caller, path, answer(caller, path)) for caller, path, _ in cases]
            assert got == cases
            assert not servers[1].seen and not servers[2].seen
            refusals = [f for f in audit_lines(b.log_path)
                        if f.get("errno") == "EACCES" and "escape.sock" in f.get("target", "")]
            assert refusals and "policy" in refusals[-1]["reason"], refusals
            assert f"resolved: {run}/elsewhere/app.sock" in refusals[-1]["reason"]
            b.config_path.write_text(original)
            reload_daemon(b.socket_path)
            assert answer("alice", f"{run}/open/escape.sock") == "OK"
            assert answer("alice", f"{run}/elsewhere/app.sock") == "OK"
    finally:
        for server in servers:
            server.close()
