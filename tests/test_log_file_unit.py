"""The JSON log file's observer when writing fails (issue 14 item 8), on real files:
``/dev/full`` answers every write with ENOSPC; dup2'ing a regular file over its
descriptor makes the same observer's writes work again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger, LogPublisher, formatEvent

from nipc.logs import LogFile


def test_a_failing_file_is_counted_and_reported_once_then_recovery_once(tmp_path: Path) -> None:
    others: list[dict[str, Any]] = []
    publisher = LogPublisher(others.append)
    logs = LogFile(publisher)
    full = open("/dev/full", "a", encoding="utf-8")
    logs.switch(Path("/dev/full"), full)
    log = Logger(observer=publisher)
    for n in range(5):
        log.info("line {n}", n=n)  # raises nothing, so no traceback anywhere
    said = [formatEvent(e) for e in others if e.get("log_namespace") == "nipc.logs"]
    assert len(said) == 1 and "cannot write the log file /dev/full" in said[0], said
    assert "No space left on device" in said[0]
    assert logs.dropped == 6  # five lines and the error line itself

    good = tmp_path / "good.json"
    with open(good, "a") as target:
        os.dup2(target.fileno(), full.fileno())
    log.info("line {n}", n=5)
    said = [formatEvent(e) for e in others if e.get("log_namespace") == "nipc.logs"]
    assert len(said) == 2 and said[1] == "the log file /dev/full is written again; 6 line(s) were lost"
    records = [json.loads(r) for r in good.read_text().split("\x1e") if r]
    assert [formatEvent(r) for r in records] == ["line 5", said[1]]
    assert logs.dropped == 6
    logs.close()
