"""Keytabs as real domains write them (issue 15 item 3): any order of entries, unrelated
entries first, and a keytab that cannot work named as this host's at start and after.

A domain-joined host's keytab holds the account (``B$``) beside its SPNs (``host/...``,
``RestrictedKrbHost/...``, ``nipc/...``) in whatever order the join tool or the admin wrote
them. The keytabs here are composed with ``ktutil`` from the entries the sandbox exported
(``samba-tool domain exportkeytab --principal``, one principal at a time) and unrelated
SPNs' entries.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nipc_testbed.sandbox import KEYTAB_FILE, Host
from support import UnixServer, last_audits, run_client

pytestmark = pytest.mark.integration

UNRELATED = ("host", "RestrictedKrbHost")


def ktutil(script: str) -> None:
    subprocess.run(["ktutil"], input=script, text=True, check=True, capture_output=True, timeout=30)


def compose(parts: list[Path], out: Path) -> Path:
    """One keytab holding ``parts``' entries in this order (ktutil appends as it reads)."""
    out.unlink(missing_ok=True)
    ktutil("".join(f"rkt {p}\n" for p in parts) + f"wkt {out}\nquit\n")
    return out


def principals_of(keytab: Path) -> list[str]:
    out = subprocess.run(["klist", "-k", str(keytab)], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[1] for line in out.splitlines()[3:] if line.strip()]
    return list(dict.fromkeys(names))


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """Daemons on a and b; the original keytabs are put back afterwards."""
    saved = {n: samba_hosts[n].keytab.read_bytes() for n in ("a", "b")}
    for name in ("a", "b"):
        samba_hosts[name].start_daemon()
    yield samba_hosts
    for name in ("a", "b"):
        host = samba_hosts[name]
        host.stop_daemon()
        host.keytab.write_bytes(saved[name])


def split(keytab: Path, principal: str, out: Path) -> Path:
    """Only ``principal``'s entries of ``keytab`` (ktutil: read all, delete the others)."""
    out.unlink(missing_ok=True)
    listing = subprocess.run(["klist", "-k", str(keytab)], capture_output=True, text=True,
                             check=True).stdout.splitlines()[3:]
    others = [slot for slot, line in enumerate(listing, 1) if line.split()[1] != principal]
    ktutil(f"rkt {keytab}\n" + "".join(f"delent {s}\n" for s in reversed(others))
           + f"wkt {out}\nquit\n")
    return out


def other_spn(principal: str, out: Path) -> Path:
    """An unrelated SPN's entry as a domain join writes them (its key is never used)."""
    out.unlink(missing_ok=True)
    ktutil(f"addent -password -p {principal} -k 2 -e aes256-cts-hmac-sha1-96\nUnrelated-1\n"
           f"wkt {out}\nquit\n")
    return out


@pytest.fixture(scope="module")
def exported(lan: dict[str, Host]) -> Iterator[dict[str, dict[str, Path]]]:
    """Per host a and b, one keytab per principal: the account and nipc/<host> (split from
    the keytab the sandbox exported), and the SPNs a domain join adds."""
    work = Path(tempfile.mkdtemp(prefix="nipc-keytabs-"))
    found: dict[str, dict[str, Path]] = {}
    for name in ("a", "b"):
        host = lan[name]
        found[name] = {kind: other_spn(f"{kind}/{host.fqdn}@LAN.TEST", work / f"{name}-{kind}")
                       for kind in UNRELATED}
        found[name]["account"] = split(host.keytab, host.principal, work / f"{name}-account")
        found[name]["nipc"] = split(host.keytab, f"nipc/{host.fqdn}@LAN.TEST",
                                    work / f"{name}-nipc")
    yield found
    shutil.rmtree(work, ignore_errors=True)


def restart_with(host: Host, keytab: Path) -> None:
    host.stop_daemon()
    shutil.copyfile(keytab, host.keytab)
    host.keytab.chmod(0o600)
    host.start_daemon()


def reaches_b(lan: dict[str, Host], server: UnixServer) -> dict[str, object]:
    try:
        return run_client("alice", str(lan["a"].socket_path), "greet",
                          f"{server.path}@{lan['b'].fqdn}")
    except AssertionError as e:  # which daemon ended it, and when (an intermittent EOF)
        raise AssertionError(f"{e}\n{last_audits(lan['a'], lan['b'])}") from None


@pytest.fixture
def server(lan: dict[str, Host]) -> Iterator[UnixServer]:
    s = UnixServer(str(lan["b"].run_dir / "keytabs.sock"))
    yield s
    s.close()


def test_every_order_of_entries(lan: dict[str, Host], exported: dict[str, dict[str, Path]],
                                server: UnixServer, tmp_path: Path) -> None:
    """b's keytab in each of the 24 orders of its four principals (the reported failure:
    nipc/b first, then B$), and a's with unrelated entries first and the SPN before the
    account: alice reaches b every time, as herself."""
    a, b = lan["a"], lan["b"]
    restart_with(a, compose([exported["a"][k] for k in (*UNRELATED, "nipc", "account")],
                            tmp_path / "a.keytab"))
    assert principals_of(a.keytab)[:2] == [f"host/{a.fqdn}@LAN.TEST",
                                           f"RestrictedKrbHost/{a.fqdn}@LAN.TEST"]
    failed = {}
    for order in itertools.permutations(("nipc", "account", *UNRELATED)):
        restart_with(b, compose([exported["b"][k] for k in order], tmp_path / "b.keytab"))
        out = reaches_b(lan, server)
        if "error" in out:
            failed[" ".join(order)] = out
    assert not failed, failed


