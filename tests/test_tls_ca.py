"""The optional CA layer between daemons ([peer] certificate, private_key, ca_bundle).

Kerberos with channel binding stays the authentication; a CA adds defence in depth: with a
CA bundle the dialling daemon verifies the peer's chain and its name (``<host>`` as the
caller wrote it, the name Kerberos uses), the listening daemon requires a client
certificate from that CA, and a failure is the caller's EPROTO naming host and reason.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from conftest import require_root
from nipc.config import Config, ConfigError, PeerAddress, from_mapping
from nipc import wire
from nipc.errors import NipcError
from nipc.links import link_failure
from nipc.link import ClientLink
from nipc_testbed.sandbox import ROOT_PARENT, DaemonConfigs, Host
from nipc.splice import Adopted
from nipc.compat import UnbufferedTLSFactory
from nipc.tls import check_peer_name, client_options, server_options
from support import UnixServer, run_client

reactor: Any = _reactor


# ----------------------------------------------------------------------- a throwaway CA

@dataclass(frozen=True)
class Pem:
    certificate: Path
    private_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """A CA that issues certificates for daemons (serverAuth and clientAuth)."""

    def __init__(self, where: Path, name: str) -> None:
        self.dir = where
        self.name = name
        where.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = where / f"{name}.ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, host: str, file_name: str | None = None) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = self.dir / f"{file_name or host}.{self.name}"
        pem = Pem(stem.with_suffix(".crt.pem"), stem.with_suffix(".key.pem"))
        pem.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.private_key.touch(mode=0o600)
        pem.private_key.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return pem


# ------------------------------------------------------------------- config validation

MINIMAL: dict[str, Any] = {
    "host": {"name": "a.example.com", "realm": "EXAMPLE.COM"},
    "kerberos": {"keytab": "/etc/nipc/nipc.keytab", "principal": "nipc/a.example.com"},
}


def with_peer(**peer: Any) -> dict[str, Any]:
    return {**MINIMAL, "peer": peer}


def config_error(**peer: Any) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(with_peer(**peer))
    return str(info.value)


@pytest.fixture()
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "ca", "one")


def test_no_tls_keys_means_kerberos_alone() -> None:
    config = from_mapping(MINIMAL)
    assert (config.peer.certificate, config.peer.private_key, config.peer.ca_bundle) == (None,) * 3


def test_certificate_key_and_bundle_load(ca: CA) -> None:
    pem = ca.issue("a.example.com")
    config = from_mapping(with_peer(certificate=str(pem.certificate),
                                    private_key=str(pem.private_key), ca_bundle=str(ca.bundle)))
    assert config.peer.certificate == pem.certificate
    assert config.peer.private_key == pem.private_key
    assert config.peer.ca_bundle == ca.bundle
    # A certificate without a bundle is fine: presented to peers that verify.
    config = from_mapping(with_peer(certificate=str(pem.certificate),
                                    private_key=str(pem.private_key)))
    assert config.peer.ca_bundle is None


def test_certificate_and_key_go_together(ca: CA) -> None:
    pem = ca.issue("a.example.com")
    for peer in ({"certificate": str(pem.certificate)}, {"private_key": str(pem.private_key)}):
        message = config_error(**peer)
        assert "peer.certificate" in message and "peer.private_key" in message


def test_a_bundle_needs_a_certificate(ca: CA) -> None:
    assert "peer.ca_bundle" in config_error(ca_bundle=str(ca.bundle))


def test_unreadable_files_name_the_key(ca: CA, tmp_path: Path) -> None:
    pem = ca.issue("a.example.com")
    missing = str(tmp_path / "missing.pem")
    message = config_error(certificate=missing, private_key=str(pem.private_key))
    assert message.startswith("peer.certificate: cannot read") and missing in message
    message = config_error(certificate=str(pem.certificate), private_key=missing)
    assert message.startswith("peer.private_key: cannot read")
    message = config_error(certificate=str(pem.certificate), private_key=str(pem.private_key),
                           ca_bundle=missing)
    assert message.startswith("peer.ca_bundle: cannot read")
    assert config_error(certificate="", private_key=str(pem.private_key)).startswith(
        "peer.certificate:")


def test_not_pem_names_the_key(ca: CA, tmp_path: Path) -> None:
    pem = ca.issue("a.example.com")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert config_error(certificate=str(junk), private_key=str(pem.private_key)).startswith(
        "peer.certificate: no PEM certificate")
    assert config_error(certificate=str(pem.certificate), private_key=str(junk)).startswith(
        "peer.private_key: no usable PEM private key")
    assert config_error(certificate=str(pem.certificate), private_key=str(pem.private_key),
                        ca_bundle=str(junk)).startswith("peer.ca_bundle: no PEM certificate")
    # The key is not a certificate, and the certificate is not a key.
    assert config_error(certificate=str(pem.private_key),
                        private_key=str(pem.private_key)).startswith("peer.certificate:")


def test_key_must_match_the_certificate(ca: CA) -> None:
    one, other = ca.issue("a.example.com"), ca.issue("b.example.com")
    message = config_error(certificate=str(one.certificate), private_key=str(other.private_key))
    assert message.startswith("peer.private_key:") and "does not match" in message


def test_encrypted_key_is_refused(ca: CA, tmp_path: Path) -> None:
    pem = ca.issue("a.example.com")
    key = serialization.load_pem_private_key(pem.private_key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    message = config_error(certificate=str(pem.certificate), private_key=str(locked))
    assert message.startswith("peer.private_key:") and "encrypted" in message


def test_wrong_types_name_the_key() -> None:
    assert config_error(certificate=1, private_key="/x").startswith("peer.certificate: expected a string, got an integer")
    assert config_error(ca_bundle=True).startswith("peer.ca_bundle: expected a string, got true or false")


def test_a_chain_file_presents_the_leaf_first(ca: CA) -> None:
    pem = ca.issue("a.example.com")
    pem.certificate.write_bytes(pem.certificate.read_bytes() + ca.bundle.read_bytes())
    config = from_mapping(with_peer(certificate=str(pem.certificate),
                                    private_key=str(pem.private_key)))
    assert config.peer.certificate == pem.certificate


# ------------------------------------------------ the TLS layer on loopback (no Kerberos)

@implementer(IHandshakeListener)
class _Listener(Protocol):
    """Closes the link once its side of the handshake is done (a peer that accepted us)."""

    def handshakeCompleted(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def _config(host: str, pem: Pem | None, bundle: Path | None) -> Config:
    config = from_mapping(MINIMAL)
    return replace(config, host=replace(config.host, name=host),
                   peer=replace(config.peer, certificate=pem.certificate if pem else None,
                                private_key=pem.private_key if pem else None, ca_bundle=bundle))


async def _dial(client: Config, server: Config, host: str) -> Any:
    """What links.Links does, then a channel's HELLO: TLS, then (with a bundle) the name
    check; a failure as links.link_failure maps it."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        UnbufferedTLSFactory(server_options(server.peer, server.host), False, Factory.forProtocol(_Listener)))
    try:
        link = ClientLink(reactor, lambda tls: None)
        where = PeerAddress("127.0.0.1", port.getHost().port)
        d: Deferred[Any] = TCP4ClientEndpoint(reactor, where.host, where.port).connect(
            UnbufferedTLSFactory(client_options(client.peer), True, Adopted(link)))
        d.addCallback(lambda _: link.ready)
        if client.peer.ca_bundle is not None:
            d.addCallback(lambda channel: (check_peer_name(link.transport, host), channel)[1])
        # A server that refuses our certificate says so after our side of the handshake:
        # the exchange sees its alert; one that accepted us closes the link.
        d.addCallback(lambda _: link.open().exchange(wire.Hello("/x", host, ("a.lan.test",), b"t", "c")))
        d.addErrback(lambda f: link_failure(f, [where], host))
        try:
            return await d
        except NipcError as e:
            return e
        finally:
            if link.transport is not None and not link.closed:
                link.abort()
    finally:
        await port.stopListening()


