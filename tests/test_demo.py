"""``python -m nipc.demo`` really shows NIPC at work: alice OK as herself, bob EACCES."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest

from conftest import require_root

pytestmark = pytest.mark.integration


def test_demo_transcript() -> None:
    require_root()
    base = os.environ.get("NIPC_SANDBOX_PREFIX", "nipc-")
    for prefix in (f"{base}tdemo-", f"{base}tdemo2-", f"{base}tdemo3-"):
        proc = subprocess.run([sys.executable, "-m", "nipc.demo", "--prefix", prefix],
                              capture_output=True, text=True, timeout=300)
        if "is in use by process" not in proc.stderr:  # else a parallel session has it
            break
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    alice = pwd.getpwnam("alice").pw_uid
    assert f"server saw  uid={alice}(alice)" in out
    assert "ERR EACCES" in out and "result=refused" in out and "result=routed" in out
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout.split()
    assert not any(ns.startswith(prefix) for ns in namespaces)
