"""A fresh machine: what the sandbox needs is installed by bootstrap, checked before anything
is built, and nothing is left behind in /tmp."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import require_root
from nipc_testbed import prereqs
from nipc_testbed.sandbox import Sandbox

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_client_copy_removed_when_the_session_ends() -> None:
    """The world-readable client copy (one /tmp/nipc-client-* per run) goes with its process."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import support; "
              "where = support.client_dir(); print(where, where.is_dir())")
    proc = subprocess.run([sys.executable, "-c", script, str(TESTS)], capture_output=True,
                          text=True, check=True, timeout=60)
    where, existed = proc.stdout.split()
    assert existed == "True"
    assert not Path(where).exists(), f"{where} left behind"


# -- scripts/bootstrap: a busy apt lock, and the policy-rc.d it creates -------------------

#: Stands in for apt-get only for ``update`` (tests reach no network beyond loopback and the
#: sandbox); everything else is the real apt-get. It notes whether policy-rc.d was in place.
APT_SHIM = """#!/bin/sh
[ -e /usr/sbin/policy-rc.d ] && echo "policy-rc.d present: $*" >> "$SHIM_LOG"
case " $* " in *" update "*) exit 0 ;; esac
exec /usr/bin/apt-get "$@"
"""

#: In a mount namespace of its own, /usr/sbin is an overlay in which policy-rc.d does not
#: exist (a whiteout), whatever the machine has: bootstrap creates its own, as on a fresh host.
OVERLAY_RUN = """set -e
mount -t tmpfs none "$1"; mkdir "$1/upper" "$1/work"; mknod "$1/upper/policy-rc.d" c 0 0
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$1/upper,workdir=$1/work" /usr/sbin
rc=0; bash "$2" || rc=$?
if [ -e /usr/sbin/policy-rc.d ]; then echo "policy-rc.d left behind"; fi
exit $rc
"""


def test_bootstrap_waits_for_apt_lock_and_always_removes_policy_rc_d(tmp_path: Path) -> None:
    """A held dpkg lock is waited for, and a failing apt leaves no policy-rc.d behind."""
    require_root()
    scripts = tmp_path / "repo" / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap", scripts / "bootstrap")
    (scripts / "debian-packages").write_text("# apt fails on this one\nnipc-no-such-package\n")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "apt-get").write_text(APT_SHIM)
    (shim / "apt-get").chmod(0o755)
    (tmp_path / "ov").mkdir()
    log = tmp_path / "shim.log"
    hold = 3.0
    fd = os.open("/var/lib/dpkg/lock-frontend", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        threading.Timer(hold, os.close, (fd,)).start()
        started = time.monotonic()
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", OVERLAY_RUN, "sh", str(tmp_path / "ov"),
             str(scripts / "bootstrap")],
            env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "SHIM_LOG": str(log)},
            capture_output=True, text=True, timeout=300)
        waited = time.monotonic() - started
    except BaseException:
        os.close(fd)
        raise
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Unable to locate package nipc-no-such-package" in out
    assert "Could not get lock" not in out and waited >= hold * 0.9, out
    assert "policy-rc.d present: -o DPkg::Lock::Timeout" in log.read_text()
    assert "policy-rc.d left behind" not in out


# -- the prerequisite check: one line, before anything is built ----------------------------

#: Runs a command in a mount namespace of its own in which Samba's AD schema is hidden, as on
#: a machine without samba-ad-provision.
WITHOUT_SCHEMA = ['unshare', '-m', 'sh', '-c', f'mount -t tmpfs none {prereqs.SCHEMA_DIR} && exec "$@"',
                  'sh']


