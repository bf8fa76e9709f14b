"""The daemon's configuration: one TOML file, read at start-up into frozen dataclasses, and
again on a reload (SIGHUP, ``nipc reload``; see :mod:`nipc.reload`).

Every key has a default an operator can live with except the ones that name this host and
its Kerberos identity; unknown keys are an error, so a typo never silently means "default".
``etc/nipcd.toml`` documents each key.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import math
import pwd
import re
import tomllib
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from nipc.destination import pattern_problem
from nipc.errors import ConfigError as ConfigError
from nipc.errors import NipcError
from nipc.request import DEFAULT_SOCKET, ConnectRequest, check_host, parse_request
from nipc.tls import check_pem_files

DEFAULT_PORT = 7445
#: journald's socket for native entries ([log] journal_socket).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


class CredentialMode(Enum):
    """How the sending daemon gets a ticket in the caller's name."""

    #: S4U2Self + S4U2Proxy from the host keytab: no credential of the caller needed.
    PROTOCOL_TRANSITION = "protocol-transition"
    #: The caller's own credential cache, opened while running as the caller (rpc.gssd model).
    OWN_CCACHE = "own-ccache"


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int


@dataclass(frozen=True)
class Import:
    """A local socket the daemon creates that routes every connection to ``target``."""

    socket: Path
    path: str
    host: str
    owner: int = 0
    group: int = 0
    mode: int = 0o666


@dataclass(frozen=True)
class HostSection:
    """[host]: this daemon's name and realm (restart-only)."""

    name: str
    realm: str

    @property
    def service_name(self) -> str:
        """The GSS host-based service name peers use to reach this daemon."""
        return f"nipc@{self.name}"


@dataclass(frozen=True)
class KerberosSection:
    """[kerberos]: the daemon's own identity and how it gets tickets for callers."""

    keytab: Path
    principal: str
    mode: CredentialMode = CredentialMode.PROTOCOL_TRANSITION
    krb5_config: Path | None = None
    ccache_template: str = "FILE:/tmp/krb5cc_%{uid}"
    trusted_realms: tuple[str, ...] = ()
    allow_root: bool = False
    #: caller_ticket_reuse (minutes in the file, seconds here): the longest a ticket
    #: obtained in a caller's name is reused before the KDC is asked again, so a user
    #: locked at the KDC loses access within it.
    caller_ticket_reuse: float = 600.0
    #: session_max (minutes in the file, seconds here): the longest a caller's session on
    #: a peer link (one Kerberos exchange, then proofs) is used, on either side; 0: none.
    session_max: float = 600.0

    def realms(self, own: str) -> tuple[str, ...]:
        """Realms whose principals this daemon accepts: ``own`` (host.realm) unless
        trusted_realms says otherwise."""
        return self.trusted_realms or (own,)


@dataclass(frozen=True)
class LocalSection:
    """[local]: the gate socket local callers connect to."""

    socket: Path = Path(DEFAULT_SOCKET)
    owner: int = 0
    group: int = 0
    mode: int = 0o666


@dataclass(frozen=True)
class PeerSection:
    """[peer]: the listening side for peer daemons, chaining, and the link's TLS files."""

    listen: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    max_hops: int = 8
    #: chain_accounts: local uids that may chain onward in the name of callers they do not
    #: run as (SPEC section 6); everyone else only as themselves.
    chain_accounts: frozenset[int] = frozenset()
    #: certificate, private_key: PEM files presented instead of an ephemeral self-signed
    #: certificate; ca_bundle: PEM CA certificates peers' certificates must chain to (both
    #: directions). All None by default: Kerberos alone.
    certificate: Path | None = None
    private_key: Path | None = None
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class DnsSection:
    """[dns]: how peer daemons are found when [peers] does not name them."""

    #: servers as (IPv4 address, port); empty: /etc/hosts and /etc/resolv.conf.
    servers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class TimeoutsSection:
    """[timeouts], in seconds."""

    request: float = 10.0
    handshake: float = 10.0
    connect: float = 5.0
    kdc: float = 5.0
    keepalive_idle: int = 15
    user_timeout: float = 30.0
    #: A dialled peer link with no connection for this long is closed (the receiving side
    #: waits four times as long, so that the dialler, which knows when it will reuse a
    #: link, normally closes first).
    link_idle: float = 30.0
    #: A peer link with open channels pings a silent peer after this long, and ends its
    #: channels after as long again without an answer (a hung peer daemon).
    link_ping: float = 10.0
    #: On SIGTERM: how long routed connections may go on (no new ones are accepted) before
    #: the rest are closed.
    drain: float = 30.0


