"""Tickets in the caller's name (sending side) and their validation (receiving side).

All calls here block (they may talk to the KDC or read a credential cache), so they run
off the reactor thread and come back as Deferreds. The receiving daemon trusts nothing
but a context it accepted with its own keytab, bound to the TLS channel it is talking on.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import gssapi
import gssapi.raw
from gssapi.raw.misc import GSSError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.logger import Logger

from nipc.config import Config, CredentialMode
from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.impersonate import run_as

log = Logger()

#: krb5 error codes (com_err table base -1765328384) that deserve their own answer.
_KRB5_BASE = -1765328384
KDC_ERR_C_PRINCIPAL_UNKNOWN = _KRB5_BASE + 6
KDC_ERR_S_PRINCIPAL_UNKNOWN = _KRB5_BASE + 7
KDC_ERR_CLIENT_REVOKED = _KRB5_BASE + 18
KDC_ERR_BADOPTION = _KRB5_BASE + 13
KDC_ERR_KEY_EXPIRED = _KRB5_BASE + 23
AP_ERR_TKT_EXPIRED = _KRB5_BASE + 32
AP_ERR_REPEAT = _KRB5_BASE + 34
AP_ERR_SKEW = _KRB5_BASE + 37
AP_ERR_MODIFIED = _KRB5_BASE + 41
#: Time before expiry at which a cached impersonation credential is acquired anew.
RENEW_MARGIN = 120.0
#: Threads that may wait on the KDC at once for credentials not yet cached.
KDC_THREADS = 16


def gss_failure(e: GSSError, doing: str) -> NipcError:
    """Translate a GSS failure into an errno and a message that says what to do."""
    text = " ".join(str(e.gen_message()).split())[:200]
    # python-gssapi reports minor codes unsigned; the com_err table is signed.
    code = ((getattr(e, "min_code", 0) or 0) + (1 << 31)) % (1 << 32) - (1 << 31)
    if isinstance(e, gssapi.exceptions.ExpiredCredentialsError) or code in (
        AP_ERR_TKT_EXPIRED, KDC_ERR_KEY_EXPIRED
    ):
        return NipcError("EKEYEXPIRED", f"{doing}: Kerberos credentials expired ({text})")
    if code == AP_ERR_SKEW or "skew" in text.lower():
        return NipcError(
            "EKEYREJECTED", f"{doing}: clock skew too great between hosts and KDC ({text})"
        )
    if "Cannot contact any KDC" in text or "Cannot find KDC" in text:
        return NipcError("EHOSTUNREACH", f"{doing}: Kerberos KDC unreachable ({text})")
    if code == KDC_ERR_C_PRINCIPAL_UNKNOWN:
        return NipcError("ENOKEY", f"{doing}: the KDC knows no such user ({text})")
    if code == KDC_ERR_CLIENT_REVOKED:
        return NipcError("EACCES", f"{doing}: the account is disabled or locked ({text})")
    if code == KDC_ERR_S_PRINCIPAL_UNKNOWN:
        return NipcError("EHOSTUNREACH", f"{doing}: the KDC knows no NIPC service there ({text})")
    if isinstance(e, gssapi.exceptions.BadChannelBindingsError):
        return NipcError(
            "EKEYREJECTED", f"{doing}: ticket bound to another TLS session (relayed or replayed)"
        )
    if code == AP_ERR_REPEAT or "replay" in text.lower():
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

    def __init__(self, context: gssapi.SecurityContext, token: bytes, principal: str) -> None:
        self.context = context
        self.token = token
        self.principal = principal

    def step(self, token: bytes) -> bytes | None:
        try:
            return self.context.step(token)  # type: ignore[no-any-return]
        except GSSError as e:
            raise gss_failure(e, "mutual authentication of the peer daemon") from None

    @property
    def complete(self) -> bool:
        try:
            return bool(self.context.complete)
        except GSSError as e:
            raise gss_failure(e, "mutual authentication of the peer daemon") from None


class TicketSource(Protocol):
    """Obtains the first GSS token for ``target_host`` in a local caller's name."""

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        ...


def _start(creds: Any, target_host: str, channel: bytes, principal: str, doing: str) -> Initiation:
    try:
        ctx = gssapi.SecurityContext(
            name=service_name(target_host), creds=creds, usage="initiate",
            flags=_FLAGS, channel_bindings=bindings(channel),
        )
        token = ctx.step()
    except GSSError as e:
        raise gss_failure(e, doing) from None
    return Initiation(ctx, token or b"", principal)


