"""``python -m nipc_testbed.demo`` really shows NIPC at work: alice OK as herself, bob EACCES."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import require_root
from nipc_testbed.sandbox import Sandbox

pytestmark = pytest.mark.integration


def test_demo_transcript() -> None:
    require_root()
    base = os.environ.get("NIPC_SANDBOX_PREFIX", "nipc-")
    for prefix in (f"{base}tdemo-", f"{base}tdemo2-", f"{base}tdemo3-"):
        proc = subprocess.run([sys.executable, "-m", "nipc_testbed.demo", "--prefix", prefix],
                              capture_output=True, text=True, timeout=300)
        if "is in use by process" not in proc.stderr:  # else a parallel session has it
            break
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    numbers = re.search(r"alice is uid (\d+) on a\.lan\.test and uid (\d+) on b\.lan\.test", out)
    assert numbers and numbers[1] != numbers[2], out
    assert f"server saw  uid={numbers[2]}(alice)" in out  # b's alice, not a's
    assert "ERR EACCES" in out and "result=refused" in out and "result=routed" in out
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout.split()
    assert not any(ns.startswith(prefix) for ns in namespaces)


def test_demo_keep_then_the_printed_teardown_from_any_directory() -> None:
    """``--keep`` prints a teardown command that works from / with a bare PATH, and after
    it nothing of the demo is left: no namespace, nothing in /tmp."""
    require_root()
    base = os.environ.get("NIPC_SANDBOX_PREFIX", "nipc-")
    before = set(os.listdir("/tmp"))
    for prefix in (f"{base}tkeep-", f"{base}tkeep2-", f"{base}tkeep3-"):
        proc = subprocess.run([sys.executable, "-m", "nipc_testbed.demo", "--keep", "--prefix", prefix],
                              capture_output=True, text=True, timeout=300)
        if "is in use by process" not in proc.stderr:  # else a parallel session has it
            break
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        teardown = proc.stdout.partition("Tear down:")[2].splitlines()[0].strip()
        down = subprocess.run(teardown, shell=True, cwd="/", capture_output=True, text=True,
                              timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert down.returncode == 0, f"{teardown}: {down.stdout}{down.stderr}"
    finally:
        Sandbox(prefix=prefix).down()  # a no-op when the teardown worked
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout.split()
    assert not any(ns.startswith(prefix) for ns in namespaces)
    assert [n for n in set(os.listdir("/tmp")) - before if prefix in n] == []
