"""Tickets in the caller's name (sending side) and their validation (receiving side).

All calls here block (they may talk to the KDC or read a credential cache), so they run
off the reactor thread and come back as Deferreds. The receiving daemon trusts nothing
but a context it accepted with its own keytab, bound to the TLS channel it is talking on.
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import gssapi
import gssapi.raw
from gssapi.raw.misc import GSSError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from nipc.config import CredentialMode, HostSection, KerberosSection
from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.interfaces import IAcceptor, IDaemonReactor, IDaemonTickets, ITicketSource
from nipc.impersonate import run_as

log = Logger()

#: krb5 error codes (com_err table base -1765328384) that deserve their own answer. Failures
#: are told apart by these codes only, never by their text: krb5 translates its messages
#: (a daemon whose program set a German locale says "Es konnte mit keinem KDC ...").
_KRB5_BASE = -1765328384
KDC_ERR_C_PRINCIPAL_UNKNOWN = _KRB5_BASE + 6
KDC_ERR_S_PRINCIPAL_UNKNOWN = _KRB5_BASE + 7
KDC_ERR_POLICY = _KRB5_BASE + 12
KDC_ERR_BADOPTION = _KRB5_BASE + 13
KDC_ERR_CLIENT_REVOKED = _KRB5_BASE + 18
KDC_ERR_KEY_EXPIRED = _KRB5_BASE + 23
KDC_ERR_PREAUTH_FAILED = _KRB5_BASE + 24
AP_ERR_BAD_INTEGRITY = _KRB5_BASE + 31
AP_ERR_TKT_EXPIRED = _KRB5_BASE + 32
AP_ERR_REPEAT = _KRB5_BASE + 34
AP_ERR_NOT_US = _KRB5_BASE + 35
AP_ERR_SKEW = _KRB5_BASE + 37
AP_ERR_BADKEYVER = _KRB5_BASE + 44
AP_ERR_NOKEY = _KRB5_BASE + 45
KRB5_KDCREP_SKEW = _KRB5_BASE + 148
KRB5_REALM_UNKNOWN = _KRB5_BASE + 154
KRB5_KDC_UNREACH = _KRB5_BASE + 156
KRB5_RC_REPLAY = _KRB5_BASE + 163
KRB5_KT_NOTFOUND = _KRB5_BASE + 181
KRB5_KT_END = _KRB5_BASE + 182
KRB5_KEYTAB_BADVNO = _KRB5_BASE + 213
KRB5_REALM_CANT_RESOLVE = _KRB5_BASE + 220
KRB5_KT_KVNONOTFOUND = _KRB5_BASE + 230
KRB5_KT_FORMAT = _KRB5_BASE + 235
#: The GSS krb5 mechanism's own table ("k5g"): the keytab has no entry for the name.
KG_KEYTAB_NOMATCH = 39756033

_SKEW = frozenset({AP_ERR_SKEW, KRB5_KDCREP_SKEW})
_KDC_UNREACHABLE = frozenset({KRB5_KDC_UNREACH, KRB5_REALM_UNKNOWN, KRB5_REALM_CANT_RESOLVE})
_REPLAY = frozenset({AP_ERR_REPEAT, KRB5_RC_REPLAY})
#: The keytab holds no key for the configured principal, or is not a keytab at all.
_KEYTAB_LACKS = frozenset({KRB5_KT_NOTFOUND, KG_KEYTAB_NOMATCH, KRB5_KT_END})
_KEYTAB_MALFORMED = frozenset({KRB5_KEYTAB_BADVNO, KRB5_KT_FORMAT})
#: The keytab's keys are not the ones the KDC has: the KDC refuses the host's proof
#: (preauthentication), or tickets for the host do not open with them.
_KEYTAB_STALE = frozenset({KDC_ERR_PREAUTH_FAILED, AP_ERR_BAD_INTEGRITY, AP_ERR_NOT_US,
                           AP_ERR_BADKEYVER, AP_ERR_NOKEY, KRB5_KT_KVNONOTFOUND})
#: Time before expiry at which a cached impersonation credential is acquired anew.
RENEW_MARGIN = 120.0
#: Threads that may wait on the KDC at once for credentials not yet cached.
KDC_THREADS = 16
#: Seconds between attempts at the acceptor's full credential while the KDC fails it.
RETRY_FULL = 30.0


def minor_code(e: GSSError) -> int:
    """The minor status as the signed com_err code (python-gssapi reports it unsigned)."""
    return ((getattr(e, "min_code", 0) or 0) + (1 << 31)) % (1 << 32) - (1 << 31)


def _detail(e: GSSError) -> str:
    """The library's own words, for people only (never matched: they may be translated)."""
    return " ".join(str(e.gen_message()).split())[:200]


