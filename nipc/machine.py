"""What the lifecycle tables (channel, link, local gate) share: the lookup of a
(state, event) pair, and the one error an event not in the table gives."""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

from nipc.errors import NipcError

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)
D = TypeVar("D", bound=enum.Enum)


class Illegal(NipcError):
    """An event the state does not allow: EPROTO, never a silent change of state."""

    def __init__(self, what: str, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__("EPROTO", f"{event.value} while {what} is {state.value}")
        self.state = state
        self.event = event


class Machine(Generic[S, E, D]):
    """A transition table: (state, event) -> (next state, what to do)."""

    def __init__(self, what: str, table: dict[tuple[S, E], tuple[S, D]]) -> None:
        self.what = what
        self.table = table

    def step(self, state: S, event: E) -> tuple[S, D]:
        """The next state and what to do, or :class:`Illegal`."""
        try:
            return self.table[state, event]
        except KeyError:
            raise Illegal(self.what, state, event) from None