async def _outcome(client: Config, server: Config, host: str) -> str:
    result = await _dial(client, server, host)
    if isinstance(result, NipcError):
        return f"{result.errno_name} {result.message}"
    return "OK"


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_loopback_trust_and_names(tmp_path: Path) -> None:
    one, two = CA(tmp_path, "one"), CA(tmp_path, "two")
    a, b = one.issue("a.lan.test"), one.issue("b.lan.test")
    server = _config("b.lan.test", b, one.bundle)
    accepted = "EHOSTUNREACH peer daemon closed the connection during the handshake"
    assert await _outcome(_config("a.lan.test", a, one.bundle), server, "b.lan.test") == accepted
    # Not trusted: a trusts another CA.
    out = await _outcome(_config("a.lan.test", a, two.bundle), server, "b.lan.test")
    assert out == "EPROTO TLS certificate of b.lan.test not trusted by the configured CA bundle"
    # Name mismatch: b presents a certificate for c.lan.test.
    wrong = _config("b.lan.test", one.issue("c.lan.test"), one.bundle)
    out = await _outcome(_config("a.lan.test", a, one.bundle), wrong, "b.lan.test")
    assert out.startswith("EPROTO TLS certificate of b.lan.test: name mismatch"), out
    # b requires a client certificate from its CA: a's ephemeral one is refused...
    out = await _outcome(_config("a.lan.test", None, None), server, "b.lan.test")
    assert out.startswith("EPROTO NIPC daemon of b.lan.test at 127.0.0.1:"), out
    assert "refused this daemon's TLS certificate" in out
    # ...and so is one from another CA.
    out = await _outcome(_config("a.lan.test", two.issue("a.lan.test"), None), server,
                         "b.lan.test")
    assert "refused this daemon's TLS certificate" in out, out
    # Without a bundle, nothing is verified (Kerberos alone), even a wrong name.
    assert await _outcome(_config("a.lan.test", None, None),
                          _config("c.lan.test", None, None), "b.lan.test") == accepted
    # A certificate without a bundle is presented, not verified.
    assert await _outcome(_config("a.lan.test", a, None),
                          _config("b.lan.test", b, None), "b.lan.test") == accepted