def keytab_problem(e: GSSError, host: HostSection, kerberos: KerberosSection,
                   reading: bool = True) -> str | None:
    """What is wrong with this host's keytab, if the failure lies there, else None.

    ``reading``: the step read the keytab file, so a system error (ENOENT, EACCES,
    EISDIR...) is the file's. Accepting a ticket reports the keytab's own as krb5 codes;
    a system error there comes from the replay cache instead.
    """
    code = minor_code(e)
    where = f"{host.name}'s keytab {kerberos.keytab}"
    if reading and 0 < code < 4096 and code in errno.errorcode:
        return f"{where} cannot be read: {os.strerror(code)} ({errno.errorcode[code]})"
    if code in _KEYTAB_LACKS:
        return (f"{where} has no key for {kerberos.principal} (kerberos.principal): "
                f"`klist -k {kerberos.keytab}` lists what it holds")
    if code in _KEYTAB_MALFORMED:
        return f"{where} is not a keytab (unknown format)"
    if code in _KEYTAB_STALE:
        return (f"{where} does not hold the KDC's current keys for {kerberos.principal}: export "
                "it anew (`klist -kte` shows its kvno and enctypes)")
    return None


def gss_failure(e: GSSError, doing: str,
                keytab_of: tuple[HostSection, KerberosSection] | None = None,
                reading: bool = True) -> NipcError:
    """Translate a GSS failure into an errno and a message that says what to do.

    ``keytab_of``: the failing step used this host's own keytab (accepting a ticket, the
    daemon's own ticket-granting ticket), so keytab trouble is named as this host's, never
    blamed on the peer or the caller.
    """
    text = _detail(e)
    code = minor_code(e)
    if keytab_of is not None and (problem := keytab_problem(e, *keytab_of, reading)) is not None:
        return NipcError("EKEYREJECTED", f"{doing}: {problem}")
    if isinstance(e, gssapi.exceptions.ExpiredCredentialsError) or code in (
        AP_ERR_TKT_EXPIRED, KDC_ERR_KEY_EXPIRED
    ):
        return NipcError("EKEYEXPIRED", f"{doing}: Kerberos credentials expired ({text})")
    if code in _SKEW:
        return NipcError(
            "EKEYREJECTED", f"{doing}: clock skew too great between hosts and KDC ({text})"
        )
    if code in _KDC_UNREACHABLE:
        return NipcError("EHOSTUNREACH", f"{doing}: Kerberos KDC unreachable ({text})")
    if code == KDC_ERR_C_PRINCIPAL_UNKNOWN:
        return NipcError("ENOKEY", f"{doing}: the KDC knows no such user ({text})")
    if code == KDC_ERR_CLIENT_REVOKED:
        return NipcError("EACCES", f"{doing}: the account is disabled or locked ({text})")
    if code == KDC_ERR_POLICY:  # what Samba/AD answer S4U2Self for a disabled user
        return NipcError("EACCES", f"{doing}: the KDC's policy refuses it: the account is "
                         f"disabled, locked or expired ({text})")
    if code == KDC_ERR_BADOPTION:  # the KDC's word for a refused S4U2Self/S4U2Proxy
        return NipcError("EKEYREJECTED", f"{doing}: the KDC refused delegation (BADOPTION): "
                         "the sending account needs nipc/<target> in its delegation list "
                         "(msDS-AllowedToDelegateTo; MIT krbAllowedToDelegateTo), protocol "
                         "transition allowed (AD 'any protocol'; MIT ok_to_auth_as_delegate) "
                         "and forwardable = true in krb5.conf")
    if code == KDC_ERR_S_PRINCIPAL_UNKNOWN:
        return NipcError("EHOSTUNREACH", f"{doing}: the KDC knows no NIPC service there ({text})")
    if isinstance(e, gssapi.exceptions.BadChannelBindingsError):
        return NipcError(
            "EKEYREJECTED", f"{doing}: ticket bound to another TLS session (relayed or replayed)"
        )
    if code in _REPLAY:
        return NipcError("EKEYREJECTED", f"{doing}: replayed authenticator ({text})")
    return NipcError("EKEYREJECTED", f"{doing}: {text}")


