"""A fresh machine: what the sandbox needs is installed by bootstrap, checked before anything
is built, and nothing is left behind in /tmp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_client_copy_removed_when_the_session_ends() -> None:
    """The world-readable client copy (one /tmp/nipc-client-* per run) goes with its process."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import support; "
              "where = support.client_dir(); print(where, where.is_dir())")
    proc = subprocess.run([sys.executable, "-c", script, str(TESTS)], capture_output=True,
                          text=True, check=True, timeout=60)
    where, existed = proc.stdout.split()
    assert existed == "True"
    assert not Path(where).exists(), f"{where} left behind"
