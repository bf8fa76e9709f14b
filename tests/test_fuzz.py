"""Bounded fuzzing of every parser of untrusted bytes (issue 6, point 1).

Two fuzzers over the same targets (``tests/fuzz_targets.py``):

- atheris (coverage-guided libFuzzer; the ``nipc`` modules are instrumented), run in a
  subprocess per target for a bounded number of runs and seconds, started from the
  sandbox's real PAC buffers and valid request lines and frames;
- hypothesis, with structure-aware generators (mutated valid frames and lines), so the
  properties also run where atheris is not installed.

Only the module's own error type may escape a parser: ``NipcError`` from the request and
wire parsers, ``PacError`` from the PAC decoder. Every refusal must be a single reply line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets as ft
from nipc import wire

HERE = Path(__file__).parent
#: Per target: stop after this many runs or this many seconds, whichever comes first.
ATHERIS_RUNS = int(os.environ.get("NIPC_FUZZ_RUNS", "150000"))
ATHERIS_SECONDS = int(os.environ.get("NIPC_FUZZ_SECONDS", "10"))


def run_atheris(target: str, tmp_path: Path, runs: int, seconds: int) -> subprocess.CompletedProcess[str]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(ft.seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    argv = [sys.executable, str(HERE / "fuzz_targets.py"), target,
            f"-atheris_runs={runs}", f"-max_total_time={seconds}", "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, env=env,
                          cwd=tmp_path)


@pytest.fixture(scope="module")
def atheris_available() -> None:
    pytest.importorskip("atheris", reason="atheris (test extra) not installed")


@pytest.mark.parametrize("target", ["request", "frames", "logon_info", "upn_dns_info",
                                    "delegation_info"])
def test_atheris(target: str, tmp_path: Path, atheris_available: None) -> None:
    """Coverage-guided fuzzing, bounded: no input makes the parser raise a foreign error."""
    proc = run_atheris(target, tmp_path, ATHERIS_RUNS, ATHERIS_SECONDS)
    out = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, f"{target}: {crashes}\n{out[-4000:]}"
    assert "Done" in out, out[-2000:]


def test_atheris_harness_reports_an_escaping_exception(tmp_path: Path, atheris_available: None) -> None:
    """The canary target raises on one of its seeds: the run must fail, with a crash file."""
    proc = run_atheris("canary", tmp_path, 1000, 10)
    assert proc.returncode != 0
    assert "RuntimeError" in proc.stdout + proc.stderr
    assert list(tmp_path.glob("crash-*"))


# -- hypothesis: the same targets, structure-aware inputs --

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    """A valid sample with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "int"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
        elif op == "int" and len(data) >= at + 4:
            data[at : at + 4] = draw(st.sampled_from(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"]))
    return bytes(data)


@FAST
@given(st.one_of(st.binary(max_size=300), mutated(ft.seeds("request")),
                 st.text(max_size=200).map(lambda t: ("CONNECT " + t + "\n").encode("utf-8", "surrogatepass"))))
def test_request_line(data: bytes) -> None:
    ft.request_target(data)


def test_request_line_longer_than_the_limit() -> None:
    ft.request_target(b"CONNECT /" + b"x" * 5000)
    ft.request_target(b"x" * 4095)  # one short of the limit: still waiting for more
    ft.request_target(b"x" * 4096)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def handshake_objects(draw: st.DrawFn) -> bytes:
    """A HELLO or RESULT whose fields are replaced by JSON values of any type."""
    import json

    kind = draw(st.sampled_from([wire.Kind.HELLO, wire.Kind.RESULT, 2, 99]))
    body: dict[str, object] = {"version": wire.VERSION, "path": "/x.sock", "host": "b.lan.test",
                               "hops": ["a.lan.test"], "token": "YQ==", "conn_id": "c1",
                               "errno": "OK", "message": "", "info": {}}
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=3)):
        body[key] = draw(_json_values)
    channel = draw(st.sampled_from([0, 1, 2**32 - 1]))
    return b"\x00\x00\x00" + wire.frame(kind, channel, json.dumps(body).encode())  # type: ignore[arg-type]


@FAST
@given(st.one_of(st.binary(max_size=400), mutated(ft.seeds("frames")), handshake_objects()))
def test_peer_frames(data: bytes) -> None:
    ft.frames_target(data)


def test_peer_frames_deeply_nested_json() -> None:
    """JSON nested deep enough to exhaust the recursion limit is a refusal, not a crash."""
    for payload in (b"[" * 100_000, b'{"a":' * 60_000):
        ft.frames_target(b"\x00\x00\x00" + wire.frame(wire.Kind.HELLO, 1, payload[: wire.MAX_HANDSHAKE]))


def test_peer_frame_limits() -> None:
    """Declared lengths beyond the per-kind limit are refused from the header alone."""
    for kind, length in ((wire.Kind.HELLO, wire.MAX_HANDSHAKE + 1), (wire.Kind.DATA, wire.MAX_DATA + 1),
                         (wire.Kind.EOF, 1), (wire.Kind.CLOSE, 1), (wire.Kind.CREDIT, 3), (0, 0), (255, 0)):
        with pytest.raises(ft.NipcError):
            wire.FrameDecoder().feed(wire.HEADER.pack(kind, 1, length))


@FAST
@given(st.one_of(st.binary(max_size=800), mutated(ft.seeds("logon_info"))))
def test_logon_info(data: bytes) -> None:
    ft.logon_info_target(data)


@FAST
@given(st.one_of(st.binary(max_size=300), mutated(ft.seeds("upn_dns_info"))))
def test_upn_dns_info(data: bytes) -> None:
    ft.upn_dns_info_target(data)


@FAST
@given(st.one_of(st.binary(max_size=300), mutated(ft.seeds("delegation_info"))))
def test_delegation_info(data: bytes) -> None:
    ft.delegation_info_target(data)