@dataclass(frozen=True)
class LimitsSection:
    """[limits]: admission limits (nipc.limits)."""

    max_connections: int = 4096
    max_per_caller: int = 256
    handshakes_per_second: int = 1000
    handshake_burst: int = 2000
    max_pending_peers: int = 256
    max_pending_per_source: int = 32
    #: HELLOs one peer link may send per second (burst: twice that); beyond, ``EAGAIN``.
    peer_handshakes_per_second: int = 1000
    #: Connections peers route to this host, open at once: in all, and from one address.
    max_inbound: int = 4096
    max_inbound_per_source: int = 1024
    #: Destination connects still waiting in the kernel past ``timeouts.connect`` (a hung
    #: mount on the path), in all and per local uid: at either, new connects get ``EAGAIN``.
    max_stuck: int = 64
    max_stuck_per_caller: int = 8


@dataclass(frozen=True)
class LogSection:
    """[log]: where the daemon's log goes."""

    file: Path | None = None
    #: journal: native journal entries with NIPC_* fields (True), twistd's text (False), or
    #: native exactly when stdout/stderr is journald's stream (None, "auto").
    journal: bool | None = None
    journal_socket: Path = JOURNAL_SOCKET


@dataclass(frozen=True)
class AdminSection:
    """[admin]: the admin socket (``nipc status``, ``nipc reload``)."""

    #: socket: relative means next to the gate socket; "" turns it off.
    socket: str = "admin.sock"
    group: int | None = None


@dataclass(frozen=True)
class MetricsSection:
    """[metrics]: the Prometheus endpoint."""

    #: listen: where the endpoint is served; None (default) is off.
    listen: PeerAddress | None = None