# --------------------------------------------------------------- between real daemons

@dataclass
class Setup:
    hosts: dict[str, Host]
    one: CA
    two: CA
    configs: DaemonConfigs = field(default_factory=DaemonConfigs)

    def configure(self, name: str, pem: Pem | None, bundle: Path | None) -> None:
        """Write ``name``'s [peer] TLS keys into its original config; restart its daemon."""
        host = self.hosts[name]
        keys = ""
        if pem is not None:
            keys += f'certificate = "{pem.certificate}"\nprivate_key = "{pem.private_key}"\n'
        if bundle is not None:
            keys += f'ca_bundle = "{bundle}"\n'

        def edit(text: str) -> str:
            assert text.count("[peer]\n") == 1
            return text.replace("[peer]\n", "[peer]\n" + keys)

        self.configs.set(host, edit)


@pytest.fixture(scope="module")
def tls_lan(samba_hosts: dict[str, Host]) -> Iterator[Setup]:
    require_root()
    # Where both hosts' daemons can read them (each host's /tmp is its own).
    where = Path(tempfile.mkdtemp(prefix="nipc-tls-ca-", dir=ROOT_PARENT))
    setup = Setup(samba_hosts, CA(where, "one"), CA(where, "two"))
    try:
        yield setup
    finally:
        setup.configs.close()
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.integration
def test_routing_with_a_ca(tls_lan: Setup) -> None:
    a, b = tls_lan.hosts["a"], tls_lan.hosts["b"]
    one, two = tls_lan.one, tls_lan.two
    server = UnixServer(str(b.run_dir / "tls-ca.sock"))
    target = f"{server.path}@{b.fqdn}"
    try:
        a_pem = one.issue(a.fqdn)
        tls_lan.configure("a", a_pem, one.bundle)
        tls_lan.configure("b", one.issue(b.fqdn), one.bundle)
        out = run_client("alice", str(a.socket_path), "greet", target)
        assert "error" not in out, out
        assert out["echo"] == "ping\n"

        # a trusts another CA: b's certificate is not trusted.
        tls_lan.configure("a", a_pem, two.bundle)
        out = run_client("alice", str(a.socket_path), "greet", target)
        assert out.get("error") == "EPROTO", out
        assert out["message"] == (
            f"TLS certificate of {b.fqdn} not trusted by the configured CA bundle"), out

        # b presents a certificate (from the trusted CA) for another name.
        tls_lan.configure("a", a_pem, one.bundle)
        tls_lan.configure("b", one.issue("c.lan.test", "wrong-name"), one.bundle)
        out = run_client("alice", str(a.socket_path), "greet", target)
        assert out.get("error") == "EPROTO", out
        assert out["message"].startswith(f"TLS certificate of {b.fqdn}: name mismatch"), out
        assert "c.lan.test" in a.log_path.read_text()  # the detail is logged

        # b requires a client certificate from its CA; a's comes from another.
        tls_lan.configure("b", one.issue(b.fqdn), one.bundle)
        tls_lan.configure("a", two.issue(a.fqdn), None)
        out = run_client("alice", str(a.socket_path), "greet", target)
        assert out.get("error") == "EPROTO", out
        assert "refused this daemon's TLS certificate" in out["message"], out
        # The refusal comes once the link is up, on the channel: it still names where.
        assert f"NIPC daemon of {b.fqdn} at {b.address}:{b.port} refused" in out["message"], out
    finally:
        server.close()
