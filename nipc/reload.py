"""Reloading the configuration while the daemon runs (SIGHUP, ``nipc reload``).

Generic over the configuration: every component keeps the :class:`~nipc.config.Config`
object (or the sections of it) it was given and reads its settings when it decides
something (a timeout for a new connection, a limit, a realm, a peer's address). A reload
checks the whole new file first and then replaces every setting of those objects at once,
in place, on the reactor thread, so a section added later is reloadable without wiring it
here. Only the settings bound into something
already built at start-up (sockets, the credential mode) keep their old value, and are
named in the log as needing a restart (:data:`~nipc.config.RESTART_ONLY`). What is built
from settings (TLS contexts, the DNS resolver, import sockets) the service rebuilds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nipc.config import RESTART_ONLY, Config, ConfigError, load
from nipc.kerberos import KeytabError, check_keytab


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


#: The names a reload reports a changed setting by (the log, ``nipc reload``): the fields
#: of the flat Config of before its sections, so operators' logs and scripts read the same.
#: Settings not named here are reported by their key alone (``max_per_caller``).
REPORTED_AS = {
    "host.name": "host_name", "local.socket": "socket_path", "local.owner": "socket_owner",
    "local.group": "socket_group", "local.mode": "socket_mode", "peer.listen": "listen_address",
    "peer.port": "listen_port", "peer.certificate": "tls_certificate",
    "peer.private_key": "tls_private_key", "peer.ca_bundle": "tls_ca_bundle",
    "timeouts.request": "request_timeout", "timeouts.handshake": "handshake_timeout",
    "timeouts.connect": "connect_timeout", "timeouts.kdc": "kdc_timeout",
    "timeouts.drain": "drain_timeout", "log.file": "log_file", "log.journal": "log_journal",
    "admin.socket": "admin_socket", "admin.group": "admin_group",
    "metrics.listen": "metrics_listen", "dns.servers": "dns_servers", "dns.timeout": "dns_timeout",
    "destinations.allow": "destination_allow", "destinations.deny": "destination_deny",
}


def settings(config: Config) -> dict[str, tuple[Any, str]]:
    """Every setting of ``config`` by its key in the file (``timeouts.request``; ``peers``
    and ``imports`` whole), as (the object holding it, its attribute)."""
    found: dict[str, tuple[Any, str]] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("peers", "imports"):
            found[f.name] = (config, f.name)
            continue
        for g in dataclasses.fields(value):
            found[f"{f.name}.{g.name}"] = (value, g.name)
    return found


def prepare(running: Config, path: str | Path) -> Reloaded:
    """Load and check ``path`` against the running configuration. Blocking (files, NSS):
    run it off the reactor. ConfigError if anything in it is wrong: nothing is applied then."""
    new = load(path)
    old, fresh = settings(running), settings(new)
    restart = tuple(key for key in RESTART_ONLY if getattr(*fresh[key]) != getattr(*old[key]))
    kept: dict[str, dict[str, Any]] = {}
    for key in RESTART_ONLY:
        section, name = key.split(".")
        kept.setdefault(section, {})[name] = getattr(*old[key])
    effective = dataclasses.replace(new, **{
        section: dataclasses.replace(getattr(new, section), **values)
        for section, values in kept.items()})
    # The start's own check: a reload must not leave the daemon unable to accept peers
    # (keys are read from the keytab on every accept).
    try:
        check_keytab(effective.host, effective.kerberos)
    except KeytabError as e:
        raise ConfigError(f"kerberos.keytab: {e}") from None
    changed = tuple(REPORTED_AS.get(key, key.rpartition(".")[2])
                    for key, where in settings(effective).items()
                    if getattr(*where) != getattr(*old[key]))
    return Reloaded(effective, changed, restart)


def adopt(running: Config, new: Config) -> None:
    """Make ``running`` and each of its sections hold ``new``'s settings, field by field
    (reactor thread only). The one writer of a Config: its holders, and the holders of
    its sections, see every new value from their next decision on."""
    fresh = settings(new)
    for key, (holder, name) in settings(running).items():
        object.__setattr__(holder, name, getattr(*fresh[key]))