def run_daemon(host: Host, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The daemon in the foreground, as systemd starts it, when it is expected to stop."""
    twistd = str(Path(sys.executable).parent / "twistd")
    return host.run([twistd, "-n", "--pidfile=", "nipc", "--config", str(host.config_path)],
                    check=False, timeout=timeout)


@pytest.mark.parametrize("kind", ["missing", "directory", "not a keytab", "another host's"])
def test_a_keytab_that_cannot_work_stops_the_daemon(lan: dict[str, Host], kind: str,
                                                    tmp_path: Path) -> None:
    """Missing, unreadable, not a keytab, or without the configured principal: the daemon
    does not start, and says which file lacks what; no traceback."""
    b = lan["b"]
    good = b.keytab.read_bytes()
    b.stop_daemon()
    try:
        b.keytab.unlink()
        if kind == "directory":
            b.keytab.mkdir()
        elif kind == "not a keytab":
            b.keytab.write_bytes(b"\x05\x07" + b"\x00" * 64)
        elif kind == "another host's":
            b.keytab.write_bytes(lan["a"].keytab.read_bytes())
        started = time.monotonic()
        proc = run_daemon(b)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert time.monotonic() - started < 30
        assert "Traceback" not in output, output
        line = next(x for x in output.splitlines() if "nipc: cannot start" in x)
        assert f"b.lan.test's keytab {KEYTAB_FILE}" in line, line  # as b's config names it
        expect = {"missing": "No such file", "directory": "Is a directory",
                  "not a keytab": "is not a keytab", "another host's": "has no key for B$@LAN.TEST"}
        assert expect[kind] in line, line
    finally:
        if b.keytab.is_dir():
            b.keytab.rmdir()
        b.keytab.write_bytes(good)
        b.keytab.chmod(0o600)
        b.start_daemon()


def stale_keytab(principal: str, out: Path) -> Path:
    """A keytab for ``principal`` at the account's kvno whose keys are not the KDC's (as
    after a password change the keytab missed)."""
    out.unlink(missing_ok=True)
    ktutil(f"addent -password -p {principal} -k 2 -e aes256-cts-hmac-sha1-96\nNot-The-Key-1\n"
           f"addent -password -p {principal} -k 2 -e aes128-cts-hmac-sha1-96\nNot-The-Key-1\n"
           f"wkt {out}\nquit\n")
    return out


@pytest.mark.parametrize("where", ["a", "b"])
def test_stale_keys_are_named_as_that_hosts_keytab(lan: dict[str, Host], server: UnixServer,
                                                   where: str, tmp_path: Path) -> None:
    """Keys the KDC no longer has: the daemon starts (the KDC may be away at start, and it
    cannot tell then), logs a critical line naming its keytab, and callers get
    EKEYREJECTED naming that host's keytab: never the caller's or the peer's fault."""
    host = lan[where]
    good = host.keytab.read_bytes()
    try:
        restart_with(host, stale_keytab(host.principal, tmp_path / "stale.keytab"))
        out = reaches_b(lan, server)
        assert out.get("error") == "EKEYREJECTED", out
        assert f"{host.fqdn}'s keytab" in str(out["message"]), out
        assert "current keys" in str(out["message"]), out
        deadline = time.monotonic() + 30
        while "critical" not in (log := host.out_path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        critical = [x for x in log.splitlines() if "#critical]" in x]
        assert critical and f"{host.fqdn}'s keytab {KEYTAB_FILE}" in critical[-1], log[-3000:]
    finally:
        host.stop_daemon()
        host.keytab.write_bytes(good)
        host.start_daemon()
    assert "error" not in reaches_b(lan, server)


def test_peers_are_accepted_while_the_kdc_is_away_at_start(lan: dict[str, Host],
                                                          server: UnixServer) -> None:
    """b starts while its KDC cannot be reached (its krb5.conf names a closed port): it
    accepts a's tickets with its keytab alone, which needs no KDC (before, every inbound
    connection failed with 'KDC unreachable' until the KDC came back)."""
    b = lan["b"]
    conf = b.krb5_conf.read_text()
    kdc = next(line.split("=")[1].strip() for line in conf.splitlines()
               if line.strip().startswith("kdc ="))
    b.stop_daemon()
    try:
        b.krb5_conf.write_text(conf.replace(f"kdc = {kdc}", f"kdc = {kdc}:89"))
        b.start_daemon()
        out = reaches_b(lan, server)
        assert "error" not in out, out
        assert "keytab alone" in b.out_path.read_text()
    finally:
        b.stop_daemon()
        b.krb5_conf.write_text(conf)
        b.start_daemon()
