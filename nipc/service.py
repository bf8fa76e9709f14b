"""The daemon as a Twisted service: embeddable in any application, run by ``twistd nipc``."""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.systemd import ListenFDs  # see inherited_listeners

from nipc import audit
from nipc.admin import AdminFactory, Connections
from nipc.config import Config
from nipc.gate import GateServices, LocalGateFactory
from nipc.heap import HeapTrim
from nipc.inbound import Inbound
from nipc.kerberos import Acceptor, ProtocolTransition, TicketSource, ticket_source
from nipc.limits import Limits
from nipc.peer import Admission, ServerLink, ServerLinkFactory, source_of
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


_activation_taken = False


def inherited_listeners(peer_port: int) -> dict[str, socket.socket]:
    """Listening sockets systemd passed to this process (socket activation; none otherwise,
    and none the second time): Unix sockets under their path; as ``peer`` the TCP socket
    named so (``FileDescriptorName=peer``) or bound to ``peer_port``; others as ``host:port``."""
    global _activation_taken
    if _activation_taken:
        return {}
    _activation_taken = True
    # Twisted's ``systemd:`` endpoint parser reads the environment (and removes LISTEN_PID
    # and LISTEN_FDS from it) when twisted.internet.endpoints is imported, long before any
    # service starts: ask it, it is the only one left who knows.
    from twisted.internet.endpoints import _SystemdParser

    fds: ListenFDs = _SystemdParser._sddaemon
    os.environ.pop("LISTEN_FDNAMES", None)  # nor should children see the names
    named_peer = fds.inheritedNamedDescriptors().get("peer")
    found: dict[str, socket.socket] = {}
    for fd in fds.inheritedDescriptors():
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                                  socket.SO_ACCEPTCONN):
            raise RuntimeError(f"socket activation: fd {fd} is not a listening stream socket")
        sock.setblocking(False)
        where = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            key = str(where)
        elif fd == named_peer or where[1] == peer_port:
            key = "peer"
        else:
            key = f"{where[0]}:{where[1]}"
        if key in found:
            raise RuntimeError(f"socket activation: more than one socket for {key}")
        found[key] = sock
    return found


class AdoptedUNIXPort(unix.Port):
    """A Unix socket systemd listens on for the daemon (socket activation). The file is the
    socket unit's: it keeps the owner, group and mode systemd gave it and outlives the daemon,
    so clients queue on it across restarts."""

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # not unix.Port's, which unlinks the file




