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
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from nipc.destination import pattern_problem
from nipc.errors import NipcError
from nipc.request import DEFAULT_SOCKET, ConnectRequest, check_host, parse_request

DEFAULT_PORT = 7445
#: journald's socket for native entries ([log] journal_socket).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
#: Private key types a TLS certificate of [peer] may have.
TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                 ed448.Ed448PrivateKey)
TLSKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
          | ed448.Ed448PrivateKey)


class ConfigError(ValueError):
    """The configuration file is unreadable or wrong; the message names the key."""


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
class Config:
    """Frozen to every component that holds it; only :func:`nipc.reload.adopt` replaces its
    fields (all at once, on a reload), so holders read settings when they decide something."""

    host_name: str
    realm: str
    mode: CredentialMode
    keytab: Path
    principal: str
    krb5_config: Path | None = None
    ccache_template: str = "FILE:/tmp/krb5cc_%{uid}"
    trusted_realms: tuple[str, ...] = ()
    allow_root: bool = False
    #: [kerberos] caller_ticket_reuse (minutes in the file, seconds here): the longest a
    #: ticket obtained in a caller's name is reused before the KDC is asked again, so a
    #: user locked at the KDC loses access within it.
    caller_ticket_reuse: float = 600.0
    socket_path: Path = Path(DEFAULT_SOCKET)
    socket_owner: int = 0
    socket_group: int = 0
    socket_mode: int = 0o666
    listen_address: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    peers: Mapping[str, PeerAddress] = field(default_factory=dict)
    request_timeout: float = 10.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    kdc_timeout: float = 5.0
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
    drain_timeout: float = 30.0
    max_hops: int = 8
    #: [peer] chain_accounts: local uids that may chain onward in the name of callers they
    #: do not run as (SPEC section 6); everyone else only as themselves.
    chain_accounts: frozenset[int] = frozenset()
    log_file: Path | None = None
    #: [log] journal: native journal entries with NIPC_* fields (True), twistd's text
    #: (False), or native exactly when stdout/stderr is journald's stream (None, "auto").
    log_journal: bool | None = None
    journal_socket: Path = JOURNAL_SOCKET
    imports: tuple[Import, ...] = ()
    max_connections: int = 4096
    max_per_caller: int = 256
    handshakes_per_second: int = 200
    handshake_burst: int = 400
    max_pending_peers: int = 256
    max_pending_per_source: int = 32
    #: HELLOs one peer link may send per second (burst: twice that); beyond, ``EAGAIN``.
    peer_handshakes_per_second: int = 1000
    #: Connections peers route to this host, open at once: in all, and from one address.
    max_inbound: int = 4096
    max_inbound_per_source: int = 1024
    #: [admin] socket: relative means next to the gate socket; "" turns it off.
    admin_socket: str = "admin.sock"
    admin_group: int | None = None
    #: [metrics] listen: where the Prometheus endpoint is served; None (default) is off.
    metrics_listen: PeerAddress | None = None
    #: [dns] servers as (IPv4 address, port); empty: /etc/hosts and /etc/resolv.conf.
    dns_servers: tuple[tuple[str, int], ...] = ()
    dns_timeout: float = 5.0
    #: [peer] certificate, private_key: PEM files presented instead of an ephemeral
    #: self-signed certificate; ca_bundle: PEM CA certificates peers' certificates must
    #: chain to (both directions). All None by default: Kerberos alone.
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_bundle: Path | None = None
    #: [destinations] allow, deny: path patterns callers from other hosts may (not) reach
    #: here, matched against the resolved path (nipc.destination.PathPolicy).
    destination_allow: tuple[str, ...] = ("/**",)
    destination_deny: tuple[str, ...] = ()

    @property
    def service_name(self) -> str:
        """The GSS host-based service name peers use to reach this daemon."""
        return f"nipc@{self.host_name}"

    @property
    def admin_socket_path(self) -> Path | None:
        """The admin socket (``nipc status``), or None when it is turned off."""
        return self.socket_path.parent / self.admin_socket if self.admin_socket else None

    def realms(self) -> tuple[str, ...]:
        """Realms whose principals this daemon accepts (its own unless configured)."""
        return self.trusted_realms or (self.realm,)


