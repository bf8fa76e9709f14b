"""A channel's lifecycle as a transition table: pure, no I/O.

:class:`nipc.channel.Channel` feeds it events (frames from the peer, calls from its
splice and its link) and does what the table says; the table alone decides which events
are legal in which state. Every (state, event) pair not in :data:`TABLE` is illegal and
raises :class:`nipc.machine.Illegal`, an ``EPROTO`` error: from a peer's frame it is a
protocol violation that ends the link, from this daemon a bug that is reported, never a
silent change of state.

An explicit table rather than automat: the hot path (every DATA frame) needs the state
as a plain attribute, and the splice re-enters a channel while it ends (automat would
postpone those calls and reorder their side effects).
"""

from __future__ import annotations

import enum

from nipc.machine import Machine


class State(enum.Enum):
    #: The HELLO is out (or being answered): the peer's frames are held for the splice.
    OPENING = "opening"
    #: RESULT OK sent or received, the splice not started: the peer's frames are held.
    HELD = "held"
    #: As HELD, and our end already sent its EOF (the local caller's shutdown came
    #: before the splice started this channel).
    HELD_OUT_SHUT = "held, our side half-closed"
    #: Spliced, bytes flow both ways.
    SPLICED = "spliced"
    #: Half-closed by the peer (its EOF came): we may still send.
    IN_SHUT = "half-closed by the peer"
    #: Half-closed by us (our EOF is sent, or queued behind data): the peer may still send.
    OUT_SHUT = "half-closed by us"
    #: Both EOFs: waiting for a CLOSE either way.
    BOTH_SHUT = "half-closed both ways"
    #: Closing once what we have queued is sent (the peer has room for it).
    CLOSING = "closing"
    #: As CLOSING, after the peer's EOF.
    CLOSING_IN_SHUT = "closing, half-closed by the peer"
    CLOSED = "closed"


class Event(enum.Enum):
    ANSWERED = "RESULT OK"
    REFUSED = "RESULT refusal"
    START = "splice started"
    PEER_EOF = "EOF from the peer"
    PEER_CLOSE = "CLOSE from the peer"
    LOCAL_EOF = "EOF from our end"
    LOCAL_CLOSE = "close from our end"
    #: What was queued before a close is sent.
    DRAINED = "queue drained"
    ABORT = "abort"
    LINK_LOST = "link lost"


class Do(enum.Enum):
    """What the channel does on a transition (after the state has changed)."""

    NOTHING = "nothing"
    #: Keep the peer's frame for the splice.
    HOLD = "hold"
    #: Give the splice what was held, in order.
    RELEASE = "release"
    #: Started after it ended: tell the splice this end is lost.
    REPORT_LOST = "report lost"
    #: Pass the peer's EOF to the splice.
    DELIVER_EOF = "deliver EOF"
    #: Send an EOF frame once what is queued before it is sent.
    QUEUE_EOF = "queue EOF"
    #: Send what is queued; DRAINED follows when nothing is left.
    FLUSH = "flush"
    #: End the channel; the peer knows already (its CLOSE, a refusal, the link lost).
    END = "end"
    #: End the channel and send CLOSE.
    END_AND_TELL = "end, send CLOSE"



S, E, D = State, Event, Do

#: Endings legal in every open state: abort (we tell the peer), the link lost (nobody
#: to tell).
_ENDINGS = {E.ABORT: (S.CLOSED, D.END_AND_TELL), E.LINK_LOST: (S.CLOSED, D.END)}

_HOLDING = {E.PEER_EOF: D.HOLD, E.PEER_CLOSE: D.HOLD}

