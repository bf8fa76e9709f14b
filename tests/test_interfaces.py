"""Every component provides the interfaces it declares at NIPC's seams (nipc/interfaces.py):
zope.interface.verify checks the methods and their arguments, so a fake built from an
interface and the real thing cannot drift apart unseen."""

from __future__ import annotations

import time

import pytest
from zope.interface import Interface
from zope.interface.verify import verifyClass, verifyObject

from nipc import interfaces
from nipc.admission import LinkAdmission, PeerAdmission
from nipc.config import from_mapping
from nipc.connections import Connections
from nipc.discovery import PeerLocator
from nipc.inbound import Inbound
from nipc.kerberos import Acceptor, Delegated, OwnCredentialCache, ProtocolTransition
from nipc.limits import Limits
from nipc.links import Links
from nipc.metrics import Metrics
from nipc.projection import Projection
from nipc.registry import Registry
from nipc.router import Router

CONFIG = from_mapping({"host": {"name": "a.test", "realm": "T"},
                       "kerberos": {"keytab": "/k", "principal": "p@T"}})

DECLARED: list[tuple[type, type[Interface]]] = [
    (ProtocolTransition, interfaces.IDaemonTickets),
    (OwnCredentialCache, interfaces.IDaemonTickets),
    (Delegated, interfaces.ITicketSource),
    (Acceptor, interfaces.IAcceptor),
    (Projection, interfaces.IProjection),
    (Router, interfaces.IRouter),
    (PeerLocator, interfaces.IPeerLocator),
    (Links, interfaces.ILinks),
    (Inbound, interfaces.IInboundHandler),
    (Limits, interfaces.ICallerAdmission),
    (Limits, interfaces.IPeerAdmission),
    (Limits, interfaces.IInboundAdmission),
    (Registry, interfaces.IRegistry),
    (Connections, interfaces.IConnections),
    (Metrics, interfaces.IAuditSink),
    (LinkAdmission, interfaces.ILinkAdmission),
]


@pytest.mark.parametrize(("cls", "iface"), DECLARED,
                         ids=[f"{c.__name__}-{i.__name__}" for c, i in DECLARED])
def test_class_implements_its_interface(cls: type, iface: type[Interface]) -> None:
    assert iface.implementedBy(cls)
    assert verifyClass(iface, cls)


def test_daemon_ticket_sources_are_ticket_sources() -> None:
    """The router takes any ticket source; the service needs one it can warm and stop."""
    assert interfaces.IDaemonTickets.extends(interfaces.ITicketSource)
    for source in (ProtocolTransition(None, CONFIG.host, CONFIG.kerberos),
                   OwnCredentialCache(None, CONFIG.kerberos)):
        assert verifyObject(interfaces.IDaemonTickets, source)
    assert not interfaces.IDaemonTickets.providedBy(Delegated(None, None, "alice@T"))


def test_objects_provide_their_interfaces() -> None:
    limits = Limits(CONFIG.limits, CONFIG.host, time.monotonic)
    for iface in (interfaces.ICallerAdmission, interfaces.IPeerAdmission,
                  interfaces.IInboundAdmission):
        assert verifyObject(iface, limits)
    assert verifyObject(interfaces.IRegistry, Registry())
    assert verifyObject(interfaces.IConnections, Connections())
    assert verifyObject(interfaces.IProjection, Projection(CONFIG.host, CONFIG.kerberos))
    assert verifyObject(interfaces.IAcceptor, Acceptor(CONFIG.host, CONFIG.kerberos))
    assert verifyObject(interfaces.IAuditSink, Metrics(limits))
    assert verifyObject(interfaces.ILinkAdmission, PeerAdmission(limits).link("192.0.2.1"))