@dataclass(frozen=True)
class DestinationsSection:
    """[destinations]: path patterns callers from other hosts may (not) reach here, matched
    against the resolved path (nipc.destination.PathPolicy)."""

    allow: tuple[str, ...] = ("/**",)
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The file, section by section. Frozen to every component that holds it or one of its
    sections; only :func:`nipc.reload.adopt` replaces their fields (all at once, in place,
    on a reload), so holders read settings when they decide something. Each section is
    its own object (never shared between two Configs) for that reason."""

    host: HostSection
    kerberos: KerberosSection
    local: LocalSection = field(default_factory=LocalSection)
    peer: PeerSection = field(default_factory=PeerSection)
    #: [peers]: host name -> its daemon's address, before DNS.
    peers: Mapping[str, PeerAddress] = field(default_factory=dict)
    dns: DnsSection = field(default_factory=DnsSection)
    timeouts: TimeoutsSection = field(default_factory=TimeoutsSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    log: LogSection = field(default_factory=LogSection)
    admin: AdminSection = field(default_factory=AdminSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    destinations: DestinationsSection = field(default_factory=DestinationsSection)
    #: [[imports]]
    imports: tuple[Import, ...] = ()

    @property
    def admin_socket_path(self) -> Path | None:
        """The admin socket (``nipc status``), or None when it is turned off."""
        return self.local.socket.parent / self.admin.socket if self.admin.socket else None


#: Settings a reload cannot change (something built at start-up holds them: a listening
#: socket, the credential source, the krb5 library's settings), as ``section.key``.
#: A reload keeps their running values and logs each changed one as needing a restart.
RESTART_ONLY = (
    "host.name", "host.realm", "kerberos.mode", "kerberos.keytab", "kerberos.principal",
    "kerberos.krb5_config", "kerberos.ccache_template", "local.socket", "peer.listen",
    "peer.port", "admin.socket", "admin.group", "metrics.listen", "log.journal",
    "log.journal_socket",
)


#: [limits] keys.
_LIMITS = frozenset(f.name for f in fields(LimitsSection))


def check_known(found: Any, known: set[str], what: str, where: str) -> None:
    """ConfigError naming every unknown key (or section) of ``found``, each with the nearest
    known one when it looks like a typo of it ("did you mean keytab?")."""
    unknown = sorted(set(found) - known)
    if not unknown:
        return
    parts = []
    for name in unknown:
        near = difflib.get_close_matches(name, sorted(known), n=1)
        parts.append(f"unknown {what} {name}{where}" + (f"; did you mean {near[0]}?" if near else ""))
    raise ConfigError("; ".join(parts) + f" (known: {', '.join(sorted(known))})")


def _section(doc: Mapping[str, Any], name: str, keys: set[str]) -> Mapping[str, Any]:
    sect = doc.get(name, {})
    if not isinstance(sect, dict):
        raise ConfigError(f"[{name}] must be a table")
    check_known(sect, keys, "key", f" in [{name}]")
    return sect


#: What an operator calls the TOML value types, for "expected ..., got ..." messages.
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a table"}


def type_name(kind: type) -> str:
    """A TOML value type in words ("an integer"); dates and times by their own name."""
    return _TYPE_NAMES.get(kind, f"a {kind.__name__}")


def _typed(sect: Mapping[str, Any], where: str, key: str, kind: type | tuple[type, ...]) -> Any:
    value = sect[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to isinstance(); TOML true is never a number or a mode.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = "a number" if set(kinds) == {int, float} else " or ".join(map(type_name, kinds))
        raise ConfigError(f"{where}.{key}: expected {wanted}, got {type_name(type(value))} "
                          f"({value!r})")
    return value


def _opt(sect: Mapping[str, Any], where: str, key: str, kind: type | tuple[type, ...],
         default: Any) -> Any:
    """``sect[key]`` checked like :func:`_typed`, or ``default`` when the key is absent."""
    return _typed(sect, where, key, kind) if key in sect else default


def _host_name(name: str, where: str) -> str:
    """A DNS name normalised as the local protocol normalises request hosts."""
    try:
        return check_host(name)
    except NipcError:
        raise ConfigError(f"{where}: not a valid host name: {name!r}") from None


def _uid(name: str | int) -> int:
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ConfigError("local.owner: expected a user name or uid")
    if isinstance(name, int):
        return name
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(f"local.owner: no such user {name!r}") from None


def _gid(name: str | int) -> int:
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ConfigError("local.group: expected a group name or gid")
    if isinstance(name, int):
        return name
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"local.group: no such group {name!r}") from None


def parse_peer_address(text: str, where: str) -> PeerAddress:
    """``host:port``, ``[v6]:port`` or ``host`` (default port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{where}: bad address {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text or text.endswith(":"):
        # int() alone would take "+80", " 80", "8_0" and non-ASCII digits.
        if not (port_text.isascii() and port_text.isdigit()):
            raise ConfigError(f"{where}: bad port in {text!r}")
        port = int(port_text)
    else:
        port = DEFAULT_PORT
    if not host or not 0 < port < 65536:
        raise ConfigError(f"{where}: bad address {text!r}")
    return PeerAddress(host, port)


def _mode(text: Any, where: str) -> int:
    try:
        mode = int(text, 8) if isinstance(text, str) else text
    except ValueError:
        raise ConfigError(f"{where}: not an octal mode: {text!r}") from None
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise ConfigError(f"{where}: not a file mode: {text!r}")
    return mode


def _imports(entries: Any) -> tuple[Import, ...]:
    """``[[imports]]`` tables: socket, target (``/path@host``), optional owner/group/mode."""
    if not isinstance(entries, list):
        raise ConfigError("[[imports]] must be an array of tables")
    result = []
    for n, entry in enumerate(entries):
        where = f"imports[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        check_known(entry, {"socket", "target", "owner", "group", "mode"}, "key", f" in {where}")
        for key in ("socket", "target"):
            if not isinstance(entry.get(key), str):
                raise ConfigError(f"{where}.{key} is required (a string)")
        try:
            request = parse_request(f"CONNECT {entry['target']}".encode("utf-8"))
        except NipcError as e:
            raise ConfigError(f"{where}.target: {e.message}") from None
        assert isinstance(request, ConnectRequest)
        result.append(Import(
            Path(entry["socket"]), request.path, request.host,
            _uid(entry.get("owner", 0)), _gid(entry.get("group", 0)),
            _mode(entry.get("mode", "0666"), f"{where}.mode"),
        ))
    return tuple(result)


METRICS_PORT = 9745


def _admin_and_metrics(doc: Mapping[str, Any]) -> tuple[AdminSection, MetricsSection]:
    """[admin] socket/group and [metrics] listen."""
    admin = _section(doc, "admin", {"socket", "group"})
    metrics = _section(doc, "metrics", {"listen"})
    socket = _opt(admin, "admin", "socket", str, AdminSection.socket)
    if "\0" in socket:
        raise ConfigError("admin.socket: a path cannot hold NUL")
    group = None
    if "group" in admin:
        name = _typed(admin, "admin", "group", (str, int))
        try:
            group = name if isinstance(name, int) else grp.getgrnam(name).gr_gid
            if group < 0:
                raise KeyError(name)
        except KeyError:
            raise ConfigError(f"admin.group: no such group {name!r}") from None
    listen = None
    if "listen" in metrics:
        text = _typed(metrics, "metrics", "listen", str)
        if not text.startswith("[") and text.count(":") > 1:
            text = f"[{text}]"  # a bare IPv6 address
        if text.endswith("]") or ":" not in text:
            text += f":{METRICS_PORT}"
        listen = parse_peer_address(text, "metrics.listen")
    return AdminSection(socket, group), MetricsSection(listen)


def _dns(doc: Mapping[str, Any]) -> DnsSection:
    """[dns] servers ("address" or "address:port", IPv4) and timeout."""
    sect = _section(doc, "dns", {"servers", "timeout"})
    servers = _opt(sect, "dns", "servers", list, [])
    parsed = []
    for text in servers:
        if not isinstance(text, str):
            raise ConfigError("dns.servers: expected a list of \"address\" or \"address:port\"")
        address = parse_peer_address(text if ":" in text else f"{text}:53", "dns.servers")
        try:
            ipaddress.IPv4Address(address.host)
        except ValueError:
            raise ConfigError(f"dns.servers: not an IPv4 address: {text!r}") from None
        parsed.append((address.host, address.port))
    timeout = DnsSection.timeout
    if "timeout" in sect:
        timeout = _typed(sect, "dns", "timeout", (int, float))
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError("dns.timeout must be positive")
    return DnsSection(tuple(parsed), timeout)


def _destinations(doc: Mapping[str, Any]) -> DestinationsSection:
    """[destinations] allow and deny: lists of path patterns."""
    sect = _section(doc, "destinations", {"allow", "deny"})
    kw: dict[str, Any] = {}
    for key in ("allow", "deny"):
        if key not in sect:
            continue
        patterns = _typed(sect, "destinations", key, list)
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ConfigError(f"destinations.{key}: expected a list of path patterns (strings), "
                                  f"got {pattern!r}")
            problem = pattern_problem(pattern)
            if problem is not None:
                raise ConfigError(f"destinations.{key}: {pattern!r} {problem}")
        kw[key] = tuple(patterns)
    return DestinationsSection(**kw)


def _tls(peer: Mapping[str, Any]) -> dict[str, Any]:
    """[peer] certificate, private_key and ca_bundle, checked (the files by
    :func:`nipc.tls.check_pem_files`), as PeerSection keyword arguments."""
    cert = _opt(peer, "peer", "certificate", str, None)
    key = _opt(peer, "peer", "private_key", str, None)
    ca = _opt(peer, "peer", "ca_bundle", str, None)
    if (cert is None) != (key is None):
        raise ConfigError("peer.certificate and peer.private_key go together: set both or neither")
    if ca is not None and cert is None:
        raise ConfigError("peer.ca_bundle needs peer.certificate and peer.private_key: peers "
                          "that verify ask this daemon for a certificate from the CA too")
    check_pem_files(cert, key, ca)
    return {name: Path(value) for name, value in
            (("certificate", cert), ("private_key", key), ("ca_bundle", ca)) if value is not None}


def _chain_accounts(peer: Mapping[str, Any]) -> frozenset[int]:
    """[peer] chain_accounts (user names or uids), as uids."""
    accounts = _opt(peer, "peer", "chain_accounts", list, [])
    uids = set()
    for account in accounts:
        if isinstance(account, bool) or not isinstance(account, (str, int)):
            raise ConfigError("peer.chain_accounts: expected a list of user names or uids")
        try:
            uids.add(account if isinstance(account, int) else pwd.getpwnam(account).pw_uid)
        except KeyError:
            raise ConfigError(f"peer.chain_accounts: no such user {account!r}") from None
    return frozenset(uids)


def load(path: str | Path) -> Config:
    """Read and check a configuration file."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        _check_modes(text, path)
        doc = tomllib.loads(text)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return from_mapping(doc)


#: ``mode = 0666`` or ``mode = 666``: a file mode written as a bare decimal number.
_BARE_MODE = re.compile(r"^\s*mode\s*=\s*([0-9][0-9_]*)\s*(#.*)?$")


def _check_modes(text: str, path: str | Path) -> None:
    """Refuse a file mode written unquoted: TOML rejects ``0666`` (no leading zeros) with
    a message about newlines, and reads ``666`` as decimal 666 (0o1232), not rw-rw-rw-."""
    for number, line in enumerate(text.splitlines(), 1):
        bare = _BARE_MODE.match(line)
        if bare is None:
            continue
        digits = bare.group(1)
        why = ("TOML allows no leading zero" if digits.startswith("0")
               else f"TOML reads it as decimal {digits}")
        raise ConfigError(f"{path}, line {number}: mode = {digits} is not an octal mode ({why}); "
                          f'quote it: mode = "{digits.zfill(4)}"')


def from_mapping(doc: Mapping[str, Any]) -> Config:
    check_known(doc, {"host", "kerberos", "local", "peer", "peers", "timeouts", "limits", "log",
                      "imports", "admin", "metrics", "dns", "destinations"}, "section", "")
    host = _section(doc, "host", {"name", "realm"})
    krb = _section(
        doc,
        "kerberos",
        {"mode", "keytab", "principal", "krb5_config", "ccache_template", "trusted_realms",
         "allow_root", "caller_ticket_reuse", "session_max"},
    )
    local = _section(doc, "local", {"socket", "owner", "group", "mode"})
    peer = _section(doc, "peer", {"listen", "port", "max_hops", "certificate", "private_key",
                                  "ca_bundle", "chain_accounts"})
    peers = doc.get("peers", {})
    if not isinstance(peers, dict):
        raise ConfigError("[peers] must be a table of host = \"address:port\"")
    times = _section(
        doc, "timeouts",
        {"request", "handshake", "connect", "kdc", "keepalive_idle", "user_timeout", "link_idle",
         "drain", "link_ping"},
    )
    log = _section(doc, "log", {"file", "journal", "journal_socket"})
    journal = _opt(log, "log", "journal", (bool, str), "auto")
    if journal not in (True, False, "auto"):
        raise ConfigError(f"log.journal: expected true, false or \"auto\", got {journal!r}")
    limits = _section(doc, "limits", set(_LIMITS))
    for key in limits:
        value = _typed(limits, "limits", key, int)
        if value <= 0:
            raise ConfigError(f"limits.{key} must be a positive whole number")

    for key in ("name", "realm"):
        if key not in host:
            raise ConfigError(f"host.{key} is required")
    for key in ("keytab", "principal"):
        if key not in krb:
            raise ConfigError(f"kerberos.{key} is required")
    try:
        mode = CredentialMode(krb.get("mode", CredentialMode.PROTOCOL_TRANSITION.value))
    except ValueError:
        raise ConfigError(
            "kerberos.mode: expected 'protocol-transition' or 'own-ccache'"
        ) from None
    socket_mode = _mode(_opt(local, "local", "mode", (str, int), "0666"), "local.mode")

    timeouts: dict[str, Any] = {}
    for key, kind in (
        ("request", (int, float)),
        ("handshake", (int, float)),
        ("connect", (int, float)),
        ("kdc", (int, float)),
        ("user_timeout", (int, float)),
        ("keepalive_idle", int),
        ("link_idle", (int, float)),
        ("link_ping", (int, float)),
        ("drain", (int, float)),
    ):
        if key in times:
            value = _typed(times, "timeouts", key, kind)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"timeouts.{key} must be positive")
            timeouts[key] = value

    peer_table: dict[str, PeerAddress] = {}
    for name, addr in peers.items():
        if not isinstance(addr, str):
            raise ConfigError(f"peers.{name}: expected \"address:port\"")
        peer_table[_host_name(name, f"peers.{name}")] = parse_peer_address(addr, f"peers.{name}")

    realms = krb.get("trusted_realms", [])
    if not isinstance(realms, list) or not all(isinstance(r, str) for r in realms):
        raise ConfigError("kerberos.trusted_realms: expected a list of realm names")

    listen_port = _opt(peer, "peer", "port", int, DEFAULT_PORT)
    if not 0 < listen_port < 65536:
        raise ConfigError(f"peer.port: not a TCP port: {listen_port}")
    max_hops = _opt(peer, "peer", "max_hops", int, 8)
    if max_hops <= 0:
        raise ConfigError("peer.max_hops must be positive")
    krb5_config = _opt(krb, "kerberos", "krb5_config", str, None)
    reuse = _opt(krb, "kerberos", "caller_ticket_reuse", (int, float), 10)
    if isinstance(reuse, bool) or not (reuse > 0 and math.isfinite(reuse)):
        raise ConfigError("kerberos.caller_ticket_reuse must be a positive number of minutes")
    session_max = _opt(krb, "kerberos", "session_max", (int, float), 10)
    if isinstance(session_max, bool) or not (session_max >= 0 and math.isfinite(session_max)):
        raise ConfigError("kerberos.session_max must be a number of minutes (0: no sessions)")
    log_file = _opt(log, "log", "file", str, None)

    host_section = HostSection(_host_name(_typed(host, "host", "name", str), "host.name"),
                               _typed(host, "host", "realm", str))
    kerberos = KerberosSection(
        keytab=Path(_typed(krb, "kerberos", "keytab", str)),
        principal=_typed(krb, "kerberos", "principal", str),
        mode=mode,
        krb5_config=Path(krb5_config) if krb5_config is not None else None,
        ccache_template=_opt(krb, "kerberos", "ccache_template", str,
                             KerberosSection.ccache_template),
        trusted_realms=tuple(realms),
        allow_root=_opt(krb, "kerberos", "allow_root", bool, False),
        caller_ticket_reuse=reuse * 60.0,
        session_max=session_max * 60.0,
    )
    local_section = LocalSection(Path(_opt(local, "local", "socket", str, DEFAULT_SOCKET)),
                                 _uid(local.get("owner", 0)), _gid(local.get("group", 0)),
                                 socket_mode)
    listen = _opt(peer, "peer", "listen", str, PeerSection.listen)
    log_section = LogSection(
        Path(log_file) if log_file is not None else None,
        None if journal == "auto" else journal,
        Path(_opt(log, "log", "journal_socket", str, str(LogSection.journal_socket))),
    )
    imports = _imports(doc.get("imports", []))
    admin, metrics = _admin_and_metrics(doc)
    dns = _dns(doc)
    destinations = _destinations(doc)
    peer_section = PeerSection(listen, listen_port, max_hops, **_tls(peer),
                               chain_accounts=_chain_accounts(peer))
    return Config(
        host=host_section, kerberos=kerberos, local=local_section, peer=peer_section,
        peers=peer_table, dns=dns, timeouts=TimeoutsSection(**timeouts),
        limits=LimitsSection(**limits), log=log_section, admin=admin, metrics=metrics,
        destinations=destinations, imports=imports,
    )
