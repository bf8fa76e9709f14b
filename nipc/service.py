"""The daemon as a Twisted service: embeddable in any application, run by ``twistd nipc``."""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from nipc import audit
from nipc.admin import AdminFactory, Connections
from nipc.config import Config
from nipc.gate import GateServices, LocalGateFactory
from nipc.inbound import Inbound
from nipc.kerberos import Acceptor, ticket_source
from nipc.limits import Limits
from nipc.peer import Admission, PeerServer, PeerServerFactory, source_of
from nipc.registry import Registry
from nipc.request import ConnectRequest
from nipc.router import Router
from nipc.tls import UnbufferedTLSFactory, server_options, tune_tcp

log = Logger()
#: Bursts of connects wait in the kernel instead of failing with EAGAIN (Twisted's
#: default is 50); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse to touch a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            raise RuntimeError(f"cannot tell whether {path} is in use: {e.strerror}") from None
        log.info("removing stale socket {path} (nobody listening)", path=path)
        os.unlink(path)
    else:
        raise RuntimeError(f"another process is serving {path}; not starting a second daemon")
    finally:
        probe.close()


class NipcService(Service):
    """Both endpoints of a NIPC daemon: the local gate and the peer listener."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self._ports: list[Any] = []
        self._observers: list[Any] = []
        self._started = 0.0

    def startService(self) -> None:
        config, reactor = self.config, self.reactor
        if config.krb5_config is not None:
            os.environ["KRB5_CONFIG"] = str(config.krb5_config)
        reactor.suggestThreadPoolSize(32)
        self._started = reactor.seconds()
        self.registry = registry = Registry()
        self.live = live = Connections()
        router = Router(reactor, config, ticket_source(reactor, config), registry)
        inbound = Inbound(reactor, config, Acceptor(config), registry, live)

        self.limits = limits = Limits(config, reactor.seconds)
        gates = GateServices(reactor, config, router, registry, limits, live)

        def peer_server(addr: Any) -> PeerServer:
            source = source_of(addr)
            return PeerServer(lambda tls: tune_tcp(tls, config), inbound.hello, reactor,
                              config.handshake_timeout, lambda: limits.peer_settled(source))

        path = str(config.socket_path)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        clear_stale_socket(path)  # before anything else: never race a live daemon
        # Peers next: the local socket accepting is the sign that the daemon is ready.
        tls_factory = UnbufferedTLSFactory(
            server_options(config.host_name), False, PeerServerFactory(peer_server)
        )
        self._ports.append(reactor.listenTCP(
            config.listen_port, Admission(tls_factory, limits.peer_arrived),
            interface=config.listen_address,
            backlog=LISTEN_BACKLOG,
        ))
        self._start_admin()
        self._start_metrics()
        self._ports.append(reactor.listenUNIX(
            path, LocalGateFactory(gates), mode=config.socket_mode,
            wantPID=False, backlog=LISTEN_BACKLOG,
        ))
        os.chown(path, config.socket_owner, config.socket_group)
        for imported in config.imports:
            where = str(imported.socket)
            os.makedirs(os.path.dirname(where), mode=0o755, exist_ok=True)
            clear_stale_socket(where)
            target = ConnectRequest(imported.path, imported.host)
            self._ports.append(reactor.listenUNIX(
                where, LocalGateFactory(gates, target),
                mode=imported.mode, wantPID=False, backlog=LISTEN_BACKLOG,
            ))
            os.chown(where, imported.owner, imported.group)
            log.info("import {socket} -> {target}", socket=where, target=target.target)
        log.info("nipcd {host} serving {path} and peers on {addr}:{port} ({mode})",
                 host=config.host_name, path=path, addr=config.listen_address,
                 port=config.listen_port, mode=config.mode.value)
        super().startService()  # type: ignore[no-untyped-call]

    def _start_admin(self) -> None:
        """The admin socket (``nipc status``): root's alone, or root:group 0660."""
        config, admin = self.config, self.config.admin_socket_path
        if admin is None:
            return
        where = str(admin)
        os.makedirs(os.path.dirname(where), mode=0o755, exist_ok=True)
        clear_stale_socket(where)
        group = config.admin_group
        factory = AdminFactory(self.reactor, group, self.status, config.request_timeout)
        self._ports.append(self.reactor.listenUNIX(
            where, factory, mode=0o600 if group is None else 0o660, wantPID=False))
        if group is not None:
            os.chown(where, -1, group)
        log.info("admin socket {path} (root{group})", path=where,
                 group="" if group is None else f" and gid {group}")

    def _start_metrics(self) -> None:
        """The Prometheus endpoint, if ``[metrics] listen`` asks for one."""
        where = self.config.metrics_listen
        if where is None:
            return
        from nipc.metrics import Metrics, metrics_site  # prometheus_client only when used

        self.metrics = metrics = Metrics(self.live, self.limits)
        audit.observers.append(metrics.audited)
        self._observers.append(metrics.audited)
        self._ports.append(self.reactor.listenTCP(where.port, metrics_site(metrics),
                                                  interface=where.host))
        log.info("metrics on http://{addr}:{port}/metrics", addr=where.host, port=where.port)

    def status(self) -> dict[str, Any]:
        """The admin socket's ``STATUS`` answer."""
        return {
            "host": self.config.host_name,
            "pid": os.getpid(),
            "uptime": round(self.reactor.seconds() - self._started, 3),
            "connections": self.live.snapshot(),
            "local_clients": self.limits.active,
            "pending_peer_handshakes": self.limits.pending_peers,
        }

    def stopService(self) -> "Deferred[Any]":
        super().stopService()  # type: ignore[no-untyped-call]
        for observer in self._observers:
            audit.observers.remove(observer)
        self._observers = []
        ports, self._ports = self._ports, []
        return DeferredList([maybeDeferred(p.stopListening) for p in ports])
