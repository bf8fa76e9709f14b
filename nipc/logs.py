"""Where the daemon's log goes: the JSON log file of ``[log] file``, and twistd's own log
as native journal entries under journald (:func:`twistd_observer`).

The file is (re)opened on every reload and on SIGUSR1, so logrotate can move it and then
``systemctl reload nipcd`` (no copytruncate, no lost lines): the new file is opened and
its observer installed before the old one is removed and closed.

A file that cannot be written (a full disk, an I/O error) costs the lines it drops, never
routing: each record is one ``write(2)``; a failure is counted (``nipc_log_lines_dropped``)
and logged once on the other observers, and once more when writing works again. (Raised,
it would reach Twisted's publisher, which reports it with a traceback per line.)
"""

from __future__ import annotations

import errno
import os
import sys
import unicodedata
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    eventAsJSON,
    FileLogObserver,
    globalLogPublisher,
    formatEventAsClassicLogText,
)

from nipc.config import ConfigError
from nipc.journal import DEFAULT_SOCKET, JournalObserver, under_journald
from nipc.request import CONTROL_CATEGORIES

#: [log] journal and journal_socket, set by ``twistd nipc`` (makeService), which twistd runs
#: before it asks :func:`twistd_observer` for its log observer.
journal_choice: tuple[bool | None, str] = (None, DEFAULT_SOCKET)


def twistd_observer() -> ILogObserver:
    """``twistd --logger=nipc.logs.twistd_observer`` (etc/nipcd.service): native journal
    entries with structured fields when the daemon runs under journald (or ``[log] journal
    = true``), else twistd's text lines on stdout, as without ``--logger``."""
    wanted, path = journal_choice
    text = FileLogObserver(sys.stdout, lambda event: escaped(formatEventAsClassicLogText(event)))
    if wanted is False or (wanted is None and not under_journald()):
        return text
    observer: ILogObserver = JournalObserver(path, fallback=text)
    return observer


def escaped(text: str | None) -> str | None:
    """A text log line with every control and format character but newline and tab
    written as ``\\xNN`` or ``\\uNNNN``, whichever field it came in: a terminal or a
    log reader shows what was logged, never a carriage return, escape sequence or bidi
    override. (Newlines in a field are safe: Twisted indents every continuation line.)"""
    if text is None or text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "".join(c if c in "\n\t" or unicodedata.category(c) not in CONTROL_CATEGORIES
                   else ascii(c)[1:-1] for c in text)


def open_log(path: Path | None) -> IO[str] | None:
    """The log file opened for appending (None for none); ConfigError naming [log] file."""
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"log.file: cannot open {path}: {e.strerror}") from None


class LogFile:
    """The JSON log file's observer on the global log publisher (info and up: the audit
    lines and what an operator acts on, not debug chatter)."""

    def __init__(self, publisher: Any = globalLogPublisher) -> None:
        self._publisher = publisher
        #: Says that the file fails, and that it works again, to the other observers.
        self._log = Logger(namespace=__name__, observer=publisher)
        self._file: IO[str] | None = None
        self._observer: Any = None
        self.path: Path | None = None
        #: Records the file could not take, since start (the metric).
        self.dropped = 0
        #: Records dropped since writing last worked; None while it works.
        self._failing: int | None = None

    def switch(self, path: Path | None, opened: IO[str] | None) -> None:
        """Log to ``opened`` (from :func:`open_log` of ``path``) from now on."""
        old_file, old_observer = self._file, self._observer
        self.path, self._file, self._observer = path, opened, None
        if opened is not None:
            self._observer = FilteringLogObserver(
                cast(ILogObserver, partial(self._write, opened.fileno())),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
            )
            self._publisher.addObserver(self._observer)
        if old_observer is not None:
            self._publisher.removeObserver(old_observer)
        if old_file is not None:
            old_file.close()

    def _write(self, fd: int, event: dict[str, Any]) -> None:
        """One RFC 7464 record (``jsonFileLogObserver``'s format) in one ``write(2)`` on
        the append-mode file, bypassing Python's buffer, which would keep a failed line and
        write it, torn, later. A record cut short by a full disk is followed by the next
        record's separator, so readers resynchronise."""
        record = ("\x1e" + eventAsJSON(event) + "\n").encode("utf-8")
        try:
            done = 0
            while done < len(record):
                done += os.write(fd, record[done:])
        except OSError as e:
            self.dropped += 1
            if self._failing is None:
                self._failing = 0
                self._log.error("cannot write the log file {path}: {error}; dropping its lines "
                          "(counted in nipc_log_lines_dropped) until it can be written again",
                          path=str(self.path), error=e.strerror or errno.errorcode.get(e.errno or 0))
            self._failing += 1
            return
        if self._failing is not None:
            lost, self._failing = self._failing, None
            self._log.info("the log file {path} is written again; {lost} line(s) were lost",
                     path=str(self.path), lost=lost)

    def reopen(self) -> None:
        """Open the same path again (after logrotate moved the file away)."""
        self.switch(self.path, open_log(self.path))

    def close(self) -> None:
        self.switch(None, None)
