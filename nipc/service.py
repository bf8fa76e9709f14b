"""The daemon as a Twisted service: embeddable in any application, run by ``twistd nipc``."""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from nipc import __version__
from nipc import reload as reloading
from nipc.admin import AdminFactory
from nipc.admission import Admission, PeerAdmission, ServerLinkFactory, source_of
from nipc.client import check_gate
from nipc.compat import (
    AdoptedUNIXPort, GatePort, UnbufferedTLSFactory, lean_poll, systemd_listen_fds,
)
from nipc.config import Config, ConfigError, Import
from nipc.connections import Connections
from nipc.connector import ImpersonatedConnector
from nipc.discovery import PeerLocator
from nipc.errors import NipcError
from nipc.gate import GateServices, LocalGateFactory
from nipc.heap import HeapTrim
from nipc.inbound import Inbound
from nipc.interfaces import IDaemonReactor, IDaemonTickets
from nipc.kerberos import (
    Acceptor, KeytabError, check_keytab, ticket_source,
)
from nipc.krb5profile import ClockSkew
from nipc.limits import Descriptors, Limits, fds_needed, open_fds, raise_fd_limit
from nipc.link import ServerLink
from nipc.links import Links
from nipc.logs import LogFile, open_log
from nipc.notify import Notifier, monotonic_usec
from nipc.projection import Projection
from nipc.registry import Registry
from nipc.request import ConnectRequest
from nipc.router import Router
from nipc.session import MARGIN, Sessions
from nipc.stuck import StuckConnects
from nipc.tls import client_options, server_options, tune_tcp

if TYPE_CHECKING:
    from nipc.metrics import Metrics

log = Logger()
#: Signals whose default action (terminate) would end the daemon and every routed connection
#: without a word; each is logged and otherwise ignored. SIGHUP reloads, SIGUSR1 reopens the
#: log file (as nginx), SIGTERM and SIGINT drain and stop; SIGQUIT keeps its core dump.
STRAY_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO",
                                       "SIGPWR", "SIGSTKFLT") if hasattr(signal, name)
) + tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
#: How often STATUS= (systemd) is refreshed with the live counts, in seconds.
STATUS_INTERVAL = 5.0
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
    fds = systemd_listen_fds()
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


def listen_gate(reactor: IDaemonReactor, where: str, factory: LocalGateFactory, mode: int) -> GatePort:
    """What ``reactor.listenUNIX`` does, with a :class:`GatePort`."""
    # str, as listenUNIX takes it (unix.Port's annotation says bytes; both work)
    port = GatePort(where, factory, LISTEN_BACKLOG, mode, reactor, wantPID=False)  # type: ignore[arg-type]
    port.startListening()  # type: ignore[no-untyped-call]
    return port


