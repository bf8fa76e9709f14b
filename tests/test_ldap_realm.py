"""The third kind of domain (issue 15 item 5): MIT krb5 on the LDAP back end, FreeIPA's KDC
model, with NIPC in protocol-transition mode on hosts p, q, r of ``LDAP.TEST``.

One hop, the kernel's refusal, a chain p -> q -> r with the evidence ticket, and PEER
(with the KDC's own record of the hops); delegation the KDC refuses (an emptied
``krbAllowedToDelegateTo``) and a user locked at the KDC (``-allow_tix``) within the
revocation bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer, run_client
from test_chaining import chaining_service
from test_kdc_refusals import daemons_with_reuse_bound, refused_within_the_bound

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def realm(ldap_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """Daemons on p, q, r; p with a short revocation bound."""
    with daemons_with_reuse_bound(ldap_hosts, "p", ("p", "q", "r")) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def dns(realm: dict[str, Host]) -> Iterator[dict[str, UnixServer]]:
    """On q and r: a socket for dnsops members (alice, not bob) that reports PEER."""
    servers = {n: UnixServer(str(realm[n].run_dir / "dns.sock"), mode=0o660,
                             group=realm[n].group("dnsops"),
                             ask_peer=str(realm[n].socket_path)) for n in ("q", "r")}
    yield servers
    for server in servers.values():
        server.close()


def greet(realm: dict[str, Host], user: str, server: UnixServer, host: str) -> dict[str, object]:
    return run_client(user, str(realm["p"].socket_path), "greet",
                      f"{server.path}@{realm[host].fqdn}")


def peer_of(seen: object) -> dict[str, object]:
    verdict, _, body = str(seen).partition(" ")
    assert verdict == "OK", seen
    answer: dict[str, object] = json.loads(body)
    return answer


def test_one_hop_as_alice_with_the_kdcs_record(realm: dict[str, Host],
                                               dns: dict[str, UnixServer],
                                               sandbox: Sandbox) -> None:
    """No TGT for alice anywhere: p's protocol transition on MIT+LDAP; q's server sees
    alice's uid and groups, and PEER names her, the hop, and what the KDC recorded."""
    out = greet(realm, "alice", dns["q"], "q")
    assert "error" not in out, out
    seen = out["server"]
    assert isinstance(seen, dict)
    alice = realm["q"].user("alice")  # q's numbers for her
    assert (seen["uid"], seen["gid"]) == (alice.uid, alice.gid)
    peer = peer_of(seen["peer"])
    assert peer["principal"] == "alice@LDAP.TEST" and peer["hops"] == ["p.ldap.test"]
    assert peer["kdc_transited"] == ["nipc/p.ldap.test@LDAP.TEST"]
    assert "user_sid" not in peer  # MIT issues no logon-info


def test_the_kernel_refuses_bob(realm: dict[str, Host], dns: dict[str, UnixServer]) -> None:
    out = greet(realm, "bob", dns["q"], "q")
    assert out.get("error") == "EACCES", out


def test_a_chain_p_q_r(realm: dict[str, Host], dns: dict[str, UnixServer]) -> None:
    """A service on q calls r with alice's connection attached: S4U2Proxy from the evidence
    ticket (q's krbAllowedToDelegateTo); r sees alice, and the KDC's record of both hops."""
    p, q, r = realm["p"], realm["q"], realm["r"]
    service = chaining_service(q, f"{dns['r'].path}@{r.fqdn}", explicit=True)
    try:
        out = run_client("alice", str(p.socket_path), "raw-all",
                         f"CONNECT {service.path}@{q.fqdn}\\nping\\n")
    finally:
        service.close()
    lines = str(out["reply"]).split("\n")
    assert lines[:2] == ["OK", "OK"], out
    peer = peer_of(json.loads(lines[2])["peer"])
    assert peer["principal"] == "alice@LDAP.TEST"
    assert peer["hops"] == ["p.ldap.test", "q.ldap.test"]
    assert peer["kdc_transited"] == ["nipc/p.ldap.test@LDAP.TEST", "nipc/q.ldap.test@LDAP.TEST"]


def test_delegation_refused_by_the_kdc_says_what_to_check(realm: dict[str, Host],
                                                          dns: dict[str, UnixServer],
                                                          sandbox: Sandbox) -> None:
    """p's krbAllowedToDelegateTo no longer names r: KDC_ERR_BADOPTION, told as such."""
    p, q = realm["p"], realm["q"]
    kdc = sandbox.ldap_kdc
    kdc.allow_delegation(p.principal, [q.principal])
    try:
        out = greet(realm, "carol", dns["r"], "r")
        assert out.get("error") == "EKEYREJECTED", out
        for needed in ("refused delegation", "krbAllowedToDelegateTo", "ok_to_auth_as_delegate",
                       "forwardable = true"):
            assert needed in str(out["message"]), (needed, out)
    finally:
        kdc.allow_delegation(p.principal, [q.principal, realm["r"].principal])


def test_a_locked_user_loses_access_within_the_bound(realm: dict[str, Host],
                                                     dns: dict[str, UnixServer],
                                                     sandbox: Sandbox) -> None:
    """alice, cached on p, is locked with -allow_tix: within caller_ticket_reuse (plus
    slack) her connects fail with EACCES (KDC_ERR_CLIENT_REVOKED); unlocked, she is back."""
    kdc = sandbox.ldap_kdc
    assert "error" not in greet(realm, "alice", dns["q"], "q")
    kdc.allow_tickets("alice@LDAP.TEST", False)
    try:
        out = refused_within_the_bound(lambda: greet(realm, "alice", dns["q"], "q"))
        assert out["error"] == "EACCES", out
        assert "disabled or locked" in str(out["message"]), out
    finally:
        kdc.allow_tickets("alice@LDAP.TEST", True)
    assert "error" not in greet(realm, "alice", dns["q"], "q")
