"""TLS 1.3 between daemons: privacy of the link; identity comes from Kerberos.

Each daemon presents an ephemeral self-signed certificate; the peer does not need to
verify it because the GSS exchange is bound to this very TLS session (RFC 9266
``tls-exporter`` channel bindings): a relay terminating TLS gets different keying
material and the receiving daemon refuses its ticket.

Optionally (``[peer] certificate``, ``private_key``, ``ca_bundle``) a daemon presents a
certificate from an operator's CA and, with a CA bundle, verifies its peers' chains both
ways and, when dialling, the peer's name (``<host>`` as written, the name Kerberos uses)
with service-identity: defence in depth on top of Kerberos, never instead of it.
"""

from __future__ import annotations

import datetime
import socket
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.python.failure import Failure

from nipc.errors import ConfigError, NipcError

if TYPE_CHECKING:  # nipc.config checks its PEM files with this module's functions
    from nipc.config import HostSection, PeerSection, TimeoutsSection

log = Logger()

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
#: The link's TLS 1.3 suites, in order of preference (both sides; a listening daemon
#: uses its own order). AES-128-GCM first: as safe as AES-256 for a link's lifetime
#: (128-bit keys are out of reach of any search; AES-256 only helps against a future
#: quantum search, which the ephemeral ECDHE key exchange would not withstand anyway),
#: and fewer AES rounds (10 vs 14) cost less CPU per byte. ssh's aes128-gcm is what
#: the benchmark compares against. ChaCha20 last, for a host without AES instructions.
CIPHER_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#: Bytes read from a link's TCP socket at once (Twisted's default: 64 KiB), as from local
#: sockets: every read costs a wake-up, a pass through TLS (with a WantRead exception
#: at its end) and the frame decoder, so bulk data takes a quarter of them. Twisted also
#: pauses the link's channels only once this much waits to be sent.
LINK_BUFFER = 256 * 1024
#: OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h; pyOpenSSL sets it, exports no name).
MODE_ENABLE_PARTIAL_WRITE = 0x1

#: Private key types a TLS certificate of [peer] may have.
TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                 ed448.Ed448PrivateKey)
TLSKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
          | ed448.Ed448PrivateKey)


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


def check_pem_files(certificate: str | None, private_key: str | None,
                    ca_bundle: str | None) -> None:
    """[peer] certificate, private_key and ca_bundle as configuration loading checks them:
    each readable PEM, the key the certificate's; ConfigError naming the key otherwise."""
    if certificate is not None and private_key is not None:
        leaf = pem_certificates(certificate, "peer.certificate")[0]
        private = pem_private_key(private_key, "peer.private_key")
        if _public(private.public_key()) != _public(leaf.public_key()):
            raise ConfigError(f"peer.private_key: {private_key} does not match the certificate "
                              f"in peer.certificate ({certificate})")
    if ca_bundle is not None:
        pem_certificates(ca_bundle, "peer.ca_bundle")


def ephemeral_certificate(host: str) -> tuple[Any, Any]:
    """A fresh key and self-signed certificate naming ``host`` (cryptography objects,
    which pyOpenSSL takes directly; its own X509/PKey wrappers are deprecated)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _tuned(options: ssl.CertificateOptions) -> ssl.CertificateOptions:
    """Let OpenSSL free an idle connection's read and write buffers (about 34 KB of the
    ~45 KB a TLS endpoint holds): most routed connections are idle most of the time.
    The suites of :data:`CIPHER_SUITES`, the server's order deciding (Twisted sets
    ``OP_CIPHER_SERVER_PREFERENCE``). No partial writes: with them ``SSL_write`` returns
    after each 16 KiB record, so a 256 KiB write took 16 calls through pyOpenSSL and 16
    appends to the memory BIO; the BIO takes any size, so one call does it all.
    (Both need pyOpenSSL 25.2, setup.cfg's floor.)"""
    context = options.getContext()
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_tls13_ciphersuites(CIPHER_SUITES)
    context.clear_mode(MODE_ENABLE_PARTIAL_WRITE)
    return options


def _configured(peer: PeerSection) -> dict[str, Any]:
    """CertificateOptions keywords for the configured certificate (with its chain) and CA
    bundle; config loading already checked the files."""
    kw: dict[str, Any] = {}
    if peer.certificate is not None and peer.private_key is not None:
        chain = pem_certificates(str(peer.certificate), "peer.certificate")
        kw.update(certificate=chain[0], extraCertChain=chain[1:],
                  privateKey=pem_private_key(str(peer.private_key), "peer.private_key"))
    if peer.ca_bundle is not None:
        kw["trustRoot"] = ssl.trustRootFromCertificates([
            ssl.Certificate(crypto.X509.from_cryptography(c))
            for c in pem_certificates(str(peer.ca_bundle), "peer.ca_bundle")])
    return kw


def server_options(peer: PeerSection, host: HostSection) -> ssl.CertificateOptions:
    """The listening side: the configured certificate, else an ephemeral self-signed one;
    with a CA bundle, a client certificate from that CA is required (Twisted's
    ``trustRoot`` means VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT)."""
    kw = _configured(peer)
    if "certificate" not in kw:
        kw["privateKey"], kw["certificate"] = ephemeral_certificate(host.name)
    else:
        try:
            verify_certificate_hostname(kw["certificate"], host.name)
        except (VerificationError, CertificateError):
            log.warn("peer.certificate {path} does not name {host}: peers that verify it "
                     "will refuse this daemon (name mismatch)",
                     path=str(peer.certificate), host=host.name)
    return _tuned(ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3, **kw))


