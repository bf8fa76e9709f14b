"""TLS 1.3 between daemons: privacy of the link; identity comes from Kerberos.

Each daemon presents an ephemeral self-signed certificate; the peer does not need to
verify it because the GSS exchange is bound to this very TLS session (RFC 9266
``tls-exporter`` channel bindings): a relay terminating TLS gets different keying
material and the receiving daemon refuses its ticket.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from nipc.config import Config

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


def ephemeral_certificate(host: str) -> tuple[Any, Any]:
    """A fresh key and self-signed certificate naming ``host`` (pyOpenSSL objects)."""
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
    return crypto.PKey.from_cryptography_key(key), crypto.X509.from_cryptography(cert)


def _lean(options: ssl.CertificateOptions) -> ssl.CertificateOptions:
    """Let OpenSSL free an idle connection's read and write buffers (about 34 KB of the
    ~45 KB a TLS endpoint holds): most routed connections are idle most of the time."""
    options.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)
    return options


def server_options(host: str) -> ssl.CertificateOptions:
    key, cert = ephemeral_certificate(host)
    return _lean(ssl.CertificateOptions(
        privateKey=key, certificate=cert, raiseMinimumTo=ssl.TLSVersion.TLSv1_3
    ))


def client_options() -> ssl.CertificateOptions:
    return _lean(ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3))


class UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """TLS without Twisted's write aggregation: that buffers each write until the end of
    the reactor iteration, a whole extra loop turn of latency per message, while the
    splice already hands TLS whole reads (up to 64 KiB) at a time."""

    protocol = TLSMemoryBIOProtocol
    noisy = False


def channel_binding(tls_transport: Any) -> bytes:
    """RFC 9266 keying material of an established TLS 1.3 session."""
    data: bytes = tls_transport.getHandle().export_keying_material(EXPORTER_LABEL, 32)
    return data


def tune_tcp(tls_transport: Any, config: Config) -> None:
    """No Nagle delay; a dead peer is noticed within the configured bound."""
    sock: socket.socket = tls_transport.transport.getHandle()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, config.keepalive_idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(config.user_timeout * 1000))
