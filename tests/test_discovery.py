"""Peer discovery by DNS (SPEC section 4), end to end against the Samba DC's own DNS server.

a's daemon has no static [peers] entries, only ``[dns] servers = [<the DC>]``. Records are
added with ``samba-tool dns add`` (run in the DC's namespace): b is found by SRV (a dead
target at priority 0, then b's daemon on a port that is not the default), c by its A
record alone at the default port; an unknown name, and a DNS server cut off the network,
give the caller the documented errno.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from nipc_testbed.sandbox import ADMIN_PASSWORD, Host, Sandbox
from support import UnixServer, run_client

pytestmark = pytest.mark.integration

DNS_TIMEOUT = 2
SRV_PORT = 7446  # b's daemon moves here: only the SRV record says so
#: (name, type, data) in zone lan.test; samba-tool's SRV data is "target port priority weight".
RECORDS = [
    ("_nipc._tcp.b", "SRV", "c.lan.test 7999 0 100"),  # first choice: nobody listens there
    ("_nipc._tcp.b", "SRV", f"b.lan.test {SRV_PORT} 10 100"),
    ("b", "A", "10.77.0.12"),
    ("c", "A", "10.77.0.13"),
]


def samba_dns(sandbox: Sandbox, verb: str, name: str, kind: str, data: str,
              check: bool = True) -> None:
    """``samba-tool dns add|delete`` against the DC, from inside the DC's namespace."""
    argv = ["ip", "netns", "exec", sandbox.dc_netns, "samba-tool", "dns", verb,
            sandbox.dc_address, "lan.test", name, kind, data, "-U", "Administrator",
            f"--password={ADMIN_PASSWORD}", f"--configfile={sandbox.dc_dir / 'etc' / 'smb.conf'}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:9])}: {proc.stdout}{proc.stderr}")


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host], sandbox: Sandbox) -> Iterator[dict[str, Host]]:
    """DNS records on the DC; a knows its peers by DNS only; b listens on SRV_PORT."""
    a, b = samba_hosts["a"], samba_hosts["b"]
    for record in RECORDS:
        samba_dns(sandbox, "add", *record)
    try:
        with a.reconfigured(lambda text: re.sub(r"\[peers\]\n(?:.+\n)*", "[peers]\n", text)
                            + f'\n[dns]\nservers = ["{sandbox.dc_address}"]\ntimeout = {DNS_TIMEOUT}\n'), \
                b.reconfigured(lambda text: text.replace("port = 7445", f"port = {SRV_PORT}")):
            for host in samba_hosts.values():
                host.start_daemon()
            try:
                yield samba_hosts
            finally:
                for host in samba_hosts.values():
                    host.stop_daemon()
    finally:
        for record in RECORDS:
            samba_dns(sandbox, "delete", *record, check=False)


@pytest.fixture()
def servers(lan: dict[str, Host]) -> Iterator[dict[str, UnixServer]]:
    made = {n: UnixServer(str(lan[n].run_dir / "discovery.sock")) for n in ("b", "c")}
    yield made
    for server in made.values():
        server.close()


def greet(lan: dict[str, Host], target: str) -> dict[str, object]:
    return run_client("alice", str(lan["a"].socket_path), "greet", target)


def test_config_has_no_static_entry(lan: dict[str, Host]) -> None:
    from nipc import config

    cfg = config.load(lan["a"].config_path)
    assert dict(cfg.peers) == {} and cfg.dns.servers == (("10.77.0.2", 53),)


def test_srv_record_leads_to_b(lan: dict[str, Host], servers: dict[str, UnixServer],
                               sandbox: Sandbox) -> None:
    """Through SRV: the priority-0 target refuses, the next one (b, at a port only the SRV
    record names) answers, and b's server sees alice."""
    out = greet(lan, f"{servers['b'].path}@b.lan.test")
    assert "error" not in out, out
    alice = lan["b"].user("alice")
    server = out["server"]
    assert isinstance(server, dict) and server["uid"] == alice.uid
    assert out["echo"] == "ping\n"


def test_a_record_alone_uses_the_default_port(lan: dict[str, Host],
                                              servers: dict[str, UnixServer]) -> None:
    out = greet(lan, f"{servers['c'].path}@c.lan.test")
    assert "error" not in out, out
    assert out["echo"] == "ping\n"


def test_unknown_name_is_ehostunreach_naming_the_lookups(lan: dict[str, Host]) -> None:
    out = greet(lan, "/x.sock@nowhere.lan.test")
    assert out["error"] == "EHOSTUNREACH", out
    message = str(out["message"])
    assert "_nipc._tcp.nowhere.lan.test" in message and "A/AAAA" in message, message


def test_dns_cut_off_is_etimedout_within_the_dns_timeout(lan: dict[str, Host],
                                                         sandbox: Sandbox) -> None:
    """With no link to b open yet (a link already open is used without asking DNS)."""
    lan["a"].stop_daemon()
    lan["a"].start_daemon()
    subprocess.run(["ip", "-n", sandbox.switch_netns, "link", "set", "p-dc", "down"], check=True)
    try:
        started = time.monotonic()
        out = greet(lan, "/x.sock@b.lan.test")
        elapsed = time.monotonic() - started
    finally:
        subprocess.run(["ip", "-n", sandbox.switch_netns, "link", "set", "p-dc", "up"],
                       check=True)
    assert out["error"] == "ETIMEDOUT", out
    assert "DNS" in str(out["message"]), out
    assert DNS_TIMEOUT - 0.5 < elapsed < DNS_TIMEOUT + 3, elapsed  # client start-up included
    again = greet(lan, "/missing.sock@b.lan.test")  # DNS back: b answers (ENOENT)
    assert again.get("error") == "ENOENT", again
