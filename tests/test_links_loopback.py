"""The dialler's links over real TLS on loopback (no Kerberos): what a StringTransport
cannot show, such as a retired link really being replaced and really closing."""

from __future__ import annotations

from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from nipc.config import from_mapping
from nipc.discovery import PeerLocator
from nipc.links import Links
from nipc.link import ClientLink
from nipc.compat import UnbufferedTLSFactory
from nipc.tls import MODE_ENABLE_PARTIAL_WRITE, client_options, server_options

reactor: Any = _reactor
HOST = "b.lan.test"


def config(port: int) -> Any:
    return from_mapping({
        "host": {"name": "a.lan.test", "realm": "LAN.TEST"},
        "kerberos": {"keytab": "/nonexistent/nipc.keytab", "principal": "nipc/a.lan.test"},
        "peers": {HOST: f"127.0.0.1:{port}"},
    })


def locator_of(config: Any) -> PeerLocator:
    return PeerLocator(reactor, config.dns, config.peers, config.peer.port)


def links_of(config: Any) -> Links:
    return Links(reactor, config.timeouts, config.peer, locator_of(config))


async def listen(accepted: list[Protocol]) -> Any:
    """A daemon's TLS listener on loopback whose accepted links just stay (in ``accepted``)."""

    class Hold(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        UnbufferedTLSFactory(server_options(config(1).peer, config(1).host), False, Factory.forProtocol(Hold)))


async def stop(port: Any, accepted: list[Protocol]) -> None:
    """Stop listening and wait (5 s at most) until the accepted links are closed."""
    await port.stopListening()
    for _ in range(50):
        if all(p.transport is None or not p.transport.connected for p in accepted):  # type: ignore[attr-defined]
            break
        await deferLater(reactor, 0.1)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_link_at_the_last_channel_number_is_replaced_and_closed() -> None:
    """The link that gave out channel 2^32-1 is retired: the next connect dials a new TLS
    link, and the old one closes for real once its last channel ends."""
    accepted: list[Protocol] = []
    port = await listen(accepted)
    links = links_of(config(port.getHost().port))
    try:
        first = await links.get(HOST)
        assert isinstance(first, ClientLink)
        first.highest = 2**32 - 2
        last = first.open()
        assert last.number == 2**32 - 1 and first.retired
        second = await links.get(HOST)
        assert isinstance(second, ClientLink) and second is not first  # dialled anew
        assert len(accepted) == 2
        last.abort()
        for _ in range(50):
            if first.closed:
                break
            await deferLater(reactor, 0.1)
        assert first.closed and not second.closed
        assert accepted[0].transport is None or not accepted[0].transport.connected  # type: ignore[attr-defined]
    finally:
        links.close()
        await stop(port, accepted)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_the_link_prefers_aes_128_gcm() -> None:
    """Both daemons put TLS_AES_128_GCM_SHA256 first (OpenSSL's default order puts
    AES-256 first): as safe for a link, and less CPU per byte. The listening side's order
    decides, so a dialler offering AES-256 first still gets AES-128."""
    accepted: list[Protocol] = []
    port = await listen(accepted)
    try:
        for offered in (None, b"TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"):
            links = links_of(config(port.getHost().port))
            if offered is not None:
                dialler = client_options(config(1).peer)
                dialler.getContext().set_tls13_ciphersuites(offered)
                links.reconfigure(dialler, locator_of(config(port.getHost().port)))
            try:
                link = await links.get(HOST)
                assert isinstance(link, ClientLink)
                tls: Any = link.transport
                assert tls.getHandle().get_cipher_name() == "TLS_AES_128_GCM_SHA256"
            finally:
                links.close()
    finally:
        await stop(port, accepted)


def test_the_link_encrypts_a_whole_write_in_one_call() -> None:
    """Partial writes off: one SSL_write for a whole 256 KiB chunk, not one per record."""
    for options in (client_options(config(1).peer), server_options(config(1).peer, config(1).host)):
        assert options.getContext().set_mode(0) & MODE_ENABLE_PARTIAL_WRITE == 0
