"""Kerberos failures are told apart by their codes, never by their English text (issue 15
item 3): krb5 translates its messages (``krb5-locales`` ships a German catalogue), so a
daemon in a German locale must give callers the same errnos as one in ``C.UTF-8``.

The daemons run under a wrapper that calls ``setlocale(LC_ALL, "")`` before twistd, as a
program that embeds the service and honours the locale would: without that call gettext
stays in the C locale and krb5 speaks English whatever ``LANG`` says.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nipc
from acting import as_user, launch_daemon
from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer
from test_keytabs import stale_keytab

pytestmark = pytest.mark.integration

#: Runs twistd (argv[1:]) after taking the locale from the environment.
WITH_LOCALE = [sys.executable, "-c",
               "import locale, runpy, sys; locale.setlocale(locale.LC_ALL, ''); "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"]
LOCALES = {"C": {"LANG": "C.UTF-8", "LANGUAGE": ""},
           "de": {"LANG": "de_DE.UTF-8", "LANGUAGE": "de"}}
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    if "de_DE.utf8" not in subprocess.run(["locale", "-a"], capture_output=True,
                                          text=True).stdout:
        pytest.fail("locale de_DE.UTF-8 missing: scripts/bootstrap generates it")
    b = samba_hosts["b"]
    saved = b.keytab.read_bytes()
    yield samba_hosts
    b.keytab.write_bytes(saved)


class Daemons:
    """a and b in one locale, restartable with other settings on b."""

    def __init__(self, lan: dict[str, Host], env: dict[str, str]) -> None:
        self.lan, self.env = lan, env
        self.procs = {n: launch_daemon(lan[n], WITH_LOCALE, env, timeout=60) for n in ("a", "b")}

    def restart(self, name: str, extra: dict[str, str] | None = None) -> None:
        self._stop(name)
        self.procs[name] = launch_daemon(self.lan[name], WITH_LOCALE, {**self.env, **(extra or {})},
                                          timeout=60)

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        proc.wait(20)

    def stop(self) -> None:
        for name in list(self.procs):
            self._stop(name)


def refusal(user: str, a: Host, target: str) -> tuple[str, str]:
    try:
        as_user(a.user(user), lambda: nipc.connect(target, daemon=str(a.socket_path),
                                                   timeout=60)).close()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno)), str(e.strerror)
    return "OK", ""


def failure_cases(lan: dict[str, Host], sandbox: Sandbox, daemons: Daemons,
                  tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Each failure once, from fresh daemons (nothing cached): errno and message."""
    a, b = lan["a"], lan["b"]
    server = UnixServer(str(b.run_dir / "locale.sock"))
    target = f"{server.path}@{b.fqdn}"
    seen: dict[str, tuple[str, str]] = {}
    try:
        seen["unknown user"] = refusal("daemon", a, target)  # no such principal at the KDC
        # The KDC's host answers, but nothing listens where a's krb5.conf says: refused at
        # once (a dropped packet would end in NIPC's own KDC timeout instead).
        conf = a.krb5_conf.read_text()
        a.krb5_conf.write_text(conf.replace(f"kdc = {sandbox.dc_address}",
                                            f"kdc = {sandbox.dc_address}:89"))
        try:
            daemons.restart("a")
            seen["KDC unreachable"] = refusal("bob", a, target)
        finally:
            a.krb5_conf.write_text(conf)
        daemons.restart("a")
        good = b.keytab.read_bytes()
        b.keytab.write_bytes(stale_keytab(b.principal, tmp_path / "stale.keytab").read_bytes())
        try:
            daemons.restart("b")
            seen["stale keytab"] = refusal("alice", a, target)
        finally:
            b.keytab.write_bytes(good)
        daemons.restart("b", {"LD_PRELOAD": FAKETIME, "FAKETIME": "+20m",
                           "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
        seen["clock skew"] = refusal("alice", a, target)
        daemons.restart("b")
        seen["works"] = refusal("alice", a, target)
    finally:
        server.close()
    return seen


def test_the_same_errnos_in_a_german_locale(lan: dict[str, Host], sandbox: Sandbox,
                                            tmp_path: Path) -> None:
    results: dict[str, dict[str, tuple[str, str]]] = {}
    for name, env in LOCALES.items():
        daemons = Daemons(lan, env)
        try:
            results[name] = failure_cases(lan, sandbox, daemons, tmp_path)
        finally:
            daemons.stop()
    english, german = results["C"], results["de"]
    assert {k: v[0] for k, v in english.items()} == {
        "unknown user": "ENOKEY", "KDC unreachable": "EHOSTUNREACH",
        "stale keytab": "EKEYREJECTED", "clock skew": "EKEYREJECTED", "works": "OK",
    }, english
    assert {k: v[0] for k, v in german.items()} == {k: v[0] for k, v in english.items()}, german
    # The catalogue was really in use: krb5's own words in the message are German.
    assert german["KDC unreachable"][1] != english["KDC unreachable"][1], (english, german)
    assert "clock skew" in german["clock skew"][1] and "keytab" in german["stale keytab"][1]
