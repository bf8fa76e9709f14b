"""krb5's own settings, read through its own profile library, as the acceptor applies them.

MIT krb5 reports an accepted context's lifetime as the ticket's end plus the clock-skew
allowance of ``[libdefaults] clockskew`` (default 300 s), so a receiver that keeps a
session for the context's lifetime must take off that same allowance (:mod:`nipc.session`),
whatever the site set: a larger one taken off as 300 s let sessions outlive their ticket.

Read through ``libkrb5``'s profile interface (``krb5_get_profile``,
``profile_get_integer``, exported by the library python-gssapi already loads), as
kdcproxy does: the files (``KRB5_CONFIG``, includes, ``includedir``), syntax and default
are the library's own, not a second parser's. There is no Python binding to it in the
dependencies (python-gssapi has none; pykrb5 would be a new compiled dependency for one
number).
"""

from __future__ import annotations

import ctypes

from twisted.logger import Logger

log = Logger()

#: MIT's ``DEFAULT_CLOCKSKEW``: the allowance when krb5.conf sets none.
DEFAULT_CLOCKSKEW = 300

_krb5 = ctypes.CDLL("libkrb5.so.3")
_krb5.krb5_init_context.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
_krb5.krb5_get_profile.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
_krb5.krb5_free_context.argtypes = [ctypes.c_void_p]
_krb5.profile_get_integer.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
_krb5.profile_get_integer.restype = ctypes.c_long
_krb5.profile_release.argtypes = [ctypes.c_void_p]
_krb5.krb5_get_error_message.argtypes = [ctypes.c_void_p, ctypes.c_int32]
_krb5.krb5_get_error_message.restype = ctypes.c_void_p
_krb5.krb5_free_error_message.argtypes = [ctypes.c_void_p, ctypes.c_void_p]


class Krb5ProfileError(Exception):
    """krb5.conf could not be read (the library's own message)."""


def _message(context: ctypes.c_void_p | None, code: int) -> str:
    raw = _krb5.krb5_get_error_message(context, code)
    try:
        return ctypes.string_at(raw).decode("utf-8", "replace") if raw else f"krb5 error {code}"
    finally:
        _krb5.krb5_free_error_message(context, raw)


def libdefaults_integer(name: str, default: int) -> int:
    """``[libdefaults] name`` of the krb5 configuration in force (``KRB5_CONFIG``), as the
    library reads it (``default`` where it is unset or no integer, as krb5 takes it then).
    Blocking (it reads files): off the reactor, or once at start."""
    context = ctypes.c_void_p()
    code = _krb5.krb5_init_context(ctypes.byref(context))
    if code:
        raise Krb5ProfileError(_message(None, code))
    try:
        profile = ctypes.c_void_p()
        code = _krb5.krb5_get_profile(context, ctypes.byref(profile))
        if code:
            raise Krb5ProfileError(_message(context, code))
        try:
            value = ctypes.c_int()
            code = _krb5.profile_get_integer(profile, b"libdefaults", name.encode(), None,
                                             default, ctypes.byref(value))
            if code:  # krb5_init_context ignores it too, and uses the default
                log.warn("krb5.conf [libdefaults] {name}: {error}; krb5 uses {default}",
                         name=name, error=_message(context, code), default=default)
                return default
            return value.value
        finally:
            _krb5.profile_release(profile)
    finally:
        _krb5.krb5_free_context(context)


class ClockSkew:
    """The acceptor's clock-skew allowance in seconds, read at start and again at each
    reload (krb5 itself rereads a changed krb5.conf for new contexts)."""

    def __init__(self) -> None:
        self.seconds = float(DEFAULT_CLOCKSKEW)
        self.reread()

    def reread(self) -> None:
        """Read ``clockskew`` again; on failure keep the value in force, and say so."""
        try:
            seconds = float(libdefaults_integer("clockskew", DEFAULT_CLOCKSKEW))
        except Krb5ProfileError as e:
            log.warn("cannot read krb5.conf's clockskew, sessions keep taking off {seconds:g}s: "
                     "{error}", seconds=self.seconds, error=str(e))
            return
        if seconds != self.seconds:
            log.info("krb5 clock-skew allowance: {seconds:g}s (krb5.conf [libdefaults] "
                     "clockskew)", seconds=seconds)
        self.seconds = seconds