def test_missing_prerequisite_stops_tests_with_one_line() -> None:
    require_root()
    env = {**os.environ, "NIPC_SANDBOX_PREFIX": "nipc-6-pq-"}
    proc = subprocess.run(
        [*WITHOUT_SCHEMA, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(TESTS / "test_sandbox.py"), str(TESTS / "test_demo.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    lines = [ln for ln in out.splitlines()
             if "AD_DS_Attributes__Windows_Server_2012_R2.ldf" in ln and "samba-ad-provision" in ln]
    assert len(lines) == 1, out
    assert "apt-get install --no-install-recommends samba-ad-provision" in lines[0]
    assert "Traceback" not in out and "provision" not in out.replace(lines[0], ""), out


def test_the_session_checks_what_the_sandbox_builds() -> None:
    """The one check before the session (conftest) covers every realm the sandbox builds:
    the LDAP realm's needs were left out of it, so a missing slapd came back as one error
    per test."""
    sb = Sandbox(prefix="nipc-6-pq-")
    assert set(prereqs.sandbox_needs(sb.samba, sb.mit, sb.ldap)) <= set(prereqs.sandbox_needs())


def test_missing_prerequisite_stops_demo_with_one_line() -> None:
    require_root()
    proc = subprocess.run([*WITHOUT_SCHEMA, sys.executable, "-m", "nipc_testbed.demo", "--prefix",
                           "nipc-6-pq-"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("demo: missing ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "samba-ad-provision" in proc.stderr


# -- every file and command comes from a package bootstrap installs ------------------------

#: What building the virtualenv and the test suite need beyond the sandbox's own needs.
INSTALL_NEEDS = (
    prereqs.Need("/usr/bin/python3", "python3-minimal"),
    prereqs.Need("/usr/lib/python3.11/ensurepip/__init__.py", "python3.11-venv"),
    prereqs.Need("/usr/include/python3.11/Python.h", "libpython3.11-dev"),
    prereqs.Need("krb5-config", "libkrb5-dev"),  # gssapi has no Linux wheel: built here
    prereqs.Need("gcc", "gcc"),
)
TEST_NEEDS = (
    prereqs.Need("klist", "krb5-user"),
    prereqs.Need("ktutil", "krb5-user"),
    prereqs.Need("/usr/share/locale/de/LC_MESSAGES/mit-krb5.mo", "krb5-locales"),
    prereqs.Need("/usr/share/i18n/locales/de_DE", "locales"),
    prereqs.Need("chage", "passwd"),
    prereqs.Need("runuser", "util-linux"),
    prereqs.Need("unshare", "util-linux"),
    prereqs.Need("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "libfaketime"),
    prereqs.Need("/usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
    prereqs.Need("/usr/lib/postgresql/15/bin/pg_ctl", "postgresql-15"),
    prereqs.Need("/usr/lib/postgresql/15/bin/psql", "postgresql-client-15"),
    prereqs.Need("/usr/lib/python3/dist-packages/gssapi/__init__.py", "python3-gssapi"),
)


def bootstrap_packages() -> list[str]:
    """scripts/debian-packages, as bootstrap reads it."""
    text = (ROOT / "scripts" / "debian-packages").read_text()
    return [word for line in text.splitlines() for word in line.partition("#")[0].split()]


def _dpkg_status() -> list[dict[str, str]]:
    """The installed packages' stanzas in /var/lib/dpkg/status."""
    stanzas = []
    for block in Path("/var/lib/dpkg/status").read_text().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status") == "install ok installed":
            stanzas.append(fields)
    return stanzas


def _names(field: str) -> list[str]:
    """One name per dependency: the first alternative, as apt chooses on a fresh machine."""
    return [group.split("|")[0].split("(")[0].strip().split(":")[0]
            for group in field.split(",") if group.strip()]


def dependency_closure(roots: list[str]) -> set[str]:
    """The packages installing ``roots`` brings: Depends and Pre-Depends, never Recommends.

    An alternative counts only when it is the first one (a machine that has another by hand
    proves nothing); a virtual package counts through its installed providers.
    """
    stanzas = _dpkg_status()
    deps = {s["Package"]: _names(s.get("Depends", "") + "," + s.get("Pre-Depends", ""))
            for s in stanzas}
    providers: dict[str, list[str]] = {}
    for s in stanzas:
        for virtual in _names(s.get("Provides", "")):
            providers.setdefault(virtual, []).append(s["Package"])
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        for real in [name] if name in deps else providers.get(name, []):
            if real not in seen:
                seen.add(real)
                todo.extend(deps[real])
    return seen


def essential_packages() -> set[str]:
    """Packages every Debian system has (Essential: yes): nothing need Depend on them."""
    return {s["Package"] for s in _dpkg_status() if s.get("Essential") == "yes"}


def _candidates(path: str) -> list[str]:
    """``path``, what it points to, and their names before /usr was merged (/bin, /lib)."""
    paths = dict.fromkeys([path, os.path.realpath(path)])
    for p in list(paths):
        for top in ("/usr/bin/", "/usr/sbin/", "/usr/lib/"):
            if p.startswith(top):
                paths[p.removeprefix("/usr")] = None
    return list(paths)


def owners(path: str) -> set[str]:
    """The packages that ship ``path`` (under any of its names), as dpkg -S says."""
    proc = subprocess.run(["dpkg-query", "-S", *_candidates(path)], capture_output=True,
                          text=True, check=False)
    found: set[str] = set()
    for line in proc.stdout.splitlines():
        if line.startswith("diversion "):
            continue
        names, _, _ = line.partition(": ")
        found.update(n.strip().split(":")[0] for n in names.split(","))
    return found


def shared_libraries() -> set[str]:
    """The system libraries the virtualenv's compiled modules load (gssapi's krb5 and more)."""
    venv_so = [str(p) for p in Path(sys.prefix).rglob("*.so*") if p.is_file()]
    libs: set[str] = set()
    for start in range(0, len(venv_so), 100):
        out = subprocess.run(["ldd", *venv_so[start:start + 100]], capture_output=True,
                             text=True, check=False).stdout
        for line in out.splitlines():
            assert "not found" not in line, f"a library is missing: {line.strip()}"
            target = line.partition("=>")[2].split("(")[0].strip()
            if target.startswith("/") and not target.startswith(sys.prefix):
                libs.add(target)
    return libs


def test_every_need_comes_from_a_package_bootstrap_installs() -> None:
    """dpkg names the package of every command and file; bootstrap's list (Depends only,
    never Recommends) must bring each of them, so a missing package cannot hide behind a
    machine that happens to have it."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    closure = dependency_closure(bootstrap_packages()) | essential_packages()
    needs = [*prereqs.sandbox_needs(), *INSTALL_NEEDS, *TEST_NEEDS]
    problems = []
    for need in needs:
        path = need.what if os.path.isabs(need.what) else shutil.which(need.what)
        if path is None or not os.path.exists(path):
            problems.append(f"{need.what}: not on this machine (package {need.package})")
            continue
        found = owners(path)
        if need.package not in found:
            problems.append(f"{need.what}: shipped by {found or 'no package'}, "
                            f"not {need.package} as the table says")
        for package in sorted(found - closure):
            problems.append(f"{need.what}: package {package} is not installed by bootstrap")
    for lib in sorted(shared_libraries()):
        found = owners(lib)
        if not found & closure:
            problems.append(f"{lib}: from {found or 'no package'}, not installed by bootstrap")
    assert not problems, "\n".join(problems)