def bindings(channel: bytes) -> gssapi.raw.ChannelBindings:
    """GSS channel bindings from TLS keying material (RFC 9266 ``tls-exporter``)."""
    return gssapi.raw.ChannelBindings(application_data=b"tls-exporter:" + channel)


def principal_name(text: str) -> gssapi.Name:
    return gssapi.Name(text, gssapi.NameType.kerberos_principal)


def service_name(host: str) -> gssapi.Name:
    return gssapi.Name(f"nipc@{host}", gssapi.NameType.hostbased_service)


_FLAGS = gssapi.RequirementFlag.mutual_authentication | gssapi.RequirementFlag.out_of_sequence_detection


class Initiation:
    """The sending side of one GSS exchange, from first token to mutual authentication."""

    def __init__(self, context: gssapi.SecurityContext, token: bytes, principal: str,
                 reuse_until: float = math.inf) -> None:
        self.context = context
        self.token = token
        self.principal = principal
        #: time.monotonic() after which the credentials it was made with are not reused
        #: (protocol transition: their cache entry's end): a session ends there too.
        self.reuse_until = reuse_until

    def step(self, token: bytes) -> bytes | None:
        try:
            answer: bytes | None = self.context.step(token)
            return answer
        except GSSError as e:
            raise gss_failure(e, "mutual authentication of the peer daemon") from None

    @property
    def complete(self) -> bool:
        try:
            return bool(self.context.complete)
        except GSSError as e:
            raise gss_failure(e, "mutual authentication of the peer daemon") from None


def _start(creds: Any, target_host: str, channel: bytes, principal: str, doing: str,
           reuse_until: float = math.inf) -> Initiation:
    try:
        ctx = gssapi.SecurityContext(
            name=service_name(target_host), creds=creds, usage="initiate",
            flags=_FLAGS, channel_bindings=bindings(channel),
        )
        token = ctx.step()
    except GSSError as e:
        raise gss_failure(e, doing) from None
    return Initiation(ctx, token or b"", principal, reuse_until)


