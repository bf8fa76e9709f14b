"""The daemon-to-daemon wire format, inside TLS: typed, length-prefixed, multiplexed frames.

Pure encoding and decoding, no I/O. A frame is ``type (1 byte) | channel (4 bytes) |
length (4 bytes)`` (big endian) then the payload. One TLS link between two daemons
carries many routed connections, each a channel: HELLO opens one (JSON, with the
caller's ticket bound to the link and to the channel number, :func:`binding`) and RESULT
answers it; then DATA, EOF (half-close, which TLS cannot express), CREDIT (the receiver
lets the sender send that many more bytes: per-channel flow control, so one slow reader
never stalls its neighbours) and CLOSE. PING and PONG, empty and on channel 0 (the link
itself), are the liveness check of a link with open channels: a PING is answered by a
PONG. Channel numbers are chosen by the dialling side in
increasing order and never reused, so a replayed or duplicated HELLO is refused by number
before any Kerberos work.

A HELLO of version 2 carries a full Kerberos exchange's first token. Version 3 opens a
later channel of a caller who has a session on the link (:mod:`nipc.session`): the
session's reference and a MIC instead of a token. A daemon that knows only version 2
refuses it at once (EPROTO, "unsupported version"); a sender offers version 3 only on
links whose receiver offered it a session in a RESULT. A version 2 HELLO says with
``"sessions": true`` that its sender would resume a session (older senders, and onward
connections, do not say so, and are offered none); receivers that know no sessions
ignore the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from nipc.errors import ERRNO_NAMES, NipcError
from nipc.request import check_host, check_path

VERSION = 2
#: A HELLO on an existing session (reference and proof instead of a ticket).
SESSION_VERSION = 3
HEADER = struct.Struct(">BII")
CREDIT = struct.Struct(">I")
MAX_HANDSHAKE = 64 * 1024
MAX_DATA = 1024 * 1024
#: A DATA frame longer than this is passed on in pieces as its bytes arrive, not collected
#: whole: the 256 KiB a local read makes spans several reads of the link, and collecting
#: it cost two more copies of every byte. (On a link nobody has authenticated on yet, no
#: DATA frame is this long.)
STREAM_OVER = MAX_HANDSHAKE
MAX_HOPS_ON_WIRE = 64


class Kind(IntEnum):
    HELLO = 1
    RESULT = 3
    DATA = 16
    EOF = 17
    CLOSE = 18
    CREDIT = 19
    PING = 20
    PONG = 21


@dataclass(frozen=True)
class Hello:
    """The sender's request: where to connect, the hops so far, its first GSS token
    (or, with ``session``, that session's reference and its proof ``mic``)."""

    path: str
    host: str
    hops: tuple[str, ...]
    token: bytes
    conn_id: str
    session: str = ""
    mic: bytes = b""
    #: A full exchange's sender would keep and resume a session offered for it.
    resumes: bool = False


@dataclass(frozen=True)
class Result:
    """The receiver's answer: ``OK`` or an errno name, and its last GSS token (mutual auth)."""

    errno_name: str
    message: str = ""
    token: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.errno_name == "OK"

    def error(self) -> NipcError:
        return NipcError(self.errno_name, self.message)


Message = Hello | Result
_KINDS = frozenset(k.value for k in Kind)


def _proto(message: str) -> NipcError:
    return NipcError("EPROTO", f"peer handshake: {message}")


#: A frame as decoded: kind, channel, payload.
Frame = tuple[int, int, bytes]


def frame(kind: Kind, channel: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, channel, len(payload)) + payload


def data_header(channel: int, length: int) -> bytes:
    """Header of a DATA frame; sent beside the payload to avoid copying it."""
    return HEADER.pack(Kind.DATA, channel, length)


def credit_frame(channel: int, amount: int) -> bytes:
    return frame(Kind.CREDIT, channel, CREDIT.pack(amount))


def decode_credit(payload: bytes) -> int:
    (amount,) = CREDIT.unpack(payload)  # the decoder checked the length
    return int(amount)


def binding(exporter: bytes, channel: int) -> bytes:
    """What a channel's ticket is bound to: the link's TLS keying material and the
    channel number, so a ticket is good for one channel of one link only."""
    return exporter + b"/channel/" + CREDIT.pack(channel)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(message: Message, channel: int) -> bytes:
    body: dict[str, Any]
    if isinstance(message, Hello):
        kind = Kind.HELLO
        body = {
            "version": SESSION_VERSION if message.session else VERSION,
            "path": message.path,
            "host": message.host,
            "hops": list(message.hops),
            "conn_id": message.conn_id,
        }
        if message.session:
            body.update(session=message.session, mic=_b64(message.mic))
        else:
            body["token"] = _b64(message.token)
            if message.resumes:
                body["sessions"] = True
    else:
        kind = Kind.RESULT
        body = {"errno": message.errno_name, "message": message.message,
                "token": _b64(message.token), "info": message.info}
    payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_HANDSHAKE:
        raise _proto("message too large")
    return frame(kind, channel, payload)


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise _proto(f"field {name!r} missing or of the wrong type")
    return value


def _token(body: dict[str, Any], name: str = "token") -> bytes:
    text = _field(body, name, str)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _proto(f"{name} is not base64") from None


def _reference(body: dict[str, Any]) -> str:
    text = _field(body, "session", str)
    if not (0 < len(text) <= 64 and text.isascii() and text.isalnum()):
        raise _proto("bad session reference")
    return str(text)


def decode(kind: int, payload: bytes) -> Message:
    """Decode one handshake frame; any malformation is ``EPROTO``."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _proto("message is not JSON") from None
    if not isinstance(body, dict):
        raise _proto("message is not an object")
    if kind == Kind.HELLO:
        version = body.get("version")
        if type(version) is not int or version not in (VERSION, SESSION_VERSION):  # not True, not 1.0
            raise _proto(f"unsupported version {str(body.get('version'))[:20]!r}")
        hops = _field(body, "hops", list)
        if len(hops) > MAX_HOPS_ON_WIRE or not all(isinstance(h, str) for h in hops):
            raise _proto("bad hop list")
        try:
            path, host = check_path(_field(body, "path", str)), check_host(_field(body, "host", str))
            hop_names = tuple(check_host(h) for h in hops)
        except NipcError as e:
            raise _proto(e.message) from None
        conn_id = _field(body, "conn_id", str)
        if not (0 < len(conn_id) <= 64 and conn_id.isascii() and conn_id.isalnum()):
            raise _proto("bad connection id")
        if version == SESSION_VERSION:
            return Hello(path, host, hop_names, b"", conn_id, _reference(body), _token(body, "mic"))
        return Hello(path, host, hop_names, _token(body), conn_id,
                     resumes=body.get("sessions") is True)
    if kind == Kind.RESULT:
        name = _field(body, "errno", str)
        if name != "OK" and name not in ERRNO_NAMES:
            raise _proto(f"unknown errno {name[:20]!r}")
        info = body.get("info", {})
        if not isinstance(info, dict):
            raise _proto("bad info")
        return Result(name, _field(body, "message", str), _token(body), info)
    raise _proto(f"unexpected frame type {kind}")


_EMPTY = frozenset({Kind.EOF, Kind.CLOSE, Kind.PING, Kind.PONG})
#: Frames of the link itself, on channel 0 (no other frame may use it).
_LINK = frozenset({Kind.PING, Kind.PONG})


class FrameDecoder:
    """Incremental splitter of a byte stream into ``(kind, channel, payload)`` frames.

    Handshake frames are limited to :data:`MAX_HANDSHAKE` bytes, data frames to
    ``data_limit`` (:data:`MAX_DATA`; lower on a link nobody has authenticated on yet): a
    peer cannot make us buffer more than that per frame. Channel 0 is the link's own
    (PING, PONG), never a channel's. A DATA frame longer than :data:`STREAM_OVER` comes
    out in pieces as its bytes arrive, each a DATA frame of the same channel: never empty,
    and together its payload.
    """

    def __init__(self, data_limit: int = MAX_DATA) -> None:
        self._buffer = bytearray()
        self.data_limit = data_limit
        #: Bytes still to come of a DATA frame passed on in pieces, and its channel.
        self._rest = 0
        self._rest_channel = 0

    def feed(self, data: bytes) -> list[Frame]:
        # Most reads end on a frame boundary: parse them where they lie, and copy each
        # payload once; only a partial frame is kept (and appended to) in the buffer.
        frames: list[Frame] = []
        start = 0
        if self._rest:  # the buffer is empty: the rest of a large DATA frame comes first
            start = min(self._rest, len(data))
            frames.append((Kind.DATA, self._rest_channel, data if start == len(data) else data[:start]))
            self._rest -= start
            if start == len(data):
                return frames
        buffered = bool(self._buffer)
        if buffered:
            self._buffer += data
        source = self._buffer if buffered else data
        with memoryview(source) as view:
            pos = self._split(view, start, frames)
            if not buffered and pos < len(data):
                self._buffer += view[pos:]
        if buffered:
            del self._buffer[:pos]
        return frames

    def single(self, data: bytes) -> tuple[int, bytes] | None:
        """``(channel, payload)`` if ``data`` is exactly one whole, valid DATA frame and
        nothing is buffered (a relay's small message, read at once); else None, and
        :meth:`feed` takes it. Nothing is consumed either way."""
        if len(data) <= HEADER.size or self._buffer or self._rest:
            return None
        kind, channel, length = HEADER.unpack_from(data)
        if kind != Kind.DATA or not channel or length != len(data) - HEADER.size or length > self.data_limit:
            return None
        return channel, data[HEADER.size:]

    def _split(self, view: memoryview, pos: int, frames: list[Frame]) -> int:
        """Append the frames in ``view`` from ``pos`` on to ``frames``; where the rest
        (a partial frame) starts."""
        size, data_limit = len(view), self.data_limit
        while size - pos >= HEADER.size:
            kind, channel, length = HEADER.unpack_from(view, pos)
            limit = data_limit if kind == Kind.DATA else MAX_HANDSHAKE
            if kind not in _KINDS:
                raise _proto(f"unknown frame type {kind}")
            if (not channel) != (kind in _LINK):
                raise _proto(f"frame of type {kind} on channel {channel}")
            if (length > limit or (kind in _EMPTY and length)
                    or (kind == Kind.CREDIT and length != CREDIT.size)):
                raise _proto(f"frame of type {kind} has a bad length ({length} bytes)")
            end = pos + HEADER.size + length
            if end > size:
                if kind == Kind.DATA and length > STREAM_OVER:
                    if size > pos + HEADER.size:
                        frames.append((kind, channel, bytes(view[pos + HEADER.size :])))
                    self._rest, self._rest_channel = end - size, channel
                    return size
                break
            frames.append((kind, channel, bytes(view[pos + HEADER.size : end])))
            pos = end
        return pos

    @property
    def buffered(self) -> int:
        return len(self._buffer)
