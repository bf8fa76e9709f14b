"""What the KDC refuses, and how fast a refusal reaches callers (issue 15 item 5).

- Delegation the KDC refuses (KDC_ERR_BADOPTION) names the delegation list, the
  protocol-transition flag and ``forwardable = true``, not a generic EKEYREJECTED.
- Revocation has a bound: a user locked at the KDC loses access within
  ``kerberos.caller_ticket_reuse``, although the sending daemon holds a valid ticket in
  their name (before, it kept serving it until it expired, ~10 h).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from nipc.sandbox import Host, Sandbox
from support import UnixServer, run_client

pytestmark = pytest.mark.integration

#: The revocation bound the tests configure (minutes), and the slack they allow on top.
REUSE_MINUTES = 0.05
SLACK = 10.0


def samba_tool(sandbox: Sandbox, *args: str) -> None:
    subprocess.run(["samba-tool", *args, f"--configfile={sandbox.dc_dir / 'etc' / 'smb.conf'}"],
                   check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """a (with a short revocation bound) and c running."""
    a = samba_hosts["a"]
    original = a.config_path.read_text()
    a.config_path.write_text(original.replace(
        "[kerberos]\n", f"[kerberos]\ncaller_ticket_reuse = {REUSE_MINUTES}\n"))
    for name in ("a", "c"):
        samba_hosts[name].start_daemon()
    yield samba_hosts
    for name in ("a", "c"):
        samba_hosts[name].stop_daemon()
    a.config_path.write_text(original)


@pytest.fixture(scope="module")
def server(lan: dict[str, Host]) -> Iterator[UnixServer]:
    s = UnixServer(str(lan["c"].run_dir / "refusals.sock"))
    yield s
    s.close()


def connect(lan: dict[str, Host], server: UnixServer, user: str) -> dict[str, object]:
    return run_client(user, str(lan["a"].socket_path), "greet", f"{server.path}@{lan['c'].fqdn}")


def test_delegation_refused_by_the_kdc_says_what_to_check(lan: dict[str, Host],
                                                          server: UnixServer,
                                                          sandbox: Sandbox) -> None:
    """A$ loses nipc/c from its delegation list: the caller's EKEYREJECTED names the list,
    the protocol-transition flag and forwardable = true."""
    samba_tool(sandbox, "delegation", "del-service", "A$", f"nipc/{lan['c'].fqdn}")
    try:
        out = connect(lan, server, "carol")
        assert out.get("error") == "EKEYREJECTED", out
        message = str(out["message"])
        for needed in ("refused delegation", "msDS-AllowedToDelegateTo", "krbAllowedToDelegateTo",
                       "ok_to_auth_as_delegate", "forwardable = true", f"nipc/{lan['c'].fqdn}"):
            assert needed in message, (needed, message)
    finally:
        samba_tool(sandbox, "delegation", "add-service", "A$", f"nipc/{lan['c'].fqdn}")


def test_a_disabled_user_loses_access_within_the_bound(lan: dict[str, Host], server: UnixServer,
                                                       sandbox: Sandbox) -> None:
    """bob connects (his ticket is now cached on a), is disabled at the KDC, and within
    caller_ticket_reuse plus slack his connects fail with EACCES; enabled again, he is back."""
    assert "error" not in connect(lan, server, "bob")
    samba_tool(sandbox, "user", "disable", "bob")
    try:
        disabled = time.monotonic()
        while True:
            out = connect(lan, server, "bob")
            took = time.monotonic() - disabled
            if "error" in out:
                break
            assert took < REUSE_MINUTES * 60 + SLACK, "bob still connects"
            time.sleep(0.3)
        assert out["error"] == "EACCES", out
        assert "disabled" in str(out["message"]), out
    finally:
        samba_tool(sandbox, "user", "enable", "bob")
    deadline = time.monotonic() + REUSE_MINUTES * 60 + SLACK
    while "error" in (out := connect(lan, server, "bob")):
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