def client_options(peer: PeerSection) -> ssl.CertificateOptions:
    """The dialling side, one context for every peer: the configured certificate as the
    client certificate, if any; with a CA bundle, the peer's chain is verified during the
    handshake and its name by :func:`check_peer_name` right after it."""
    return _tuned(ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
                                        **_configured(peer)))


def _names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    return ", ".join(names) or f"no DNS name ({cert.subject.rfc4514_string()})"


def check_peer_name(tls_transport: Any, host: str) -> None:
    """The peer's (CA-verified) certificate must name ``host`` as the caller wrote it: the
    service-identity check of ``optionsForClientTLS``, made once the handshake is over and
    before the HELLO (the ticket) is sent, so that one TLS context serves every peer."""
    peer = tls_transport.getPeerCertificate()
    cert = peer.to_cryptography() if peer is not None else None
    try:
        if cert is None:
            raise CertificateError("no certificate")
        verify_certificate_hostname(cert, host)
    except (VerificationError, CertificateError) as e:
        log.warn("TLS certificate of {host} names {names}, not {host}: {error}", host=host,
                 names=_names(cert) if cert is not None else "nothing", error=repr(e))
        raise NipcError("EPROTO", f"TLS certificate of {host}: name mismatch "
                                  f"(it does not name {host})") from None


def ssl_detail(error: BaseException | None) -> str:
    """OpenSSL's reasons in an ``SSL.Error``, e.g. ``certificate verify failed``."""
    args = error.args[0] if error is not None and error.args else None
    if isinstance(args, list) and all(isinstance(a, tuple) and len(a) == 3 for a in args):
        return "; ".join(str(a[2]) for a in args) or "unknown"
    return str(error) or type(error).__name__


def is_certificate_failure(detail: str) -> bool:
    """Our verification of the peer failed, or the peer's alert says it refused ours."""
    return "certificate" in detail or "unknown ca" in detail


def tls_failure(reason: Failure, host: str, where: str) -> NipcError | None:
    """A TLS failure of the link to ``host`` as the caller's errno (None: not TLS)."""
    if not reason.check(SSL.Error):
        return None
    detail = ssl_detail(reason.value)
    if "certificate verify failed" in detail:
        log.warn("TLS certificate of {host} ({where}) not trusted by peer.ca_bundle: {detail}",
                 host=host, where=where, detail=detail)
        return NipcError("EPROTO",
                         f"TLS certificate of {host} not trusted by the configured CA bundle")
    if "alert" in detail and is_certificate_failure(detail):
        log.warn("{where} refused this daemon's TLS certificate: {detail}",
                 where=where, detail=detail)
        return NipcError("EPROTO", f"{where} refused this daemon's TLS certificate "
                                   f"(is peer.certificate from the CA it trusts?)")
    return NipcError("EHOSTUNREACH", f"{where}: TLS handshake failed ({detail})")


def channel_binding(tls_transport: Any) -> bytes:
    """RFC 9266 keying material of an established TLS 1.3 session."""
    data: bytes = tls_transport.getHandle().export_keying_material(EXPORTER_LABEL, 32)
    return data


def tune_tcp(tls_transport: Any, timeouts: TimeoutsSection) -> None:
    """No Nagle delay; a dead peer is noticed within the configured bound; reads of
    :data:`LINK_BUFFER`."""
    tls_transport.transport.bufferSize = LINK_BUFFER
    sock: socket.socket = tls_transport.transport.getHandle()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, timeouts.keepalive_idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeouts.user_timeout * 1000))
