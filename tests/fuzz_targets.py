"""Fuzz targets for every parser of untrusted bytes, usable by atheris and by hypothesis.

Each target takes arbitrary bytes, runs one parser the way the daemon runs it, and lets
only that module's own error pass silently; anything else escaping is a bug (the fuzzer
reports it). Each also checks the invariants a caller relies on (a refusal is one line;
what decodes re-encodes to the same thing).

    python tests/fuzz_targets.py TARGET [libFuzzer/atheris flags] [CORPUS_DIR ...]
    TARGET: request | frames | logon_info | upn_dns_info | delegation_info

runs TARGET under atheris (coverage-guided, libFuzzer) with the nipc modules instrumented;
``tests/test_fuzz.py`` runs each target that way for a bounded number of runs.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Callable

DATA = Path(__file__).with_name("data")


def _imports() -> None:
    global NipcError, PacError, request, wire, pac
    from nipc import pac, request, wire  # noqa: F401  (instrumented when run by atheris)
    from nipc.errors import NipcError  # noqa: F401
    from nipc.pac import PacError  # noqa: F401


NipcError: type[Exception]
PacError: type[Exception]


def _one_line(error: Exception) -> None:
    """A refusal must be one reply line: no injected newline, a known errno name."""
    reply = request.error_reply(error)  # type: ignore[arg-type]
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply
    assert reply.startswith(b"ERR E"), reply


def request_target(data: bytes) -> None:
    """The local request line: ``take_line`` on the client's bytes, then ``parse_request``."""
    try:
        split = request.take_line(data)
    except NipcError as e:
        _one_line(e)
        assert len(data) >= request.MAX_LINE
        return
    if split is None:
        assert b"\n" not in data[: request.MAX_LINE] and len(data) < request.MAX_LINE
        return
    line, rest = split
    assert len(line) < request.MAX_LINE and line + b"\n" + rest == data
    try:
        parsed = request.parse_request(line)
    except NipcError as e:
        _one_line(e)
        return
    if isinstance(parsed, request.ConnectRequest):
        assert parsed.path.startswith("/") and "\0" not in parsed.path
        assert len(parsed.path.encode("utf-8")) <= request.MAX_PATH
        assert parsed.host == request.check_host(parsed.host)
        # Normal form: parsing what we would write back gives the same request.
        again = request.parse_request(f"CONNECT {parsed.target}".encode("utf-8"))
        assert again == parsed, (parsed, again)


def frames_target(data: bytes) -> None:
    """Peer frames: ``FrameDecoder`` fed in pieces (split points from the first bytes),
    then ``decode`` of every handshake frame; a decoded message re-encodes faithfully."""
    cuts = sorted(data[:3])
    body = data[3:]
    pieces = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)])]
    decoder = wire.FrameDecoder()
    got: list[wire.Frame] = []
    try:
        for piece in pieces:
            got += decoder.feed(piece)
    except NipcError as e:
        _one_line(e)
    for kind, channel, payload in got:
        assert (channel == 0) == (kind in (wire.Kind.PING, wire.Kind.PONG))  # the link's own
        limit = wire.MAX_DATA if kind == wire.Kind.DATA else wire.MAX_HANDSHAKE
        assert len(payload) <= limit
        if kind not in (wire.Kind.HELLO, wire.Kind.RESULT):
            continue
        try:
            message = wire.decode(kind, payload)
        except NipcError as e:
            _one_line(e)
            continue
        try:
            encoded = wire.encode(message, channel)
        except NipcError:
            continue  # re-encoding may only exceed the size limit
        (kind2, channel2, payload2), = wire.FrameDecoder().feed(encoded)
        assert (kind2, channel2) == (kind, channel) and wire.decode(kind2, payload2) == message


def logon_info_target(data: bytes) -> None:
    try:
        info = pac.decode_logon_info(data)
    except PacError:
        return
    for sid in (info.user_sid, info.primary_group_sid, *info.group_sids, *info.extra_sids,
                *info.resource_group_sids):
        assert sid.startswith("S-1-"), sid


def upn_dns_info_target(data: bytes) -> None:
    try:
        info = pac.decode_upn_dns_info(data)
    except PacError:
        return
    assert info.sid is None or info.sid.startswith("S-1-")
    try:
        pac.format_sid(data)
    except PacError:
        pass


def delegation_info_target(data: bytes) -> None:
    try:
        info = pac.decode_delegation_info(data)
    except PacError:
        return
    for name in (info.target, *info.transited):
        assert isinstance(name, str) and "\x00" not in name, name


def canary_target(data: bytes) -> None:
    """A deliberately broken parser: proves the harness reports an escaping exception."""
    if b"boom" in data:
        raise RuntimeError("canary: an exception escaped the parser")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "canary": canary_target,
    "request": request_target,
    "frames": frames_target,
    "logon_info": logon_info_target,
    "upn_dns_info": upn_dns_info_target,
    "delegation_info": delegation_info_target,
}


def seeds(target: str) -> list[bytes]:
    """Valid (and nearly valid) inputs the fuzzers start from."""
    _imports()
    if target == "canary":
        return [b"a harmless seed", b"this one goes boom"]
    if target == "request":
        return [
            b"CONNECT /run/dns/dns.sock@b.lan.test\nearly bytes",
            b"CONNECT /a@b@c.example.\r\n",
            b"PEER\n",
            b"CONNECT /" + b"x" * 120 + b"@h\n",
            b"CONNECT @abstract@h\n",
            b"CONNECT /p\xc3\xa9@xn--h-1ga.test\n",
        ]
    if target == "frames":
        hello = wire.encode(wire.Hello("/run/x.sock", "b.lan.test", ("a.lan.test",), b"\x60\x82tok", "abc123"), 1)
        result = wire.encode(wire.Result("OK", "", b"\x6f\x81", {"conn_id": "f00"}), 1)
        refusal = wire.encode(wire.Result("EACCES", "no", b"", {}), 2)
        data = (wire.data_header(1, 5) + b"hello" + wire.frame(wire.Kind.EOF, 1)
                + wire.credit_frame(1, 5) + wire.frame(wire.Kind.CLOSE, 1))
        return [b"\x05\x09\x11" + hello, b"\x00\x00\x00" + result + data, b"\x01\x02\x03" + refusal,
                b"\x00\x00\x00" + wire.HEADER.pack(1, 3, 2) + b"{}"]
    return [p.read_bytes() for p in sorted(DATA.glob(f"{target}_*.bin"))]


def main() -> None:
    import atheris

    target = sys.argv.pop(1)
    with atheris.instrument_imports(include=["nipc"]):
        _imports()
    atheris.Setup(sys.argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
else:
    _imports()
