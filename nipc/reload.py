"""Reloading the configuration while the daemon runs (SIGHUP, ``nipc reload``).

Generic over the configuration: every component keeps the one :class:`~nipc.config.Config`
object it was given and reads its settings when it decides something (a timeout for a new
connection, a limit, a realm, a peer's address). A reload checks the whole new file first
and then replaces every field of that object at once, on the reactor thread, so a section
added later is reloadable without wiring it here. Only the settings bound into something
already built at start-up (sockets, the credential mode) keep their old value, and are
named in the log as needing a restart (:data:`~nipc.config.RESTART_ONLY`). What is built
from settings (TLS contexts, the DNS resolver, import sockets) the service rebuilds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from nipc.config import RESTART_ONLY, Config, ConfigError, load

#: A keytab file begins with its format version: 0x05 0x02 (0x05 0x01 is the old one).
KEYTAB_MAGIC = (b"\x05\x02", b"\x05\x01")


@dataclass(frozen=True)
class Reloaded:
    """A new configuration that loaded, and what it changes."""

    #: The new settings, with the restart-only ones kept at their running values.
    config: Config
    #: Config fields whose value changes now.
    changed: tuple[str, ...]
    #: Keys (as written in the file) that changed but take effect only on a restart.
    restart_needed: tuple[str, ...]

    def describe(self) -> dict[str, list[str]]:
        """For the log and the admin socket's answer."""
        return {"changed": list(self.changed), "restart_needed": list(self.restart_needed)}


def check_keytab(path: Path) -> None:
    """ConfigError unless ``path`` is a keytab this process can read: a reload must not
    leave the daemon unable to accept peers (keys are read from it on every accept)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise ConfigError(f"kerberos.keytab: cannot read {path}: {e.strerror}") from None
    if magic not in KEYTAB_MAGIC:
        raise ConfigError(f"kerberos.keytab: {path} is not a keytab")


def prepare(running: Config, path: str | Path) -> Reloaded:
    """Load and check ``path`` against the running configuration. Blocking (files, NSS):
    run it off the reactor. ConfigError if anything in it is wrong: nothing is applied then."""
    new = load(path)
    kept = {name: getattr(running, name) for name in RESTART_ONLY}
    restart = tuple(key for name, key in RESTART_ONLY.items() if getattr(new, name) != kept[name])
    effective = dataclasses.replace(new, **kept)
    check_keytab(effective.keytab)
    changed = tuple(f.name for f in dataclasses.fields(Config)
                    if getattr(effective, f.name) != getattr(running, f.name))
    return Reloaded(effective, changed, restart)


def adopt(running: Config, new: Config) -> None:
    """Make ``running`` hold ``new``'s settings, field by field (reactor thread only). The
    one writer of a Config: its holders see every new value from their next decision on."""
    for f in dataclasses.fields(Config):
        object.__setattr__(running, f.name, getattr(new, f.name))
