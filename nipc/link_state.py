"""A peer link's lifecycle as a transition table: pure, no I/O.

:class:`nipc.link.Link` feeds it events (TLS done, a channel authenticated, retire,
close, abort, the connection lost) and does what the table says. As for channels
(:mod:`nipc.channel_state`), a pair not in :data:`TABLE` raises
:class:`nipc.machine.Illegal` (``EPROTO``), never a silent change of state. Liveness
(PING) and flow control are not lifecycle: they stay with the link.
"""

from __future__ import annotations

import enum

from nipc.machine import Machine


class State(enum.Enum):
    #: TCP is up, the TLS handshake is under way.
    PENDING = "in its TLS handshake"
    #: TLS is up. A receiving link counts as unauthenticated (per-source caps, the
    #: handshake deadline) until one of its channels passes Kerberos.
    READY = "ready"
    #: Receiving side: one of its channels passed Kerberos.
    AUTHENTICATED = "authenticated"
    #: Dialling side: no new channels (a handshake on it timed out, or its channel
    #: numbers ran out); closed once its last channel ends.
    RETIRED = "retired"
    #: Closing (TLS close_notify sent) or aborted: frames still arriving are ignored.
    CLOSING = "closing"
    CLOSED = "closed"


class Event(enum.Enum):
    TLS_DONE = "TLS handshake done"
    AUTHENTICATED = "a channel authenticated"
    RETIRE = "retire"
    CLOSE = "close"
    ABORT = "abort"
    LOST = "connection lost"


class Do(enum.Enum):
    """What the link does on a transition (after the state has changed)."""

    NOTHING = "nothing"
    #: Take the TLS exporter, tell the side, start the idle timer.
    TLS_READY = "TLS ready"
    #: The receiving link's own handshake is over: lift the unauthenticated bounds.
    PROVEN = "proven"
    #: Tell the dialler's table to stop using it; close it if no channel is open.
    RETIRE = "retire"
    #: TLS close_notify, then TCP closed when the peer answers, or aborted after a grace.
    SHUTDOWN = "shut down"
    #: Drop the TCP connection now.
    ABORT = "abort"
    #: The connection is gone: end every channel, tell who listens.
    END = "end"



S, E, D = State, Event, Do

_ENDINGS = {
    E.CLOSE: (S.CLOSING, D.SHUTDOWN),
    E.ABORT: (S.CLOSING, D.ABORT),
    E.LOST: (S.CLOSED, D.END),
}

#: (state, event) -> (next state, what to do). Anything not here is illegal.
TABLE: dict[tuple[State, Event], tuple[State, Do]] = {
    **{(S.PENDING, e): t for e, t in {
        E.TLS_DONE: (S.READY, D.TLS_READY),
        **_ENDINGS}.items()},
    **{(S.READY, e): t for e, t in {
        E.AUTHENTICATED: (S.AUTHENTICATED, D.PROVEN),
        E.RETIRE: (S.RETIRED, D.RETIRE),
        **_ENDINGS}.items()},
    **{(S.AUTHENTICATED, e): t for e, t in {
        # every later channel that passes Kerberos says so again
        E.AUTHENTICATED: (S.AUTHENTICATED, D.NOTHING),
        **_ENDINGS}.items()},
    **{(S.RETIRED, e): t for e, t in {
        E.RETIRE: (S.RETIRED, D.RETIRE),
        **_ENDINGS}.items()},
    **{(S.CLOSING, e): t for e, t in {
        # a handshake that completes as the link is being closed is still reported
        E.TLS_DONE: (S.CLOSING, D.TLS_READY),
        # its channels' answers may still come: the link is counted until it is gone
        E.AUTHENTICATED: (S.CLOSING, D.NOTHING),
        E.RETIRE: (S.CLOSING, D.NOTHING),
        E.CLOSE: (S.CLOSING, D.NOTHING),
        # a close that takes too long, or a violation while closing
        E.ABORT: (S.CLOSING, D.ABORT),
        E.LOST: (S.CLOSED, D.END)}.items()},
    **{(S.CLOSED, e): t for e, t in {
        # its channels and the dialler's table call in again as it ends
        E.AUTHENTICATED: (S.CLOSED, D.NOTHING),
        E.RETIRE: (S.CLOSED, D.NOTHING),
        E.CLOSE: (S.CLOSED, D.NOTHING),
        E.ABORT: (S.CLOSED, D.NOTHING)}.items()},
}

#: States whose frames are read (a closing link ignores what still arrives).
READING = frozenset({S.PENDING, S.READY, S.AUTHENTICATED, S.RETIRED})

MACHINE = Machine("the peer link", TABLE)
step = MACHINE.step
