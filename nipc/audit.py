"""One structured log line per routed connection: who, what, result, bytes, duration.

The audit line is the one place that sees every connection's end and every refusal with
its facts, so the metrics (:mod:`nipc.metrics`) count from here: they subscribe to
``observers`` instead of counters being sprinkled through the code.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.logger import Logger

from nipc.splice import End, Splice

#: Called with each audit line's facts (``result``, ``direction``, ``errno``, bytes...).
observers: list[Callable[[dict[str, Any]], None]] = []


def audit(log: Logger, result: str, facts: dict[str, Any], started: float,
          splice: Splice | None = None, inbound: End | None = None,
          outbound: End | None = None) -> None:
    """Log the end of a connection (``routed``) or a refusal, with every fact known."""
    fields = dict(facts, result=result, duration=round(time.monotonic() - started, 3))
    if splice is not None and inbound is not None and outbound is not None:
        fields["bytes_in"] = splice.received[id(inbound)]
        fields["bytes_out"] = splice.received[id(outbound)]
        if splice.violation:
            fields["violation"] = splice.violation
    text = " ".join(f"{k}={fields[k]}" for k in sorted(fields))
    log.info("nipc-audit " + text.replace("{", "{{").replace("}", "}}"), nipc_audit=fields)
    for observe in observers:
        try:
            observe(fields)
        except Exception:  # counting must never break a connection's teardown
            log.failure("audit observer failed")
