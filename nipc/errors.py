"""Errors as values: an errno name a client turns into ``OSError`` and a message for people.

Every failure that reaches a caller is a :class:`NipcError`; it becomes the
``ERR <ERRNO-NAME> <message>`` reply of the local protocol (SPEC section 2) and the
result of a peer handshake. Messages never carry secrets: the daemon logs the detail.
"""

from __future__ import annotations

import errno as _errno

#: The errno names the local protocol may answer with (SPEC section 2).
ERRNO_NAMES = frozenset(
    {
        "EACCES", "ENOENT", "ECONNREFUSED", "ENOTSOCK", "ENAMETOOLONG", "EINVAL",
        "EHOSTUNREACH", "ETIMEDOUT", "ENOKEY", "EKEYREJECTED", "EKEYEXPIRED", "EPROTO",
        "EPERM", "EAGAIN", "ELOOP", "ECONNRESET",
    }
)

MAX_MESSAGE = 400
#: Which limit of the host ran out, named for the operator.
_RESOURCE = {
    "EMFILE": "the daemon's file descriptor limit, RLIMIT_NOFILE",
    "ENFILE": "the system's file limit, fs.file-max",
    "ENOBUFS": "kernel buffer memory",
    "ENOMEM": "memory",
}


class NipcError(Exception):
    """A refusal with an errno name (``EACCES``) and a message an operator can act on."""

    def __init__(self, errno_name: str, message: str) -> None:
        if errno_name not in ERRNO_NAMES:
            raise ValueError(f"not a NIPC errno name: {errno_name}")
        super().__init__(errno_name, message)
        self.errno_name = errno_name
        self.message = clean_message(message)

    @property
    def errno(self) -> int:
        value: int = getattr(_errno, self.errno_name)
        return value

    def to_oserror(self) -> OSError:
        return OSError(self.errno, self.message)

    def __str__(self) -> str:
        return f"{self.errno_name} {self.message}"


class ConfigError(ValueError):
    """The configuration file is unreadable or wrong; the message names the key. Here, not
    in nipc.config, because the modules that check a file's contents (the TLS module's PEM
    loading) are below the configuration in the import graph."""


def clean_message(message: str) -> str:
    """One printable line, bounded, so a message can never break the line protocol."""
    flat = "".join(c if c.isprintable() else " " for c in message)
    return flat[:MAX_MESSAGE]


def from_oserror(e: OSError, what: str) -> NipcError:
    """Map a failed ``connect()`` or the like to the reply the caller would see locally."""
    name = _errno.errorcode.get(e.errno or 0, "")
    if name in ERRNO_NAMES:
        return NipcError(name, f"{what}: {e.strerror or name}")
    if name == "EWOULDBLOCK":
        return NipcError("EAGAIN", f"{what}: listen queue full")
    if name in ("ENOTDIR",):
        return NipcError("ENOENT", f"{what}: a path component is not a directory")
    if name in ("ECONNABORTED", "EPIPE"):
        return NipcError("ECONNRESET", f"{what}: {e.strerror}")
    if name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"):
        return NipcError("EAGAIN", f"{what}: out of resources ({name}: {_RESOURCE[name]})")
    return NipcError("EPROTO", f"{what}: {e.strerror or e}")
