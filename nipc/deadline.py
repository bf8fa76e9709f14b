"""A protocol's one pending timeout: armed at a start, cancelled when what it waits for
happens. Time comes from the injected reactor (tests use a ``Clock``)."""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._call: IDelayedCall | None = None

    def arm(self, seconds: float, expire: Callable[[], None]) -> None:
        self.cancel()
        self._call = self._reactor.callLater(seconds, self._fire, expire)

    def _fire(self, expire: Callable[[], None]) -> None:
        self._call = None
        expire()

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def armed(self) -> bool:
        return self._call is not None