class NipcService(Service):
    """Both endpoints of a NIPC daemon: the local gate and the peer listener."""

    def __init__(self, config: Config, reactor: IDaemonReactor | None = None,
                 source: str | Path | None = None,
                 logs: LogFile | None = None, notifier: Notifier | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            # The default (epoll) reactor provides all of it; its stub says less.
            reactor = cast(IDaemonReactor, default_reactor)
        self.config = config
        self.reactor = reactor
        #: The configuration file a reload reads again (None: nothing to reload).
        self.source = source
        self.logs = logs if logs is not None else LogFile()
        self.notifier = notifier if notifier is not None else Notifier()
        self.limits = Limits(config.limits, config.host, reactor.seconds, descriptors=Descriptors(
            config.host.name, reactor.seconds, open_fds,
            lambda count: deferToThreadPool(reactor, reactor.getThreadPool(), count)))
        #: Destination connects stuck in the kernel, local and inbound alike.
        self.stuck = StuckConnects(reactor, config.limits)
        #: The Prometheus metrics, if ``[metrics] listen`` asks for them.
        self.metrics = self._metrics()
        #: Every connection's record, shared by the gates and the receiving side; its audit
        #: sinks are this daemon's own (an embedding application may run two daemons).
        self.live = Connections(sinks=() if self.metrics is None else (self.metrics,))
        #: Peer links and their channels' handshakes, under the limits.
        self._peers = PeerAdmission(self.limits)
        self._ports: list[IListeningPort] = []
        #: The operators' sockets (admin, metrics): open while connections drain, to watch.
        self._watch_ports: list[IListeningPort] = []
        self._imports: dict[str, tuple[Import, GatePort]] = {}
        self._loops: list[LoopingCall] = []
        self._tickets: IDaemonTickets | None = None
        self._router: Router | None = None
        self._accepted_links: set[ServerLink] = set()
        self._started = 0.0
        self._ready = False
        self._draining = False
        self._reloading: Deferred[dict[str, Any]] | None = None
        self._clockskew: ClockSkew | None = None

    def startService(self) -> None:
        config, reactor = self.config, self.reactor
        if config.kerberos.krb5_config is not None:
            os.environ["KRB5_CONFIG"] = str(config.kerberos.krb5_config)
        try:
            check_keytab(config.host, config.kerberos)
        except KeytabError as e:  # it could never work: stop here, as for a config error
            raise SystemExit(f"nipc: cannot start: {e}") from None
        reactor.suggestThreadPoolSize(32)
        lean_poll(reactor)
        self._started = reactor.seconds()
        self.registry = registry = Registry()
        live, limits = self.live, self.limits
        self._tickets = tickets = ticket_source(reactor, config.host, config.kerberos)
        kerberos = config.kerberos  # updated in place by a reload (nipc.reload.adopt)
        # krb5's own clockskew (KRB5_CONFIG is set): what MIT adds to accepted contexts.
        self._clockskew = clockskew = ClockSkew()
        acceptor = Acceptor(config.host, config.kerberos)
        links = Links(reactor, config.timeouts, config.peer, self._peer_locator())
        stuck = self.stuck
        self._router = router = Router(
            reactor, config.host, config.peer, config.timeouts, tickets, registry, links,
            ImpersonatedConnector(reactor, config.host, config.timeouts, config.destinations,
                                  remote=False, stuck=stuck),
            # A sender keeps a session no longer than its caller's impersonated credentials;
            # both read at each use, so a reload applies to sessions already held.
            Sessions(lambda: min(kerberos.session_max, kerberos.caller_ticket_reuse),
                     allowance=MARGIN))
        fd_limit, needed = raise_fd_limit(), fds_needed(config.limits)
        if fd_limit < needed:
            log.warn("RLIMIT_NOFILE is {limit}, below the {needed} descriptors [limits] allow: "
                     "overload will be refused at the descriptor limit first (raise LimitNOFILE= "
                     "in nipcd.service)", limit=fd_limit, needed=needed)
        inbound = Inbound(reactor, config.host, config.peer, acceptor,
                          Projection(config.host, config.kerberos), registry, live, limits,
                          ImpersonatedConnector(reactor, config.host, config.timeouts,
                                                config.destinations, remote=True, stuck=stuck),
                          Sessions(lambda: kerberos.session_max,
                                   allowance=lambda: clockskew.seconds),
                          self._peers, stuck=stuck, timeouts=config.timeouts)

        self._inbound = inbound
        self._gates = gates = GateServices(reactor, config.timeouts, config.peer, router, registry,
                                           limits, live)
        reactor.callWhenRunning(self._warm, tickets, acceptor)
        self._every(HeapTrim.INTERVAL, HeapTrim(live))
        self._every(STATUS_INTERVAL, self._tell_status)
        path = str(config.local.socket)
        self._inherited = inherited = inherited_listeners(config.peer.port)
        unknown = set(inherited) - {path, "peer", *(str(i.socket) for i in config.imports)}
        if unknown:
            raise RuntimeError(f"socket activation: no use for {', '.join(sorted(unknown))}: "
                               "expected [local] socket, an import's socket, or the peer port")
        if path not in inherited:  # systemd's socket is neither stale nor ours to remove
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            clear_stale_socket(path)  # before anything else: never race a live daemon
        # Peers next: the local socket accepting is the sign that the daemon is ready.
        peer_factory = self._peer_factory(server_options(config.peer, config.host))
        peer_socket = inherited.pop("peer", None)
        # A TCP port either way: its socket (listen backlog) and factory (reload) are used.
        peer_port: tcp.Port
        if peer_socket is None:
            peer_port = cast(tcp.Port, reactor.listenTCP(config.peer.port, peer_factory,
                                                         interface=config.peer.listen,
                                                         backlog=LISTEN_BACKLOG))
        else:
            peer_port = cast(tcp.Port, reactor.adoptStreamPort(
                peer_socket.fileno(), peer_socket.family, peer_factory))
            peer_socket.close()  # the port holds its own duplicate
            peer_port.socket.listen(LISTEN_BACKLOG)
            bound = peer_port.getHost()
            log.info("socket activation: adopted the peer port {addr}:{port} from systemd",
                     addr=bound.host, port=bound.port)
        self._ports.append(peer_port)
        self._peer_port = peer_port
        self._start_admin()
        self._start_metrics()
        gate_port: GatePort | None = self._adopt_unix(path, LocalGateFactory(gates))
        if gate_port is None:
            gate_port = listen_gate(reactor, path, LocalGateFactory(gates), config.local.mode)
            os.chown(path, config.local.owner, config.local.group)
        self._ports.append(gate_port)
        self._gate_port = gate_port
        self._check_gate(path)
        for imported in config.imports:
            self._open_import(imported)
        peer_addr = peer_port.getHost()
        log.info("nipcd {host} serving {path} and peers on {addr}:{port} ({mode})",
                 host=config.host.name, path=path, addr=peer_addr.host,
                 port=peer_addr.port, mode=config.kerberos.mode.value)
        self._handle_signals()
        watchdog = self.notifier.start_watchdog(reactor)
        if watchdog is not None:
            self._loops.append(watchdog)
        super().startService()  # type: ignore[no-untyped-call]

    def _every(self, interval: float, work: Callable[[], object]) -> None:
        loop = LoopingCall(work)
        loop.clock = self.reactor
        loop.start(interval, now=False)
        self._loops.append(loop)

    def _peer_factory(self, tls: CertificateOptions) -> Admission:
        """What accepts peer links: admission, then TLS with ``tls``, then the link."""
        tls_factory = UnbufferedTLSFactory(tls, False, ServerLinkFactory(self._peer_link))
        return Admission(tls_factory, self.limits)

    def _peer_locator(self) -> PeerLocator:
        """Finds peer daemons by [peers] and [dns] as they are now (a reload makes a new one)."""
        config = self.config
        return PeerLocator(self.reactor, config.dns, config.peers, config.peer.port)

    def _peer_link(self, addr: IAddress) -> ServerLink:
        config = self.config
        return ServerLink(self.reactor, partial(tune_tcp, timeouts=config.timeouts), self._inbound,
                          self._peers.link(source_of(addr)), config.timeouts.handshake,
                          self._accepted_links, config.timeouts.link_idle,
                          config.limits.peer_handshakes_per_second, config.timeouts.link_ping)

    def _open_import(self, imported: Import) -> None:
        """Listen on an import's socket (or adopt systemd's for it)."""
        where = str(imported.socket)
        factory = LocalGateFactory(self._gates, ConnectRequest(imported.path, imported.host))
        port: GatePort | None = self._adopt_unix(where, factory)
        if port is None:
            os.makedirs(os.path.dirname(where), mode=0o755, exist_ok=True)
            clear_stale_socket(where)
            port = listen_gate(self.reactor, where, factory, imported.mode)
            os.chown(where, imported.owner, imported.group)
        self._ports.append(port)
        self._imports[where] = (imported, port)
        log.info("import {socket} -> {target}", socket=where,
                 target=f"{imported.path}@{imported.host}")

    def _check_gate(self, path: str) -> None:
        """Clients refuse a gate socket another user could have put in place
        (:func:`nipc.client.check_gate`): say so at start, where the operator looks."""
        try:
            check_gate(path, self.config.local.owner)
        except OSError as e:
            log.warn("clients will refuse this daemon's gate socket: {error}", error=e.strerror)

    def _adopt_unix(self, where: str, factory: LocalGateFactory) -> AdoptedUNIXPort | None:
        """Serve ``where`` on the socket systemd passed for it, if it did (socket activation):
        its owner, group and mode are the socket unit's, not the config's."""
        sock = self._inherited.pop(where, None)
        if sock is None:
            return None
        port = AdoptedUNIXPort.adopt(self.reactor, sock, factory)
        sock.close()  # the port holds its own duplicate
        st = os.stat(where)
        port.mode = stat.S_IMODE(st.st_mode)  # Twisted chmods it: keep systemd's
        port.backlog = LISTEN_BACKLOG
        port.startListening()  # type: ignore[no-untyped-call]
        log.info("socket activation: adopted {path} from systemd (mode {mode:04o}, uid {uid}, "
                 "gid {gid}: the socket unit's, not the config's)",
                 path=where, mode=port.mode, uid=st.st_uid, gid=st.st_gid)
        return port

    def _start_admin(self) -> None:
        """The admin socket (``nipc status``): root's alone, or root:group 0660."""
        config, admin = self.config, self.config.admin_socket_path
        if admin is None:
            return
        where = str(admin)
        os.makedirs(os.path.dirname(where), mode=0o755, exist_ok=True)
        clear_stale_socket(where)
        group = config.admin.group
        factory = AdminFactory(self.reactor, group, self.status, config.timeouts.request,
                               self.reload)
        self._watch_ports.append(self.reactor.listenUNIX(
            where, factory, mode=0o600 if group is None else 0o660, wantPID=False))
        if group is not None:
            os.chown(where, -1, group)
        log.info("admin socket {path} (root{group})", path=where,
                 group="" if group is None else f" and gid {group}")

    def _metrics(self) -> Metrics | None:
        if self.config.metrics.listen is None:
            return None
        from nipc.metrics import Metrics  # prometheus_client only when used

        return Metrics(self.limits, self._links_now, lambda: self.logs.dropped,
                       lambda: len(self.stuck))

    def _start_metrics(self) -> None:
        """The Prometheus endpoint, if ``[metrics] listen`` asks for one."""
        where, metrics = self.config.metrics.listen, self.metrics
        if where is None or metrics is None:
            return
        from nipc.metrics import metrics_site

        self._watch_ports.append(self.reactor.listenTCP(where.port, metrics_site(metrics),
                                                        interface=where.host))
        log.info("metrics on http://{addr}:{port}/metrics", addr=where.host, port=where.port)

    def status(self) -> dict[str, Any]:
        """The admin socket's ``STATUS`` answer."""
        return {
            "host": self.config.host.name,
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(self.reactor.seconds() - self._started, 3),
            "connections": self.live.snapshot(),
            "local_clients": self.limits.active,
            "inbound_connections": self.limits.inbound,
            "pending_peer_handshakes": self.limits.pending_peers,
            "links": self._links_now(),
        }

    def _links_now(self) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        dialled = self._router.links.describe(now) if self._router is not None else []
        accepted = [dict(link.describe(now), host="-", direction="accepted")
                    for link in sorted(self._accepted_links, key=lambda link: link.peer)]
        return dialled + accepted

    def _warm(self, tickets: IDaemonTickets, acceptor: Acceptor) -> None:
        """Kerberos work the first caller should not wait for, done as the daemon starts."""
        tickets.warm()

        def loaded(_: object, status: str | None = None) -> None:
            """Sockets listen (startService) and the keytab loaded: ready for systemd."""
            self._ready = True
            self.notifier.send(READY=1, STATUS=status or self._status_line(),
                               MAINPID=os.getpid())

        def failed(f: Failure) -> None:
            """An unreachable KDC is a warning (callers retry); anything else means peers'
            tickets and this daemon's own fail until an operator acts: critical."""
            error = f.getErrorMessage()
            if isinstance(f.value, NipcError) and f.value.errno_name in ("EHOSTUNREACH",
                                                                         "ETIMEDOUT"):
                log.warn("cannot load the keytab {keytab}: {error}",
                         keytab=str(self.config.kerberos.keytab), error=error)
                # The keys are there; the KDC (for this daemon's own TGT) is away for now,
                # and callers retry: ready, or systemd would kill a daemon that serves.
                loaded(None, f"ready, but the KDC is unreachable for now: {error}")
                return
            log.critical("this host's keytab does not work: {error}", error=error)
            self.notifier.send(STATUS=f"not ready: cannot load the keytab: {error}")

        if self._draining:
            return
        deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                          acceptor.warm).addCallbacks(loaded, failed)

    def _status_line(self) -> str:
        links = len(self._links_now())
        return (f"{len(self.live)} connection(s), {self.limits.active} local client(s), "
                f"{links} peer link(s)")

    def _tell_status(self) -> None:
        """STATUS= for ``systemctl status``, refreshed with the live counts."""
        if self._ready and not self._draining:
            self.notifier.status(self._status_line())

    # -- signals ------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        """SIGHUP reloads, SIGUSR1 reopens the log file, stray signals are logged instead of
        ending the daemon. Handlers only hand the work to the reactor thread."""
        def on(signum: int, work: Callable[[], object]) -> None:
            signal.signal(signum, lambda *_: self.reactor.callFromThread(work))

        def stray(signum: int) -> Callable[[], None]:
            name = (f"SIGRTMIN+{signum - signal.SIGRTMIN}" if signum >= signal.SIGRTMIN
                    else signal.Signals(signum).name)
            return lambda: log.warn("ignoring signal {signal} ({name}): it means nothing to "
                                    "nipcd (SIGHUP reloads, SIGUSR1 reopens the log file, "
                                    "SIGTERM stops)", signal=signum, name=name)

        on(signal.SIGHUP, self._reload_on_signal)
        on(signal.SIGUSR1, self._reopen_log)
        for signum in STRAY_SIGNALS:
            on(signum, stray(signum))

    def _reopen_log(self) -> None:
        if self.logs.path is None:
            log.info("SIGUSR1: no [log] file to reopen")
            return
        try:
            self.logs.reopen()
        except ConfigError as e:
            log.error("SIGUSR1: cannot reopen the log file: {error}; still logging to the old one",
                      error=str(e))
        else:
            log.info("SIGUSR1: log file {path} reopened", path=str(self.logs.path))

    def _reload_on_signal(self) -> None:
        self.reload().addErrback(lambda _: None)  # refused: logged by reload itself

    # -- reload -------------------------------------------------------------------------

    def reload(self) -> "Deferred[dict[str, Any]]":
        """Read the configuration file again and apply it to new connections (SIGHUP, the
        admin socket's RELOAD). Fires with what changed, or fails with the ConfigError that
        refused it, the running configuration untouched. Reloads never overlap: one asked
        for during another runs after it."""
        if self.source is None:
            return fail(ConfigError("this daemon was started without a configuration file"))
        if self._draining:
            return fail(ConfigError("the daemon is stopping; nothing to reload"))
        if self._reloading is not None:
            after: Deferred[dict[str, Any]] = Deferred()
            self._reloading.addBoth(lambda _: self.reload().chainDeferred(after))
            return after
        source = self.source
        log.info("reloading the configuration from {path}", path=str(source))
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(),
                           STATUS=f"reloading {source}")

        def prepare() -> tuple[reloading.Reloaded, CertificateOptions, CertificateOptions]:
            """Off the reactor: files, NSS, PEM parsing. Nothing is applied yet."""
            new = reloading.prepare(self.config, source)
            if self._clockskew is not None:  # krb5's, not ours: in force however this ends
                self._clockskew.reread()
            try:
                peer = new.config.peer
                return new, server_options(peer, new.config.host), client_options(peer)
            except Exception as e:
                raise ConfigError(f"[peer] TLS: {e}") from None

        def done(result: Any) -> Any:
            self._reloading = None
            if self._ready and not self._draining:
                self.notifier.send(READY=1, STATUS=self._status_line())
            if isinstance(result, Failure):
                error = result.value if result.check(ConfigError) else result.getErrorMessage()
                if not result.check(ConfigError):
                    log.failure("reload failed", result)
                log.error("reload refused, the running configuration stays in force: {error}",
                          error=str(error))
                self.notifier.send(STATUS=f"reload refused: {error}")
            return result

        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), prepare)
        d.addCallback(lambda prepared: self._apply(*prepared))
        self._reloading = d.addBoth(done)
        return self._reloading

    def _apply(self, new: reloading.Reloaded, server_tls: CertificateOptions,
               client_tls: CertificateOptions) -> dict[str, Any]:
        """Make ``new`` the running configuration (reactor thread). What can still fail
        (the log file, new import sockets) is done first and undone on failure."""
        config = self.config
        logfile = open_log(new.config.log.file)
        wanted = {str(i.socket): i for i in new.config.imports}
        opened: list[str] = []
        try:
            for where, imported in wanted.items():
                if where not in self._imports:
                    self._open_import(imported)
                    opened.append(where)
        except Exception as e:
            for where in opened:
                self._close_import(where)
            if logfile is not None:
                logfile.close()
            raise ConfigError(f"imports: {e}") from None
        previous_owner = (config.local.owner, config.local.group, config.local.mode)
        reloading.adopt(config, new.config)
        # From here on nothing fails: the rest follows the settings just adopted.
        self.logs.switch(config.log.file, logfile)
        old_factory, self._peer_port.factory = self._peer_port.factory, self._peer_factory(server_tls)
        self._peer_port.factory.doStart()
        assert old_factory is not None
        old_factory.doStop()
        if self._router is not None:
            self._router.links.reconfigure(client_tls, self._peer_locator())
        for where in list(self._imports):
            if where not in wanted:
                self._close_import(where)
            elif wanted[where] != self._imports[where][0]:
                self._change_import(wanted[where])
        gate = str(config.local.socket)
        if previous_owner != (config.local.owner, config.local.group, config.local.mode) \
                and not self._gate_port.socket_unit:
            os.chmod(gate, config.local.mode)
            os.chown(gate, config.local.owner, config.local.group)
        for key in new.restart_needed:
            log.warn("reload: {key} changed in {path}, but only a restart applies it (the "
                     "running value stays)", key=key, path=str(self.source))
        log.info("configuration reloaded from {path}: changed {changed}", path=str(self.source),
                 changed=", ".join(new.changed) or "nothing")
        return new.describe()

    def _close_import(self, where: str) -> None:
        _, port = self._imports.pop(where)
        if port in self._ports:
            self._ports.remove(port)
        listening: IListeningPort = port
        listening.stopListening()
        log.info("import {socket} removed", socket=where)

    def _change_import(self, imported: Import) -> None:
        """Same socket, new target or permissions: the socket stays, so do its clients."""
        where = str(imported.socket)
        _, port = self._imports[where]
        port.factory = LocalGateFactory(self._gates, ConnectRequest(imported.path, imported.host))
        if not port.socket_unit:
            os.chmod(where, imported.mode)
            os.chown(where, imported.owner, imported.group)
        self._imports[where] = (imported, port)
        log.info("import {socket} -> {target}", socket=where,
                 target=f"{imported.path}@{imported.host}")

    # -- stopping -----------------------------------------------------------------------

    def stopService(self) -> "Deferred[Any]":
        """Stop accepting (the gate, peer and import sockets close), let routed connections
        finish for up to ``[timeouts] drain`` seconds, then close what is left; the admin
        socket and the metrics endpoint close last, so operators can watch the drain."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._draining = True
        self._peers.close()
        self.notifier.send(STOPPING=1, STATUS=f"stopping: draining {len(self.live)} connection(s)")
        ports, self._ports = self._ports, []
        self._imports = {}
        d = DeferredList([maybeDeferred(p.stopListening) for p in ports])
        d.addCallback(lambda _: self._drain())
        d.addCallback(lambda _: self._stopped())
        d.addCallback(lambda _: DeferredList([maybeDeferred(p.stopListening)
                                              for p in self._watch_ports]))
        return d

    def _drain(self) -> "Deferred[None]":
        """Fires once no connection is left, or at the drain deadline after closing the rest."""
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + self.config.timeouts.drain
        if self.live or self.limits.active:
            log.info("stopping: draining {count} connection(s) for up to {seconds:g}s",
                     count=len(self.live), seconds=self.config.timeouts.drain)

        def check() -> None:
            # limits.inbound: also channels still in their handshake, whose refusal (the
            # closed PeerAdmission: the daemon is stopping) must leave before the process ends.
            if not self.live and not self.limits.active and not self.limits.inbound:
                poll.stop()
                done.callback(None)
            elif self.reactor.seconds() >= deadline:
                poll.stop()
                log.warn("stopping: drain time ({seconds:g}s) is up; closing {count} "
                         "connection(s)", seconds=self.config.timeouts.drain, count=len(self.live))
                self.live.abort_all()
                done.callback(None)

        poll = LoopingCall(check)
        poll.clock = self.reactor
        poll.start(0.1, now=True)
        return done

    def _stopped(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._tickets is not None:
            self._tickets.stop()
        if self._router is not None:
            self._router.links.close()
        self.notifier.close()
