"""The local gate's lifecycle as a transition table: pure, no I/O.

:class:`nipc.gate.LocalGate` feeds it what happens to one client connection (its request,
the router's answer, its EOF, its loss) and does what the table says. As for links and
channels, a pair not in :data:`TABLE` raises :class:`nipc.machine.Illegal` (``EPROTO``),
never a silent change of state.
"""

from __future__ import annotations

import enum

from nipc.machine import Machine


class State(enum.Enum):
    #: Waiting for the request line (or, for an import, for admission).
    REQUEST = "waiting for its request"
    #: CONNECT taken, being routed: what the client sends meanwhile is held.
    ROUTING = "routing"
    #: As ROUTING, and the client half-closed: its EOF follows what it sent, once spliced.
    ROUTING_EOF = "routing, the client half-closed"
    SPLICED = "spliced"
    #: Refused, answered (PEER), or gone before it was spliced; or the splice lost it.
    DONE = "done"


class Event(enum.Enum):
    CONNECT = "CONNECT request"
    PEER = "PEER request"
    ROUTED = "routed"
    REFUSE = "refusal"
    CALLER_EOF = "the client's EOF"
    LOST = "the client's connection lost"


class Do(enum.Enum):
    """What the gate does on a transition (after the state has changed)."""

    NOTHING = "nothing"
    ROUTE = "route"
    #: Answer PEER and close.
    ANSWER = "answer"
    #: Tell the client why, and close.
    REFUSE = "refuse"
    #: Reply OK and splice the client to the routed end.
    SPLICE = "splice"
    #: As SPLICE, then pass on the client's EOF.
    SPLICE_AND_EOF = "splice, then EOF"
    #: Routed after the client was refused or left: drop the routed end.
    DISCARD = "discard"
    #: Pass the client's EOF to the splice.
    DELIVER_EOF = "deliver EOF"
    #: The client is gone while routing: cancel it.
    CANCEL = "cancel routing"
    #: The client is gone while spliced: tell the splice.
    REPORT_LOST = "report lost"



S, E, D = State, Event, Do

#: (state, event) -> (next state, what to do). Anything not here is illegal.
TABLE: dict[tuple[State, Event], tuple[State, Do]] = {
    (S.REQUEST, E.CONNECT): (S.ROUTING, D.ROUTE),
    (S.REQUEST, E.PEER): (S.DONE, D.ANSWER),
    (S.REQUEST, E.REFUSE): (S.DONE, D.REFUSE),
    # closed before a complete request line: refused (EINVAL)
    (S.REQUEST, E.CALLER_EOF): (S.DONE, D.REFUSE),
    (S.REQUEST, E.LOST): (S.DONE, D.NOTHING),

    (S.ROUTING, E.ROUTED): (S.SPLICED, D.SPLICE),
    (S.ROUTING, E.REFUSE): (S.DONE, D.REFUSE),
    (S.ROUTING, E.CALLER_EOF): (S.ROUTING_EOF, D.NOTHING),
    (S.ROUTING, E.LOST): (S.DONE, D.CANCEL),

    (S.ROUTING_EOF, E.ROUTED): (S.SPLICED, D.SPLICE_AND_EOF),
    (S.ROUTING_EOF, E.REFUSE): (S.DONE, D.REFUSE),
    (S.ROUTING_EOF, E.LOST): (S.DONE, D.CANCEL),

    (S.SPLICED, E.CALLER_EOF): (S.SPLICED, D.DELIVER_EOF),
    (S.SPLICED, E.LOST): (S.DONE, D.REPORT_LOST),

    # Ended already: the router's late answer is dropped, the rest adds nothing.
    (S.DONE, E.ROUTED): (S.DONE, D.DISCARD),
    (S.DONE, E.REFUSE): (S.DONE, D.NOTHING),
    (S.DONE, E.CALLER_EOF): (S.DONE, D.NOTHING),
    (S.DONE, E.LOST): (S.DONE, D.NOTHING),
}

MACHINE = Machine("the local connection", TABLE)
step = MACHINE.step
