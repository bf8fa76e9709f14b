"""Unit tests of :mod:`nipc.reload` over real files: what a reload reports, what it keeps,
and that it reaches components holding a section of the running Config."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from nipc import reload
from nipc.config import ConfigError, load

PRINCIPAL = "nipc/a.test@T.TEST"


def keytab_for(principal: str) -> bytes:
    """A keytab (format 0x0502) with one AES-256 key for ``principal``: enough for the
    keytab check a reload makes (it reads the file; no KDC ever sees the key)."""
    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    name, _, realm = principal.partition("@")
    parts = name.split("/")
    entry = (struct.pack(">H", len(parts)) + counted(realm.encode())
             + b"".join(counted(p.encode()) for p in parts)
             + struct.pack(">IIBH", 1, 0, 1, 18) + counted(bytes(32)))
    return b"\x05\x02" + struct.pack(">i", len(entry)) + entry


def write(tmp_path: Path, extra: str, principal: str = PRINCIPAL) -> Path:
    keytab = tmp_path / "nipc.keytab"
    keytab.write_bytes(keytab_for(principal))
    path = tmp_path / "nipcd.toml"
    path.write_text(f'[host]\nname = "a.test"\nrealm = "T.TEST"\n'
                    f'[kerberos]\nkeytab = "{keytab}"\nprincipal = "{PRINCIPAL}"\n{extra}')
    return path


def test_a_keytab_without_the_principal_is_refused(tmp_path: Path) -> None:
    """A reload checks the keytab as the start does: one that cannot serve the principal
    (here another host's) is refused, naming the setting and what to do."""
    running = load(write(tmp_path, ""))
    with pytest.raises(ConfigError) as refused:
        reload.prepare(running, write(tmp_path, "", principal="nipc/b.test@T.TEST"))
    assert str(refused.value).startswith("kerberos.keytab: a.test's keytab")
    assert f"has no key for {PRINCIPAL}" in str(refused.value)


def test_sections_held_by_components_see_the_new_values(tmp_path: Path) -> None:
    """A component keeps the section it was given; after adopt it reads the new setting."""
    running = load(write(tmp_path, "[timeouts]\nrequest = 10\n"))
    held_timeouts, held_limits = running.timeouts, running.limits
    new = reload.prepare(running, write(tmp_path, "[timeouts]\nrequest = 3\n"
                                                  "[limits]\nmax_per_caller = 7\n"))
    assert held_timeouts.request == 10  # prepare applies nothing
    reload.adopt(running, new.config)
    assert (held_timeouts.request, held_limits.max_per_caller) == (3, 7)
    assert running.timeouts is held_timeouts and running.limits is held_limits


def test_changed_names_and_restart_only_keys_as_before(tmp_path: Path) -> None:
    """Changed settings are named as the flat Config named them (operators' logs and
    ``nipc reload`` read the same); restart-only ones keep their running value and are
    named by their key in the file."""
    running = load(write(tmp_path, "[peer]\nport = 7445\n"))
    new = reload.prepare(running, write(tmp_path, "[peer]\nport = 7446\nmax_hops = 3\n"
                                                  "[timeouts]\ndrain = 5\n"))
    assert new.restart_needed == ("peer.port",)
    assert set(new.changed) == {"max_hops", "drain_timeout"}
    assert new.config.peer.port == 7445 and new.config.peer.max_hops == 3
    reload.adopt(running, new.config)
    assert (running.peer.port, running.peer.max_hops, running.timeouts.drain) == (7445, 3, 5)


def test_two_configs_never_share_a_section(tmp_path: Path) -> None:
    """Sections are replaced in place on a reload: a default section shared between two
    Configs (two embedded services) would carry one's reload into the other."""
    first, second = load(write(tmp_path, "")), load(write(tmp_path, ""))
    assert first.timeouts is not second.timeouts and first.limits is not second.limits
    reload.adopt(first, reload.prepare(first, write(tmp_path, "[limits]\nmax_inbound = 9\n")).config)
    assert (first.limits.max_inbound, second.limits.max_inbound) == (9, 4096)
