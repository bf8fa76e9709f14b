"""Where the daemon's log goes: the JSON log file of ``[log] file``, and twistd's own log
as native journal entries under journald (:func:`twistd_observer`).

The file is (re)opened on every reload and on SIGUSR1, so logrotate can move it and then
``systemctl reload nipcd`` (no copytruncate, no lost lines): the new file is opened and
its observer installed before the old one is removed and closed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)

from nipc.config import ConfigError
from nipc.journal import DEFAULT_SOCKET, JournalObserver, under_journald

#: [log] journal and journal_socket, set by ``twistd nipc`` (makeService), which twistd runs
#: before it asks :func:`twistd_observer` for its log observer.
journal_choice: tuple[bool | None, str] = (None, DEFAULT_SOCKET)


def twistd_observer() -> ILogObserver:
    """``twistd --logger=nipc.logs.twistd_observer`` (etc/nipcd.service): native journal
    entries with structured fields when the daemon runs under journald (or ``[log] journal
    = true``), else twistd's text lines on stdout, as without ``--logger``."""
    wanted, path = journal_choice
    text = textFileLogObserver(sys.stdout)
    if wanted is False or (wanted is None and not under_journald()):
        return text
    observer: ILogObserver = JournalObserver(path, fallback=text)
    return observer


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
        self._file: IO[str] | None = None
        self._observer: Any = None
        self.path: Path | None = None

    def switch(self, path: Path | None, opened: IO[str] | None) -> None:
        """Log to ``opened`` (from :func:`open_log` of ``path``) from now on."""
        old_file, old_observer = self._file, self._observer
        self.path, self._file, self._observer = path, opened, None
        if opened is not None:
            self._observer = FilteringLogObserver(
                jsonFileLogObserver(opened),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
            )
            self._publisher.addObserver(self._observer)
        if old_observer is not None:
            self._publisher.removeObserver(old_observer)
        if old_file is not None:
            old_file.close()

    def reopen(self) -> None:
        """Open the same path again (after logrotate moved the file away)."""
        self.switch(self.path, open_log(self.path))

    def close(self) -> None:
        self.switch(None, None)
