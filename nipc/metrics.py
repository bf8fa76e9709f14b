"""Counters and latencies for monitoring: a Prometheus text endpoint (``[metrics] listen``).

Fed from the one place that sees every connection, not from counters sprinkled through
the code: the daemon's connection records (:mod:`nipc.connections`), whose audit sink this
is: a connection was spliced, and how long its handshake took; its audit line (refusals
with their errno, bytes of finished connections, violations). Gauges and the byte totals
of open connections are read from the records and the daemon's state at scrape time. Labels carry no
user, path or host, so the endpoint reveals nothing about who connects where.

Served by ``twisted.web`` on the reactor thread: a scrape reads the same state the reactor
changes, without locks and without taking a thread from the pool that Kerberos and the
impersonated connects need.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.protocol import ServerFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from nipc.connections import DIRECTIONS, Connection
from nipc.interfaces import IAuditSink
from nipc.limits import Limits

#: Handshake latency buckets (seconds): local connects take well under a millisecond, a
#: Kerberos handshake with a peer a few to a few hundred, a slow KDC seconds.
HANDSHAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 20.0)


@implementer(IAuditSink)
class Metrics:
    """The daemon's metrics in their own registry, fed by the daemon's own connection
    records (embedding never mixes two daemons')."""

    def __init__(self, limits: Limits,
                 links: Callable[[], list[dict[str, Any]]] = list,
                 log_dropped: Callable[[], int] = lambda: 0,
                 stuck: Callable[[], int] = lambda: 0) -> None:
        #: The spliced connections, told of by the records, to read their bytes.
        self.live: dict[str, Connection] = {}
        self.limits = limits
        #: The peer links now (as ``nipc status`` shows them).
        self.links = links
        #: Lines the [log] file could not take so far (:class:`nipc.logs.LogFile`).
        self.log_dropped = log_dropped
        #: Destination connects waiting in the kernel past their deadline (nipc.stuck).
        self.stuck = stuck
        self.registry = CollectorRegistry()
        self.routed = Counter(
            "nipc_routed_connections", "Connections routed (OK sent), by direction: outgoing "
            "(to a peer), local (to this host), incoming (from a peer)", ["direction"],
            registry=self.registry)
        self.refused = Counter(
            "nipc_refused_connections", "Connections refused, by direction and errno name",
            ["direction", "errno"], registry=self.registry)
        self.violations = Counter(
            "nipc_violations", "Routed connections torn down for a protocol violation (fd passing)",
            ["direction"], registry=self.registry)
        self.handshake = Histogram(
            "nipc_handshake_seconds", "Time from the request (local CONNECT, or a peer's HELLO) "
            "to OK", ["direction"], buckets=HANDSHAKE_BUCKETS, registry=self.registry)
        for direction in DIRECTIONS:
            self.routed.labels(direction)
            self.violations.labels(direction)
            self.handshake.labels(direction)
        #: Bytes of connections that have ended, by (direction, way); open ones are added
        #: at scrape time from their splices.
        self._ended_bytes = {(d, w): 0 for d in DIRECTIONS for w in ("in", "out")}
        self.registry.register(_Now(self))
        ProcessCollector(registry=self.registry)

    def opened(self, connection: Connection) -> None:
        """A connection was spliced."""
        self.live[connection.conn_id] = connection
        direction = connection.direction
        self.routed.labels(direction).inc()
        handshake = connection.facts.get("handshake")
        if isinstance(handshake, (int, float)):
            self.handshake.labels(direction).observe(handshake)

    def audited(self, connection: Connection, fields: dict[str, Any]) -> None:
        """A connection's audit line: it was refused, or it ended."""
        self.live.pop(connection.conn_id, None)
        direction = str(fields.get("direction", "outgoing"))
        if fields.get("result") == "refused":
            self.refused.labels(direction, str(fields.get("errno", "EPROTO"))).inc()
            return
        for way in ("in", "out"):
            key = (direction, way)
            self._ended_bytes[key] = self._ended_bytes.get(key, 0) + int(fields.get(f"bytes_{way}", 0))
        if fields.get("violation"):
            self.violations.labels(direction).inc()

    def byte_totals(self) -> dict[tuple[str, str], int]:
        totals = dict(self._ended_bytes)
        for live in self.live.values():
            totals[(live.direction, "in")] = totals.get((live.direction, "in"), 0) + live.bytes_in
            totals[(live.direction, "out")] = totals.get((live.direction, "out"), 0) + live.bytes_out
        return totals

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Now:
    """What is read from the daemon's state when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        open_now = GaugeMetricFamily("nipc_open_connections", "Routed connections open now",
                                     labels=["direction"])
        counts = {d: 0 for d in DIRECTIONS}
        for live in m.live.values():
            counts[live.direction] = counts.get(live.direction, 0) + 1
        for direction, n in sorted(counts.items()):
            open_now.add_metric([direction], n)
        yield open_now
        moved = CounterMetricFamily(
            "nipc_bytes", "Bytes spliced; way=in: from the caller towards the target, "
            "way=out: back to the caller (open connections included)", labels=["direction", "way"])
        for (direction, way), n in sorted(m.byte_totals().items()):
            moved.add_metric([direction, way], n)
        yield moved
        yield GaugeMetricFamily("nipc_pending_peer_handshakes",
                                "Peer links and channels accepted and still in their handshake",
                                value=m.limits.pending_peers)
        links = GaugeMetricFamily("nipc_peer_links", "TLS links to peer daemons open now; "
                                  "direction=dialled: this daemon opened it", labels=["direction"])
        channels = GaugeMetricFamily("nipc_peer_link_channels",
                                     "Routed connections (channels) open on the peer links",
                                     labels=["direction"])
        per: dict[str, list[int]] = {"dialled": [0, 0], "accepted": [0, 0]}
        for link in m.links():
            tally = per.setdefault(str(link.get("direction")), [0, 0])
            tally[0] += 1
            tally[1] += int(link.get("channels") or 0)
        for direction, (n, open_channels) in sorted(per.items()):
            links.add_metric([direction], n)
            channels.add_metric([direction], open_channels)
        yield links
        yield channels
        yield CounterMetricFamily("nipc_log_lines_dropped", "Log lines (audit lines included) "
                                  "the [log] file could not take: a full disk, an I/O error",
                                  value=m.log_dropped())
        yield GaugeMetricFamily("nipc_local_clients",
                                "Local client connections held (waiting, routing or spliced)",
                                value=m.limits.active)
        yield GaugeMetricFamily("nipc_inbound_connections",
                                "Connections peers routed to this host, open now",
                                value=m.limits.inbound)
        yield GaugeMetricFamily("nipc_destination_connects_stuck",
                                "Destination connects (and inbound ticket validations) whose "
                                "thread still waits in the kernel past its deadline (a hung "
                                "mount on the path, a hung account lookup)",
                                value=m.stuck())


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.text()


class _QuietSite(Site):
    """No access-log line per scrape."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)  # type: ignore[no-untyped-call]

    def log(self, request: Any) -> None:
        pass


def metrics_site(metrics: Metrics) -> ServerFactory[Any]:
    """``/metrics`` (the path Prometheus asks by default); anything else is 404."""
    root = Resource()
    root.putChild(b"metrics", MetricsPage(metrics))
    return _QuietSite(root)
