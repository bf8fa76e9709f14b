"""A throwaway Kerberos domain of simulated hosts, so NIPC can be tested end to end on one machine.

Each host is a network namespace with its own address, joined to the others through a bridge
in a dedicated switch namespace; nothing is added to the root namespace, so the sandbox
cannot disturb the machine's own network, and cutting a host's switch port is a real
partition.

Each host is also a host in its files: it has its own mount and UTS namespaces, kept alive by
a holder process (``sleep``) that every command on the host enters with ``nsenter``.  In them,
directories of the host's own are bind-mounted over ``/etc`` (a copy of the machine's, with
the host's own passwd, group, shadow, krb5.conf and ``nipc/``), ``/run``, ``/tmp``,
``/var/lib/nipc`` and ``/var/log/nipc``; ``/usr/local`` is an overlay that has the client
(``nipc`` and ``import nipc`` for the system Python) installed; and the host name is its
FQDN.  The daemon runs there exactly as docs/OPERATING.md installs it: config
``/etc/nipc/nipcd.toml``, keytab ``/etc/nipc/nipc.keytab``, socket ``/run/nipc/nipc.sock``,
replay cache ``/var/lib/nipc``.  Local users exist only in the hosts' own ``/etc``, never on
the machine, and the same principal has different numbers on each host (alice is 1201 on a,
2301 on b, 3301 on c), because the daemon must project the principal onto the receiving host's
account: a daemon that forwarded the caller's uid number would fail the tests.  From the
machine, a host's path is found with ``Host.path`` and its accounts with ``Host.user``; a path
under ``Host.dir`` is the same file inside the host and on the machine (the root is a shared
mount that the hosts' mount namespaces follow, so even a file system mounted there later is),
and the other hosts' directories are hidden inside it.

Three realms are built, because no single KDC on Debian 12 does everything NIPC needs (see
``KERBEROS.md``): a Samba AD DC (``LAN.TEST``: protocol transition, constrained delegation,
PACs) for hosts a, b, c, a plain MIT KDC (``MIT.TEST``: the caller's own credential
cache) for hosts x and y, and MIT on the LDAP back end (``LDAP.TEST``, FreeIPA's KDC
model: protocol transition and delegation without AD; ``nipc_testbed.sandbox_ldap``) for
hosts p, q, r.  The KDCs' namespaces are network namespaces only.

Everything is idempotent: ``up`` first removes what a previous (possibly crashed) run with
the same prefix left behind, ``down`` removes all of it.  Needs root.  The only thing left on
the machine is two empty directories, ``/var/lib/nipc`` and ``/var/log/nipc``: the mount
points of each host's own.

A prefix (namespace names, state files) belongs to one sandbox at a time: ``up`` takes an
exclusive lock on ``/run/nipc-sandbox/<prefix>lock`` and holds it until ``down`` (or until its
process ends), and a second ``up`` or ``down`` with the same prefix fails at once instead of
deleting a live sandbox's files.  (Without the lock, a second session's clean-up removed the
first session's root in the middle of ``samba-tool domain provision``, which then failed with
"Unable to load file <root>/dc/etc/smb.conf".)  ``down`` only ever deletes a root whose marker
names its own prefix, so sessions with different prefixes never touch each other's files.

    python -m nipc_testbed.sandbox up [--root DIR]   |   down   |   status
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import nipc
from nipc_testbed import prereqs, sandbox_ldap

SUBNET = "10.77.0"
PORT = 7445
#: Where ``up`` notes which root directory a prefix's sandbox lives in, so a later ``up``
#: or ``down`` finds the leftovers of a crashed run.
STATE_DIR = Path("/run/nipc-sandbox")
#: Where ``up`` makes a sandbox's root unless given one.
ROOT_PARENT = "/var/tmp"
#: Satisfies AD's default complexity rules (three character classes, 7+ characters).
PASSWORD = "Nipc-Sandbox-7"
ADMIN_PASSWORD = "Nipc-Admin-7"
SAMBA_REALM = "LAN.TEST"
MIT_REALM = "MIT.TEST"
LDAP_REALM = sandbox_ldap.REALM
LOCAL_GROUP = "dnsops"
#: Local users and their supplementary groups.
LOCAL_USERS: dict[str, tuple[str, ...]] = {"alice": (LOCAL_GROUP,), "bob": (), "carol": ()}
#: A domain user with an account on host a only: on the others the daemon finds no one.
ONLY_ON_A = "dave"
#: Host name -> last octet of its address.
SAMBA_HOSTS = {"a": 11, "b": 12, "c": 13}
MIT_HOSTS = {"x": 21, "y": 22}
#: Host name -> where its account numbers start, so no two hosts share any: user ``i`` (from
#: 1, in LOCAL_USERS order) has uid base+i, its own group gid base+10+i (never equal to its
#: uid, so a uid passed as a gid shows), and dnsops gid base+50.  A host not listed here
#: gets 6000 + 100 * the last octet of its address.
ID_BASES = {"a": 1200, "b": 2300, "c": 3300, "x": 4300, "y": 5300}
DC_OCTET = 2
MIT_KDC_OCTET = 3
#: On these hosts carol has no local account (auth_to_local maps her to a missing name).
CAROL_UNMAPPED = ("b", "c")
UNMAPPED_NAME = "carol-nowhere"
CAROL_RULE = r"RULE:[1:$1@$0](carol@LAN\.TEST)s/.*/" + UNMAPPED_NAME + "/"
#: Where the daemon finds its files on every host: the places docs/OPERATING.md and
#: etc/nipcd.service install it to, as seen inside the host.
CONFIG_FILE = Path("/etc/nipc/nipcd.toml")
KEYTAB_FILE = Path("/etc/nipc/nipc.keytab")
DAEMON_SOCKET = Path("/run/nipc/nipc.sock")
RCACHE_DIR = Path("/var/lib/nipc")
LOG_FILE = Path("/var/log/nipc/nipcd.json")
#: MIT's default credential cache, in the host's own /tmp.
CCACHE_TEMPLATE = "FILE:/tmp/krb5cc_%{uid}"
#: The directories each host has its own of: path inside the host -> (directory under
#: ``Host.dir``, mode).  Everything else (/usr, /var, the sandbox root) is the machine's.
OWN_DIRS: dict[str, tuple[str, int]] = {
    "/etc": ("etc", 0o755),
    "/run": ("run", 0o755),
    "/tmp": ("tmp", 0o1777),
    str(RCACHE_DIR): ("var-lib-nipc", 0o700),
    str(LOG_FILE.parent): ("var-log-nipc", 0o750),
}
#: The overlay over /usr/local: the client is installed in its upper directory.
_USR_LOCAL = "usr-local"
_NAMESPACE_SUFFIXES = ("sw", "dc", "mit", "ldap", *SAMBA_HOSTS, *MIT_HOSTS, *sandbox_ldap.HOSTS)
_MARKER = ".nipc-sandbox"
#: What ``up`` creates in a root: in a root given by the caller, ``down`` deletes only these.
_ROOT_ENTRIES = (_MARKER, "pids", "dc", "mit", "ldap", *SAMBA_HOSTS, *MIT_HOSTS,
                 *sandbox_ldap.HOSTS)
#: Prefixes end in "-" and the namespace suffixes hold none, so two different prefixes can
#: never produce the same namespace or state-file name.  Short enough for any suffix.
_PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,30}-\Z")


class SandboxError(RuntimeError):
    """Building or driving the sandbox failed; the message carries the relevant log tail."""


class SandboxBusy(SandboxError):
    """Another live process owns this prefix's sandbox (see ``Sandbox._lock``)."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path})"
    return f"--- {path} (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; a failure names the command and shows its output."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        input=input,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SandboxError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc


