"""Unit tests of the daemon-to-daemon frames (SPEC section 4): ``nipc.wire``.

Frames are multiplexed on one link by channel number (never 0). Every handshake message
is versioned and length-limited, and any malformation is EPROTO.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nipc.errors import ERRNO_NAMES, NipcError
from nipc.wire import (
    CREDIT,
    HEADER,
    MAX_DATA,
    MAX_HANDSHAKE,
    MAX_HOPS_ON_WIRE,
    STREAM_OVER,
    VERSION,
    FrameDecoder,
    Hello,
    Kind,
    Result,
    binding,
    credit_frame,
    data_header,
    decode,
    decode_credit,
    encode,
    frame,
)


def hello_body(**changes: Any) -> dict[str, Any]:
    """A valid HELLO body, with some fields replaced (or removed when set to ``...``)."""
    body: dict[str, Any] = {
        "version": VERSION,
        "path": "/run/app.sock",
        "host": "b.example",
        "hops": ["a.example"],
        "token": base64.b64encode(b"gss").decode(),
        "conn_id": "abc123",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def result_body(**changes: Any) -> dict[str, Any]:
    """A valid RESULT body, with some fields replaced (or removed when set to ``...``)."""
    body: dict[str, Any] = {"errno": "OK", "message": "", "token": "", "info": {}}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def payload(body: Any) -> bytes:
    return json.dumps(body).encode()


def eproto(call: Any, *args: Any) -> NipcError:
    """Run ``call(*args)``, which must raise NipcError EPROTO; return it."""
    with pytest.raises(NipcError) as info:
        call(*args)
    assert info.value.errno_name == "EPROTO"
    return info.value


# ----------------------------------------------------------------------------- strategies

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
paths = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Zl", "Zp")), max_size=40
).map(lambda p: "/" + p).filter(lambda p: len(p.encode()) <= 107)
conn_ids = st.text(st.sampled_from("abcdefXYZ0123456789"), min_size=1, max_size=64)
hellos = st.builds(
    Hello,
    path=paths,
    host=hosts,
    hops=st.lists(hosts, max_size=MAX_HOPS_ON_WIRE).map(tuple),
    token=st.binary(max_size=2000),
    conn_id=conn_ids,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
results = st.builds(
    Result,
    errno_name=st.sampled_from(["OK", *sorted(ERRNO_NAMES)]),
    message=st.text(max_size=200),
    token=st.binary(max_size=2000),
    info=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)


channels = st.integers(1, 2**32 - 1)


def split_frame(data: bytes, channel: int = 1) -> tuple[int, bytes]:
    """Split one encoded frame on ``channel`` into ``(kind, payload)`` with FrameDecoder."""
    frames = FrameDecoder().feed(data)
    assert len(frames) == 1
    kind, got, body = frames[0]
    assert got == channel
    return kind, body


# ------------------------------------------------------------------------- round trips


class TestRoundTrip:
    def test_hello(self) -> None:
        """A HELLO survives encode/decode unchanged."""
        hello = Hello("/run/a@b.sock", "b.example", ("a.example", "c.example"), b"\x00tok", "c1")
        kind, body = split_frame(encode(hello, 7), 7)
        assert kind == Kind.HELLO
        assert decode(kind, body) == hello

    def test_result_ok_and_error(self) -> None:
        """RESULT carries OK or an errno name, a message, a token and an info object."""
        ok = Result("OK", token=b"mutual", info={"uid": 1000, "groups": [1, 2]})
        err = Result("EACCES", "refused by policy")
        for message in (ok, err):
            kind, body = split_frame(encode(message, 3), 3)
            assert kind == Kind.RESULT
            assert decode(kind, body) == message
        assert ok.ok and not err.ok
        assert err.error().errno_name == "EACCES" and err.error().message == "refused by policy"

    def test_header_layout(self) -> None:
        """A frame is type (1 byte) | channel (4 bytes) | length (4 bytes), big endian,
        then the payload: 9 bytes of header."""
        data = encode(Result("OK"), 0x01020304)
        assert HEADER.size == 9
        assert data[0] == Kind.RESULT
        assert data[1:5] == b"\x01\x02\x03\x04"
        assert int.from_bytes(data[5:9], "big") == len(data) - 9

    def test_hello_host_and_hops_are_normalised(self) -> None:
        """Host and hops are checked like the local request: lower-cased, final dot dropped."""
        body = hello_body(host="B.Example.", hops=["A.EXAMPLE."])
        hello = decode(Kind.HELLO, payload(body))
        assert isinstance(hello, Hello)
        assert hello.host == "b.example" and hello.hops == ("a.example",)

    def test_result_info_is_optional(self) -> None:
        """A RESULT without ``info`` decodes with an empty info."""
        message = decode(Kind.RESULT, payload(result_body(info=...)))
        assert isinstance(message, Result) and message.info == {}

    @settings(max_examples=60)
    @given(hellos, channels)
    def test_any_hello_round_trips(self, hello: Hello, channel: int) -> None:
        """Any valid HELLO (normalised host names, any token bytes) round-trips, on any channel."""
        kind, body = split_frame(encode(hello, channel), channel)
        assert decode(kind, body) == hello

    @settings(max_examples=60)
    @given(results, channels)
    def test_any_result_round_trips(self, result: Result, channel: int) -> None:
        """Any RESULT (any message text, token bytes, JSON info) round-trips, on any channel."""
        kind, body = split_frame(encode(result, channel), channel)
        assert decode(kind, body) == result

    def test_encode_refuses_oversized_messages(self) -> None:
        """The sender never produces a handshake frame the receiver would refuse."""
        eproto(encode, Result("OK", token=b"x" * MAX_HANDSHAKE), 1)


# --------------------------------------------------------------------------- data frames


class TestDataFrames:
    def test_data_header(self) -> None:
        """DATA frames carry raw bytes after a header built by data_header; frames of
        different channels interleave on one stream."""
        stream = (data_header(1, 3) + b"abc" + data_header(2, 0)
                  + frame(Kind.EOF, 1) + data_header(2, 2) + b"de")
        assert FrameDecoder().feed(stream) == [
            (Kind.DATA, 1, b"abc"), (Kind.DATA, 2, b""), (Kind.EOF, 1, b""), (Kind.DATA, 2, b"de"),
        ]

    def test_eof_frame(self) -> None:
        """EOF is an empty frame of its own type (carries half-close across TLS)."""
        assert frame(Kind.EOF, 5) == bytes([Kind.EOF, 0, 0, 0, 5, 0, 0, 0, 0])

    def test_close_frame(self) -> None:
        """CLOSE is an empty frame: the channel is over (the link stays)."""
        assert frame(Kind.CLOSE, 258) == bytes([Kind.CLOSE, 0, 0, 1, 2, 0, 0, 0, 0])
        assert FrameDecoder().feed(frame(Kind.CLOSE, 258)) == [(Kind.CLOSE, 258, b"")]

    @pytest.mark.parametrize("amount", [0, 1, 64 * 1024, 2**32 - 1])
    def test_credit_round_trip(self, amount: int) -> None:
        """A CREDIT frame carries a 4-byte big-endian amount, read back by decode_credit."""
        data = credit_frame(9, amount)
        assert data == HEADER.pack(Kind.CREDIT, 9, 4) + amount.to_bytes(4, "big")
        assert FrameDecoder().feed(data) == [(Kind.CREDIT, 9, amount.to_bytes(4, "big"))]
        assert decode_credit(data[HEADER.size:]) == amount

    def test_binding_is_per_link_and_per_channel(self) -> None:
        """A ticket bound to one channel of one link is good for no other channel or link."""
        a, b = b"A" * 32, b"B" * 32
        bindings = {binding(a, 1), binding(a, 2), binding(b, 1), binding(b, 2), binding(a, 2**32 - 1)}
        assert len(bindings) == 5
        assert binding(a, 1) == binding(a, 1)
        assert binding(a, 1).startswith(a)

    def test_max_data_frame_is_accepted(self) -> None:
        """A DATA frame of exactly MAX_DATA bytes is accepted."""
        body = bytes(range(256)) * (MAX_DATA // 256)
        assert len(body) == MAX_DATA
        assert FrameDecoder().feed(data_header(1, MAX_DATA) + body) == [(Kind.DATA, 1, body)]

    def test_max_handshake_frame_is_accepted(self) -> None:
        """A handshake frame of exactly MAX_HANDSHAKE bytes passes the decoder."""
        body = b" " * MAX_HANDSHAKE
        assert FrameDecoder().feed(HEADER.pack(Kind.HELLO, 1, MAX_HANDSHAKE) + body) == [
            (Kind.HELLO, 1, body)
        ]


# ------------------------------------------------------------------------ FrameDecoder


class TestFrameDecoder:
    def test_partial_header_and_payload_wait(self) -> None:
        """Nothing comes out until a whole frame is there; what is pending stays buffered."""
        decoder = FrameDecoder()
        data = data_header(6, 4) + b"wxyz"
        for i, byte in enumerate(data[:-1]):
            assert decoder.feed(bytes([byte])) == []
            assert decoder.buffered == i + 1
        assert decoder.feed(data[-1:]) == [(Kind.DATA, 6, b"wxyz")]
        assert decoder.buffered == 0

    def test_several_frames_in_one_chunk(self) -> None:
        """One chunk may hold many frames and the start of the next one."""
        decoder = FrameDecoder()
        chunk = encode(Result("OK"), 1) + data_header(1, 2) + b"hi" + data_header(2, 5) + b"ab"
        frames = decoder.feed(chunk)
        assert [(k, c) for k, c, _ in frames] == [(Kind.RESULT, 1), (Kind.DATA, 1)]
        assert decoder.buffered == HEADER.size + 2
        assert decoder.feed(b"cde") == [(Kind.DATA, 2, b"abcde")]

    @pytest.mark.parametrize("kind", [0, 2, 4, 15, 20, 255])
    def test_unknown_frame_type(self, kind: int) -> None:
        """An unknown frame type is EPROTO as soon as its header is seen."""
        eproto(FrameDecoder().feed, HEADER.pack(kind, 1, 0))

    @pytest.mark.parametrize("kind", [k for k in Kind if k not in (Kind.PING, Kind.PONG)])
    def test_channel_zero_is_refused(self, kind: Kind) -> None:
        """Channel 0 is the link's own: a channel's frame on it is EPROTO from its header."""
        length = CREDIT.size if kind == Kind.CREDIT else 0
        eproto(FrameDecoder().feed, HEADER.pack(kind, 0, length))

    @pytest.mark.parametrize("kind", [Kind.PING, Kind.PONG])
    def test_ping_and_pong_are_empty_and_on_channel_zero_only(self, kind: Kind) -> None:
        assert FrameDecoder().feed(HEADER.pack(kind, 0, 0)) == [(kind, 0, b"")]
        eproto(FrameDecoder().feed, HEADER.pack(kind, 1, 0))
        eproto(FrameDecoder().feed, HEADER.pack(kind, 0, 1))

    def test_oversized_data_frame(self) -> None:
        """A DATA frame over MAX_DATA is refused from its header alone (nothing buffered)."""
        eproto(FrameDecoder().feed, data_header(1, MAX_DATA + 1))

    @pytest.mark.parametrize("kind", [Kind.HELLO, Kind.RESULT])
    def test_oversized_handshake_frame(self, kind: Kind) -> None:
        """A handshake frame over MAX_HANDSHAKE is refused, even though DATA may be larger."""
        eproto(FrameDecoder().feed, HEADER.pack(kind, 1, MAX_HANDSHAKE + 1))

    def test_huge_length(self) -> None:
        """A length of 4 GiB - 1 is refused without trying to buffer it."""
        eproto(FrameDecoder().feed, HEADER.pack(Kind.DATA, 1, 2**32 - 1))

    def test_eof_with_payload(self) -> None:
        """An EOF frame must be empty."""
        eproto(FrameDecoder().feed, HEADER.pack(Kind.EOF, 1, 1) + b"x")

    def test_close_with_payload(self) -> None:
        """A CLOSE frame must be empty."""
        eproto(FrameDecoder().feed, HEADER.pack(Kind.CLOSE, 1, 1) + b"x")

    @pytest.mark.parametrize("length", [0, 3, 5, 8, MAX_HANDSHAKE])
    def test_credit_of_wrong_length(self, length: int) -> None:
        """A CREDIT frame's payload is exactly 4 bytes; anything else is refused from its header."""
        eproto(FrameDecoder().feed, HEADER.pack(Kind.CREDIT, 1, length))

    @settings(max_examples=50)
    @given(
        st.lists(
            st.one_of(
                st.builds(encode, hellos, channels),
                st.builds(encode, results, channels),
                st.builds(lambda c, b: data_header(c, len(b)) + b, channels, st.binary(max_size=3000)),
                st.builds(frame, st.sampled_from([Kind.EOF, Kind.CLOSE]), channels),
                st.builds(credit_frame, channels, st.integers(0, 2**32 - 1)),
            ),
            max_size=8,
        ),
        st.data(),
    )
    def test_any_chunking_gives_the_same_frames(self, frames: list[bytes], data: st.DataObject) -> None:
        """The same stream cut into arbitrary chunks yields the same frames, in order."""
        stream = b"".join(frames)
        expected = FrameDecoder().feed(stream)
        assert len(expected) == len(frames)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
        decoder = FrameDecoder()
        got: list[tuple[int, int, bytes]] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            got += decoder.feed(stream[start:end])
        assert got == expected
        assert decoder.buffered == 0
        for kind, _, body in got:
            if kind in (Kind.HELLO, Kind.RESULT):
                decode(kind, body)

    @given(st.lists(st.binary(max_size=64), min_size=1, max_size=10), st.data())
    @example([data_header(3, 2) + b"hi", data_header(3, 2) + b"yo"], None)
    @example([data_header(3, 2) + b"h", b"i" + data_header(4, 1) + b"x"], None)
    @example([data_header(3, HEADER.size + 1), data_header(5, 1) + b"x"], None)  # a payload like a frame
    @example([data_header(3, 0), data_header(0, 1) + b"x", frame(Kind.EOF, 3)], None)
    def test_single_is_feed_for_one_whole_data_frame(self, chunks: list[bytes],
                                                      data: st.DataObject | None) -> None:
        """The link's shortcut, :meth:`FrameDecoder.single`, answers only for a read that is
        exactly one valid DATA frame with nothing buffered, and then what feed would have
        said; asked before every read, it changes nothing of what comes out."""
        if data is not None:  # sometimes whole frames of any kind, sometimes any bytes
            chunks = data.draw(st.sampled_from([chunks, [data_header(len(c) % 5, len(c)) + c for c in chunks]]))
        plain, tried = FrameDecoder(), FrameDecoder()
        for chunk in chunks:
            try:
                expected = plain.feed(chunk)
            except NipcError:
                return
            one = tried.single(chunk)
            if one is None:
                assert tried.feed(chunk) == expected
            else:
                assert expected == [(Kind.DATA, *one)]
            assert tried.buffered == plain.buffered

    @settings(max_examples=300)
    @given(st.lists(st.binary(max_size=64), max_size=10))
    @example([HEADER.pack(Kind.HELLO, 1, 2) + b"[]"])
    @example([HEADER.pack(Kind.RESULT, 1, 4) + b"null"])
    @example([HEADER.pack(Kind.HELLO, 1, 1), b"\xff"])
    @example([HEADER.pack(Kind.CREDIT, 1, 4), b"\xff" * 4])
    def test_any_bytes_raise_only_nipc_error(self, chunks: list[bytes]) -> None:
        """Any bytes fed to FrameDecoder, then decode: frames, or NipcError EPROTO; nothing else."""
        decoder = FrameDecoder()
        try:
            for chunk in chunks:
                for kind, channel, body in decoder.feed(chunk):
                    assert kind in {k.value for k in Kind}
                    assert channel != 0
                    if kind in (Kind.HELLO, Kind.RESULT):
                        decode(kind, body)
                    elif kind == Kind.CREDIT:
                        decode_credit(body)
        except NipcError as e:
            assert e.errno_name == "EPROTO"

    @settings(max_examples=30)
    @given(st.lists(st.tuples(st.sampled_from(list(Kind)), st.integers(0, MAX_DATA + 10)), max_size=4), st.data())
    def test_buffer_is_bounded(self, headers: list[tuple[Kind, int]], data: st.DataObject) -> None:
        """Between feeds the decoder never holds more than one maximal frame plus a header."""
        decoder = FrameDecoder()
        bound = HEADER.size + MAX_DATA
        try:
            for kind, length in headers:
                decoder.feed(HEADER.pack(kind, 1, length))
                assert decoder.buffered <= bound
                # Feed the payload in a few pieces, checking the bound after each.
                remaining = length
                while remaining:
                    step = min(remaining, data.draw(st.integers(1, MAX_DATA)))
                    decoder.feed(b"\0" * step)
                    remaining -= step
                    assert decoder.buffered <= bound
        except NipcError as e:
            assert e.errno_name == "EPROTO"
            assert decoder.buffered <= bound

    def test_buffer_bound_with_one_big_chunk(self) -> None:
        """A big chunk of many frames is consumed: only the incomplete tail stays buffered
        (a frame collected whole; a longer DATA frame is passed on in pieces, below)."""
        decoder = FrameDecoder()
        body = b"y" * MAX_DATA
        frames = decoder.feed((data_header(1, MAX_DATA) + body) * 3 + data_header(2, STREAM_OVER)
                              + body[: STREAM_OVER - 1])
        assert len(frames) == 3
        assert decoder.buffered == HEADER.size + STREAM_OVER - 1

    @settings(max_examples=50)
    @given(st.integers(STREAM_OVER + 1, MAX_DATA), st.data())
    def test_a_long_data_frame_comes_in_pieces_as_it_arrives(self, length: int, data: st.DataObject) -> None:
        """A DATA frame over STREAM_OVER is never collected whole: each chunk's part of it
        comes out at once (never empty), nothing is buffered, and the frames around it
        come out as before."""
        body = bytes(range(256)) * (length // 256) + b"z" * (length % 256)
        stream = encode(Result("OK"), 3) + data_header(3, length) + body + frame(Kind.EOF, 3)
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))))
        decoder = FrameDecoder()
        got: list[tuple[int, int, bytes]] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            new = decoder.feed(stream[start:end])
            inside = HEADER.size + len(encode(Result("OK"), 3)) < end < len(stream) - HEADER.size
            if inside:  # what arrived of the body is out, nothing held
                assert decoder.buffered == 0 and new and new[-1][0] == Kind.DATA
            got += new
        assert got[0][0] == Kind.RESULT and got[-1] == (Kind.EOF, 3, b"")
        pieces = got[1:-1]
        assert all(k == Kind.DATA and c == 3 and p for k, c, p in pieces)
        assert b"".join(p for _, _, p in pieces) == body


