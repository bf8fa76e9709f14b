"""systemd's service notification protocol (sd_notify(3)): READY, RELOADING, STOPPING,
STATUS and the watchdog, as datagrams to ``$NOTIFY_SOCKET``.

Written here rather than taken from a library: the protocol is one ``sendto`` of
``KEY=value`` lines on an AF_UNIX datagram socket (a leading ``@`` meaning the abstract
namespace); ``sdnotify`` (last release 2017) is untyped and hides every error, and
``systemd-python`` is built against libsystemd's headers, a C toolchain the daemon does not
otherwise need. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd (>= 253) wants it with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """The daemon's line to its service manager, taken from the environment once: the
    variables are removed, so no process the daemon starts talks to systemd in its name."""

    def __init__(self, environ: dict[str, str] | Any = os.environ) -> None:
        address = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        #: Seconds between keep-alive pings systemd expects at most (None: no watchdog). A
        #: WATCHDOG_PID naming another process means the watchdog is not ours.
        self.watchdog: float | None = None
        if self._address and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog = int(usec) / 1e6
        self._socket: socket.socket | None = None
        self._failed = False
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str | int) -> None:
        """One notification: ``send(READY=1, STATUS="...")``. Never raises: a service
        manager that went away must not take the daemon with it (the failure is logged once)."""
        if not self._address:
            return
        message = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode("utf-8"), self._address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warn("cannot notify the service manager at {address}: {error}",
                         address=self._address.replace("\0", "@"), error=e.strerror or str(e))
            return
        self._failed = False

    def status(self, text: str) -> None:
        """STATUS=, sent only when it changed (it is polled)."""
        if text != self._last_status:
            self._last_status = text
            self.send(STATUS=text)

    def start_watchdog(self, reactor: IReactorTime) -> LoopingCall | None:
        """Ping WATCHDOG=1 from the reactor thread at half the interval systemd gave, so a
        reactor that stops turning (a blocking call, a deadlock) stops the pings and
        systemd restarts the daemon. None when there is no watchdog."""
        if self.watchdog is None:
            return None
        ping = LoopingCall(self.send, WATCHDOG=1)
        ping.clock = reactor
        ping.start(self.watchdog / 2, now=True)
        log.info("systemd watchdog: pinging every {interval:g}s (WatchdogSec={limit:g}s)",
                 interval=self.watchdog / 2, limit=self.watchdog)
        return ping

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
