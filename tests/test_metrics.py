"""The Prometheus endpoint: off by default, counts from the connection records (their audit
lines, and the connections spliced now).

Unit tests of the counting; a real daemon on this host scraped over loopback; and in the
sandbox a's endpoint scraped from inside a's network namespace after a routed and a
refused connection to b.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.logger import Logger

from conftest import require_root
from local_daemon import LocalDaemon, metric
from nipc.config import ConfigError, PeerAddress, from_mapping
from nipc.connections import Connections
from nipc.errors import NipcError
from nipc.limits import Limits
from nipc.metrics import Metrics
from nipc_testbed.sandbox import Host, Sandbox
from support import UnixServer, run_client

MINIMAL: dict[str, Any] = {
    "host": {"name": "a.example.com", "realm": "EXAMPLE.COM"},
    "kerberos": {"keytab": "/k", "principal": "nipc/a.example.com"},
}


# -- configuration --


def test_metrics_are_off_by_default() -> None:
    assert from_mapping(MINIMAL).metrics.listen is None


@pytest.mark.parametrize("text,address", [
    ("127.0.0.1:9100", PeerAddress("127.0.0.1", 9100)),
    ("127.0.0.1", PeerAddress("127.0.0.1", 9745)),
    ("[::1]:9100", PeerAddress("::1", 9100)),
    ("[::1]", PeerAddress("::1", 9745)),
    ("::", PeerAddress("::", 9745)),
])
def test_metrics_listen(text: str, address: PeerAddress) -> None:
    assert from_mapping({**MINIMAL, "metrics": {"listen": text}}).metrics.listen == address


@pytest.mark.parametrize("section", [{"listen": 9745}, {"listen": "h:0"}, {"listen": "h:x"},
                                     {"port": 1}])
def test_bad_metrics_keys(section: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="metrics"):
        from_mapping({**MINIMAL, "metrics": section})


# -- counting --


#: Audit lines of the unit tests go nowhere.
QUIET = Logger(observer=lambda event: None)


@pytest.fixture
def metrics() -> Metrics:
    config = from_mapping(MINIMAL)
    return Metrics(Limits(config.limits, config.host, time.monotonic))


@pytest.fixture
def table(metrics: Metrics) -> Connections:
    """A daemon's connection records with ``metrics`` as their audit sink."""
    return Connections(sinks=[metrics])


def refuse(table: Connections, facts: dict[str, Any], errno: str) -> None:
    table.refused(table.begin(QUIET, facts), NipcError(errno, "refused"))


def test_counts_come_from_the_audit_line_and_the_live_table(metrics: Metrics,
                                                            table: Connections) -> None:
    refuse(table, {"conn_id": "r1", "direction": "outgoing", "uid": 5}, "EACCES")
    refuse(table, {"conn_id": "r2", "direction": "incoming"}, "EPERM")
    near, far = object(), object()
    splice = SimpleNamespace(received={id(near): 10, id(far): 20}, violation=None)
    facts = {"conn_id": "c", "direction": "outgoing", "handshake": 0.02}
    connection = table.begin(QUIET, facts)
    table.spliced(connection, splice, near, far)  # type: ignore[arg-type]
    text = metrics.text().decode()
    assert metric(text, "nipc_refused_connections_total", direction="outgoing", errno="EACCES") == 1
    assert metric(text, "nipc_refused_connections_total", direction="incoming", errno="EPERM") == 1
    assert metric(text, "nipc_routed_connections_total", direction="outgoing") == 1
    assert metric(text, "nipc_routed_connections_total", direction="incoming") == 0
    assert metric(text, "nipc_open_connections", direction="outgoing") == 1
    assert metric(text, "nipc_handshake_seconds_count", direction="outgoing") == 1
    assert metric(text, "nipc_handshake_seconds_bucket", direction="outgoing", le="0.025") == 1
    assert metric(text, "nipc_handshake_seconds_bucket", direction="outgoing", le="0.01") == 0
    assert metric(text, "nipc_bytes_total", direction="outgoing", way="in") == 10
    # bytes of an open connection grow live; at its end they move to the ended totals
    splice.received[id(near)] = 110
    assert metric(metrics.text().decode(), "nipc_bytes_total", direction="outgoing", way="in") == 110
    table.ended(connection)
    text = metrics.text().decode()
    assert metric(text, "nipc_bytes_total", direction="outgoing", way="in") == 110
    assert metric(text, "nipc_bytes_total", direction="outgoing", way="out") == 20
    assert metric(text, "nipc_open_connections", direction="outgoing") == 0
    assert metric(text, "nipc_pending_peer_handshakes") == 0
    assert metric(text, "process_open_fds") is not None
    assert metric(text, "nipc_peer_links", direction="accepted") == 0
    assert metric(text, "nipc_destination_connects_stuck") == 0


def test_links_are_counted() -> None:
    config = from_mapping(MINIMAL)
    links = [{"direction": "dialled", "channels": 3}, {"direction": "dialled", "channels": 1},
             {"direction": "accepted", "channels": 2}]
    text = Metrics(Limits(config.limits, config.host, time.monotonic), lambda: links).text().decode()
    assert metric(text, "nipc_peer_links", direction="dialled") == 2
    assert metric(text, "nipc_peer_link_channels", direction="dialled") == 4
    assert metric(text, "nipc_peer_links", direction="accepted") == 1
    assert metric(text, "nipc_peer_link_channels", direction="accepted") == 2