class NipcService(Service):
    """Both endpoints of a NIPC daemon: the local gate and the peer listener."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self._ports: list[Any] = []
        self._trim: LoopingCall | None = None
        self._tickets: TicketSource | None = None
        self._router: Router | None = None
        self._accepted_links: set[ServerLink] = set()
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
        self._tickets = tickets = ticket_source(reactor, config)
        acceptor = Acceptor(config)
        self._router = router = Router(reactor, config, tickets, registry)
        inbound = Inbound(reactor, config, acceptor, registry, live)

        self.limits = limits = Limits(config, reactor.seconds)
        gates = GateServices(reactor, config, router, registry, limits, live)
        reactor.callWhenRunning(self._warm, tickets, acceptor)
        self._trim = LoopingCall(HeapTrim(live))
        self._trim.clock = reactor
        self._trim.start(HeapTrim.INTERVAL, now=False)

        def peer_server(addr: Any) -> ServerLink:
            source = source_of(addr)

            def admit_channel() -> Callable[[], None] | None:
                """Each channel's handshake counts as pending too (it costs a thread)."""
                if not limits.peer_arrived(source):
                    return None
                return lambda: limits.peer_settled(source)

            return ServerLink(reactor, lambda tls: tune_tcp(tls, config), inbound.hello,
                              config.handshake_timeout, lambda: limits.peer_settled(source),
                              admit_channel, self._accepted_links, config.link_idle)

        path = str(config.socket_path)
        self._inherited = inherited = inherited_listeners(config.listen_port)
        unknown = set(inherited) - {path, "peer", *(str(i.socket) for i in config.imports)}
        if unknown:
            raise RuntimeError(f"socket activation: no use for {', '.join(sorted(unknown))}: "
                               "expected [local] socket, an import's socket, or the peer port")
        if path not in inherited:  # systemd's socket is neither stale nor ours to remove
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            clear_stale_socket(path)  # before anything else: never race a live daemon
        # Peers next: the local socket accepting is the sign that the daemon is ready.
        tls_factory = UnbufferedTLSFactory(
            server_options(config), False, ServerLinkFactory(peer_server)
        )
        peer_factory = Admission(tls_factory, limits.peer_arrived)
        peer_socket = inherited.pop("peer", None)
        if peer_socket is None:
            peer_port = reactor.listenTCP(config.listen_port, peer_factory,
                                          interface=config.listen_address,
                                          backlog=LISTEN_BACKLOG)
        else:
            peer_port = reactor.adoptStreamPort(peer_socket.fileno(), peer_socket.family,
                                                peer_factory)
            peer_socket.close()  # the port holds its own duplicate
            peer_port.socket.listen(LISTEN_BACKLOG)
            bound = peer_port.getHost()
            log.info("socket activation: adopted the peer port {addr}:{port} from systemd",
                     addr=bound.host, port=bound.port)
        self._ports.append(peer_port)
        self._start_admin()
        self._start_metrics()
        if not self._adopt_unix(path, LocalGateFactory(gates)):
            self._ports.append(reactor.listenUNIX(
                path, LocalGateFactory(gates), mode=config.socket_mode,
                wantPID=False, backlog=LISTEN_BACKLOG,
            ))
            os.chown(path, config.socket_owner, config.socket_group)
        for imported in config.imports:
            where = str(imported.socket)
            target = ConnectRequest(imported.path, imported.host)
            if not self._adopt_unix(where, LocalGateFactory(gates, target)):
                os.makedirs(os.path.dirname(where), mode=0o755, exist_ok=True)
                clear_stale_socket(where)
                self._ports.append(reactor.listenUNIX(
                    where, LocalGateFactory(gates, target),
                    mode=imported.mode, wantPID=False, backlog=LISTEN_BACKLOG,
                ))
                os.chown(where, imported.owner, imported.group)
            log.info("import {socket} -> {target}", socket=where, target=target.target)
        peer_addr = peer_port.getHost()
        log.info("nipcd {host} serving {path} and peers on {addr}:{port} ({mode})",
                 host=config.host_name, path=path, addr=peer_addr.host,
                 port=peer_addr.port, mode=config.mode.value)
        super().startService()  # type: ignore[no-untyped-call]

    def _adopt_unix(self, where: str, factory: LocalGateFactory) -> bool:
        """Serve ``where`` on the socket systemd passed for it, if it did (socket activation):
        its owner, group and mode are the socket unit's, not the config's."""
        sock = self._inherited.pop(where, None)
        if sock is None:
            return False
        # What reactor.adoptStreamPort does, with the subclass that leaves the file alone.
        port = AdoptedUNIXPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
            self.reactor, sock.fileno(), factory)
        sock.close()  # the port holds its own duplicate
        st = os.stat(where)
        port.mode = stat.S_IMODE(st.st_mode)  # Twisted chmods it: keep systemd's
        port.backlog = LISTEN_BACKLOG
        port.startListening()
        self._ports.append(port)
        log.info("socket activation: adopted {path} from systemd (mode {mode:04o}, uid {uid}, "
                 "gid {gid}: the socket unit's, not the config's)",
                 path=where, mode=port.mode, uid=st.st_uid, gid=st.st_gid)
        return True

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

        self.metrics = metrics = Metrics(self.live, self.limits, self._links_now)
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
            "links": self._links_now(),
        }

    def _links_now(self) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        dialled = self._router.links.describe(now) if self._router is not None else []
        accepted = [dict(link.describe(now), host="-", direction="accepted")
                    for link in sorted(self._accepted_links, key=lambda link: link.peer)]
        return dialled + accepted

    def _warm(self, tickets: TicketSource, acceptor: Acceptor) -> None:
        """Kerberos work the first caller should not wait for, done as the daemon starts."""
        if isinstance(tickets, ProtocolTransition):
            tickets.warm()
        deferToThreadPool(self.reactor, self.reactor.getThreadPool(), acceptor.warm).addErrback(
            lambda f: log.warn("cannot load the keytab {keytab}: {error}",
                               keytab=str(self.config.keytab), error=f.getErrorMessage()))

    def stopService(self) -> "Deferred[Any]":
        super().stopService()  # type: ignore[no-untyped-call]
        if self._trim is not None and self._trim.running:
            self._trim.stop()
        if isinstance(self._tickets, ProtocolTransition):
            self._tickets.stop()
        if self._router is not None:
            self._router.links.close()
        for observer in self._observers:
            audit.observers.remove(observer)
        self._observers = []
        ports, self._ports = self._ports, []
        return DeferredList([maybeDeferred(p.stopListening) for p in ports])

