"""Shared fixtures: one sandbox domain per test session, because building it takes seconds.

Set ``NIPC_SANDBOX_KEEP=1`` to keep the sandbox's files (logs, configs) after the session,
``NIPC_SANDBOX_PREFIX`` to run two sessions side by side (namespace names differ),
``NIPC_SANDBOX_DEBUG=1`` to have the Samba KDC log every decision (``<root>/dc/samba.out``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from nipc.sandbox import MIT_REALM, SAMBA_REALM, Host, Sandbox


def require_root() -> None:
    """Skip a test that needs root; in CI (``CI=true``) fail instead, so it is never lost."""
    if os.geteuid() == 0:
        return
    message = "needs root: network namespaces, a KDC and local users"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The whole domain (Samba AD realm, MIT realm, hosts a b c x y), built once."""
    require_root()
    sb = Sandbox(
        prefix=os.environ.get("NIPC_SANDBOX_PREFIX", "nipc-"),
        debug=os.environ.get("NIPC_SANDBOX_DEBUG") == "1",
    )
    try:
        sb.up()
        yield sb
    finally:
        sb.down(keep_files=os.environ.get("NIPC_SANDBOX_KEEP") == "1")


@pytest.fixture(scope="session")
def samba_hosts(sandbox: Sandbox) -> dict[str, Host]:
    """Hosts a, b, c in LAN.TEST (protocol transition, constrained delegation, PACs)."""
    return {n: h for n, h in sandbox.hosts.items() if h.realm == SAMBA_REALM}


@pytest.fixture(scope="session")
def mit_hosts(sandbox: Sandbox) -> dict[str, Host]:
    """Hosts x, y in MIT.TEST (the caller's own credential cache)."""
    return {n: h for n, h in sandbox.hosts.items() if h.realm == MIT_REALM}