def _ip(*args: str, check: bool = True) -> None:
    _run(["ip", *args], check=check)


# --- processes we start: pid files, and the kill that survives pid reuse -----------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``: with the pid it identifies one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _alive(pid: int) -> bool:
    return _start_time(pid) is not None


def _write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_start_time(pid) or ''}\n")


def _read_pidfile(path: Path) -> int | None:
    """The recorded pid if that very process still runs, else None (pid reuse is ignored)."""
    try:
        pid_text, _, start = path.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    now = _start_time(pid)
    return pid if now is not None and now == start else None


def _terminate(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        for pid in pids:  # reap our own children so they stop being zombies
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _netns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def _spawn(
    argv: Sequence[str], log: Path, env: dict[str, str], pidfile: Path
) -> subprocess.Popen[bytes]:
    """Start a background process in its own session, output appended to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    _write_pidfile(pidfile, proc.pid)
    return proc


# --- identities ----------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A local account on one host, as that host's /etc says: the daemon projects principals
    onto these, and the kernel checks their permissions.  The numbers differ between hosts."""

    name: str
    uid: int
    gid: int
    #: Every group the account is in, its own included, sorted (as the kernel reports them).
    groups: tuple[int, ...]
    group_names: tuple[str, ...]


def _read_db(path: Path) -> list[list[str]]:
    """The colon-separated entries of an /etc database file (passwd, group, shadow)."""
    return [line.split(":") for line in path.read_text().splitlines() if line and line[0] != "#"]


def _write_db(path: Path, entries: Sequence[Sequence[str]]) -> None:
    path.write_text("".join(":".join(e) + "\n" for e in entries))


def _accounts(host_name: str, octet: int) -> tuple[list[list[str]], list[list[str]]]:
    """The passwd and group entries of the sandbox's users on ``host_name``."""
    base = ID_BASES.get(host_name, 6000 + 100 * octet)
    users = dict(LOCAL_USERS)
    if host_name == "a":
        users[ONLY_ON_A] = ()
    dnsops = base + 50
    members = [u for u, groups in users.items() if LOCAL_GROUP in groups]
    passwd, group = [], [[LOCAL_GROUP, "x", str(dnsops), ",".join(members)]]
    for i, name in enumerate(users, start=1):
        uid, gid = base + i, base + 10 + i
        passwd.append([name, "x", str(uid), str(gid), "", f"/home/{name}", "/usr/sbin/nologin"])
        group.append([name, "x", str(gid), ""])
    return passwd, group


def _install_accounts(etc: Path, host_name: str, octet: int) -> None:
    """Make the sandbox's users and groups the only ones with their names in this copy of /etc.

    Written into the files (as ``useradd --prefix`` would), so the machine's own /etc is never
    touched.  Entries the machine has under the same names (from older sandboxes, which
    created them there) are dropped; numbers already taken in the copy are an error.
    """
    passwd, group = _accounts(host_name, octet)
    names = {e[0] for e in passwd} | {e[0] for e in group}
    new_ids = {("passwd", int(e[2])) for e in passwd} | {("group", int(e[2])) for e in group}
    for db, ours in (("passwd", passwd), ("group", group)):
        kept = [e for e in _read_db(etc / db) if e[0] not in names]
        for e in kept:
            if (db, int(e[2])) in new_ids:
                raise SandboxError(f"{etc / db}: {e[0]} already has id {e[2]} (see ID_BASES)")
            if db == "group":
                e[3] = ",".join(m for m in e[3].split(",") if m and m not in names)
        _write_db(etc / db, kept + ours)
    # Locked passwords, as useradd leaves them: nobody logs in, but getspnam finds them.
    for db, ours, fields in (("shadow", passwd, ["!", "19000", "0", "99999", "7", "", "", ""]),
                             ("gshadow", group, None)):
        if not (etc / db).exists():
            continue
        kept = [e for e in _read_db(etc / db) if e[0] not in names]
        added = [[e[0], *(fields or ["!", "", e[3]])] for e in ours]
        _write_db(etc / db, kept + added)


# --- hosts ---------------------------------------------------------------------------------


@dataclass
class Host:
    """One simulated host: network, mount and UTS namespaces, its own /etc, /run, /tmp and
    accounts, a keytab and a daemon config at the documented paths.

    Paths come in two views.  Inside the host (what its processes, configs and requests
    name) the daemon's socket is ``/run/nipc/nipc.sock``; the test process, on the machine,
    reaches the same file at ``path("/run/nipc/nipc.sock")``, under ``dir``.  The path
    properties (``socket_path``, ``config_path``, ``run_dir``, ...) are the machine's view,
    and every path under ``dir`` names the same file inside the host too, so they can also go
    into requests and configs.
    """

    name: str
    fqdn: str
    realm: str
    netns: str
    address: str
    dir: Path
    principal: str
    switch_netns: str
    switch_port: str
    port: int = PORT
    _proc: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @staticmethod
    def owning(path: str | os.PathLike[str]) -> Host:
        """The host whose directory holds ``path`` (a machine's-view path, e.g. a daemon
        socket), so that helpers given only a socket act on the right host."""
        for host_dir, host in _HOSTS.items():
            if Path(path).is_relative_to(host_dir):
                return host
        raise SandboxError(f"{path} is in no sandbox host's directory")

    def path(self, inside: str | os.PathLike[str]) -> Path:
        """Where the host's file ``inside`` (an absolute path) is, seen from the machine."""
        inside = Path(inside)
        for own, (sub, _) in OWN_DIRS.items():
            if inside.is_relative_to(own):
                return self.dir / sub / inside.relative_to(own)
        return inside  # not one of the host's own: the machine's file

    @property
    def config_path(self) -> Path:
        return self.path(CONFIG_FILE)

    @property
    def run_dir(self) -> Path:
        """The daemon's runtime directory (/run/nipc): its gate and admin sockets, and the
        sockets tests serve on this host."""
        return self.path(DAEMON_SOCKET.parent)

    @property
    def socket_path(self) -> Path:
        return self.path(DAEMON_SOCKET)

    @property
    def krb5_conf(self) -> Path:
        return self.path("/etc/krb5.conf")

    @property
    def keytab(self) -> Path:
        return self.path(KEYTAB_FILE)

    @property
    def log_path(self) -> Path:
        """The daemon's JSON log (``[log] file``)."""
        return self.path(LOG_FILE)

    @property
    def out_path(self) -> Path:
        """The daemon's stdout and stderr (under systemd: the journal)."""
        return self.dir / "nipcd.out"

    @property
    def service(self) -> str:
        """The GSS host-based service name peers use for this host's daemon."""
        return f"nipc@{self.fqdn}"

    def env(self) -> dict[str, str]:
        """The environment of the daemon (nipcd.service's ``Environment=``) and of tools that
        act with the host's keytab (krb5 finds /etc/krb5.conf itself)."""
        return {
            "KRB5RCACHEDIR": str(RCACHE_DIR),
            "KRB5_CLIENT_KTNAME": f"FILE:{KEYTAB_FILE}",
            "KRB5_KTNAME": f"FILE:{KEYTAB_FILE}",
        }

    # -- accounts --

    def user(self, name: str) -> User:
        """``name``'s account on this host, from the host's own /etc (KeyError if none)."""
        passwd = {e[0]: e for e in _read_db(self.path("/etc/passwd"))}
        if name not in passwd:
            raise KeyError(f"no user {name!r} on host {self.name}")
        uid, gid = int(passwd[name][2]), int(passwd[name][3])
        groups = {int(e[2]): e[0] for e in _read_db(self.path("/etc/group"))
                  if int(e[2]) == gid or name in e[3].split(",")}
        ids = tuple(sorted(groups))
        return User(name, uid, gid, ids, tuple(groups[g] for g in ids))

    def group(self, name: str) -> int:
        """The gid of group ``name`` on this host (KeyError if none)."""
        for entry in _read_db(self.path("/etc/group")):
            if entry[0] == name:
                return int(entry[2])
        raise KeyError(f"no group {name!r} on host {self.name}")

    def ccache(self, user: User) -> str:
        """``user``'s default credential cache on this host (in its own /tmp)."""
        return CCACHE_TEMPLATE.replace("%{uid}", str(user.uid))

    # -- entering the host --

    @property
    def _holder_pidfile(self) -> Path:
        return self.dir.parent / "pids" / f"host-{self.name}.pid"

    def exec_argv(self, argv: Sequence[str], user: User | str | None = None) -> list[str]:
        """``argv`` run inside this host's namespaces, as ``user`` if given (else root).

        ``user`` is this host's account (a ``User`` from ``user()``, or its name).
        """
        holder = _read_pidfile(self._holder_pidfile)
        if holder is None:
            raise SandboxError(f"host {self.name} is not up (no namespace holder)")
        prefix = ["nsenter", f"--target={holder}", "--net", "--mount", "--uts", "--"]
        if user is not None:
            who = self.user(user) if isinstance(user, str) else user
            prefix += [
                "setpriv",
                f"--reuid={who.uid}",
                f"--regid={who.gid}",
                "--groups=" + ",".join(map(str, who.groups)),
                "--",
            ]
        return prefix + list(argv)

    def run(
        self,
        argv: Sequence[str],
        user: User | str | None = None,
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion on this host with its krb5 environment."""
        return _run(
            self.exec_argv(argv, user),
            input=input,
            env={**self.env(), **(env or {})},
            check=check,
            timeout=timeout,
        )

    # -- the daemon --

    @property
    def _pidfile(self) -> Path:
        return self.dir.parent / "pids" / f"nipcd-{self.name}.pid"

    def start_daemon(self, timeout: float = 20) -> None:
        """Start nipcd under twistd, as etc/nipcd.service does, and return once its local
        socket accepts connections."""
        if self.daemon_pid() is not None:
            raise SandboxError(f"{self.name}: daemon already running")
        twistd = str(Path(sys.executable).parent / "twistd")
        argv = [twistd, "-n", "--pidfile=", "nipc", "--config", str(CONFIG_FILE)]
        env = {"KRB5RCACHEDIR": str(RCACHE_DIR)}  # the unit's Environment=
        self._proc = _spawn(self.exec_argv(argv), self.out_path, env, self._pidfile)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise SandboxError(
                    f"{self.name}: nipcd exited {self._proc.returncode} before listening\n"
                    + _tail(self.out_path) + "\n" + _tail(self.log_path)
                )
            if _accepts(self.socket_path):
                return
            if time.monotonic() > deadline:
                self.kill_daemon()
                raise SandboxError(
                    f"{self.name}: nipcd not listening on {self.socket_path} after {timeout}s\n"
                    + _tail(self.out_path) + "\n" + _tail(self.log_path)
                )
            time.sleep(0.05)

    def daemon_pid(self) -> int | None:
        """The daemon's pid while it runs (also one started by an earlier Sandbox object)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._proc = None
        return _read_pidfile(self._pidfile)

    def stop_daemon(self, timeout: float = 5) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        pid = self.daemon_pid()
        if pid is not None:
            _terminate([pid], grace=timeout)
        self._proc = None
        self._pidfile.unlink(missing_ok=True)

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (a crash by default); for SIGKILL, also wait until it is gone."""
        pid = self.daemon_pid()
        if pid is None:
            return
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            if self._proc is not None:
                self._proc.wait()
            while _alive(pid):
                time.sleep(0.01)
            self._proc = None
            self._pidfile.unlink(missing_ok=True)

    @contextmanager
    def running(self) -> Iterator[Host]:
        """The daemon running for the block: one started here is stopped after it (even on
        a failure); one that ran already keeps running."""
        started = self.daemon_pid() is None
        if started:
            self.start_daemon()
        try:
            yield self
        finally:
            if started:
                self.stop_daemon()

    @contextmanager
    def reconfigured(self, edit: Callable[[str], str], *, start: bool = False,
                     restart: bool = True) -> Iterator[str]:
        """The daemon's config file rewritten as ``edit(text)`` for the block; yields the
        text it replaced.

        A daemon that runs is restarted with it (with ``start``, one that does not is
        started); on leaving, even on a failure, the file is put back and the daemon is
        again as it was: running (restarted on the old file) or stopped. With
        ``restart=False`` only the file changes: the block applies it (a reload).
        """
        original = self.config_path.read_text()
        was_running = self.daemon_pid() is not None
        self.config_path.write_text(edit(original))
        try:
            if restart and (was_running or start):
                self.stop_daemon()
                self.start_daemon()
            yield original
        finally:
            if restart:
                self.stop_daemon()
            self.config_path.write_text(original)
            if restart and was_running:
                self.start_daemon()

    # -- the network --

    def cut_link(self) -> None:
        """Partition this host: its switch port goes down, so nothing reaches it or leaves."""
        _ip("-n", self.switch_netns, "link", "set", self.switch_port, "down")

    def restore_link(self) -> None:
        _ip("-n", self.switch_netns, "link", "set", self.switch_port, "up")


class DaemonConfigs:
    """Daemons a test module runs with configs made from each host's own, remade as its
    tests need: :meth:`set` restarts a host's daemon on ``edit(its original config)``;
    :meth:`close` stops them and puts every original back (``Host.reconfigured``)."""

    def __init__(self) -> None:
        self._held: dict[str, ExitStack] = {}

    def set(self, host: Host, edit: Callable[[str], str]) -> None:
        previous = self._held.pop(host.name, None)
        if previous is not None:
            previous.close()
        held = ExitStack()
        held.enter_context(host.reconfigured(edit, start=True))
        self._held[host.name] = held

    def close(self) -> None:
        held, self._held = list(self._held.values()), {}
        for stack in held:
            stack.close()


#: Every host defined in this process, by directory: for ``Host.owning``.
_HOSTS: dict[Path, Host] = {}


def _is_mount_point(path: Path) -> bool:
    """Whether something is mounted at ``path`` in this mount namespace."""
    target = str(path).replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _krb5_conf(host: Host, kdc: str, domain: str, extra_realm_lines: Sequence[str] = ()) -> str:
    realm_lines = "".join(f"        {line}\n" for line in (f"kdc = {kdc}", *extra_realm_lines))
    return (
        "[libdefaults]\n"
        f"    default_realm = {host.realm}\n"
        "    forwardable = true\n"
        "    rdns = false\n"
        "    dns_canonicalize_hostname = false\n"
        "    udp_preference_limit = 1\n"
        "    dns_lookup_kdc = false\n"
        "    dns_lookup_realm = false\n"
        "\n[realms]\n"
        f"    {host.realm} = {{\n{realm_lines}    }}\n"
        "\n[domain_realm]\n"
        f"    .{domain} = {host.realm}\n"
        f"    {domain} = {host.realm}\n"
    )


def _toml_str(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nipcd_toml(host: Host, peers: Sequence[Host], own_ccache: bool) -> str:
    mode = "own-ccache" if own_ccache else "protocol-transition"
    lines = [
        "[host]",
        f"name = {_toml_str(host.fqdn)}",
        f"realm = {_toml_str(host.realm)}",
        "",
        "[kerberos]",
        f"mode = {_toml_str(mode)}",
        f"keytab = {_toml_str(KEYTAB_FILE)}",
        f"principal = {_toml_str(host.principal)}",
    ]
    if own_ccache:
        lines.append(f"ccache_template = {_toml_str(CCACHE_TEMPLATE)}")
    lines += [
        "",
        "[local]",
        f"socket = {_toml_str(DAEMON_SOCKET)}",
        'mode = "0666"',
        "",
        "[peer]",
        f"listen = {_toml_str(host.address)}",
        f"port = {host.port}",
        "",
        "[peers]",
        *(f"{_toml_str(p.fqdn)} = {_toml_str(f'{p.address}:{p.port}')}" for p in peers),
        "",
        "[timeouts]",
        "request = 10",
        "handshake = 10",
        "connect = 5",
        "",
        "[log]",
        f"file = {_toml_str(LOG_FILE)}",
    ]
    return "\n".join(lines) + "\n"


def _holder_script(host: Host, hide: Sequence[Path]) -> str:
    """The shell script that makes a host's mount and UTS namespaces what they should be."""
    q = shlex.quote
    lines = ["set -e"]
    for own, (sub, _) in OWN_DIRS.items():
        lines.append(f"mount --bind {q(str(host.dir / sub))} {q(own)}")
    layers = host.dir / _USR_LOCAL
    lines.append(
        "mount -t overlay nipc-usr-local -o " + q(
            f"lowerdir=/usr/local,upperdir={layers / 'upper'},workdir={layers / 'work'}")
        + " /usr/local"
    )
    for path in hide:
        lines.append(f"mount -t tmpfs -o ro,size=4k,mode=0755 nipc-hidden {q(str(path))}")
    lines += [f"hostname {q(host.fqdn)}", "echo ready", "exec sleep infinity"]
    return "\n".join(lines) + "\n"


def _system_python_lib() -> str:
    """``lib/python3.N``: where the system Python looks under /usr/local (Debian's layout)."""
    out = _run(["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2], sep='.')"])
    return f"lib/python{out.stdout.strip()}"


def _install_client(prefix: Path, python_lib: str) -> None:
    """Install the client as an operator would with ``pip install --prefix /usr/local``:
    ``import nipc`` for the system Python and the ``nipc`` command, readable by everyone.

    The client is stdlib-only, so a copy of the package and a two-line script are all it
    takes (no network, no pip, no build in every host)."""
    package = prefix / python_lib / "dist-packages" / "nipc"
    shutil.copytree(Path(nipc.__file__).resolve().parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = prefix / "bin" / "nipc"
    script.parent.mkdir(parents=True)
    script.write_text("#!/usr/bin/python3\nimport sys\nfrom nipc.cli import main\n"
                      "sys.exit(main())\n")
    for path in [prefix, *prefix.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path == script else 0o644)


# --- the sandbox ---------------------------------------------------------------------------


class Sandbox:
    """The whole throwaway domain; ``with Sandbox() as sb:`` builds it and tears it down."""

    samba_realm = SAMBA_REALM
    mit_realm = MIT_REALM
    password = PASSWORD
    admin_password = ADMIN_PASSWORD

    def __init__(
        self,
        root: Path | None = None,
        prefix: str = "nipc-",
        samba: bool = True,
        mit: bool = True,
        debug: bool = False,
        ldap: bool = True,
    ) -> None:
        if not _PREFIX_RE.match(prefix):
            raise SandboxError(
                f"bad sandbox prefix {prefix!r}: lower-case letters, digits and '-', ending in '-'"
            )
        self.prefix = prefix
        self.debug = debug
        self._lock_fd: int | None = None
        self.samba = samba
        self.mit = mit
        self.ldap = ldap
        self._given_root = root
        self.root = root if root is not None else self._recorded_root() or Path("/nonexistent")
        self.hosts: dict[str, Host] = {}
        self.timings: dict[str, float] = {}
        if self.root.is_dir():
            self._define_hosts()

    @property
    def users(self) -> dict[str, User]:
        """Gone: the same user has different numbers on each host."""
        raise AttributeError(
            "Sandbox.users is gone: each host has its own accounts; use host.user(name)"
        )

    # -- naming --

    @property
    def switch_netns(self) -> str:
        return f"{self.prefix}sw"

    @property
    def dc_netns(self) -> str:
        return f"{self.prefix}dc"

    @property
    def mit_netns(self) -> str:
        return f"{self.prefix}mit"

    @property
    def dc_address(self) -> str:
        return f"{SUBNET}.{DC_OCTET}"

    @property
    def mit_kdc_address(self) -> str:
        return f"{SUBNET}.{MIT_KDC_OCTET}"

    @property
    def dc_dir(self) -> Path:
        return self.root / "dc"

    @property
    def mit_dir(self) -> Path:
        return self.root / "mit"

    @property
    def ldap_kdc(self) -> sandbox_ldap.LdapKdc:
        """MIT on the LDAP back end (``LDAP.TEST``): its slapd, KDC and administration."""
        return sandbox_ldap.LdapKdc(
            self.root / "ldap", f"{self.prefix}ldap", f"{SUBNET}.{sandbox_ldap.KDC_OCTET}",
            ADMIN_PASSWORD, _run, lambda argv, log, env, name: _spawn(argv, log, env,
                                                      self.root / "pids" / f"{name}.pid"))

    @property
    def _state_file(self) -> Path:
        return STATE_DIR / f"{self.prefix}root"

    @property
    def _lock_file(self) -> Path:
        return STATE_DIR / f"{self.prefix}lock"

    def _lock(self) -> None:
        """Own this prefix until ``_unlock``: fail at once if another live process owns it.

        An ``flock`` dies with its process, so the leftovers of a crashed run are free to be
        cleaned, while a running session's sandbox can never be removed under its feet.  The
        descriptor is close-on-exec: the daemons we start do not inherit the lock.
        """
        if self._lock_fd is not None:
            return
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SandboxBusy(
                f"sandbox prefix {self.prefix!r} is in use by process {owner}: wait for it, or "
                "use another prefix (--prefix, NIPC_SANDBOX_PREFIX)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; the file stays, harmlessly
            self._lock_fd = None

    def _owns(self, root: Path) -> str | None:
        """``created``/``given`` if ``root`` is a sandbox root of this prefix, else None."""
        try:
            kind, _, prefix = (root / _MARKER).read_text().strip().partition(" ")
        except OSError:
            return None  # not a sandbox root: never delete it
        if prefix and prefix != self.prefix:
            return None  # another prefix's sandbox
        return kind if kind in ("created", "given") else None

    def _recorded_root(self) -> Path | None:
        try:
            return Path(self._state_file.read_text().strip())
        except OSError:
            return None

    def _define_hosts(self) -> None:
        self.hosts = {}
        groups: list[tuple[dict[str, int], str, str]] = []
        if self.samba:
            groups.append((SAMBA_HOSTS, SAMBA_REALM, "lan.test"))
        if self.mit:
            groups.append((MIT_HOSTS, MIT_REALM, "mit.test"))
        if self.ldap:
            groups.append((sandbox_ldap.HOSTS, LDAP_REALM, sandbox_ldap.DOMAIN))
        for table, realm, domain in groups:
            for name, octet in table.items():
                fqdn = f"{name}.{domain}"
                principal = (
                    f"{name.upper()}$@{realm}" if realm == SAMBA_REALM else f"nipc/{fqdn}@{realm}"
                )
                self.hosts[name] = _HOSTS[self.root / name] = Host(
                    name=name,
                    fqdn=fqdn,
                    realm=realm,
                    netns=f"{self.prefix}{name}",
                    address=f"{SUBNET}.{octet}",
                    dir=self.root / name,
                    principal=principal,
                    switch_netns=self.switch_netns,
                    switch_port=f"p-{name}",
                )

    # -- lifecycle --

    def __enter__(self) -> Sandbox:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Sandbox:
        """Build everything, after clearing what an earlier run with this prefix left."""
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (namespaces, mounts)")
        if lacking := prereqs.missing(prereqs.sandbox_needs(self.samba, self.mit, self.ldap)):
            raise SandboxError(prereqs.describe(lacking))
        started = time.monotonic()
        self._lock()
        self._clean()
        if self._given_root is not None:
            self.root = self._given_root
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / _MARKER
            if marker.exists() and self._owns(self.root) is None:
                raise SandboxError(f"{self.root} belongs to another sandbox: {marker.read_text()}")
        else:
            # Not in /tmp: the hosts have their own /tmp, and must still see their directories.
            self.root = Path(tempfile.mkdtemp(prefix=f"{self.prefix}sandbox-", dir=ROOT_PARENT))
        hidden = [own for own in OWN_DIRS if self.root.resolve().is_relative_to(own)]
        if hidden:
            raise SandboxError(f"{self.root}: a sandbox root cannot be under {hidden[0]}, which "
                               "each host has its own of")
        self.root.chmod(0o755)
        # Whether down may delete the root itself or only what it put there, and whose it is.
        kind = "given" if self._given_root else "created"
        (self.root / _MARKER).write_text(f"{kind} {self.prefix}\n")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(f"{self.root}\n")
        (self.root / "pids").mkdir()
        self._share()
        # Made now, so that every host's holder hides them (the builds run meanwhile).
        if self.samba:
            self.dc_dir.mkdir()
        if self.mit:
            self.mit_dir.mkdir(mode=0o700)
        if self.ldap:
            self.ldap_kdc.dir.mkdir(mode=0o700)
        self._define_hosts()
        self._make_host_dirs()

        with ThreadPoolExecutor(max_workers=2) as pool:
            samba = pool.submit(self._timed, "samba", self._build_samba) if self.samba else None
            self._timed("network", self._build_network)
            self._timed("hosts", self._start_hosts)
            if self.mit:
                self._timed("mit", self._build_mit)
            if self.ldap:
                self._timed("ldap", self._build_ldap)
            if samba is not None:
                try:
                    samba.result()
                except SandboxError as e:
                    if self._owns(self.root) is None:  # the lock makes this a stranger's doing
                        raise SandboxError(
                            f"{self.root} was deleted while the sandbox was being built: some "
                            f"process that ignores the lock on {self._lock_file} removed it\n{e}"
                        ) from e
                    raise
        self._timed("ready", self._wait_ready)
        for host in self.hosts.values():
            self._check_config(host)
        self.timings["up"] = time.monotonic() - started
        return self

    def _timed(self, what: str, step: Callable[[], None]) -> None:
        t = time.monotonic()
        step()
        self.timings[what] = time.monotonic() - t

    def down(self, keep_files: bool = False) -> None:
        """Stop every process, delete every namespace and (unless kept) the files."""
        started = time.monotonic()
        self._lock()
        try:
            self._clean(keep_files=keep_files)
        finally:
            self._unlock()
        self.timings["down"] = time.monotonic() - started

    def _clean(self, keep_files: bool = False) -> None:
        """Remove this prefix's processes, namespaces and files; the caller holds the lock."""
        assert self._lock_fd is not None
        # Only roots whose marker names this prefix: their pid files and files are ours.
        candidates = (self._recorded_root(), self.root, self._given_root)
        old_roots = {r for r in candidates if r is not None and self._owns(r) is not None}
        pids: set[int] = set()
        for root in old_roots:
            if (root / "pids").is_dir():
                for pidfile in (root / "pids").glob("*.pid"):
                    pid = _read_pidfile(pidfile)
                    if pid is not None:
                        pids.add(pid)
        present = set(_run(["ip", "netns", "list"]).stdout.split())
        ours = [f"{self.prefix}{s}" for s in _NAMESPACE_SUFFIXES]
        for ns in ours:
            if ns in present:
                pids.update(_netns_pids(ns))
        pids.discard(os.getpid())
        _terminate(sorted(pids))
        for host in self.hosts.values():
            host._proc = None
        for ns in ours:
            if ns in present:
                _ip("netns", "del", ns, check=False)
        for root in old_roots:
            while _is_mount_point(root):  # the shared bind mount of up's _share
                _run(["umount", "--lazy", root])
        if keep_files:
            return
        for root in old_roots:
            kind = self._owns(root)
            if kind == "created":
                shutil.rmtree(root, ignore_errors=True)
            elif kind == "given":  # only what up put there: the rest is the caller's
                for name in _ROOT_ENTRIES[::-1]:  # the marker last
                    child = root / name
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        self._state_file.unlink(missing_ok=True)

    # -- building --

    def _make_host_dirs(self) -> None:
        """Each host's own directories: a copy of /etc with its accounts and configs, an empty
        /run, /tmp, /var/lib/nipc, /var/log/nipc, and the client for its /usr/local."""
        python = _system_python_lib()
        for host in self.hosts.values():
            host.dir.mkdir(mode=0o755)
            host.dir.chmod(0o755)
            for own, (sub, mode) in OWN_DIRS.items():
                if own == "/etc":
                    _run(["cp", "-a", "/etc", host.dir / sub])
                    shutil.rmtree(host.dir / sub / "nipc", ignore_errors=True)
                else:
                    (host.dir / sub).mkdir()
                (host.dir / sub).chmod(mode)
            octet = int(host.address.rpartition(".")[2])
            _install_accounts(host.path("/etc"), host.name, octet)
            host.path("/etc/hostname").write_text(host.fqdn + "\n")
            for made in (CONFIG_FILE.parent, DAEMON_SOCKET.parent):  # install -d, systemd
                host.path(made).mkdir(mode=0o755)
            if host.realm == SAMBA_REALM:
                extra = []
                if host.name in CAROL_UNMAPPED:
                    extra = [
                        f"auth_to_local = {CAROL_RULE}",
                        "auth_to_local = DEFAULT",
                    ]
                conf = _krb5_conf(host, self.dc_address, "lan.test", extra)
            elif host.realm == LDAP_REALM:
                conf = _krb5_conf(host, self.ldap_kdc.address, sandbox_ldap.DOMAIN)
            else:
                conf = _krb5_conf(host, self.mit_kdc_address, "mit.test")
            host.krb5_conf.write_text(conf)
            peers = [p for p in self.hosts.values() if p.realm == host.realm and p is not host]
            host.config_path.write_text(
                _nipcd_toml(host, peers, own_ccache=host.realm == MIT_REALM)
            )
            _install_client(host.dir / _USR_LOCAL / "upper", python)
            (host.dir / _USR_LOCAL / "work").mkdir()

    def _share(self) -> None:
        """Make the root a shared mount of its own (a bind mount onto itself), so that what is
        mounted under it from the machine later (a test's small file system in a host's
        directory, say) appears inside the hosts too, whose copies of it are its slaves.
        Its own peer group: nothing mounted under it reaches the rest of the machine."""
        _run(["mount", "--bind", self.root, self.root])
        _run(["mount", "--make-private", self.root])
        _run(["mount", "--make-shared", self.root])

    def _start_hosts(self) -> None:
        """Give each host its mount and UTS namespaces, held by a process that sleeps in them.

        The holder bind-mounts the host's own directories, hides the other hosts' and the
        KDCs' directories under the root, sets the host name, says "ready" and sleeps; it
        lives in the host's network namespace, so ``down`` stops it with everything else.
        Mount propagation is one way (slave): mounts under the root made on the machine reach
        the host (see ``_share``), nothing the host mounts reaches the machine.
        """
        for own in OWN_DIRS:
            Path(own).mkdir(parents=True, exist_ok=True)  # mount points: /var/lib/nipc ...
        for host in self.hosts.values():
            hide = [self.root / e for e in _ROOT_ENTRIES if e != host.name
                    and (self.root / e).is_dir()]
            argv = ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
                    "--propagation", "slave", "--", "sh", "-c", _holder_script(host, hide)]
            log = host.dir / "holder.out"
            with open(log, "ab") as err:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=err, start_new_session=True)
            _write_pidfile(host._holder_pidfile, proc.pid)
            assert proc.stdout is not None
            with proc.stdout:
                ready = proc.stdout.readline()  # the script exits (EOF) on any failure
            if ready != b"ready\n":
                _terminate([proc.pid])
                raise SandboxError(f"host {host.name}: namespaces not set up\n{_tail(log)}")

    def _check_config(self, host: Host) -> None:
        from nipc import config

        cfg = config.load(host.config_path)
        if cfg.host.name != host.fqdn or cfg.local.socket != DAEMON_SOCKET:
            raise SandboxError(f"{host.config_path} does not read back as written")

    def _build_network(self) -> None:
        sw = self.switch_netns
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        nodes: list[tuple[str, str, str]] = []  # (netns, address, switch port)
        if self.samba:
            nodes.append((self.dc_netns, self.dc_address, "p-dc"))
        if self.mit:
            nodes.append((self.mit_netns, self.mit_kdc_address, "p-mit"))
        if self.ldap:
            nodes.append((self.ldap_kdc.netns, self.ldap_kdc.address, "p-ldap"))
        nodes += [(h.netns, h.address, h.switch_port) for h in self.hosts.values()]
        for ns, address, port in nodes:
            _ip("netns", "add", ns)
            _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", sw, "link", "set", port, "master", "br0", "up")

    def _samba_tool(self, *args: str) -> None:
        _run(["samba-tool", *args, f"--configfile={self.dc_dir / 'etc' / 'smb.conf'}"])

    def _build_samba(self) -> None:
        dc = self.dc_dir
        for sub in ("run", "ncalrpc", "winbindd", "ntp_signd", "log"):
            (dc / sub).mkdir(parents=True)
        options = {
            "interfaces": self.dc_address,
            "bind interfaces only": "yes",
            # Our own runtime dirs, so nothing collides with a system or a sibling DC.
            "pid directory": dc / "run",
            "ncalrpc dir": dc / "ncalrpc",
            "winbindd socket directory": dc / "winbindd",
            "ntp signd socket directory": dc / "ntp_signd",
            "log file": dc / "log" / "samba.log",
            # The KDC, plus the internal DNS server (and the RPC service through which
            # `samba-tool dns add` edits it) for peer discovery by DNS. samba-tool edits
            # the rest of the database directly.
            "server services": "kdc, dns, rpc",
            "dns forwarder": "",
        }
        _run(
            [
                "samba-tool", "domain", "provision",
                f"--targetdir={dc}",
                f"--realm={SAMBA_REALM}",
                "--domain=LAN",
                "--server-role=dc",
                "--dns-backend=SAMBA_INTERNAL",
                f"--adminpass={ADMIN_PASSWORD}",
                "--host-name=dc1",
                f"--host-ip={self.dc_address}",
                *(f"--option={k}={v}" for k, v in options.items()),
            ],
            timeout=300,
        )
        # A new computer account has no AES enctypes: without them the SPN's keys are RC4.
        editor = dc / "set-aes.sh"
        editor.write_text(
            "#!/bin/sh\n"
            "sed -i -e '/^msDS-SupportedEncryptionTypes:/d' "
            "-e '/^dn: /a msDS-SupportedEncryptionTypes: 24' \"$1\"\n"
        )
        editor.chmod(0o755)
        samba_hosts = [h for h in self.hosts.values() if h.realm == SAMBA_REALM]

        def account(host: Host) -> None:
            computer = host.name.upper()
            sam = f"{computer}$"
            self._samba_tool(
                "computer", "add", computer, f"--service-principal-name=nipc/{host.fqdn}"
            )
            self._samba_tool("computer", "edit", computer, f"--editor={editor}")
            self._samba_tool("user", "setpassword", sam, "--random-password")
            self._samba_tool("delegation", "for-any-protocol", sam, "on")
            for other in samba_hosts:
                if other is not host:
                    self._samba_tool("delegation", "add-service", sam, f"nipc/{other.fqdn}")
            for principal in (sam, f"nipc/{host.fqdn}"):
                self._samba_tool(
                    "domain", "exportkeytab", str(host.keytab), f"--principal={principal}"
                )
            host.keytab.chmod(0o600)

        def users() -> None:
            for user in (*LOCAL_USERS, ONLY_ON_A):
                self._samba_tool("user", "add", user, PASSWORD)

        # samba-tool is mostly Python start-up: running chains side by side uses every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            jobs = [pool.submit(users)] + [pool.submit(account, h) for h in samba_hosts]
            for job in jobs:
                job.result()

    def _start_samba(self) -> None:
        smb_conf = self.dc_dir / "etc" / "smb.conf"
        argv = ["ip", "netns", "exec", self.dc_netns, "samba", "-i", "-M", "single", "-s"]
        argv += [str(smb_conf), "-d", "3" if self.debug else "1"]  # 3: every KDC decision
        _spawn(argv, self.dc_dir / "samba.out", {}, self.root / "pids" / "samba.pid")

    def _mit_env(self) -> dict[str, str]:
        return {
            "KRB5_CONFIG": str(self.mit_dir / "krb5.conf"),
            "KRB5_KDC_PROFILE": str(self.mit_dir / "kdc.conf"),
        }

    def _build_mit(self) -> None:
        mit = self.mit_dir
        (mit / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            "    kdc_listen = 88\n"
            "    kdc_tcp_listen = 88\n"
            "\n[realms]\n"
            f"    {MIT_REALM} = {{\n"
            f"        database_name = {mit}/principal\n"
            f"        key_stash_file = {mit}/stash\n"
            f"        acl_file = {mit}/kadm5.acl\n"
            "        max_life = 10h\n"
            "        max_renewable_life = 7d\n"
            "    }\n"
            "\n[logging]\n"
            f"    kdc = FILE:{mit}/krb5kdc.log\n"
        )
        (mit / "krb5.conf").write_text(
            "[libdefaults]\n"
            f"    default_realm = {MIT_REALM}\n"
            "\n[realms]\n"
            f"    {MIT_REALM} = {{\n        kdc = {self.mit_kdc_address}\n    }}\n"
        )
        (mit / "kadm5.acl").write_text("")
        env = self._mit_env()
        _run(
            ["kdb5_util", "create", "-s", "-r", MIT_REALM, "-P", secrets.token_urlsafe(24)],
            env=env,
        )

        def kadmin(query: str) -> None:
            _run(["kadmin.local", "-r", MIT_REALM, "-q", query], env=env)

        for host in self.hosts.values():
            if host.realm == MIT_REALM:
                kadmin(f"addprinc -randkey nipc/{host.fqdn}")
                kadmin(f"ktadd -k {host.keytab} nipc/{host.fqdn}")
                host.keytab.chmod(0o600)
        for user in ("alice", "bob"):
            kadmin(f"addprinc -pw {PASSWORD} {user}")
        argv = ["ip", "netns", "exec", self.mit_netns, "krb5kdc", "-n"]
        _spawn(argv, mit / "krb5kdc.out", env, self.root / "pids" / "krb5kdc.pid")

    def _build_ldap(self) -> None:
        """The third realm: protocol transition and constrained delegation on MIT, each
        host allowed to delegate to the others (so chains work)."""
        kdc = self.ldap_kdc
        hosts = [h for h in self.hosts.values() if h.realm == LDAP_REALM]
        kdc.build({h.principal: h.keytab for h in hosts}, list(LOCAL_USERS), PASSWORD)
        for host in hosts:
            kdc.allow_delegation(host.principal, [o.principal for o in hosts if o is not host])

    def _wait_ready(self, timeout: float = 60) -> None:
        """Wait until each KDC issues a ticket, so tests never race the start-up."""
        if self.samba:
            self._start_samba()
        probes: list[tuple[Host, str, str, Path]] = []
        if self.samba:
            probes.append(
                (self._first(SAMBA_REALM), f"Administrator@{SAMBA_REALM}", ADMIN_PASSWORD,
                 self.dc_dir / "samba.out")
            )
        if self.mit:
            probes.append(
                (self._first(MIT_REALM), f"alice@{MIT_REALM}", PASSWORD,
                 self.mit_dir / "krb5kdc.out")
            )
        if self.ldap:
            probes.append((self._first(LDAP_REALM), f"alice@{LDAP_REALM}", PASSWORD,
                           self.ldap_kdc.dir / "krb5kdc.out"))
        deadline = time.monotonic() + timeout
        for host, principal, password, log in probes:
            while True:
                proc = host.run(
                    ["kinit", "-c", "MEMORY:probe", principal], input=password + "\n", check=False
                )
                if proc.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise SandboxError(
                        f"KDC for {host.realm} not answering after {timeout}s: {proc.stderr}\n"
                        + _tail(log)
                    )
                time.sleep(0.1)

    def _first(self, realm: str) -> Host:
        return next(h for h in self.hosts.values() if h.realm == realm)

    # -- helpers --

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a helper process that ``down`` stops; its output goes to ``output(name)``."""
        return _spawn(argv, self.output(name), env or {}, self.root / "pids" / f"{name}.pid")

    def output(self, name: str) -> Path:
        """Where the output of the helper ``name`` started by ``spawn`` goes."""
        return self.root / "pids" / f"{name}.out"

    # -- users' credentials --

    def kinit(self, user: str, host_name: str) -> str:
        """Get ``user`` a TGT on ``host_name``, as that local user; returns the ccache name."""
        host = self.hosts[host_name]
        u = host.user(user)
        ccache = host.ccache(u)
        host.run(
            ["kinit", f"{user}@{host.realm}"],
            user=u,
            input=self.password + "\n",
            env={"KRB5CCNAME": ccache},
        )
        return ccache

    def kdestroy(self, user: str, host_name: str) -> None:
        host = self.hosts[host_name]
        u = host.user(user)
        host.run(["kdestroy"], user=u, env={"KRB5CCNAME": host.ccache(u)}, check=False)

    # -- for people --

    def describe(self) -> str:
        """How to step into each host by hand."""
        lines = [f"sandbox root: {self.root}"]
        for host in self.hosts.values():
            lines.append(f"  {host.name} {host.fqdn} {host.address} ({host.principal})")
            lines.append("      " + shlex.join(host.exec_argv(["bash"])))
        lines.append(f"  users alice, bob, carol; password {self.password}; as a user, inside:")
        lines.append("      setpriv --reuid=alice --regid=alice --init-groups nipc ...")
        return "\n".join(lines)


def _iter_status(prefix: str) -> Iterator[str]:
    sb = Sandbox(prefix=prefix)
    present = set(_run(["ip", "netns", "list"]).stdout.split())
    yield f"root: {sb.root if sb.root.is_dir() else '(none)'}"
    for suffix in _NAMESPACE_SUFFIXES:
        ns = f"{prefix}{suffix}"
        if ns in present:
            yield f"  {ns}: pids {' '.join(map(str, _netns_pids(ns))) or '-'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nipc_testbed.sandbox",
        description="A throwaway Kerberos domain of namespaces.",
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--root", type=Path, help="directory for the sandbox's files")
    parser.add_argument("--prefix", default="nipc-", help="namespace name prefix")
    parser.add_argument("--keep-files", action="store_true", help="down: keep logs and files")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            sb = Sandbox(root=args.root, prefix=args.prefix).up()
            print(sb.describe())
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in sb.timings.items() if k != "up")
            print(f"up in {sb.timings['up']:.1f}s ({steps})")
        elif args.command == "down":
            sb = Sandbox(root=args.root, prefix=args.prefix)
            sb.down(keep_files=args.keep_files)
            print(f"down in {sb.timings['down']:.1f}s")
        else:
            print("\n".join(_iter_status(args.prefix)))
    except SandboxError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