#: (state, event) -> (next state, what to do). Anything not here is illegal.
TABLE: dict[tuple[State, Event], tuple[State, Do]] = {
    **{(S.OPENING, e): t for e, t in {
        E.ANSWERED: (S.HELD, D.NOTHING),
        E.REFUSED: (S.CLOSED, D.END),
        E.PEER_EOF: (S.OPENING, D.HOLD),
        # a dialler that gives up sends CLOSE: no splice will come to take it
        E.PEER_CLOSE: (S.CLOSED, D.END),
        **_ENDINGS}.items()},
    **{(S.HELD, e): t for e, t in {
        E.START: (S.SPLICED, D.RELEASE),
        **{h: (S.HELD, d) for h, d in _HOLDING.items()},
        E.LOCAL_EOF: (S.HELD_OUT_SHUT, D.QUEUE_EOF),
        **_ENDINGS}.items()},
    **{(S.HELD_OUT_SHUT, e): t for e, t in {
        E.START: (S.OUT_SHUT, D.RELEASE),
        **{h: (S.HELD_OUT_SHUT, d) for h, d in _HOLDING.items()},
        **_ENDINGS}.items()},
    **{(S.SPLICED, e): t for e, t in {
        E.PEER_EOF: (S.IN_SHUT, D.DELIVER_EOF),
        E.PEER_CLOSE: (S.CLOSED, D.END),
        E.LOCAL_EOF: (S.OUT_SHUT, D.QUEUE_EOF),
        E.LOCAL_CLOSE: (S.CLOSING, D.FLUSH),
        **_ENDINGS}.items()},
    **{(S.IN_SHUT, e): t for e, t in {
        E.PEER_CLOSE: (S.CLOSED, D.END),
        E.LOCAL_EOF: (S.BOTH_SHUT, D.QUEUE_EOF),
        E.LOCAL_CLOSE: (S.CLOSING_IN_SHUT, D.FLUSH),
        **_ENDINGS}.items()},
    **{(S.OUT_SHUT, e): t for e, t in {
        E.PEER_EOF: (S.BOTH_SHUT, D.DELIVER_EOF),
        E.PEER_CLOSE: (S.CLOSED, D.END),
        E.LOCAL_CLOSE: (S.CLOSING, D.FLUSH),
        **_ENDINGS}.items()},
    **{(S.BOTH_SHUT, e): t for e, t in {
        E.PEER_CLOSE: (S.CLOSED, D.END),
        E.LOCAL_CLOSE: (S.CLOSING_IN_SHUT, D.FLUSH),
        **_ENDINGS}.items()},
    **{(S.CLOSING, e): t for e, t in {
        E.DRAINED: (S.CLOSED, D.END_AND_TELL),
        E.PEER_EOF: (S.CLOSING_IN_SHUT, D.DELIVER_EOF),
        E.PEER_CLOSE: (S.CLOSED, D.END),
        # closing already: a second close or a half-close adds nothing
        E.LOCAL_EOF: (S.CLOSING, D.NOTHING),
        E.LOCAL_CLOSE: (S.CLOSING, D.NOTHING),
        **_ENDINGS}.items()},
    **{(S.CLOSING_IN_SHUT, e): t for e, t in {
        E.DRAINED: (S.CLOSED, D.END_AND_TELL),
        E.PEER_CLOSE: (S.CLOSED, D.END),
        E.LOCAL_EOF: (S.CLOSING_IN_SHUT, D.NOTHING),
        E.LOCAL_CLOSE: (S.CLOSING_IN_SHUT, D.NOTHING),
        **_ENDINGS}.items()},
    **{(S.CLOSED, e): t for e, t in {
        # The splice and the link call in again as a channel ends: ending is idempotent.
        E.ABORT: (S.CLOSED, D.NOTHING),
        E.LINK_LOST: (S.CLOSED, D.NOTHING),
        E.LOCAL_EOF: (S.CLOSED, D.NOTHING),
        E.LOCAL_CLOSE: (S.CLOSED, D.NOTHING),
        # The receiving side answers a channel the peer gave up on: nothing to say.
        E.ANSWERED: (S.CLOSED, D.NOTHING),
        E.REFUSED: (S.CLOSED, D.NOTHING),
        # Ended before its splice started (link lost, peer's CLOSE): the splice learns now.
        E.START: (S.CLOSED, D.REPORT_LOST),
        }.items()},
}

#: States whose peer frames are held for the splice.
HOLDING = frozenset({S.OPENING, S.HELD, S.HELD_OUT_SHUT})
#: States in which the peer may send DATA (held or delivered).
PEER_SENDS = frozenset({S.OPENING, S.HELD, S.HELD_OUT_SHUT, S.SPLICED, S.OUT_SHUT, S.CLOSING})

MACHINE = Machine("the channel", TABLE)
step = MACHINE.step
