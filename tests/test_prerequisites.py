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

from conftest import require_root

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
