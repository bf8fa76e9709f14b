"""One structured log line per routed connection: who, what, result, bytes, duration.

The audit line is the one place that sees every connection's end and every refusal with
its facts, so the metrics (:mod:`nipc.metrics`) count from here: they subscribe to
``observers`` instead of counters being sprinkled through the code.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from twisted.logger import Logger

from nipc.splice import End, Splice

#: A value written bare in the text form: one word of plain ASCII that cannot be read as
#: a second field, a quote or a line end. Anything else is written as a JSON string.
_BARE = re.compile(r"[A-Za-z0-9_./:@%+=,{}-]+\Z")

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
    text = " ".join(f"{k}={field_text(fields[k])}" for k in sorted(fields))
    log.info("nipc-audit " + text.replace("{", "{{").replace("}", "}}"), nipc_audit=fields)
    for observe in observers:
        try:
            observe(fields)
        except Exception:  # counting must never break a connection's teardown
            log.failure("audit observer failed")


def field_text(value: Any) -> str:
    """``value`` as the audit line's text shows it (a list as its items joined by commas):
    bare when it is one plain word, else a JSON string, ASCII only, so every control,
    format and separator character is escaped. A path, a principal or an error message,
    whoever chose it, stays one field of one line. (The JSON log escapes on its own.)"""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if _BARE.match(text) else json.dumps(text)
