"""The daemon's connection records (nipc/connections.py): one per connection, shared by the
gate and the receiving side, from the request to refused, spliced or ended; the audit line
written once at the end; the daemon's own audit sinks told, and nobody else's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogPublisher

from nipc.admin import fill_user_names
from nipc.config import from_mapping
from nipc.connections import Connection, Connections, Result
from nipc.errors import NipcError
from nipc.service import NipcService

CONFIG: dict[str, Any] = {"host": {"name": "a.test", "realm": "T"},
                          "kerberos": {"keytab": "/k", "principal": "p@T"}}


class Recorder:
    """An audit sink that notes what it is told."""

    def __init__(self) -> None:
        self.spliced: list[str] = []
        self.lines: list[dict[str, Any]] = []

    def opened(self, connection: Connection) -> None:
        self.spliced.append(connection.conn_id)

    def audited(self, connection: Connection, fields: dict[str, Any]) -> None:
        self.lines.append(fields)


def logger() -> tuple[Logger, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return Logger(namespace="nipc.gate", observer=LogPublisher(events.append)), events


def ends() -> tuple[Any, object, object]:
    near, far = object(), object()
    return SimpleNamespace(received={id(near): 5, id(far): 7}, violation=None), near, far


def test_a_record_from_request_to_end() -> None:
    """Begun at the request, spliced (counted in the table and ``nipc status``, the sink
    told), ended (gone from the table; one audit line with the bytes, in the namespace of
    whoever handled it, and the sink told)."""
    clock, sink = Clock(), Recorder()
    table = Connections(clock.seconds, sinks=[sink])  # type: ignore[list-item]
    log, events = logger()
    facts = {"conn_id": "c1", "direction": "outgoing", "uid": 0, "pid": 42,
             "target": "/x.sock@b.example", "handshake": 0.01}
    connection = table.begin(log, facts)
    assert connection.result is None and len(table) == 0
    splice, near, far = ends()
    table.spliced(connection, splice, near, far)  # type: ignore[arg-type]
    assert connection.result is Result.SPLICED and len(table) == 1 and sink.spliced == ["c1"]
    clock.advance(65)
    splice.received[id(near)] += 100
    (row,) = fill_user_names({"connections": table.snapshot()})["connections"]
    assert row["conn_id"] == "c1"
    assert (row["bytes_in"], row["bytes_out"], row["age"]) == (105, 7, 65)
    assert row["user"] == "root" and row["principal"] is None
    assert events == []
    table.ended(connection)
    assert connection.result is Result.ENDED
    assert table.snapshot() == [] and len(table) == 0
    (event,) = events
    assert event["log_namespace"] == "nipc.gate"
    line = event["nipc_audit"]
    assert (line["result"], line["bytes_in"], line["bytes_out"]) == ("routed", 105, 7)
    assert sink.lines == [line]


def test_a_refusal_is_one_audit_line_and_never_in_the_table() -> None:
    sink = Recorder()
    table = Connections(sinks=[sink])  # type: ignore[list-item]
    log, events = logger()
    connection = table.begin(log, {"conn_id": "c2", "direction": "incoming"})
    connection.facts["principal"] = "alice@T"  # learnt during the handshake
    table.refused(connection, NipcError("EACCES", "not allowed"))
    assert connection.result is Result.REFUSED and len(table) == 0 and sink.spliced == []
    (line,) = [e["nipc_audit"] for e in events]
    assert line["result"] == "refused" and line["errno"] == "EACCES"
    assert line["reason"] == "not allowed" and line["principal"] == "alice@T"
    assert sink.lines == [line]


def test_a_broken_sink_breaks_neither_the_connection_nor_its_audit_line() -> None:
    class Broken:
        def opened(self, connection: Connection) -> None:
            raise RuntimeError("boom")

        def audited(self, connection: Connection, fields: dict[str, Any]) -> None:
            raise RuntimeError("boom")

    table = Connections(sinks=[Broken()])  # type: ignore[list-item]
    log, events = logger()
    connection = table.begin(log, {"conn_id": "c"})
    splice, near, far = ends()
    table.spliced(connection, splice, near, far)  # type: ignore[arg-type]
    assert len(table) == 1
    table.ended(connection)
    table.refused(table.begin(log, {"conn_id": "r"}), NipcError("EINVAL", "bad"))
    assert len(table) == 0
    assert [e["nipc_audit"]["result"] for e in events] == ["routed", "refused"]
    assert events[1]["nipc_audit"]["errno"] == "EINVAL"


def test_the_drain_aborts_what_is_left_at_both_ends() -> None:
    aborted: list[str] = []
    table = Connections()
    for n in range(2):
        near = SimpleNamespace(abort=lambda n=n: aborted.append(f"caller{n}"))
        far = SimpleNamespace(abort=lambda n=n: aborted.append(f"target{n}"))
        splice = SimpleNamespace(received={id(near): 0, id(far): 0}, violation=None)
        table.spliced(table.begin(logger()[0], {"conn_id": f"c{n}"}), splice, near, far)  # type: ignore[arg-type]
    table.abort_all()
    assert aborted == ["caller0", "target0", "caller1", "target1"]


def test_two_embedded_services_never_count_each_others_connections() -> None:
    """Each daemon's metrics are its own connection records' sink: a refusal and a
    spliced connection in one daemon of a process are counted there and only there."""
    config = from_mapping({**CONFIG, "metrics": {"listen": "127.0.0.1:9745"}})
    one = NipcService(config, reactor=MemoryReactorClock())
    two = NipcService(config, reactor=MemoryReactorClock())
    assert one.metrics is not None and two.metrics is not None
    log, _ = logger()
    one.live.refused(one.live.begin(log, {"conn_id": "r", "direction": "outgoing"}),
                     NipcError("EACCES", "no"))
    splice, near, far = ends()
    one.live.spliced(one.live.begin(log, {"conn_id": "s", "direction": "local"}),
                     splice, near, far)  # type: ignore[arg-type]

    def counted(service: NipcService) -> tuple[float, float]:
        assert service.metrics is not None
        registry = service.metrics.registry
        return (registry.get_sample_value("nipc_refused_connections_total",
                                          {"direction": "outgoing", "errno": "EACCES"}) or 0,
                registry.get_sample_value("nipc_routed_connections_total",
                                          {"direction": "local"}) or 0)

    assert counted(one) == (1, 1)
    assert counted(two) == (0, 0)
    assert len(one.live) == 1 and len(two.live) == 0
