"""The audit line's text form: whatever a caller, a peer or a KDC put into a value, the
line stays one line of ``key=value`` fields that reads back to the same values (issue 14
item 7). The JSON log is checked too: a record is one line whatever its fields hold."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.logger import Logger, LogPublisher, formatEventAsClassicLogText, jsonFileLogObserver

from nipc import logs
from nipc.audit import audit, field_text

#: ``key=value`` where value is a bare word or a JSON string.
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ "]+)(?: |$)')


def logged(facts: dict[str, Any]) -> tuple[str, str]:
    """The classic text line and the JSON record of one audit call with ``facts``."""
    events: list[dict[str, Any]] = []
    publisher = LogPublisher(events.append)
    out = io.StringIO()
    publisher.addObserver(jsonFileLogObserver(out))
    audit(Logger(observer=publisher), "refused", facts, time.monotonic())
    return formatEventAsClassicLogText(events[0]) or "", out.getvalue()


def read_back(text: str) -> dict[str, str]:
    body = text.split("nipc-audit ", 1)[1].rstrip("\n")
    pairs = FIELD.findall(body)
    assert " ".join(f"{k}={v}" for k, v in pairs) == body, body
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def test_plain_values_stay_bare() -> None:
    """Paths, hosts, numbers and hop lists read as before, without quotes."""
    assert field_text("/run/dns/dns.sock@b.example.com") == "/run/dns/dns.sock@b.example.com"
    assert field_text(1001) == "1001" and field_text(0.031) == "0.031"
    assert field_text(["a.example.com", "b.example.com"]) == "a.example.com,b.example.com"
    assert field_text("/run/user/%{uid}/bus") == "/run/user/%{uid}/bus"


def test_anything_else_is_one_json_string() -> None:
    """A newline, a space, a quote, an escape sequence, a bidi override: a JSON string."""
    assert field_text("/x\nnipc-audit result=routed") == '"/x\\nnipc-audit result=routed"'
    assert field_text("no such socket") == '"no such socket"'
    assert field_text('a"b') == '"a\\"b"'
    assert field_text("\x1b[2J") == '"\\u001b[2J"'
    assert field_text("\u202egnp.exe") == '"\\u202egnp.exe"'
    assert field_text("") == '""'


values = st.text() | st.integers() | st.lists(st.text(max_size=5), max_size=3)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), values, max_size=6))
@example({"target": "/x\nnipc-audit conn_id=f0rged result=routed", "reason": "a\rb\u2028c"})
def test_any_values_make_one_line_that_reads_back(facts: dict[str, Any]) -> None:
    """Text form: one printable ASCII line, each value one field that reads back to its
    text. JSON form: one record on one line, holding the values unchanged."""
    text, record = logged(facts)
    assert "\n" not in text.rstrip("\n") and text.isascii() and text.rstrip("\n").isprintable()
    back = read_back(text)
    for key, value in facts.items():
        if key not in ("result", "duration"):
            want = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            assert back[key] == want
    assert record.count("\n") == 1 and record.endswith("\n")
    fields = json.loads(record.strip("\x1e\n"))["nipc_audit"]
    for key, value in facts.items():
        if key not in ("result", "duration"):
            assert fields[key] == value


def test_the_text_log_escapes_controls_in_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's text log (``twistd --logger=nipc.logs.twistd_observer`` without
    journald): a carriage return, an escape sequence, a line separator or a bidi override
    in any field is shown escaped; a newline starts an indented continuation, never a
    line of its own."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(logs, "journal_choice", (False, ""))
    observer = logs.twistd_observer()
    Logger(observer=observer).info("peer {peer}: {error}", peer="192.0.2.1",
                                   error="a\rb\x1b[2Jc\u2028d\u202ee\nnipc-audit result=routed")
    text = out.getvalue()
    assert text.endswith("peer 192.0.2.1: a\\rb\\x1b[2Jc\\u2028d\\u202ee\n\tnipc-audit result=routed\n"), text
    assert logs.escaped("plain text\n") == "plain text\n"
