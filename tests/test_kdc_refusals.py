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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest

from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer, run_client

pytestmark = pytest.mark.integration

#: The revocation bound the tests configure (minutes), and the slack they allow on top.
REUSE_MINUTES = 0.05
SLACK = 10.0


def samba_tool(sandbox: Sandbox, *args: str) -> None:
    subprocess.run(["samba-tool", *args, f"--configfile={sandbox.dc_dir / 'etc' / 'smb.conf'}"],
                   check=True, capture_output=True, timeout=120)


@contextmanager
def daemons_with_reuse_bound(hosts: dict[str, Host], sender: str,
                             names: Sequence[str]) -> Iterator[dict[str, Host]]:
    """Daemons on ``names``, the ``sender``'s with caller_ticket_reuse = REUSE_MINUTES."""
    config = hosts[sender].config_path
    original = config.read_text()
    config.write_text(original.replace(
        "[kerberos]\n", f"[kerberos]\ncaller_ticket_reuse = {REUSE_MINUTES}\n"))
    for name in names:
        hosts[name].start_daemon()
    try:
        yield hosts
    finally:
        for name in names:
            hosts[name].stop_daemon()
        config.write_text(original)


def refused_within_the_bound(connect: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Connect until refused; the first refusal must come within the bound (plus slack)."""
    since = time.monotonic()
    while "error" not in (out := connect()):
        assert time.monotonic() - since < REUSE_MINUTES * 60 + SLACK, "still connects"
        time.sleep(0.3)
    return out


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """a (with a short revocation bound) and c running."""
    with daemons_with_reuse_bound(samba_hosts, "a", ("a", "c")) as hosts:
        yield hosts


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
        out = refused_within_the_bound(lambda: connect(lan, server, "bob"))
        assert out["error"] == "EACCES", out
        assert "disabled" in str(out["message"]), out
    finally:
        samba_tool(sandbox, "user", "enable", "bob")
    deadline = time.monotonic() + REUSE_MINUTES * 60 + SLACK
    while "error" in (out := connect(lan, server, "bob")):
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