class ProtocolTransition:
    """S4U2Self + S4U2Proxy from the host keytab: the caller needs no credentials at all.

    Impersonated credentials are cached per principal until shortly before they expire.
    """

    def __init__(self, reactor: Any, config: Config) -> None:
        self._reactor = reactor
        self._config = config
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
        does not pay for it, and a bad keytab or an unreachable KDC shows in the log
        at once. Only calls that release the GIL (see ``_daemon_creds``)."""

        def fetch() -> None:
            with self._daemon_lock:
                daemon = self._daemon_creds()
            ctx = gssapi.SecurityContext(name=service_name(self._config.host_name), creds=daemon,
                                         usage="initiate")
            ctx.step()

        def done(_: None) -> None:
            log.info("Kerberos ready: {principal} has its ticket-granting ticket",
                     principal=self._config.principal)

        def failed(failure: Any) -> None:
            error = failure.value
            text = gss_failure(error, "fetching this daemon's own ticket").message \
                if isinstance(error, GSSError) else str(error)
            log.warn("Kerberos not ready at start (callers will retry): {error}", error=text)

        d = deferToThreadPool(self._reactor, self._kdc_pool, fetch)
        return d.addCallbacks(done, failed)

    def _cached(self, principal: str) -> Any:
        """On the reactor thread, so it never waits for a lock (a dict read is atomic)."""
        cached = self._cache.get(principal)
        return cached[0] if cached and cached[1] > time.monotonic() else None

    def _daemon_creds(self) -> Any:
        store: dict[bytes | str, bytes | str] = {
            "client_keytab": str(self._config.keytab),
            "keytab": str(self._config.keytab),
            "ccache": f"MEMORY:nipc-daemon-{os.getpid()}",
        }
        # Never ask this credential its lifetime: python-gssapi's inquire_cred keeps the
        # GIL, and for a client-keytab credential MIT may go to the KDC to refresh it,
        # which froze the whole daemon while the KDC was unreachable. MIT refreshes it
        # from the keytab by itself when S4U2Self needs it (with the GIL released).
        if self._daemon is None:
            self._daemon = gssapi.Credentials(
                name=principal_name(self._config.principal), usage="both", store=store
            )
        return self._daemon

    def _impersonated(self, principal: str) -> Any:
        now = time.monotonic()
        cached = self._cache.get(principal)
        if cached and cached[1] > now:
            return cached[0]
        # Acquiring (or just inquiring) the daemon's own credential may talk to the KDC:
        # its lock is one only cache misses wait on, never the cache itself.
        with self._daemon_lock:
            daemon = self._daemon_creds()
        creds = daemon.impersonate(principal_name(principal), usage="initiate")
        lifetime = creds.lifetime or 0
        with self._lock:
            # Drop what has expired, so the cache holds only live credentials.
            for stale in [p for p, (_, until) in self._cache.items() if until <= now]:
                del self._cache[stale]
            self._cache[principal] = (creds, now + max(0.0, lifetime - RENEW_MARGIN))
        return creds

    def _initiate(self, principal: str, target_host: str, channel: bytes) -> Initiation:
        doing = f"protocol transition for {principal} to nipc/{target_host}"
        try:
            creds = self._impersonated(principal)
        except GSSError as e:
            raise gss_failure(e, doing) from None
        return _start(creds, target_host, channel, principal, doing)

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        principal = f"{who.user}@{self._config.realm}"
        creds = self._cached(principal)
        if creds is not None:
            doing = f"protocol transition for {principal} to nipc/{target_host}"
            return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), _start, creds,
                                     target_host, channel, principal, doing)
        return deferToThreadPool(self._reactor, self._kdc_pool, self._initiate, principal,
                                 target_host, channel)


class OwnCredentialCache:
    """The caller's own ticket cache, opened by a thread that has become the caller.

    The cache name comes from the configured template and the caller's uid, never from
    the daemon's environment or krb5's default (which would expand to root's cache).
    """

    def __init__(self, reactor: Any, config: Config) -> None:
        self._reactor = reactor
        self._template = config.ccache_template

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        ccache = self._template.replace("%{uid}", str(who.uid))

        def job() -> Initiation:
            doing = f"ticket from {who.user}'s credential cache for nipc/{target_host}"
            try:
                creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
                principal = str(creds.name)
            except GSSError as e:
                if isinstance(e, gssapi.exceptions.ExpiredCredentialsError):
                    raise gss_failure(e, doing) from None
                raise NipcError(
                    "ENOKEY",
                    f"{who.user} has no Kerberos credentials: run kinit, or have the "
                    "administrator configure protocol transition",
                ) from None
            return _start(creds, target_host, channel, principal, doing)

        return run_as(self._reactor, who, job, permanent=True)


class Delegated:
    """Onward in the name of an inbound caller: S4U2Proxy with the evidence ticket kept
    from that caller's inbound connection (constrained delegation, chaining)."""

    def __init__(self, reactor: Any, creds: Any, principal: str) -> None:
        self._reactor = reactor
        self._creds = creds
        self._principal = principal

    def initiate(self, who: LocalIdentity, target_host: str, channel: bytes) -> "Deferred[Initiation]":
        doing = f"delegation for {self._principal} to nipc/{target_host}"
        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), _start, self._creds, target_host,
            channel, self._principal, doing,
        )


