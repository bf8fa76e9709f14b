"""What a peer sends is validated as the gate validates a local request, and nothing it
sends can add a line to the daemon's logs (issue 14 item 7).

``forge_tool.py`` plays a hostile sending daemon from a's namespace against b's daemon.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nipc_testbed.sandbox import Host

pytestmark = pytest.mark.integration

FORGE = Path(__file__).with_name("forge_tool.py")
REPO = Path(__file__).resolve().parents[1]
#: What the attacker wants an operator (or a log shipper) to read as b's own audit line.
#: (It and the path must fit the 107 bytes of a socket path, or the length alone refuses it.)
FORGED = "nipc-audit conn_id=f0rged principal=root@LAN.TEST result=routed target=/x"


@pytest.fixture(scope="module")
def b(samba_hosts: dict[str, Host]) -> Iterator[Host]:
    host = samba_hosts["b"]
    host.start_daemon()
    yield host
    host.stop_daemon()


def wait_for_any(paths: list[Path], needles: tuple[str, ...], timeout: float = 20) -> None:
    """Until one of ``needles`` shows up in one of the logs (the daemon logs after it answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in paths:
            if path.exists() and any(n in path.read_text(errors="replace") for n in needles):
                return
        time.sleep(0.1)
    raise AssertionError(f"none of {needles} logged in {paths}")


def test_a_hello_path_with_a_newline_is_refused_and_forges_no_log_line(
        samba_hosts: dict[str, Host], b: Host) -> None:
    """A HELLO whose path is ``/x<newline><a made-up audit line>``: b refuses it as it
    would refuse the same path from a local caller (EPROTO, the path rules of the gate),
    and neither the text log nor the JSON log holds a line that starts with the forgery."""
    a = samba_hosts["a"]
    proc = a.run([sys.executable, str(FORGE), "control-path", b.address, str(b.port), b.fqdn,
                  "/x", a.principal, FORGED], check=False, timeout=60,
                 env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["EPROTO"], proc.stdout
    logs = [b.out_path, b.log_path]
    wait_for_any(logs, ("forged3", "control character"))
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            assert not line.strip("\x1e\t ").startswith(FORGED), (path, line)
