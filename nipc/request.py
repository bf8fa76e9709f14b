"""The local protocol (SPEC section 2): parse the request line, encode the one-line reply.

Pure functions, no I/O. Whatever bytes a client sends, the only exception that leaves
this module is :class:`~nipc.errors.NipcError`. Both sides use it: the daemon, and the
clients (library, endpoint, command), which read a target and a reply with the very
functions the daemon uses, so all of them accept and refuse the same things.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from nipc.errors import NipcError, clean_message

MAX_LINE = 4096
#: Where clients find the daemon's gate unless told otherwise ($NIPC_SOCKET, [local] socket).
DEFAULT_SOCKET = "/run/nipc/nipc.sock"
#: ``sun_path`` is 108 bytes including the terminating NUL.
MAX_PATH = 107
MAX_HOST = 253
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
#: Unicode categories no socket path may hold: controls (newline, CR, ESC, C1), format
#: characters (bidi overrides, zero widths) and line/paragraph separators. Each could
#: make a log line, a terminal or a reply read as something it is not.
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True)
class ConnectRequest:
    """``CONNECT <path>@<host>``: route the connection to ``path`` on ``host``."""

    path: str
    host: str

    @property
    def target(self) -> str:
        return f"{self.path}@{self.host}"


@dataclass(frozen=True)
class PeerRequest:
    """``PEER``: describe the connection whose fd is attached."""


Request = ConnectRequest | PeerRequest


def take_line(buffer: bytes) -> tuple[bytes, bytes] | None:
    """Split the request line (without its newline) from what follows it.

    Returns None while more bytes are needed; raises once the line is too long to be one.
    """
    end = buffer.find(b"\n", 0, MAX_LINE)
    if end < 0:
        if len(buffer) >= MAX_LINE:
            raise NipcError("EINVAL", f"request line longer than {MAX_LINE} bytes")
        return None
    return buffer[:end], buffer[end + 1 :]


def parse_request(line: bytes) -> Request:
    """Parse one request line (newline removed; a trailing CR is allowed)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise NipcError("EINVAL", "request is not valid UTF-8") from None
    verb, sep, arg = text.partition(" ")
    if verb == "PEER" and not sep:
        return PeerRequest()
    if verb != "CONNECT" or not sep:
        raise NipcError(
            "EINVAL", "expected 'CONNECT <absolute-path>@<host>' or 'PEER'"
        )
    return parse_target(arg)


def parse_target(target: str) -> ConnectRequest:
    """``<absolute-path>@<host>``, split at the LAST ``@`` (a path may hold one, a host name
    cannot) and checked: the one parser of a target, for ``CONNECT`` lines, the ``nipc:``
    endpoint and the ``nipc`` command."""
    path, at, host = target.rpartition("@")
    if not at:
        raise NipcError("EINVAL", "target must be '/path@host': no '@<host>'")
    return ConnectRequest(check_path(path), check_host(host))


def check_path(path: str) -> str:
    """An absolute pathname socket address; abstract names have no owner or mode to check."""
    if path.startswith("@") or path.startswith("\0"):
        raise NipcError("EINVAL", "abstract socket names cannot be reached over NIPC")
    if "\0" in path:
        raise NipcError("EINVAL", "socket path contains a NUL byte")
    if not path.startswith("/"):
        raise NipcError("EINVAL", f"socket path must be absolute: {path!r}")
    control = first_control(path)
    if control is not None:
        raise NipcError("EINVAL", f"socket path contains the control character {control}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON "\ud800" on the wire
        raise NipcError("EINVAL", "socket path is not valid UTF-8") from None
    if size > MAX_PATH:
        raise NipcError("ENAMETOOLONG", f"socket path longer than {MAX_PATH} bytes")
    return path


def first_control(text: str) -> str | None:
    """The first control or format character in ``text``, named ``U+XXXX``; None if none."""
    for c in text:
        if unicodedata.category(c) in CONTROL_CATEGORIES:
            return f"U+{ord(c):04X}"
    return None


def check_host(host: str) -> str:
    """A DNS name (letters, digits, hyphens), returned lower-case without a final dot."""
    name = host.lower().removesuffix(".")
    # isascii() first: str.lower() maps some non-ASCII letters to ASCII (KELVIN SIGN -> "k").
    if (
        not host.isascii()
        or not name
        or len(name) > MAX_HOST
        or not all(_LABEL.match(x) for x in name.split("."))
    ):
        raise NipcError("EINVAL", f"not a valid host name: {clean_message(host)[:80]!r}")
    return name


def ok_reply() -> bytes:
    return b"OK\n"


def error_reply(error: NipcError) -> bytes:
    return f"ERR {error.errno_name} {error.message}\n".encode("utf-8")


def parse_reply(line: bytes) -> NipcError | None:
    """Client side: None for ``OK``, the error for ``ERR ...`` (a bad line is ``EPROTO``)."""
    text = line.decode("utf-8", "replace").rstrip("\r")
    if text == "OK":
        return None
    verb, _, rest = text.partition(" ")
    name, _, message = rest.partition(" ")
    if verb == "ERR":
        try:
            return NipcError(name, message)
        except ValueError:
            pass
    return NipcError("EPROTO", f"unexpected reply from the NIPC daemon: {text[:80]!r}")


def parse_answer(line: bytes) -> dict[str, Any] | NipcError:
    """Client side of a request answered with data (``PEER``; the admin socket's ``STATUS``
    and ``RELOAD``): the object of ``OK <json-object>``, else the error of ``ERR ...``; any
    other line, or JSON that is not an object, is ``EPROTO``."""
    verdict, _, body = line.partition(b" ")
    if verdict == b"OK":
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            return answer
    error = None if verdict == b"OK" else parse_reply(line)
    if error is not None:
        return error
    text = line.decode("utf-8", "replace")
    return NipcError("EPROTO", f"malformed answer from the NIPC daemon: {text[:80]!r}")