#: Config fields a reload cannot change (something built at start-up holds them: a listening
#: socket, the credential source, the krb5 library's settings), with their keys in the file.
#: A reload keeps their running values and logs each changed one as needing a restart.
RESTART_ONLY = {
    "host_name": "host.name", "realm": "host.realm", "mode": "kerberos.mode",
    "keytab": "kerberos.keytab", "principal": "kerberos.principal",
    "krb5_config": "kerberos.krb5_config", "ccache_template": "kerberos.ccache_template",
    "socket_path": "local.socket", "listen_address": "peer.listen", "listen_port": "peer.port",
    "admin_socket": "admin.socket", "admin_group": "admin.group",
    "metrics_listen": "metrics.listen", "log_journal": "log.journal",
    "journal_socket": "log.journal_socket",
}


#: [limits] keys and the Config fields they set.
_LIMITS = {
    "max_connections": "max_connections",
    "max_per_caller": "max_per_caller",
    "handshakes_per_second": "handshakes_per_second",
    "handshake_burst": "handshake_burst",
    "max_pending_peers": "max_pending_peers",
    "max_pending_per_source": "max_pending_per_source",
    "peer_handshakes_per_second": "peer_handshakes_per_second",
    "max_inbound": "max_inbound",
    "max_inbound_per_source": "max_inbound_per_source",
}


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


def _admin_and_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """[admin] socket/group and [metrics] listen, as Config keyword arguments."""
    admin = _section(doc, "admin", {"socket", "group"})
    metrics = _section(doc, "metrics", {"listen"})
    kw: dict[str, Any] = {"admin_socket": _opt(admin, "admin", "socket", str, "admin.sock")}
    if "\0" in kw["admin_socket"]:
        raise ConfigError("admin.socket: a path cannot hold NUL")
    if "group" in admin:
        group = _typed(admin, "admin", "group", (str, int))
        try:
            kw["admin_group"] = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
            if kw["admin_group"] < 0:
                raise KeyError(group)
        except KeyError:
            raise ConfigError(f"admin.group: no such group {group!r}") from None
    if "listen" in metrics:
        text = _typed(metrics, "metrics", "listen", str)
        if not text.startswith("[") and text.count(":") > 1:
            text = f"[{text}]"  # a bare IPv6 address
        if text.endswith("]") or ":" not in text:
            text += f":{METRICS_PORT}"
        kw["metrics_listen"] = parse_peer_address(text, "metrics.listen")
    return kw


def _dns(doc: Mapping[str, Any]) -> dict[str, Any]:
    """[dns] servers ("address" or "address:port", IPv4) and timeout, as Config arguments."""
    sect = _section(doc, "dns", {"servers", "timeout"})
    kw: dict[str, Any] = {}
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
    kw["dns_servers"] = tuple(parsed)
    if "timeout" in sect:
        timeout = _typed(sect, "dns", "timeout", (int, float))
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError("dns.timeout must be positive")
        kw["dns_timeout"] = timeout
    return kw


def _destinations(doc: Mapping[str, Any]) -> dict[str, Any]:
    """[destinations] allow and deny: lists of path patterns, as Config keyword arguments."""
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
        kw[f"destination_{key}"] = tuple(patterns)
    return kw


def _read_pem(path: str, where: str) -> bytes:
    if not path:
        raise ConfigError(f"{where}: expected a file name")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None


