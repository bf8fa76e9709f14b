"""The sending daemon believes no answer before the peer proved it is the peer: a fake
"b" on the network (TLS, the right frames, no keytab) that answers OK is refused, and
the caller's bytes never reach it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nipc_testbed.sandbox import Host
from support import run_client

pytestmark = pytest.mark.integration

IMPOSTOR = Path(__file__).with_name("impostor_tool.py")
REPO = Path(__file__).resolve().parents[1]
PORT = 7999


@pytest.fixture(scope="module")
def a_points_at_impostor(samba_hosts: dict[str, Host]) -> Iterator[Host]:
    """a's peer table sends b.lan.test to port 7999 on b's address, where the impostor
    listens instead of b's daemon."""
    a, b = samba_hosts["a"], samba_hosts["b"]
    with a.reconfigured(lambda text: text.replace(f'"{b.fqdn}" = "{b.address}:{b.port}"',
                                                  f'"{b.fqdn}" = "{b.address}:{PORT}"'),
                        start=True) as original:
        assert a.config_path.read_text() != original
        yield a


@pytest.mark.parametrize("mode", ["no-token", "garbage-token"])
def test_an_unauthenticated_ok_is_refused(samba_hosts: dict[str, Host], a_points_at_impostor: Host,
                                          mode: str) -> None:
    a, b = a_points_at_impostor, samba_hosts["b"]
    impostor = subprocess.Popen(b.exec_argv([sys.executable, str(IMPOSTOR), b.address, str(PORT), mode]),
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "ready"
        out = run_client("alice", str(a.socket_path), "greet", f"/run/anything.sock@{b.fqdn}")
        assert out.get("error") in ("EPROTO", "EKEYREJECTED"), out
        assert impostor.stdout.readline().strip() == "answered"  # it did say OK
    finally:
        impostor.kill()
        impostor.wait()
