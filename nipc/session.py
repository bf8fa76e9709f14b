"""A caller authenticated once per link (the SMB session model).

The first channel a principal opens on a link carries the full Kerberos exchange. Both
daemons then keep the established GSS context as a *session* of (link, principal). Later
channels of that principal carry the session's reference and a proof of possession: a GSS
MIC, made with the session's key, over the channel's binding (the link's TLS exporter and
the channel number), the target path and host, the connection id and the hop chain. A
channel number is used once per link and the exporter belongs to one link, so a proof is
good for one channel of one link. A session dies with its link (its table is the link's),
at its ticket's end, and at a configured maximum, whichever comes first.

Pure bookkeeping and GSS message calls (microseconds, no KDC, no files): run on the
reactor thread, which also keeps each GSS context's sequence numbers in send order.
"""

from __future__ import annotations

import math
import secrets
import struct
import time
import weakref
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gssapi.raw.misc import GSSError

from nipc.errors import NipcError

K = TypeVar("K", bound=Hashable)

#: Domain separation: a proof is never a MIC over anything else signed with the key.
PROOF_LABEL = b"nipc-session-proof/1\0"
#: Sessions kept per link at most; beyond that new principals get full exchanges only.
MAX_PER_LINK = 256
#: Links one principal holds a session on at most (a session holds a GSS context, PAC
#: facts and delegation evidence): one ticket cannot fill the daemon's memory.
MAX_PER_PRINCIPAL = 64
#: Sessions one daemon side holds at most, over all its links.
MAX_SESSIONS = 4096
#: The sender stops using a session this long before the receiver's end of it, so a proof
#: does not arrive just after the receiver dropped it (it would then fall back anyway).
MARGIN = 5.0
#: "Sessions" in a RESULT's info: the reference offered, its seconds, and the word a
#: receiver answers for a reference it no longer holds (the sender then falls back).
OFFERED, LIFETIME, ENDED = "session", "session_seconds", "ended"

_LENGTH = struct.Struct(">I")


def new_reference() -> str:
    return secrets.token_hex(8)


def proof_message(binding: bytes, reference: str, path: str, host: str, conn_id: str,
                  hops: tuple[str, ...]) -> bytes:
    """What a session proof signs: every field length-prefixed, so none can run into the
    next. ``binding`` is :func:`nipc.wire.binding` (exporter and channel number)."""
    parts = [binding, reference.encode(), path.encode(), host.encode(), conn_id.encode(),
             *(hop.encode() for hop in hops)]
    return PROOF_LABEL + b"".join(_LENGTH.pack(len(p)) + p for p in parts)


@dataclass
class Session:
    """One principal's authentication on one link, as either daemon keeps it."""

    reference: str
    principal: str
    #: The established GSS context (gssapi.SecurityContext): the session key.
    context: Any
    #: time.monotonic() after which the session is over.
    until: float
    hops: tuple[str, ...]
    #: Receiving side: the first ticket's PAC facts (decoded once) and delegation evidence.
    pac: dict[str, Any] | None = None
    delegation: Any = None
    #: time.monotonic() when it was kept (set by :meth:`Sessions.add`).
    started: float = 0.0


def seconds_left(context: Any, maximum: float, allowance: float = 0.0) -> float:
    """How long a session on ``context`` may live: never past its ticket, nor ``maximum``."""
    try:
        ticket = context.lifetime
    except GSSError:
        return 0.0
    return max(0.0, float(min(maximum, (ticket or 0) - allowance)))


def sign(session: Session, message: bytes) -> bytes:
    try:
        return bytes(session.context.get_signature(message))
    except GSSError as e:
        raise NipcError("EKEYEXPIRED", f"session of {session.principal} cannot sign: "
                        f"{' '.join(str(e.gen_message()).split())[:200]}") from None


#: GSS supplementary status bits (RFC 2744) that only say a valid MIC came out of
#: sequence order: too old to tell, later than a newer one, or after a gap. Fine here,
#: since a proof names its channel (used once per link) and its link (the exporter), and
#: the receiver may refuse channels (rate, overload) before checking their proofs.
_ORDER_ONLY = 0x4 | 0x8 | 0x10


def verify(session: Session, message: bytes, mic: bytes) -> None:
    """Check a proof of possession of ``session``; refuse it as EKEYREJECTED."""
    try:
        session.context.verify_signature(message, mic)
    except GSSError as e:
        # By the status codes, never by the exception's class: a bad signature may come
        # with sequence bits too, and must never pass as "only out of order".
        if e.routine_code or e.calling_code or (e.supplementary_code or 0) & ~_ORDER_ONLY:
            raise NipcError("EKEYREJECTED", f"session proof for {session.principal} does not "
                            "verify (forged, or made for another channel or link)") from None