@implementer(IDaemonTickets)
class ProtocolTransition:
    """S4U2Self + S4U2Proxy from the host keytab: the caller needs no credentials at all.

    Impersonated credentials are cached per principal until shortly before they expire,
    and at most ``kerberos.caller_ticket_reuse``: the bound on how long a user the KDC
    has locked since can still connect.
    """

    def __init__(self, reactor: IDaemonReactor, host: HostSection,
                 kerberos: KerberosSection) -> None:
        self._reactor = reactor
        self._host = host
        self._kerberos = kerberos
        self._lock = threading.Lock()
        self._daemon_lock = threading.Lock()
        self._daemon: Any = None
        self._cache: dict[str, tuple[Any, float]] = {}
        # Cache misses wait on the KDC in a pool of their own: while the KDC hangs, they
        # cannot occupy the threads that callers with cached credentials need.
        self._kdc_pool = ThreadPool(minthreads=0, maxthreads=KDC_THREADS, name="nipc-kdc")
        if reactor is not None:
            reactor.callWhenRunning(self._kdc_pool.start)

    def stop(self) -> None:
        if self._kdc_pool.started:
            self._kdc_pool.stop()

    def warm(self) -> "Deferred[None]":
        """Fetch the daemon's own TGT at start (a ticket to itself): the first caller
        does not pay for it, and an unreachable KDC shows in the log at once."""

        def done(_: Any) -> None:
            log.info("Kerberos ready: {principal} has its ticket-granting ticket",
                     principal=self._kerberos.principal)

        def failed(failure: Any) -> None:
            log.warn("Kerberos not ready at start (callers will retry): {error}",
                     error=failure.getErrorMessage())

        d = deferToThreadPool(self._reactor, self._kdc_pool, self._own_ticket)
        return d.addCallbacks(done, failed)

    def _cached(self, principal: str) -> Any:
        """On the reactor thread, so it never waits for a lock (a dict read is atomic)."""
        cached = self._cache.get(principal)
        return cached[0] if cached and cached[1] > time.monotonic() else None

    def _daemon_creds(self) -> Any:
        store: dict[bytes | str, bytes | str] = {
            "client_keytab": str(self._kerberos.keytab),
            "keytab": str(self._kerberos.keytab),
            "ccache": f"MEMORY:nipc-daemon-{os.getpid()}",
        }
        # Never ask this credential its lifetime: python-gssapi's inquire_cred keeps the
        # GIL, and for a client-keytab credential MIT may go to the KDC to refresh it,
        # which froze the whole daemon while the KDC was unreachable. MIT refreshes it
        # from the keytab by itself when S4U2Self needs it (with the GIL released).
        if self._daemon is None:
            self._daemon = gssapi.Credentials(
                name=principal_name(self._kerberos.principal), usage="both", store=store
            )
        return self._daemon

    def _own_ticket(self) -> Any:
        """The daemon's own credential, with a ticket to itself from its keytab: a fault
        there is named as this host's before anything is asked in a caller's name (the
        KDC would otherwise blame the caller). Only calls that release the GIL (see
        ``_daemon_creds``); once the tickets are cached it needs no KDC (~0.2 ms)."""
        # Acquiring the daemon's own credential may talk to the KDC: its lock is one only
        # cache misses wait on, never the cache itself.
        try:
            with self._daemon_lock:
                daemon = self._daemon_creds()
            gssapi.SecurityContext(name=service_name(self._host.name), creds=daemon,
                                   usage="initiate").step()
        except GSSError as e:
            raise gss_failure(e, f"this daemon's own ticket as {self._kerberos.principal}",
                              keytab_of=(self._host, self._kerberos)) from None
        return daemon

    def _impersonated(self, principal: str) -> Any:
        now = time.monotonic()
        cached = self._cache.get(principal)
        if cached and cached[1] > now:
            return cached[0]
        daemon = self._own_ticket()
        creds = daemon.impersonate(principal_name(principal), usage="initiate")
        lifetime = creds.lifetime or 0
        # Reused until shortly before it expires, but never longer than the revocation bound:
        # only a new request lets the KDC refuse a user locked since.
        keep = min(max(0.0, lifetime - RENEW_MARGIN), self._kerberos.caller_ticket_reuse)
        with self._lock:
            # Drop what has expired, so the cache holds only live credentials.
            for stale in [p for p, (_, until) in self._cache.items() if until <= now]:
                del self._cache[stale]
            self._cache[principal] = (creds, now + keep)
        return creds

    def _initiate(self, principal: str, target_host: str, channel: bytes) -> Initiation:
        doing = f"protocol transition for {principal} to nipc/{target_host}"
        try:
            creds = self._impersonated(principal)
        except GSSError as e:
            raise gss_failure(e, doing) from None
        return _start(creds, target_host, channel, principal, doing,
                      self._reuse_end(principal, creds))

    def _reuse_end(self, principal: str, creds: Any) -> float:
        """When ``creds`` stop being reused (a dict read: any thread)."""
        cached = self._cache.get(principal)
        return cached[1] if cached is not None and cached[0] is creds else time.monotonic()

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        principal = f"{who.user}@{self._host.realm}"
        creds = self._cached(principal)
        if creds is not None:
            doing = f"protocol transition for {principal} to nipc/{target_host}"
            return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), _start, creds,
                                     target_host, channel, principal, doing,
                                     self._reuse_end(principal, creds))
        return deferToThreadPool(self._reactor, self._kdc_pool, self._initiate, principal,
                                 target_host, channel)

    def holder(self, who: LocalIdentity) -> "Deferred[str] | None":
        """Nothing to ask: a session is never kept past the end of reuse of the impersonated
        credentials it was made with (:attr:`Initiation.reuse_until`)."""
        return None


@implementer(IDaemonTickets)
class OwnCredentialCache:
    """The caller's own ticket cache, opened by a thread that has become the caller.

    The cache name comes from the configured template and the caller's uid, never from
    the daemon's environment or krb5's default (which would expand to root's cache).
    """

    def __init__(self, reactor: IDaemonReactor, kerberos: KerberosSection) -> None:
        self._reactor = reactor
        self._template = kerberos.ccache_template

    def _open(self, who: LocalIdentity, doing: str) -> tuple[Any, str]:
        """As ``who`` (a thread that has become them): their cache's credential
        and its principal; no valid ticket in it is a refusal that says what to do."""
        ccache = self._template.replace("%{uid}", str(who.uid))
        try:
            creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
            return creds, str(creds.name)
        except GSSError as e:
            if isinstance(e, gssapi.exceptions.ExpiredCredentialsError):
                raise gss_failure(e, doing) from None
            raise NipcError(
                "ENOKEY",
                f"{who.user} has no Kerberos credentials: run kinit, or have the "
                "administrator configure protocol transition",
            ) from None

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        def job() -> Initiation:
            doing = f"ticket from {who.user}'s credential cache for nipc/{target_host}"
            creds, principal = self._open(who, doing)
            return _start(creds, target_host, channel, principal, doing)

        return run_as(self._reactor, who, job)

    def holder(self, who: LocalIdentity) -> "Deferred[str] | None":
        """The caller's cache must still hold a valid ticket (kdestroy, expiry: no new
        channel), of the session's principal (the caller compares)."""

        def job() -> str:
            creds, principal = self._open(who, f"{who.user}'s credential cache")
            if not creds.lifetime:
                raise NipcError("EKEYEXPIRED", f"{who.user}'s Kerberos credentials expired: run kinit")
            return principal

        return run_as(self._reactor, who, job)

    def warm(self) -> "Deferred[None]":
        """Nothing to fetch ahead: each caller brings their own tickets."""
        return succeed(None)

    def stop(self) -> None:
        """Nothing held: the threads are the reactor's."""


