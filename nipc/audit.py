"""One structured log line per routed connection: who, what, result, bytes, duration.

Written by the daemon's connection records (:mod:`nipc.connections`), which hand the same
fields to the daemon's audit sinks (the metrics count from them).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from twisted.logger import Logger

from nipc.splice import End, Splice

#: A value written bare in the text form: one word of plain ASCII that cannot be read as
#: a second field, a quote or a line end. Anything else is written as a JSON string.
_BARE = re.compile(r"[A-Za-z0-9_./:@%+=,{}-]+\Z")


def audit(log: Logger, result: str, facts: dict[str, Any], started: float,
          splice: Splice | None = None, inbound: End | None = None,
          outbound: End | None = None) -> dict[str, Any]:
    """Log the end of a connection (``routed``) or a refusal, with every fact known; the
    fields logged."""
    fields = dict(facts, result=result, duration=round(time.monotonic() - started, 3))
    if splice is not None and inbound is not None and outbound is not None:
        fields["bytes_in"] = splice.received[id(inbound)]
        fields["bytes_out"] = splice.received[id(outbound)]
        if splice.violation:
            fields["violation"] = splice.violation
    text = " ".join(f"{k}={field_text(fields[k])}" for k in sorted(fields))
    log.info("nipc-audit " + text.replace("{", "{{").replace("}", "}}"), nipc_audit=fields)
    return fields


def field_text(value: Any) -> str:
    """``value`` as the audit line's text shows it (a list as its items joined by commas):
    bare when it is one plain word, else a JSON string, ASCII only, so every control,
    format and separator character is escaped. A path, a principal or an error message,
    whoever chose it, stays one field of one line. (The JSON log escapes on its own.)"""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if _BARE.match(text) else json.dumps(text)
