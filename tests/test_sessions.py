"""A caller authenticated once per link (issue 12, section 1), on real parts: the Samba AD
DC and the MIT KDC of the sandbox, real TLS links between daemons in their namespaces,
real callers. The security invariants of docs/SECURITY.md "Sessions", each with its test.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nipc_testbed.sandbox import RCACHE_DIR, Host, Sandbox
from local_daemon import reload_daemon
from support import UnixServer, audit_lines, run_client

pytestmark = pytest.mark.integration

TOOL = Path(__file__).with_name("session_tool.py")


def target(host: Host, name: str) -> str:
    return f"{host.run_dir / name}@{host.fqdn}"


def rcache_digest(host: Host) -> str:
    """The receiving daemon's replay cache: every accepted AP-REQ writes to it."""
    digest = hashlib.sha256()
    for f in sorted(host.path(RCACHE_DIR).iterdir()):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()


def session_max(minutes: float) -> Callable[[str], str]:
    """A config edit for :meth:`Host.reconfigured`: ``[kerberos] session_max``."""
    return lambda text: text.replace("[kerberos]\n", f"[kerberos]\nsession_max = {minutes}\n", 1)


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    with samba_hosts["a"].running(), samba_hosts["b"].running():
        yield samba_hosts


@pytest.fixture(scope="module")
def server(lan: dict[str, Host]) -> Iterator[UnixServer]:
    server = UnixServer(str(lan["b"].run_dir / "session.sock"))
    yield server
    server.close()


def routed(host: Host, count: int) -> list[dict[str, Any]]:
    return [f for f in audit_lines(host.log_path)
            if f.get("direction") == "incoming"][-count:]


def test_later_connects_make_no_new_kerberos_exchange(lan: dict[str, Host],
                                                      server: UnixServer) -> None:
    """The first connect of alice on the link a -> b authenticates her in full; the next
    ones resume her session: b's replay cache (written by every AP-REQ it accepts) does
    not change, and b still projects her, connects as her and reports her PAC."""
    a, b = lan["a"], lan["b"]
    first = run_client("alice", str(a.socket_path), "greet", target(b, "session.sock"))
    assert first["server"]["uid"] == b.user("alice").uid, first
    before = rcache_digest(b)
    for _ in range(3):
        out = run_client("alice", str(a.socket_path), "greet", target(b, "session.sock"))
        assert out["server"]["uid"] == b.user("alice").uid, out
    assert rcache_digest(b) == before, "a later connect made a new AP-REQ"
    lines = routed(b, 4)
    assert [f["session"] for f in lines[1:]] == ["resumed"] * 3, lines
    assert all(f["principal"] == "alice@LAN.TEST" for f in lines)
    # A new caller on the same link gets her own full exchange.
    run_client("bob", str(a.socket_path), "greet", target(b, "session.sock"))
    assert routed(b, 1)[0]["session"] == "new"
    assert rcache_digest(b) != before


def test_a_resumed_connect_reports_the_sessions_pac(lan: dict[str, Host]) -> None:
    """PEER on a resumed connection shows what the session's ticket said (the PAC,
    decoded once per session), not less."""
    a, b = lan["a"], lan["b"]
    asking = UnixServer(str(b.run_dir / "asking.sock"), ask_peer=str(b.socket_path))
    try:
        outs = [run_client("alice", str(a.socket_path), "greet", target(b, "asking.sock"))
                for _ in range(2)]
    finally:
        asking.close()
    assert routed(b, 1)[0]["session"] == "resumed"
    peers = []
    for out in outs:
        verdict, _, body = out["server"]["peer"].partition(" ")
        assert verdict == "OK", out
        peer = json.loads(body)
        assert peer["principal"] == "alice@LAN.TEST" and peer["user_sid"], peer
        assert peer["protocol_transition"] is True
        peers.append({k: v for k, v in peer.items() if k not in ("conn_id", "auth_time")})
    assert peers[0] == peers[1]