@implementer(ITicketSource)
class Delegated:
    """Onward in the name of an inbound caller: S4U2Proxy with the evidence ticket kept
    from that caller's inbound connection (constrained delegation, chaining)."""

    def __init__(self, reactor: IDaemonReactor, creds: Any, principal: str) -> None:
        self._reactor = reactor
        self._creds = creds
        self._principal = principal

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        doing = f"delegation for {self._principal} to nipc/{target_host}"
        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), _start, self._creds, target_host,
            channel, self._principal, doing,
        )

    def holder(self, who: LocalIdentity) -> "Deferred[str] | None":
        return None  # never asked: onward connections do not use sessions


def ticket_source(reactor: IDaemonReactor, host: HostSection,
                  kerberos: KerberosSection) -> IDaemonTickets:
    if kerberos.mode is CredentialMode.OWN_CCACHE:
        return OwnCredentialCache(reactor, kerberos)
    return ProtocolTransition(reactor, host, kerberos)


@dataclass
class Accepted:
    """A completed acceptance: who the KDC says is calling, and the token to send back."""

    principal: str
    token: bytes
    #: S4U2Proxy evidence for chaining onward, when the ticket allows it.
    delegation: Any
    #: The PAC's logon-info buffer, only if the KDC's signature on it was verified.
    logon_info: bytes | None
    #: The PAC's delegation-info buffer (the KDC's record of the services that delegated),
    #: likewise only when verified.
    delegation_info: bytes | None = None
    #: The established acceptor context: a session's key (:mod:`nipc.session`).
    context: Any = None


LOGON_INFO = b"urn:mspac:logon-info"
DELEGATION_INFO = b"urn:mspac:delegation-info"


def _pac_buffer(name: Any, attribute: bytes) -> bytes | None:
    """A PAC buffer if the KDC issued a PAC and its signature checked out."""
    try:
        if attribute not in (name.attributes or ()):
            return None
        result = gssapi.raw.get_name_attribute(name, attribute)
    except (GSSError, AttributeError, NotImplementedError):
        return None
    if not result.authenticated or not result.values:
        return None
    value: bytes = result.values[0]
    return value


class KeytabError(RuntimeError):
    """This host's keytab cannot serve the configured principal: the daemon does not start."""


def check_keytab(host: HostSection, kerberos: KerberosSection) -> None:
    """At start, before listening, and before a reload is applied: the keytab exists, is a
    keytab and holds the configured principal (reading the file only; whether its keys
    are the KDC's is :meth:`Acceptor.warm`'s question, since the KDC may be away)."""
    try:
        gssapi.Credentials(name=principal_name(kerberos.principal), usage="accept",
                           store={"keytab": str(kerberos.keytab)})
    except GSSError as e:
        problem = keytab_problem(e, host, kerberos)
        if problem is None:
            problem = f"{kerberos.principal} with {kerberos.keytab}: {_detail(e)}"
        raise KeytabError(problem) from None