# ---------------------------------------------------------------------------- decode


class TestDecodeRefuses:
    @pytest.mark.parametrize(
        "data",
        [b"", b"not json", b"\xff\xfe", b"{", b"[" * 100_000, b'{"a":1}garbage', b"\x00"],
    )
    @pytest.mark.parametrize("kind", [Kind.HELLO, Kind.RESULT])
    def test_non_json(self, kind: Kind, data: bytes) -> None:
        """A payload that is not UTF-8 JSON (or nests absurdly deep) is EPROTO."""
        eproto(decode, kind, data)

    @pytest.mark.parametrize("body", [[], None, 1, "x", True])
    @pytest.mark.parametrize("kind", [Kind.HELLO, Kind.RESULT])
    def test_non_object(self, kind: Kind, body: Any) -> None:
        """A JSON value that is not an object is EPROTO."""
        eproto(decode, kind, payload(body))

    @pytest.mark.parametrize("kind", [Kind.DATA, Kind.EOF, Kind.CLOSE, Kind.CREDIT, 0, 2, 99])
    def test_not_a_handshake_type(self, kind: int) -> None:
        """decode only knows HELLO and RESULT."""
        eproto(decode, kind, payload(result_body()))

    @pytest.mark.parametrize(
        "version",
        [..., 0, VERSION - 1, VERSION + 1, str(VERSION), None, float(VERSION), 1.5, True, [VERSION]],
    )
    def test_bad_version(self, version: Any) -> None:
        """A HELLO must carry exactly ``"version": VERSION`` (an integer, not a bool, float
        or string); version 1 (one TLS connection per routed connection) is refused."""
        eproto(decode, Kind.HELLO, payload(hello_body(version=version)))

    @pytest.mark.parametrize(
        "field,value",
        [
            ("path", ...), ("path", 1), ("path", None), ("path", ["/x"]), ("path", True),
            ("host", ...), ("host", 1), ("host", {}),
            ("hops", ...), ("hops", "a.example"), ("hops", {"a": 1}), ("hops", [1]),
            ("hops", [None]), ("hops", [["a"]]),
            ("token", ...), ("token", 1), ("token", None), ("token", [1]),
            ("conn_id", ...), ("conn_id", 1), ("conn_id", None), ("conn_id", True),
        ],
    )
    def test_hello_wrong_field_types(self, field: str, value: Any) -> None:
        """Missing or wrongly typed HELLO fields are EPROTO."""
        eproto(decode, Kind.HELLO, payload(hello_body(**{field: value})))

    @pytest.mark.parametrize(
        "field,value",
        [
            ("errno", ...), ("errno", 13), ("errno", None), ("errno", True),
            ("message", ...), ("message", 1), ("message", None),
            ("token", ...), ("token", 1),
            ("info", []), ("info", "x"), ("info", 1), ("info", None),
        ],
    )
    def test_result_wrong_field_types(self, field: str, value: Any) -> None:
        """Missing or wrongly typed RESULT fields are EPROTO."""
        eproto(decode, Kind.RESULT, payload(result_body(**{field: value})))

    @pytest.mark.parametrize("name", ["EIO", "ok", "", "E" * 1000, "ERR"])
    def test_result_unknown_errno(self, name: str) -> None:
        """A RESULT errno must be OK or one of the protocol's errno names."""
        error = eproto(decode, Kind.RESULT, payload(result_body(errno=name)))
        assert len(error.message) < 200

    @pytest.mark.parametrize("token", ["!!!!", "abc", "YQ", "YQ==\n", "YQ== ", "é", "YQ==YQ=="])
    @pytest.mark.parametrize("body", [hello_body, result_body])
    def test_bad_base64(self, body: Any, token: str) -> None:
        """Tokens are strict base64: bad characters or padding are EPROTO."""
        kind = Kind.HELLO if body is hello_body else Kind.RESULT
        eproto(decode, kind, payload(body(token=token)))

    def test_hop_list_too_long(self) -> None:
        """More than MAX_HOPS_ON_WIRE hops is EPROTO; exactly that many is fine."""
        hops = [f"h{i}.example" for i in range(MAX_HOPS_ON_WIRE)]
        hello = decode(Kind.HELLO, payload(hello_body(hops=hops)))
        assert isinstance(hello, Hello) and len(hello.hops) == MAX_HOPS_ON_WIRE
        eproto(decode, Kind.HELLO, payload(hello_body(hops=[*hops, "one.more"])))

    @pytest.mark.parametrize("hop", ["", "bad_host", "a..b", "ä", "a b"])
    def test_bad_hop_name(self, hop: str) -> None:
        """Every hop must be a valid host name."""
        eproto(decode, Kind.HELLO, payload(hello_body(hops=["a.example", hop])))

    @pytest.mark.parametrize(
        "path", ["", "relative", "@abstract", "\0abstract", "/a\0b", "/" + "x" * 107, "/\ud800",
                 "/a\nnipc-audit result=routed", "/a\rb", "/a\u202eb"]
    )
    def test_bad_path(self, path: str) -> None:
        """The target path obeys the local protocol's rules; any violation is EPROTO here."""
        eproto(decode, Kind.HELLO, payload(hello_body(path=path)))

    @pytest.mark.parametrize("host", ["", "a_b", "\ud800", "\u212a.example", "x" * 300])
    def test_bad_host(self, host: str) -> None:
        """The target host obeys the local protocol's rules; any violation is EPROTO here."""
        eproto(decode, Kind.HELLO, payload(hello_body(host=host)))

    @pytest.mark.parametrize(
        "conn_id", ["", "x" * 65, "a-b", "a b", "a\nb", "ａｂ", "é", "a/b", "١٢٣"]
    )
    def test_bad_conn_id(self, conn_id: str) -> None:
        """The connection id is 1..64 ASCII letters and digits."""
        eproto(decode, Kind.HELLO, payload(hello_body(conn_id=conn_id)))

    def test_conn_id_limits(self) -> None:
        """A 64-character alphanumeric id is accepted."""
        hello = decode(Kind.HELLO, payload(hello_body(conn_id="Ab9" * 21 + "z")))
        assert isinstance(hello, Hello) and len(hello.conn_id) == 64

    def test_error_message_is_one_clean_line(self) -> None:
        """A hostile field echoed in the error cannot break a log or reply line."""
        error = eproto(decode, Kind.HELLO, payload(hello_body(host="evil\nERR EACCES x")))
        assert "\n" not in error.message

    @settings(max_examples=150)
    @given(
        st.sampled_from([Kind.HELLO, Kind.RESULT]),
        st.dictionaries(
            st.sampled_from(["version", "path", "host", "hops", "token", "conn_id",
                             "errno", "message", "info", "other"]),
            json_values | st.text(),
            max_size=8,
        ),
    )
    def test_any_json_object_gives_a_message_or_eproto(self, kind: Kind, body: dict[str, Any]) -> None:
        """Arbitrary JSON objects decode to a message or raise EPROTO; nothing else."""
        try:
            message = decode(kind, payload(body))
        except NipcError as e:
            assert e.errno_name == "EPROTO"
        else:
            assert isinstance(message, Hello if kind == Kind.HELLO else Result)

    @settings(max_examples=50)
    @given(hellos, st.sampled_from(["path", "host", "token", "conn_id"]), st.text(max_size=30))
    def test_mutated_hello_gives_a_message_or_eproto(self, hello: Hello, field: str, value: str) -> None:
        """A valid HELLO with one string field replaced by any text: a HELLO or EPROTO."""
        body = json.loads(split_frame(encode(hello, 1))[1])
        body[field] = value
        try:
            decode(Kind.HELLO, json.dumps(body).encode())
        except NipcError as e:
            assert e.errno_name == "EPROTO"