def pem_certificates(path: str, where: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file (at least one), or ConfigError naming ``where``."""
    data = _read_pem(path, where)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{where}: no PEM certificate in {path}") from None


def pem_private_key(path: str, where: str) -> TLSKey:
    """An unencrypted PEM private key of a type TLS can use, or ConfigError."""
    data = _read_pem(path, where)
    try:
        key = serialization.load_pem_private_key(data, None)
    except TypeError:
        raise ConfigError(f"{where}: {path} is encrypted; give an unencrypted key, readable "
                          "by root only") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{where}: no usable PEM private key in {path}") from None
    if not isinstance(key, TLS_KEY_TYPES):
        raise ConfigError(f"{where}: {path}: unsupported key type {type(key).__name__} "
                          "(use RSA, ECDSA or Ed25519)")
    return key


def _public(key: Any) -> bytes:
    data: bytes = key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _tls(peer: Mapping[str, Any]) -> dict[str, Any]:
    """[peer] certificate, private_key and ca_bundle, checked, as Config keyword arguments."""
    cert = _opt(peer, "peer", "certificate", str, None)
    key = _opt(peer, "peer", "private_key", str, None)
    ca = _opt(peer, "peer", "ca_bundle", str, None)
    if (cert is None) != (key is None):
        raise ConfigError("peer.certificate and peer.private_key go together: set both or neither")
    if ca is not None and cert is None:
        raise ConfigError("peer.ca_bundle needs peer.certificate and peer.private_key: peers "
                          "that verify ask this daemon for a certificate from the CA too")
    kw: dict[str, Any] = {}
    if cert is not None and key is not None:
        leaf = pem_certificates(cert, "peer.certificate")[0]
        private = pem_private_key(key, "peer.private_key")
        if _public(private.public_key()) != _public(leaf.public_key()):
            raise ConfigError(f"peer.private_key: {key} does not match the certificate "
                              f"in peer.certificate ({cert})")
        kw.update(tls_certificate=Path(cert), tls_private_key=Path(key))
    if ca is not None:
        pem_certificates(ca, "peer.ca_bundle")
        kw["tls_ca_bundle"] = Path(ca)
    return kw


def _chain_accounts(peer: Mapping[str, Any]) -> dict[str, Any]:
    """[peer] chain_accounts (user names or uids), as the Config keyword argument."""
    accounts = _opt(peer, "peer", "chain_accounts", list, [])
    uids = set()
    for account in accounts:
        if isinstance(account, bool) or not isinstance(account, (str, int)):
            raise ConfigError("peer.chain_accounts: expected a list of user names or uids")
        try:
            uids.add(account if isinstance(account, int) else pwd.getpwnam(account).pw_uid)
        except KeyError:
            raise ConfigError(f"peer.chain_accounts: no such user {account!r}") from None
    return {"chain_accounts": frozenset(uids)}


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
         "allow_root", "caller_ticket_reuse"},
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

    kw: dict[str, Any] = {}
    for key, name, kind in (
        ("request", "request_timeout", (int, float)),
        ("handshake", "handshake_timeout", (int, float)),
        ("connect", "connect_timeout", (int, float)),
        ("kdc", "kdc_timeout", (int, float)),
        ("user_timeout", "user_timeout", (int, float)),
        ("keepalive_idle", "keepalive_idle", int),
        ("link_idle", "link_idle", (int, float)),
        ("link_ping", "link_ping", (int, float)),
        ("drain", "drain_timeout", (int, float)),
    ):
        if key in times:
            value = _typed(times, "timeouts", key, kind)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"timeouts.{key} must be positive")
            kw[name] = value

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
    log_file = _opt(log, "log", "file", str, None)

    return Config(
        host_name=_host_name(_typed(host, "host", "name", str), "host.name"),
        realm=_typed(host, "host", "realm", str),
        mode=mode,
        keytab=Path(_typed(krb, "kerberos", "keytab", str)),
        principal=_typed(krb, "kerberos", "principal", str),
        krb5_config=Path(krb5_config) if krb5_config is not None else None,
        ccache_template=_opt(krb, "kerberos", "ccache_template", str, Config.ccache_template),
        trusted_realms=tuple(realms),
        allow_root=_opt(krb, "kerberos", "allow_root", bool, False),
        caller_ticket_reuse=reuse * 60.0,
        socket_path=Path(_opt(local, "local", "socket", str, DEFAULT_SOCKET)),
        socket_owner=_uid(local.get("owner", 0)),
        socket_group=_gid(local.get("group", 0)),
        socket_mode=socket_mode,
        listen_address=_opt(peer, "peer", "listen", str, "0.0.0.0"),
        listen_port=listen_port,
        max_hops=max_hops,
        peers=peer_table,
        log_file=Path(log_file) if log_file is not None else None,
        log_journal=None if journal == "auto" else journal,
        journal_socket=Path(_opt(log, "log", "journal_socket", str,
                                 str(Config.journal_socket))),
        imports=_imports(doc.get("imports", [])),
        **_admin_and_metrics(doc),
        **_dns(doc),
        **_destinations(doc),
        **_tls(peer),
        **_chain_accounts(peer),
        **{_LIMITS[key]: value for key, value in limits.items()},
        **kw,
    )
