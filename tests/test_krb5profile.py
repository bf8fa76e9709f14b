"""krb5's own settings through its profile library (nipc/krb5profile.py): the real libkrb5
reading real krb5.conf files named by KRB5_CONFIG, as the acceptor's library does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nipc.krb5profile import ClockSkew, Krb5ProfileError, libdefaults_integer


@pytest.fixture
def krb5_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    conf = tmp_path / "krb5.conf"
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    return conf


@pytest.mark.parametrize(("text", "seconds"), [
    ("[libdefaults]\n    clockskew = 900\n", 900),
    ("[libdefaults]\n    default_realm = T\n", 300),  # unset: MIT's default
    ("[libdefaults]\n    clockskew = 5m\n", 300),      # not an integer: krb5 uses its default
])
def test_clockskew_is_read_as_krb5_reads_it(krb5_conf: Path, text: str, seconds: int) -> None:
    krb5_conf.write_text(text)
    assert libdefaults_integer("clockskew", 300) == seconds
    assert ClockSkew().seconds == seconds


def rewrite(conf: Path, text: str) -> None:
    """New contents with a new modification time (krb5 rereads a file whose time moved)."""
    when = conf.stat().st_mtime + 10
    conf.write_text(text)
    os.utime(conf, (when, when))


def test_a_reread_follows_the_file_and_keeps_the_value_when_it_cannot_be_read(
        krb5_conf: Path) -> None:
    krb5_conf.write_text("[libdefaults]\n    clockskew = 900\n")
    skew = ClockSkew()
    rewrite(krb5_conf, "[libdefaults]\n    clockskew = 30\n")
    skew.reread()
    assert skew.seconds == 30
    rewrite(krb5_conf, "[libdefaults\n    clockskew = 1\n")  # a syntax error
    with pytest.raises(Krb5ProfileError):
        libdefaults_integer("clockskew", 300)
    skew.reread()
    assert skew.seconds == 30
