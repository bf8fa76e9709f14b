"""One record per routed connection, owned by the daemon and shared by the local gate and
the receiving side: its facts (what the audit line shows), when it started, and what
became of it (refused, spliced, ended).

The table of records is the one place that sees every connection begin, splice and end,
so it writes the audit line (:func:`nipc.audit.audit`) and tells the daemon's own audit
sinks (:class:`~nipc.interfaces.IAuditSink`: the metrics). Sinks are handed to the table
that one daemon owns, never kept in a module: two daemons in one process (embedding,
tests) never count each other's connections. ``nipc status`` and the metrics read the
records; the drain closes what is left of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from nipc.audit import audit
from nipc.errors import NipcError
from nipc.interfaces import IAuditSink, IConnections
from nipc.splice import End, Splice

log = Logger()

#: The three kinds of routed connection: a local caller's to another host, a local
#: caller's to this host (no Kerberos), and a peer's caller's to a socket on this host.
DIRECTIONS = ("outgoing", "local", "incoming")


class Result(Enum):
    """What became of a connection; None while it is being handled."""

    REFUSED = "refused"
    SPLICED = "spliced"
    ENDED = "ended"


@dataclass(frozen=True)
class Spliced:
    """The splice of a connection that got through, and when it was made."""

    splice: Splice
    #: The end the caller's bytes arrive on, and the end the target's arrive on.
    caller_end: End
    target_end: End
    #: The table's clock (``age``), and the wall clock (``since``).
    opened: float
    since: float


@dataclass
class Connection:
    """One routed connection, from its request to its end."""

    #: Whose audit line it is (``nipc.gate``, ``nipc.inbound``): the journal names it.
    log: Logger
    #: What the audit line and ``nipc status`` show; filled in as the handshake learns it.
    facts: dict[str, Any]
    #: When the request arrived (monotonic): the audit line's duration counts from here.
    started: float = field(default_factory=time.monotonic)
    result: Result | None = None
    spliced: Spliced | None = None

    @property
    def conn_id(self) -> str:
        return str(self.facts["conn_id"])

    @property
    def direction(self) -> str:
        return str(self.facts.get("direction", "outgoing"))

    @property
    def bytes_in(self) -> int:
        """Bytes from the caller towards the target so far."""
        s = self.spliced
        return s.splice.received[id(s.caller_end)] if s is not None else 0

    @property
    def bytes_out(self) -> int:
        """Bytes from the target back to the caller so far."""
        s = self.spliced
        return s.splice.received[id(s.target_end)] if s is not None else 0

    def describe(self, now: float) -> dict[str, Any]:
        """As ``nipc status`` shows a spliced connection (``now`` on the table's clock)."""
        facts, s = self.facts, self.spliced
        assert s is not None
        info: dict[str, Any] = {
            "conn_id": self.conn_id,
            "direction": self.direction,
            "uid": facts.get("uid"),
            "user": facts.get("user"),
            "pid": facts.get("pid"),
            "principal": facts.get("principal"),
            "target": facts.get("target"),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "age": round(now - s.opened, 3),
            "since": round(s.since, 3),
            "handshake": facts.get("handshake"),
        }
        for key in ("peer", "hops", "origin_conn_id", "chained_from"):
            if key in facts:
                info[key] = facts[key]
        return info


@implementer(IConnections)
class Connections:
    """One daemon's connection records; the spliced ones in the order they were made."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sinks: Sequence[IAuditSink] = ()) -> None:
        self._clock = clock
        self._sinks = tuple(sinks)
        self._live: dict[str, Connection] = {}

    def begin(self, logger: Logger, facts: dict[str, Any]) -> Connection:
        """A connection's request arrived; ``facts`` holds at least its ``conn_id``."""
        return Connection(logger, facts)

    def refused(self, connection: Connection, error: NipcError) -> None:
        """The connection was refused (before it was spliced): its audit line says why."""
        connection.result = Result.REFUSED
        fields = audit(connection.log, "refused", dict(
            connection.facts, errno=error.errno_name, reason=error.message), connection.started)
        self._tell(lambda sink: sink.audited(connection, fields))

    def spliced(self, connection: Connection, splice: Splice, caller_end: End,
                target_end: End) -> None:
        """The connection got through and is spliced (``OK`` sent)."""
        connection.result = Result.SPLICED
        connection.spliced = Spliced(splice, caller_end, target_end, self._clock(), time.time())
        self._live[connection.conn_id] = connection
        self._tell(lambda sink: sink.opened(connection))

    def ended(self, connection: Connection) -> None:
        """A spliced connection ended: its audit line, with the bytes it carried."""
        s = connection.spliced
        assert s is not None
        self._live.pop(connection.conn_id, None)
        connection.result = Result.ENDED
        fields = audit(connection.log, "routed", connection.facts, connection.started,
                       s.splice, s.caller_end, s.target_end)
        self._tell(lambda sink: sink.audited(connection, fields))

    def _tell(self, event: Callable[[IAuditSink], None]) -> None:
        for sink in self._sinks:
            try:
                event(sink)
            except Exception:  # counting must never break a connection
                log.failure("audit sink failed")

    def abort_all(self) -> None:
        """Close what is left at both ends (the drain's deadline)."""
        for connection in self:
            s = connection.spliced
            assert s is not None
            s.caller_end.abort()
            s.target_end.abort()

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._live.values()))

    def snapshot(self) -> list[dict[str, Any]]:
        """Every spliced connection as plain data (user names: admin.fill_user_names)."""
        now = self._clock()
        return [connection.describe(now) for connection in self]
