"""Log lines to journald with structured fields, so ``journalctl NIPC_RESULT=refused`` works.

Written to the journal's native socket in its documented protocol (systemd's "Native
Journal Protocol"): one datagram per entry of ``KEY=value`` lines, a value holding a newline
(or anything else) as ``KEY``, newline, its length as 64-bit little-endian, the bytes, and a
newline; an entry too big for a datagram goes as a sealed memfd passed with SCM_RIGHTS. So
a value a peer chose (a path, a principal) is always one field's bytes, never a new field.

Every structured value of an event becomes a field ``NIPC_<KEY>``: an audit line's facts
(``NIPC_CONN_ID``, ``NIPC_RESULT``, ``NIPC_ERRNO``, ``NIPC_PRINCIPAL``, ``NIPC_TARGET``...)
and any other key a log call passes, with ``PRIORITY`` from the log level.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import re
import socket
import struct
from typing import Any, Mapping

from twisted.logger import ILogObserver, LogLevel, eventAsText
from zope.interface import implementer

from nipc.config import JOURNAL_SOCKET

#: Where journald listens for native entries.
DEFAULT_SOCKET = str(JOURNAL_SOCKET)
#: syslog priorities of Twisted's log levels.
PRIORITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
              LogLevel.critical: 2}
_NOT_IN_NAME = re.compile(r"[^A-Z0-9_]")


def under_journald(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether our stderr or stdout is systemd's stream to the journal: ``JOURNAL_STREAM``
    names its device and inode (a redirected or inherited stream is not)."""
    stream = environ.get("JOURNAL_STREAM", "")
    for fd in (2, 1):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stream == f"{st.st_dev}:{st.st_ino}":
            return True
    return False


def field_name(key: str) -> str:
    """``conn_id`` -> ``NIPC_CONN_ID``: upper-case letters, digits and underscores only."""
    return ("NIPC_" + _NOT_IN_NAME.sub("_", key.upper()))[:64]


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def fields_of(event: dict[str, Any], identifier: str = "nipcd") -> dict[str, str]:
    """The journal fields of one Twisted log event."""
    fields = {
        "MESSAGE": eventAsText(event, includeTimestamp=False, includeSystem=False),
        "PRIORITY": str(PRIORITIES.get(event.get("log_level", LogLevel.info), 6)),
        "SYSLOG_IDENTIFIER": identifier,
    }
    if event.get("log_namespace"):
        fields["NIPC_LOGGER"] = str(event["log_namespace"])
    facts = dict(event.get("nipc_audit") or {})
    for key, value in event.items():
        if not key.startswith("log_") and key != "nipc_audit" and key not in facts:
            facts[key] = value
    for key, value in facts.items():
        if isinstance(value, (str, int, float, bool, list, tuple)) and value is not None:
            fields[field_name(key)] = _text(value)
    return fields


def encode(fields: Mapping[str, str]) -> bytes:
    """One entry in the native protocol (``KEY=value\\n``, or length-prefixed if needed)."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "surrogateescape")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


@implementer(ILogObserver)
class JournalObserver:
    """Sends each log event to journald; when journald cannot be reached, the event goes
    to ``fallback`` (the plain text log) instead of being lost."""

    def __init__(self, path: str = DEFAULT_SOCKET, fallback: Any = None) -> None:
        self.path = path
        self._fallback = fallback
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self.send(encode(fields_of(event)))
        except OSError:
            if self._fallback is not None:
                self._fallback(event)

    def send(self, entry: bytes) -> None:
        """Blocking, as a write to journald's stdout stream would be (journald reads fast)."""
        try:
            self._socket.sendto(entry, self.path)
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(entry)

    def _send_memfd(self, entry: bytes) -> None:
        """An entry bigger than a datagram: in a sealed memfd, its descriptor sent alone."""
        fd = os.memfd_create("nipc-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)