class Sessions(Generic[K]):
    """One daemon side's sessions, a table per link, keyed by ``K`` within it.

    A table is dropped when its link ends (the link's ``when_ended``), and is never read
    once the link is closed: a session cannot outlive its link.
    """

    def __init__(self, maximum: float | Callable[[], float],
                 clock: Callable[[], float] = time.monotonic,
                 allowance: float | Callable[[], float] = 0.0) -> None:
        #: Seconds of a GSS context's reported lifetime that are not its ticket's (an
        #: acceptor's: MIT adds krb5.conf's ``clockskew``, :class:`nipc.krb5profile.ClockSkew`,
        #: read at each use; a sender's :data:`MARGIN`).
        self._allowance = allowance if callable(allowance) else lambda: allowance
        if callable(maximum):
            self._maximum = maximum
        else:
            fixed = maximum
            self._maximum = lambda: fixed
        self._clock = clock
        self._links: weakref.WeakKeyDictionary[Any, dict[K, Session]] = weakref.WeakKeyDictionary()
        #: Sessions held, in all and by principal: the caps beyond one link's.
        self._total = 0
        self._principals: Counter[str] = Counter()

    @property
    def allowance(self) -> float:
        """Seconds taken off a context's lifetime (see ``__init__``), read at each use."""
        return self._allowance()

    @property
    def maximum(self) -> float:
        """Seconds a session is kept at most on this side (0: no sessions), read at each
        use: a reload's new ``session_max`` applies to the sessions already held too."""
        return self._maximum()

    def _forget(self, table: dict[K, Session], key: K) -> None:
        session = table.pop(key, None)
        if session is not None:
            self._total -= 1
            self._principals[session.principal] -= 1
            if self._principals[session.principal] <= 0:
                del self._principals[session.principal]

    def _sweep(self, table: dict[K, Session], now: float, principal: str = "", key: Any = None) -> None:
        """Drop ``table``'s sessions that are over, and any of ``principal`` or at ``key``."""
        for stale in [k for k, s in table.items()
                      if s.until <= now or s.principal == principal or k == key]:
            self._forget(table, stale)

    def _recount(self, now: float) -> None:
        """Sessions over dropped on every link, and the counts taken afresh (a link
        collected without ending takes its sessions with it)."""
        tables = list(self._links.values())
        for table in tables:
            self._sweep(table, now)
        self._principals = Counter(s.principal for table in tables for s in table.values())
        self._total = sum(self._principals.values())

    def _full(self, principal: str) -> bool:
        return self._total >= MAX_SESSIONS or self._principals[principal] >= MAX_PER_PRINCIPAL

    def get(self, link: Any, key: K) -> Session | None:
        table = self._links.get(link)
        if table is None:
            return None
        if link.closed:
            self.ended(link)
            return None
        session = table.get(key)
        now = self._clock()
        # The context's own lifetime too (wall clock, where ``until`` is monotonic): a
        # clock stepped forward or a suspended host must not carry a session past its
        # ticket, and MIT still signs and verifies with a context whose ticket expired.
        if session is not None and (session.until <= now or session.started + self.maximum <= now
                                    or seconds_left(session.context, math.inf, self.allowance) <= 0):
            self._forget(table, key)
            return None
        return session

    def add(self, link: Any, key: K, session: Session) -> bool:
        """Keep ``session``; False (not kept) when the link is over, or its table, the
        principal's share or the daemon's is full. One session per principal per link:
        a new one replaces the principal's older one, whatever hops either came by."""
        if link.closed:
            return False
        table = self._links.get(link)
        if table is None:
            self._links[link] = table = {}
            link.when_ended().addCallback(lambda _: self.ended(link))
        now = self._clock()
        self._sweep(table, now, session.principal, key)
        if self._full(session.principal):  # maybe counting sessions over on other links
            self._recount(now)
        if len(table) >= MAX_PER_LINK or self._full(session.principal):
            return False
        session.started = now
        table[key] = session
        self._total += 1
        self._principals[session.principal] += 1
        return True

    def drop(self, link: Any, key: K) -> None:
        table = self._links.get(link)
        if table is not None:
            self._forget(table, key)

    def ended(self, link: Any) -> None:
        """The link is over: its sessions with it."""
        table = self._links.get(link)
        if table is not None:
            for key in list(table):
                self._forget(table, key)
            del self._links[link]

    def count(self, link: Any) -> int:
        return len(self._links.get(link, ()))