def session_tool(a: Host, b: Host, *extra: str) -> dict[str, Any]:
    proc = a.run([sys.executable, str(TOOL), b.address, str(b.port), b.fqdn,
                  str(b.run_dir / "session.sock"), a.principal, *extra], check=False,
                 timeout=120, env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_proofs_are_good_for_one_channel_of_one_link(lan: dict[str, Host],
                                                     server: UnixServer) -> None:
    """A sender holding the session's key itself still cannot use a proof on another
    channel or another link, nor the session on another link, nor after its link ended."""
    out = session_tool(lan["a"], lan["b"])
    assert out["offered"]["session"] and out["offered"]["session_seconds"] > 0, out
    assert out["resumed"] == "OK" and out["still_good"] == "OK", out
    for attempt in ("other_channel", "signed_for_another_channel", "other_hops",
                    "other_link_replayed", "other_link_signed", "after_link_closed"):
        assert out[attempt] == "EKEYREJECTED", (attempt, out)


def test_a_session_ends_at_its_maximum(lan: dict[str, Host], server: UnixServer) -> None:
    """[kerberos] session_max bounds a session on the receiving side too: after it, a
    correct proof is refused (and the sender is told to start anew); a real caller
    whose sending daemon keeps sessions for longer is not failed by that, it only pays
    one full exchange."""
    a, b = lan["a"], lan["b"]
    with b.reconfigured(session_max(0.05)):  # 3 seconds
        out = session_tool(a, b, "4")
        assert out["offered"]["session_seconds"] <= 3, out
        assert out["after_end"] == "EKEYREJECTED" and out["after_end_info"] == {"session": "ended"}, out
        for _ in range(2):
            ok = run_client("alice", str(a.socket_path), "greet", target(b, "session.sock"))
            assert ok["server"]["uid"] == b.user("alice").uid, ok
        time.sleep(4)
        ok = run_client("alice", str(a.socket_path), "greet", target(b, "session.sock"))
        assert ok["server"]["uid"] == b.user("alice").uid, ok
        assert routed(b, 1)[0]["session"] == "new"


@pytest.fixture(scope="module")
def mit(mit_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """Daemons on x and y of the plain MIT realm, in own-ccache mode."""
    with mit_hosts["x"].running(), mit_hosts["y"].running():
        yield mit_hosts


def test_own_ccache_kdestroy_ends_new_channels(mit: dict[str, Host], sandbox: Sandbox) -> None:
    """In own-ccache mode a session is only used while the caller's cache holds a valid
    ticket of its principal: after kdestroy, no new channel (ENOKEY), although the
    session itself would still be good."""
    x, y = mit["x"], mit["y"]
    server = UnixServer(str(y.run_dir / "svc.sock"))
    try:
        sandbox.kinit("alice", "x")
        for _ in range(2):
            out = run_client("alice", str(x.socket_path), "greet", target(y, "svc.sock"))
            assert out["server"]["uid"] == y.user("alice").uid, out
        assert routed(y, 1)[0]["session"] == "resumed"
        sandbox.kdestroy("alice", "x")
        refused = run_client("alice", str(x.socket_path), "greet", target(y, "svc.sock"))
        assert refused["error"] == "ENOKEY", refused
        assert len(server.seen) == 2
    finally:
        server.close()
        sandbox.kdestroy("alice", "x")


def test_a_session_never_outlives_its_ticket(mit: dict[str, Host], sandbox: Sandbox) -> None:
    """A ticket good for 20 seconds gives a session of at most 20 seconds on the receiver
    (whatever session_max says); once it has expired, the caller gets no new channel."""
    x, y = mit["x"], mit["y"]
    server = UnixServer(str(y.run_dir / "short.sock"))
    u = x.user("alice")
    try:
        x.run(["kinit", "-l", "20s", "alice@MIT.TEST"], user=u, input=sandbox.password + "\n",
              env={"KRB5CCNAME": x.ccache(u)})
        out = run_client("alice", str(x.socket_path), "greet", target(y, "short.sock"))
        assert out["server"]["uid"] == y.user("alice").uid, out
        line = routed(y, 1)[0]
        assert line["session"] == "new" and 0 < line["session_seconds"] <= 20, line
        time.sleep(21)
        late = run_client("alice", str(x.socket_path), "greet", target(y, "short.sock"))
        assert late.get("error") in ("EKEYEXPIRED", "ENOKEY"), late
        assert len(server.seen) == 1
    finally:
        server.close()
        sandbox.kdestroy("alice", "x")


def test_the_receiver_takes_off_krb5s_own_clockskew(mit: dict[str, Host], sandbox: Sandbox) -> None:
    """MIT reports an accepted context as lasting the ticket plus krb5.conf's clockskew:
    with a site's clockskew of 900 s, a 20 s ticket still gives a session of at most 20 s
    (a fixed 300 s allowance gave 600 s, session_max); the value is read again on reload
    (lowered to 30 s: a session of at most 20 s, where the stale 900 s would offer none)."""
    x, y = mit["x"], mit["y"]
    server = UnixServer(str(y.run_dir / "skew.sock"))
    original = y.krb5_conf.read_text()

    def session_of(user: str) -> dict[str, Any]:
        u = x.user(user)
        x.run(["kinit", "-l", "20s", f"{user}@MIT.TEST"], user=u, input=sandbox.password + "\n",
              env={"KRB5CCNAME": x.ccache(u)})
        out = run_client(user, str(x.socket_path), "greet", target(y, "skew.sock"))
        assert out["server"]["uid"] == y.user(user).uid, out
        return routed(y, 1)[0]

    def skew(seconds: int) -> None:
        y.krb5_conf.write_text(original.replace(
            "[libdefaults]\n", f"[libdefaults]\n    clockskew = {seconds}\n", 1))

    try:
        skew(900)
        y.stop_daemon()
        y.start_daemon()
        line = session_of("alice")
        assert line["session"] == "new" and 0 < line["session_seconds"] <= 20, line
        skew(30)
        reload_daemon(y.socket_path)
        line = session_of("bob")
        assert line["session"] == "new" and 0 < line["session_seconds"] <= 20, line
    finally:
        y.krb5_conf.write_text(original)
        y.stop_daemon()
        y.start_daemon()
        server.close()
        for user in ("alice", "bob"):
            sandbox.kdestroy(user, "x")


DUPLICATE_PROBE = """
import json, os
import gssapi
from nipc.errors import NipcError
from nipc.kerberos import _FLAGS, bindings, principal_name, service_name
from nipc.session import Session, proof_message, verify
keytab = os.environ["KRB5_CLIENT_KTNAME"]
me = principal_name(os.environ["PROBE_PRINCIPAL"])
store = {"client_keytab": keytab, "keytab": keytab, "ccache": "MEMORY:probe"}
ini = gssapi.SecurityContext(name=service_name(os.environ["PROBE_HOST"]), usage="initiate",
                             creds=gssapi.Credentials(name=me, usage="initiate", store=store),
                             flags=_FLAGS, channel_bindings=bindings(b"x/channel/1"))
acc = gssapi.SecurityContext(usage="accept", channel_bindings=bindings(b"x/channel/1"),
                             creds=gssapi.Credentials(usage="accept", store=store))
ini.step(acc.step(ini.step()))
session = Session("ref", str(me), acc, 0.0, ("a",))
message = proof_message(b"x/channel/2", "ref", "/p", "b", "c1", ("a",))
mic = bytes(ini.get_signature(message))
out = {}
for attempt in ("first", "duplicate"):
    try:
        verify(session, message, mic)
        out[attempt] = "OK"
    except NipcError as e:
        out[attempt] = e.errno_name
out["replay_detection"] = gssapi.RequirementFlag.replay_detection in acc.actual_flags
print(json.dumps(out))
"""


def test_a_duplicated_proof_is_not_caught_by_gss(lan: dict[str, Host]) -> None:
    """Real MIT contexts made as nipc makes them (no replay_detection) verify the same MIC
    twice: GSS is no replay defence for proofs. What stops a replayed proof is the
    channel number under it, accepted once per link (test_proofs_are_good_for_one_channel_of_one_link;
    SECURITY.md section 3a says so)."""
    a = lan["a"]
    proc = a.run([sys.executable, "-c", DUPLICATE_PROBE], check=False, timeout=120,
                 env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                      "PROBE_PRINCIPAL": a.principal, "PROBE_HOST": a.fqdn})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"first": "OK", "duplicate": "OK", "replay_detection": False}
