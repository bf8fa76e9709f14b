"""Shared fixtures: one sandbox domain per test session, because building it takes seconds.

Set ``NIPC_SANDBOX_KEEP=1`` to keep the sandbox's files (logs, configs) after the session,
``NIPC_SANDBOX_PREFIX`` to choose the sandbox's prefix (namespace names, state files),
``NIPC_SANDBOX_DEBUG=1`` to have the Samba KDC log every decision (``<root>/dc/samba.out``).

A prefix belongs to one live session at a time (the sandbox locks it).  Without
``NIPC_SANDBOX_PREFIX``, a session whose default prefix ``nipc-`` is owned by another running
session takes the first free one of ``nipc-2-`` ... ``nipc-9-`` instead of failing; a fixed
pool, so a later run with the same slot still cleans up after a crashed one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from nipc_testbed import prereqs
from nipc_testbed.sandbox import LDAP_REALM, MIT_REALM, SAMBA_REALM, Host, Sandbox, SandboxBusy

DEFAULT_PREFIX = "nipc-"
FALLBACK_PREFIXES = tuple(f"nipc-{n}-" for n in range(2, 10))


def require_root() -> None:
    """Skip a test that needs root; in CI (``CI=true``) fail instead, so it is never lost."""
    if os.geteuid() == 0:
        return
    message = "needs root: network namespaces, a KDC and local users"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _up(debug: bool) -> Sandbox:
    """Build the session's sandbox with the chosen prefix, or a free fallback one."""
    explicit = os.environ.get("NIPC_SANDBOX_PREFIX")
    prefixes = (explicit,) if explicit else (DEFAULT_PREFIX, *FALLBACK_PREFIXES)
    for prefix in prefixes:
        sb = Sandbox(prefix=prefix, debug=debug)
        try:
            return sb.up()
        except SandboxBusy as e:
            if prefix == prefixes[-1]:
                raise
            print(f"\nsandbox: {e}; trying the next prefix", file=sys.stderr)
        except BaseException:
            sb.down(keep_files=os.environ.get("NIPC_SANDBOX_KEEP") == "1")
            raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The whole domain (Samba AD realm, MIT realm, hosts a b c x y), built once.

    A missing prerequisite stops the session with one line (not one traceback per test).
    """
    require_root()
    if lacking := prereqs.missing(prereqs.sandbox_needs()):
        pytest.exit(f"sandbox: {prereqs.describe(lacking)}", returncode=1)
    sb = _up(debug=os.environ.get("NIPC_SANDBOX_DEBUG") == "1")
    try:
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


@pytest.fixture(scope="session")
def ldap_hosts(sandbox: Sandbox) -> dict[str, Host]:
    """Hosts p, q, r in LDAP.TEST: MIT on the LDAP back end (protocol transition and
    constrained delegation, FreeIPA's KDC model)."""
    return {n: h for n, h in sandbox.hosts.items() if h.realm == LDAP_REALM}
