"""A Kerberos principal becomes a local account: ``auth_to_local``, then NSS.

The same rules ``krb5_kuserok`` and sshd use, so a deployment's existing mapping (and
sssd/winbind behind NSS) applies unchanged. Nothing falls back to a default account.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from zope.interface import implementer

from nipc.config import HostSection, KerberosSection
from nipc.errors import NipcError
from nipc.identity import LocalIdentity, account_expired, identity_of_user
from nipc.interfaces import IProjection
from nipc.memo import Memo

_krb5 = ctypes.CDLL(ctypes.util.find_library("krb5") or "libkrb5.so.3")
_krb5.krb5_init_context.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
_krb5.krb5_parse_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
_krb5.krb5_aname_to_localname.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
_krb5.krb5_free_principal.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_krb5.krb5_free_context.argtypes = [ctypes.c_void_p]
_LNAME_MAX = 256


def local_name(principal: str) -> str | None:
    """The local account name krb5's ``auth_to_local`` rules give, or None for no mapping.

    A context per call, freed after it: the calling thread is often one that ends with
    the connection (a context kept per thread leaked with each), and MIT shares the
    parsed krb5.conf between contexts while the file is unchanged, so a new context is
    cheap and sees an edited file at once. Answers are reused briefly (:mod:`nipc.memo`).
    """
    ctx = ctypes.c_void_p()
    if _krb5.krb5_init_context(ctypes.byref(ctx)) != 0:
        raise NipcError("EPROTO", "cannot initialise the Kerberos library (check krb5.conf)")
    princ = ctypes.c_void_p()
    try:
        if _krb5.krb5_parse_name(ctx, principal.encode("utf-8"), ctypes.byref(princ)) != 0:
            return None
        buf = ctypes.create_string_buffer(_LNAME_MAX)
        if _krb5.krb5_aname_to_localname(ctx, princ, _LNAME_MAX, buf) != 0:
            return None
        return buf.value.decode("utf-8", "replace")
    finally:
        if princ:
            _krb5.krb5_free_principal(ctx, princ)
        _krb5.krb5_free_context(ctx)


def realm_of(principal: str) -> str:
    return principal.rpartition("@")[2]


def resolve(principal: str, realms: tuple[str, ...]) -> LocalIdentity:
    """The account a principal maps to: realm trusted, ``auth_to_local``, then NSS.
    Blocking; the answer may be reused briefly (:mod:`nipc.memo`)."""
    if realm_of(principal) not in realms:
        raise NipcError("EACCES", f"{principal}: realm not trusted on this host")
    name = local_name(principal)
    if name is None:
        raise NipcError("EPERM", f"{principal} maps to no local account on this host")
    return identity_of_user(name)


def project(principal: str, realms: tuple[str, ...], allow_root: bool,
            resolved: LocalIdentity | None = None) -> LocalIdentity:
    """Map an authenticated principal to the local identity it acts as on this host.
    Whether the account may be acted for (expiry, root) is checked every time, also
    when ``resolved`` is a recent answer of :func:`resolve`."""
    identity = resolved if resolved is not None else resolve(principal, realms)
    if account_expired(identity.user):
        raise NipcError("EPERM", f"{principal} maps to {identity.user}, whose account has expired on this host")
    if identity.uid == 0 and not allow_root:
        raise NipcError("EPERM", f"{principal} maps to root, which this host refuses")
    return identity


@implementer(IProjection)
class Projection:
    """This host's mapping as the running configuration says (realms, root), with recent
    answers of :func:`resolve` reused."""

    def __init__(self, host: HostSection, kerberos: KerberosSection) -> None:
        self._host = host
        self._kerberos = kerberos
        #: Keyed by the realms too: a reload that stops trusting a realm applies at once.
        self._resolved: Memo[tuple[str, tuple[str, ...]], LocalIdentity] = Memo()

    def project(self, principal: str) -> LocalIdentity:
        realms = self._kerberos.realms(self._host.realm)
        resolved = self._resolved.answer((principal, realms), lambda key: resolve(*key))
        return project(principal, realms, self._kerberos.allow_root, resolved)