def test_stuck_destination_connects_are_a_gauge() -> None:
    config = from_mapping(MINIMAL)
    text = Metrics(Limits(config.limits, config.host, time.monotonic),
                   stuck=lambda: 3).text().decode()
    assert metric(text, "nipc_destination_connects_stuck") == 3


def test_violations_are_counted(metrics: Metrics, table: Connections) -> None:
    near, far = object(), object()
    splice = SimpleNamespace(received={id(near): 0, id(far): 0}, violation="fd passing")
    connection = table.begin(QUIET, {"conn_id": "v", "direction": "incoming"})
    table.spliced(connection, splice, near, far)  # type: ignore[arg-type]
    table.ended(connection)
    assert metric(metrics.text().decode(), "nipc_violations_total", direction="incoming") == 1


# -- a real daemon on this host --


@pytest.fixture(scope="module")
def solo() -> Iterator[LocalDaemon]:
    require_root()
    daemon = LocalDaemon(Path(tempfile.mkdtemp(prefix="nipc-solo-")))
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.root, ignore_errors=True)


def test_endpoint_after_a_routed_and_a_refused_connection(solo: LocalDaemon) -> None:
    from nipc.client import connect

    server = UnixServer(str(solo.root / "echo.sock"))
    try:
        with connect(f"{solo.root / 'echo.sock'}@localhost", daemon=str(solo.socket), timeout=10) as sock:
            sock.recv(4096)
            sock.sendall(b"z" * 4000)
            time.sleep(0.2)
            text = solo.scrape()
            assert metric(text, "nipc_open_connections", direction="local") == 1
            assert metric(text, "nipc_routed_connections_total", direction="local") == 1
            assert metric(text, "nipc_bytes_total", direction="local", way="in") == 4000
            assert metric(text, "nipc_handshake_seconds_count", direction="local") == 1
        with pytest.raises(FileNotFoundError):
            connect(f"{solo.root / 'missing.sock'}@localhost", daemon=str(solo.socket), timeout=10)
        time.sleep(0.3)
        text = solo.scrape()
        assert metric(text, "nipc_open_connections", direction="local") == 0
        assert metric(text, "nipc_bytes_total", direction="local", way="in") == 4000
        assert metric(text, "nipc_refused_connections_total", direction="local", errno="ENOENT") == 1
        assert "GET /metrics" not in solo.log()  # no access-log line per scrape
    finally:
        server.close()


# -- the sandbox --


@pytest.fixture(scope="module")
def lan_with_metrics(samba_hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """a and b with a's endpoint on its own address (reachable only inside the sandbox)."""
    a, b = samba_hosts["a"], samba_hosts["b"]
    for host in (a, b):
        host.stop_daemon()
    with a.reconfigured(lambda text: text + f'\n[metrics]\nlisten = "{a.address}:9745"\n',
                        start=True), b.running():
        yield samba_hosts


SCRAPE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


@pytest.mark.integration
def test_sandbox_metrics_after_routed_and_refused(lan_with_metrics: dict[str, Host],
                                                   sandbox: Sandbox) -> None:
    require_root()
    a, b = lan_with_metrics["a"], lan_with_metrics["b"]
    server = UnixServer(str(b.run_dir / "metrics-echo.sock"))
    try:
        ok = run_client("alice", str(a.socket_path), "greet", f"{b.run_dir / 'metrics-echo.sock'}@{b.fqdn}")
        assert "error" not in ok, ok
        refused = run_client("alice", str(a.socket_path), "greet", f"{b.run_dir / 'absent.sock'}@{b.fqdn}")
        assert refused.get("error") == "ENOENT", refused

        def scrape() -> str:
            # From inside a's network namespace: the address is the sandbox's, not ours.
            return a.run([sys.executable, "-c", SCRAPE, f"http://{a.address}:9745/metrics"]).stdout

        deadline = time.monotonic() + 10
        while True:
            text = scrape()
            if metric(text, "nipc_open_connections", direction="outgoing") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert metric(text, "nipc_routed_connections_total", direction="outgoing") == 1
        assert metric(text, "nipc_refused_connections_total", direction="outgoing", errno="ENOENT") == 1
        assert metric(text, "nipc_handshake_seconds_count", direction="outgoing") == 1
        assert (metric(text, "nipc_handshake_seconds_sum", direction="outgoing") or 0) > 0
        assert (metric(text, "nipc_bytes_total", direction="outgoing", way="in") or 0) >= 5  # "ping\n"
        assert (metric(text, "nipc_bytes_total", direction="outgoing", way="out") or 0) > 5
        assert metric(text, "nipc_open_connections", direction="outgoing") == 0
        assert metric(text, "nipc_pending_peer_handshakes") == 0
        assert metric(text, "nipc_peer_links", direction="dialled") == 1  # to b, kept open
        assert metric(text, "nipc_peer_link_channels", direction="dialled") == 0
    finally:
        server.close()