@implementer(IAcceptor)
class Acceptor:
    """Validates peers' tickets with this host's keytab, bound to the TLS channel.

    Its credential is named by the configured principal, never left for krb5 to pick:
    unnamed, MIT takes the keytab's first entry (a domain-joined host's keytab starts
    with whatever the join tool or the admin wrote first, host/... or the SPN), and with
    usage "both" then asks the KDC for a TGT in that name, which AD refuses to an SPN.
    """

    def __init__(self, host: HostSection, kerberos: KerberosSection) -> None:
        self._host = host
        self._kerberos = kerberos
        self._creds: Any = None
        self._accept_only: Any = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def warm(self) -> None:
        """At start, off the reactor: load the keytab, then prove it against the KDC: a
        ticket to this daemon from its keytab's principal, accepted with the same keytab.
        Raises NipcError (keytab trouble named as this host's, or the KDC unreachable)."""
        doing = "checking this host's keytab against the KDC"
        creds = self._acceptor_creds(doing)
        channel = b"nipc-keytab-self-test"
        try:
            ctx = gssapi.SecurityContext(name=service_name(self._host.name), creds=creds,
                                         usage="initiate", channel_bindings=bindings(channel))
            token = ctx.step()
        except GSSError as e:
            raise gss_failure(e, doing, keytab_of=(self._host, self._kerberos)) from None
        self.accept(token or b"", channel)

    def _acceptor_creds(self, doing: str, stand_in: bool = False) -> Any:
        """The credential tickets are accepted with. ``stand_in``: if the KDC (which the
        "both" half needs for this daemon's own TGT) fails, accept with the keytab alone
        meanwhile, retrying the full one every ``RETRY_FULL`` seconds: peers' tickets need
        no KDC, only chaining onward from those connections waits for it."""
        with self._lock:
            if self._creds is None and (not stand_in or time.monotonic() >= self._retry_at):
                # usage "both": only then does an accepted context keep the delegation
                # evidence (delegated_creds) needed to chain onward.
                keytab = str(self._kerberos.keytab)
                store: dict[bytes | str, bytes | str] = {
                    "keytab": keytab, "client_keytab": keytab,
                    "ccache": f"MEMORY:nipc-acceptor-{os.getpid()}",
                }
                try:
                    self._creds = gssapi.Credentials(
                        name=principal_name(self._kerberos.principal), usage="both", store=store)
                except GSSError as e:
                    if not stand_in or keytab_problem(e, self._host, self._kerberos) is not None:
                        raise gss_failure(e, doing, keytab_of=(self._host, self._kerberos)) from None
                    self._retry_at = time.monotonic() + RETRY_FULL
                    log.warn("accepting peers' tickets with the keytab alone for now (chaining "
                             "onward waits for the KDC): {error}", error=_detail(e))
            if self._creds is not None:
                return self._creds
            if self._accept_only is None:
                try:
                    self._accept_only = gssapi.Credentials(
                        name=principal_name(self._kerberos.principal), usage="accept",
                        store={"keytab": str(self._kerberos.keytab)})
                except GSSError as e:
                    raise gss_failure(e, doing, keytab_of=(self._host, self._kerberos)) from None
            return self._accept_only

    def _local_failure(self, e: GSSError) -> NipcError | None:
        """A system error under the check (the keytab or replay cache could not be opened
        or written: EMFILE, ENOSPC...) is this host's trouble, never the ticket's."""
        code = getattr(e, "min_code", 0) or 0
        if code not in errno.errorcode:
            return None
        text = " ".join(str(e.gen_message()).split())[:200]
        log.warn("cannot check a peer's ticket: {error}", error=text)
        return NipcError("EAGAIN", f"{self._host.name} cannot check tickets now: its "
                         f"keytab or replay cache failed ({errno.errorcode[code]}: "
                         f"{os.strerror(code)}); the ticket was not at fault")

    def accept(self, token: bytes, channel: bytes) -> Accepted:
        """Validate a peer's first token; blocking (the replay cache is a file)."""
        doing = "validating the peer's ticket"
        creds = self._acceptor_creds(doing, stand_in=True)
        try:
            ctx = gssapi.SecurityContext(creds=creds, usage="accept",
                                         channel_bindings=bindings(channel))
            out = ctx.step(token)
            # python-gssapi may hand back an error token instead of raising, and raise
            # the stored error only when ``complete`` is read: only a complete context counts.
            complete = ctx.complete
        except GSSError as e:
            raise self._local_failure(e) or gss_failure(e, doing, keytab_of=(self._host, self._kerberos),
                                                        reading=False) from None
        if not complete:
            raise NipcError("EKEYREJECTED", f"{doing}: the exchange did not complete")
        name = ctx.initiator_name
        return Accepted(str(name), out or b"", ctx.delegated_creds,
                        _pac_buffer(name, LOGON_INFO), _pac_buffer(name, DELEGATION_INFO), ctx)