def ticket_source(reactor: Any, config: Config) -> TicketSource:
    if config.mode is CredentialMode.OWN_CCACHE:
        return OwnCredentialCache(reactor, config)
    return ProtocolTransition(reactor, config)


@dataclass
class Accepted:
    """A completed acceptance: who the KDC says is calling, and the token to send back."""

    principal: str
    token: bytes
    #: S4U2Proxy evidence for chaining onward, when the ticket allows it.
    delegation: Any
    #: The PAC's logon-info buffer, only if the KDC's signature on it was verified.
    logon_info: bytes | None


LOGON_INFO = b"urn:mspac:logon-info"


def _logon_info(name: Any) -> bytes | None:
    """The PAC's logon-info buffer if the KDC issued a PAC and its signature checked out."""
    try:
        if LOGON_INFO not in (name.attributes or ()):
            return None
        result = gssapi.raw.get_name_attribute(name, LOGON_INFO)
    except (GSSError, AttributeError, NotImplementedError):
        return None
    if not result.authenticated or not result.values:
        return None
    value: bytes = result.values[0]
    return value


class Acceptor:
    """Validates peers' tickets with this host's keytab, bound to the TLS channel."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._creds: Any = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the keytab at start, off the reactor (acquiring releases the GIL)."""
        self._acceptor_creds()

    def _acceptor_creds(self) -> Any:
        with self._lock:
            if self._creds is None:
                # usage "both": only then does an accepted context keep the delegation
                # evidence (delegated_creds) needed to chain onward.
                keytab = str(self._config.keytab)
                store: dict[bytes | str, bytes | str] = {
                    "keytab": keytab, "client_keytab": keytab,
                    "ccache": f"MEMORY:nipc-acceptor-{os.getpid()}",
                }
                self._creds = gssapi.Credentials(usage="both", store=store)
            return self._creds

    def _local_failure(self, e: GSSError) -> NipcError | None:
        """A system error under the check (the keytab or replay cache could not be opened
        or written: EMFILE, ENOSPC...) is this host's trouble, never the ticket's."""
        code = getattr(e, "min_code", 0) or 0
        if code not in errno.errorcode:
            return None
        text = " ".join(str(e.gen_message()).split())[:200]
        log.warn("cannot check a peer's ticket: {error}", error=text)
        return NipcError("EAGAIN", f"{self._config.host_name} cannot check tickets now: its "
                         f"keytab or replay cache failed ({errno.errorcode[code]}: "
                         f"{os.strerror(code)}); the ticket was not at fault")

    def accept(self, token: bytes, channel: bytes) -> Accepted:
        """Validate a peer's first token; blocking (the replay cache is a file)."""
        doing = "validating the peer's ticket"
        try:
            ctx = gssapi.SecurityContext(
                creds=self._acceptor_creds(), usage="accept", channel_bindings=bindings(channel)
            )
            out = ctx.step(token)
            # python-gssapi may hand back an error token instead of raising, and raise
            # the stored error only when ``complete`` is read: only a complete context counts.
            complete = ctx.complete
        except GSSError as e:
            raise self._local_failure(e) or gss_failure(e, doing) from None
        if not complete:
            raise NipcError("EKEYREJECTED", f"{doing}: the exchange did not complete")
        name = ctx.initiator_name
        return Accepted(str(name), out or b"", ctx.delegated_creds, _logon_info(name))
