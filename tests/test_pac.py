"""The PAC decoder: real samples from the sandbox's Samba AD DC, a round trip, and fuzzing.

The samples in ``tests/data`` are the raw ``urn:mspac:logon-info`` / ``urn:mspac:upn-dns-info``
name attributes python-gssapi returned on host b of a ``nipc_testbed.sandbox`` domain (Samba 4.17):
``*_alice_s4u`` after protocol transition (a's keytab, S4U2Self + S4U2Proxy for alice),
``*_alice_kinit`` after alice's own kinit and a normal context, ``*_dave_s4u`` for a user
with a non-ASCII full name in several groups; ``delegation_info_alice_one_hop`` on b after
a's S4U2Proxy, ``delegation_info_alice_chain`` on c after b delegated onward with the
evidence ticket (``urn:mspac:delegation-info``). ``logon_info_samba_resource_groups.bin`` is
dave's buffer edited and re-encoded with Samba's own NDR code (resource groups, two more
extra SIDs, a logon time), since the sandbox issues no resource groups. The expected values
below agree with Samba's decoder (``samba.dcerpc.krb5pac.PAC_LOGON_INFO_CTR`` on the blob
without its 16-byte serialization header; ``PAC_DATA`` for UPN_DNS_INFO).
"""

from __future__ import annotations

import struct
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nipc.pac import (
    MAX_BUFFER,
    MAX_COUNT,
    DelegationInfo,
    LogonInfo,
    PacError,
    UpnDnsInfo,
    decode_delegation_info,
    decode_logon_info,
    decode_upn_dns_info,
    format_sid,
)

DATA = Path(__file__).parent / "data"
DOMAIN = "S-1-5-21-546699707-1794608855-1867634704"
ALICE_RID, DAVE_RID = 1104, 1109


def _load(name: str) -> bytes:
    return (DATA / name).read_bytes()


SAMPLES = {p.name: p.read_bytes() for p in sorted(DATA.glob("*.bin"))}
LOGON_SAMPLES = [v for k, v in SAMPLES.items() if k.startswith("logon_info_")]
UPN_SAMPLES = [v for k, v in SAMPLES.items() if k.startswith("upn_dns_info_")]
# Offset of GroupCount in a logon-info buffer: header 16, top pointer 4, 6 FILETIMEs,
# 6 RPC_UNICODE_STRINGs, LogonCount + BadPasswordCount, UserId, PrimaryGroupId.
GROUP_COUNT_AT = 16 + 4 + 6 * 8 + 6 * 8 + 4 + 4 + 4


def _alice(extra: str) -> LogonInfo:
    return LogonInfo(
        account_name="alice", full_name="", logon_domain_name="LAN", logon_server="DC1",
        user_sid=f"{DOMAIN}-{ALICE_RID}", primary_group_sid=f"{DOMAIN}-513",
        group_sids=(f"{DOMAIN}-513",), extra_sids=(extra,), resource_group_sids=(),
        logon_time=None,  # Samba reports lastLogon, never set in the sandbox
        user_flags=0x20,  # LOGON_EXTRA_SIDS
    )


DAVE_GROUPS = tuple(f"{DOMAIN}-{rid}" for rid in (513, 1110, 1113, 1111, 1112, 512, 572))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # S-1-18-2: SERVICE_ASSERTED_IDENTITY, the mark of protocol transition.
        ("logon_info_alice_s4u.bin", _alice("S-1-18-2")),
        # S-1-18-1: AUTHENTICATION_AUTHORITY_ASSERTED_IDENTITY, the user proved it.
        ("logon_info_alice_kinit.bin", _alice("S-1-18-1")),
        (
            "logon_info_dave_s4u.bin",
            LogonInfo(
                account_name="dave", full_name="Dave Ünïcode-Ølsen", logon_domain_name="LAN",
                logon_server="DC1", user_sid=f"{DOMAIN}-{DAVE_RID}",
                primary_group_sid=f"{DOMAIN}-513",
                # Domain Users, nipc-ops, nipc-nested (nested via nipc-ops), nipc-universal,
                # nipc-local (domain-local: Samba 4.17 puts it here too), Domain Admins,
                # Denied RODC Password Replication Group (domain-local, via Domain Admins).
                group_sids=DAVE_GROUPS, extra_sids=("S-1-18-2",), resource_group_sids=(),
                logon_time=None, user_flags=0x20,
            ),
        ),
        (
            "logon_info_samba_resource_groups.bin",
            LogonInfo(
                account_name="dave", full_name="Dave Ünïcode-Ølsen", logon_domain_name="LAN",
                logon_server="DC1", user_sid=f"{DOMAIN}-{DAVE_RID}",
                primary_group_sid=f"{DOMAIN}-513", group_sids=DAVE_GROUPS,
                extra_sids=("S-1-18-2", "S-1-5-21-9-8-7-1234", "S-1-1-0"),
                resource_group_sids=("S-1-5-21-1-2-3-5001", "S-1-5-21-1-2-3-5002"),
                logon_time=datetime(2024, 12, 30, 2, 40, tzinfo=timezone.utc),
                user_flags=0x220,  # LOGON_EXTRA_SIDS | LOGON_RESOURCE_GROUPS
            ),
        ),
    ],
)
def test_logon_info_samples(name: str, expected: LogonInfo) -> None:
    assert decode_logon_info(_load(name)) == expected


@pytest.mark.parametrize(
    ("name", "user", "rid"),
    [("upn_dns_info_alice_s4u.bin", "alice", ALICE_RID),
     ("upn_dns_info_alice_kinit.bin", "alice", ALICE_RID),
     ("upn_dns_info_dave_s4u.bin", "dave", DAVE_RID)],
)
def test_upn_dns_info_samples(name: str, user: str, rid: int) -> None:
    assert decode_upn_dns_info(_load(name)) == UpnDnsInfo(
        upn=f"{user}@lan.test", dns_domain="LAN.TEST", flags=2,  # S: has SAM name and SID
        sam_name=user, sid=f"{DOMAIN}-{rid}",
    )


def test_bytes_like_accepted_other_types_refused() -> None:
    blob = _load("logon_info_alice_s4u.bin")
    assert decode_logon_info(bytearray(blob)) == decode_logon_info(blob)  # type: ignore[arg-type]
    assert decode_logon_info(memoryview(blob)) == decode_logon_info(blob)  # type: ignore[arg-type]
    for bad in (None, "text", 10**12, [1, 2]):
        with pytest.raises(PacError):
            decode_logon_info(bad)  # type: ignore[arg-type]
        with pytest.raises(PacError):
            decode_upn_dns_info(bad)  # type: ignore[arg-type]
        with pytest.raises(PacError):
            format_sid(bad)  # type: ignore[arg-type]


# -- SIDs --


def _raw_sid(authority: int, *subs: int, revision: int = 1, count: int | None = None) -> bytes:
    n = len(subs) if count is None else count
    head = bytes([revision, n]) + authority.to_bytes(6, "big")
    return head + struct.pack(f"<{len(subs)}I", *subs)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (_raw_sid(5, 21, 1, 2, 3, 500), "S-1-5-21-1-2-3-500"),
        (_raw_sid(18, 2), "S-1-18-2"),
        (_raw_sid(1, 0), "S-1-1-0"),
        (_raw_sid(5), "S-1-5"),
        (_raw_sid(2**32 - 1, 7), "S-1-4294967295-7"),
        (_raw_sid(2**32, 7), "S-1-0x000100000000-7"),  # as Windows prints it
        (_raw_sid(5, *range(15)), "S-1-5-" + "-".join(map(str, range(15)))),
    ],
)
def test_format_sid(raw: bytes, text: str) -> None:
    assert format_sid(raw) == text


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"\x01", _raw_sid(5, 21)[:-1], _raw_sid(5, 21) + b"\0",
        _raw_sid(5, 21, revision=2), _raw_sid(5, *range(16)), _raw_sid(5, 1, count=2),
        bytes([1, 255]) + bytes(6 + 4 * 255),
    ],
)
def test_format_sid_refuses(raw: bytes) -> None:
    with pytest.raises(PacError):
        format_sid(raw)


# -- a small NDR encoder, to build valid buffers the sandbox does not produce --


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.referent = 0x20000

    def u32(self, *values: int) -> None:
        for value in values:
            self.out += bytes(-len(self.out) % 4) + struct.pack("<I", value)

    def pointer(self, present: bool = True) -> None:
        self.referent += 4
        self.u32(self.referent if present else 0)

    def string_header(self, text: str) -> None:
        n = len(text.encode("utf-16-le"))
        self.out += bytes(-len(self.out) % 4) + struct.pack("<HH", n, n)
        self.pointer()

    def string_body(self, text: str) -> None:
        raw = text.encode("utf-16-le")
        self.u32(len(raw) // 2, 0, len(raw) // 2)
        self.out += raw

    def sid(self, raw: bytes) -> None:
        self.u32(raw[1])
        self.out += raw


def _encode_logon_info(
    names: list[str], domain: bytes, rid: int, groups: list[int], extra: list[bytes],
    res_domain: bytes | None, res_rids: list[int], logon_time: int,
) -> bytes:
    """KERB_VALIDATION_INFO the way Samba lays it out; names = account, full, server, domain."""
    w = _Writer()
    w.pointer()
    w.u32(logon_time & 0xFFFFFFFF, logon_time >> 32)
    w.out += b"\xff\xff\xff\xff\xff\xff\xff\x7f" * 5
    texts = [names[0], names[1], "", "", "", ""]
    for t in texts:
        w.string_header(t)
    w.out += bytes(4)  # LogonCount, BadPasswordCount
    w.u32(rid, 513, len(groups))
    w.pointer(bool(groups))
    w.u32(0x20)
    w.out += bytes(16)
    w.string_header(names[2])
    w.string_header(names[3])
    w.pointer()
    w.out += bytes(8 + 4 + 4 + 8 + 8 + 4 + 4)
    w.u32(len(extra))
    w.pointer(bool(extra))
    w.pointer(res_domain is not None)
    w.u32(len(res_rids))
    w.pointer(bool(res_rids))
    for t in texts:
        w.string_body(t)
    if groups:
        w.u32(len(groups))
        for g in groups:
            w.u32(g, 7)
    w.string_body(names[2])
    w.string_body(names[3])
    w.sid(domain)
    if extra:
        w.u32(len(extra))
        for _ in extra:
            w.pointer()
            w.u32(7)
        for s in extra:
            w.sid(s)
    if res_domain is not None:
        w.sid(res_domain)
    if res_rids:
        w.u32(len(res_rids))
        for g in res_rids:
            w.u32(g, 0x20000007)
    body = bytes(w.out) + bytes(-len(w.out) % 8)
    return struct.pack("<BBHIII", 1, 0x10, 8, 0xCCCCCCCC, len(body), 0) + body


def test_encoder_reproduces_samba() -> None:
    """The test encoder is byte-compatible with Samba's, so round trips mean something."""
    blob = _load("logon_info_alice_s4u.bin")
    mine = _encode_logon_info(
        ["alice", "", "DC1", "LAN"], _raw_sid(5, 21, 546699707, 1794608855, 1867634704),
        ALICE_RID, [513], [_raw_sid(18, 2)], None, [], 0,
    )
    # Samba sizes LogonServer/LogonDomainName one WCHAR larger than their length, and
    # fills the password times: compare what the decoder sees.
    assert decode_logon_info(mine) == decode_logon_info(blob)


_names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20
)
_sids = st.builds(
    lambda auth, subs: _raw_sid(auth, *subs),
    st.integers(0, 2**48 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=15),
)
_domains = st.builds(
    lambda subs: _raw_sid(5, *subs), st.lists(st.integers(0, 2**32 - 1), max_size=14)
)
_rids = st.lists(st.integers(0, 2**32 - 1), max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(_names, min_size=4, max_size=4), domain=_domains, rid=st.integers(0, 2**32 - 1),
    groups=_rids, extra=st.lists(_sids, max_size=4), res_domain=st.none() | _domains,
    res_rids=_rids, logon_time=st.integers(1, 2**57),
)
def test_round_trip(
    names: list[str], domain: bytes, rid: int, groups: list[int], extra: list[bytes],
    res_domain: bytes | None, res_rids: list[int], logon_time: int,
) -> None:
    if res_domain is None:
        res_rids = []
    info = decode_logon_info(
        _encode_logon_info(names, domain, rid, groups, extra, res_domain, res_rids, logon_time)
    )
    dom = format_sid(domain)
    assert (info.account_name, info.full_name, info.logon_server, info.logon_domain_name) == (
        tuple(names)
    )
    assert info.user_sid == f"{dom}-{rid}"
    assert info.group_sids == tuple(f"{dom}-{g}" for g in groups)
    assert info.extra_sids == tuple(map(format_sid, extra))
    res = format_sid(res_domain) if res_domain else ""
    assert info.resource_group_sids == tuple(f"{res}-{g}" for g in res_rids)
    assert info.logon_time is not None


# -- refusals --


def _patch(blob: bytes, at: int, fmt: str, *values: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, at, *values)
    return bytes(b)


def test_oversized_counts_refused_quickly() -> None:
    blob = _load("logon_info_alice_s4u.bin")
    conformance_at = 0x140  # the deferred GroupIds array's max count in this sample
    assert struct.unpack_from("<I", blob, conformance_at) == (1,)
    start = time.monotonic()
    for count in (MAX_COUNT + 1, 2**31, 2**32 - 1):
        patched = _patch(_patch(blob, GROUP_COUNT_AT, "<I", count), conformance_at, "<I", count)
        with pytest.raises(PacError):
            decode_logon_info(patched)
    # Big but under the cap: refused because the elements are not there, not allocated.
    patched = _patch(_patch(blob, GROUP_COUNT_AT, "<I", MAX_COUNT), conformance_at, "<I", MAX_COUNT)
    with pytest.raises(PacError, match="do not fit"):
        decode_logon_info(patched)
    with pytest.raises(PacError, match="exceeds"):
        decode_logon_info(bytes(MAX_BUFFER + 1))
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(
    ("at", "fmt", "value", "why"),
    [
        (0, "<B", 2, "version"),
        (1, "<B", 0x00, "endianness"),  # big-endian NDR
        (2, "<H", 16, "header length"),
        (8, "<I", 0x1A0 - 8, "does not match"),
        (8, "<I", 0x1A4, "multiple of 8"),
        (0x10, "<I", 0, "null KERB_VALIDATION_INFO"),
        (GROUP_COUNT_AT, "<I", 2, "differs from count"),  # GroupCount vs array conformance
        (GROUP_COUNT_AT + 4, "<I", 0, "null pointer with count"),  # GroupIds pointer
        (0x44, "<H", 12, "exceeds MaximumLength"),  # EffectiveName.Length 12 > 10
        (0x44, "<H", 9, "odd"),
        (0x46, "<H", 12, "differs from MaximumLength"),
        (0x48, "<I", 0, "null pointer with Length"),  # EffectiveName.Buffer
        (0xF0, "<I", 1, "nonzero array offset"),  # EffectiveName's deferred offset
        (0xF4, "<I", 4, "array length 4 differs"),
        (0xAC, "<I", 0, "no LogonDomainId"),
        (0xDC, "<I", 0, "ExtraSids: null pointer"),
        (0xE4, "<I", 1, "ResourceGroupIds: null pointer"),  # ResourceGroupCount
        (0xFC, "<H", 0xD800, "UTF-16"),  # a lone surrogate in "alice"
        (0xFC, "<H", 0, "NUL"),
        (0x178, "<B", 2, "revision"),  # the domain SID
        (0x179, "<B", 5, "differs from array size"),
        (0x174, "<I", 16, "sub-authorities"),
        (0x194, "<I", 0, "null SID pointer"),  # ExtraSids[0].Sid
        (0x14, "<Q", 2**63 - 2, "out of range"),  # LogonTime beyond year 9999
    ],
)
def test_malformed_logon_info(at: int, fmt: str, value: int, why: str) -> None:
    with pytest.raises(PacError, match=why):
        decode_logon_info(_patch(_load("logon_info_alice_s4u.bin"), at, fmt, value))


def test_inconsistent_structures_refused() -> None:
    domain = _raw_sid(5, 21, 1, 2, 3)
    names = ["u", "", "DC", "D"]
    orphan = _encode_logon_info(names, domain, 1000, [], [], None, [7], 0)
    with pytest.raises(PacError, match="without ResourceGroupDomainSid"):
        decode_logon_info(orphan)
    full = _encode_logon_info(names, _raw_sid(5, *range(15)), 1000, [], [], None, [], 0)
    with pytest.raises(PacError, match="no room for a RID"):
        decode_logon_info(full)


def test_trailing_and_missing_bytes() -> None:
    blob = _load("logon_info_alice_s4u.bin")
    decode_logon_info(blob + bytes(7))  # PAC padding after the object buffer is tolerated
    for bad in (blob + bytes(8), blob[:-1], blob[:16], b""):
        with pytest.raises(PacError):
            decode_logon_info(bad)
    # Eight unexplained bytes inside the object buffer.
    grown = _patch(blob + bytes(8), 8, "<I", len(blob) - 16 + 8)
    with pytest.raises(PacError, match="unexplained"):
        decode_logon_info(grown)


def _upn(flags: int, *fields: tuple[int, int], tail: bytes = b"") -> bytes:
    head = b"".join(struct.pack("<HH", n, o) for n, o in fields[:2]) + struct.pack("<I", flags)
    head += b"".join(struct.pack("<HH", n, o) for n, o in fields[2:])
    return head + tail


def test_upn_dns_info_without_extension() -> None:
    text = "bob@lan.test".encode("utf-16-le") + "LAN.TEST".encode("utf-16-le")
    blob = _upn(1, (24, 16), (16, 40), tail=bytes(4) + text)
    assert decode_upn_dns_info(blob) == UpnDnsInfo(
        upn="bob@lan.test", dns_domain="LAN.TEST", flags=1, sam_name=None, sid=None
    )


@pytest.mark.parametrize(
    ("at", "fmt", "value", "why"),
    [
        (0, "<H", 0x1D, "odd"),  # UpnLength
        (2, "<H", 0x10, "outside"),  # UpnOffset into the header
        (2, "<H", 0x60, "outside"),  # runs past the end
        (6, "<H", 0xFFFF, "outside"),
        (0x12, "<H", 0x58, "outside"),  # SidOffset leaves the SID short
        (0x10, "<H", 0x18, "SID"),  # SidLength 24 for a SID of 4 sub-authorities
        (0x10, "<H", 0, "SID"),
        (0x52, "<B", 3, "revision"),
        (0x18, "<H", 0xDC00, "UTF-16"),
    ],
)
def test_malformed_upn_dns_info(at: int, fmt: str, value: int, why: str) -> None:
    with pytest.raises(PacError, match=why):
        decode_upn_dns_info(_patch(_load("upn_dns_info_alice_s4u.bin"), at, fmt, value))


def test_upn_dns_info_truncated_headers() -> None:
    blob = _load("upn_dns_info_alice_s4u.bin")
    for n in (0, 11, 12, 19):
        with pytest.raises(PacError):
            decode_upn_dns_info(blob[:n])


# -- fuzzing: nothing but PacError, whatever the input --


def _only_pac_error(blob: bytes) -> None:
    for decode in (decode_logon_info, decode_upn_dns_info, format_sid):
        try:
            decode(blob)
        except PacError:
            pass


_interesting = st.sampled_from([0, 1, 2, 7, 8, 15, 16, 0x7FFF, 0xFFFF, 2**31, 2**32 - 1])


@st.composite
def _mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    b = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "u16", "u32", "truncate", "extend", "splice"]))
        at = draw(st.integers(0, max(len(b) - 1, 0)))
        if op == "flip" and b:
            b[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and b:
            b[at] = draw(st.integers(0, 255))
        elif op in ("u16", "u32"):
            size = 2 if op == "u16" else 4
            at -= at % size
            if at + size <= len(b):
                value = draw(_interesting | st.integers(0, 2 ** (8 * size) - 1))
                b[at : at + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
        elif op == "truncate":
            del b[at:]
        elif op == "extend":
            b += draw(st.binary(max_size=64))
        elif op == "splice":
            b[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(b)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(blob: bytes) -> None:
    _only_pac_error(blob)
    _only_pac_error(SAMPLES["logon_info_alice_s4u.bin"][:16] + blob)  # past the header


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(LOGON_SAMPLES))
def test_fuzz_mutated_logon_info(blob: bytes) -> None:
    _only_pac_error(blob)


@settings(max_examples=600, deadline=None)
@given(_mutated(UPN_SAMPLES))
def test_fuzz_mutated_upn_dns_info(blob: bytes) -> None:
    _only_pac_error(blob)


# -- S4U_DELEGATION_INFO -----------------------------------------------------------------

DELEGATION_SAMPLES = [_load(n) for n in ("delegation_info_alice_one_hop.bin",
                                         "delegation_info_alice_chain.bin")]


def test_delegation_info_samples() -> None:
    """The KDC's record of the hops: A$ delegated to b; then A$ and B$ to c."""
    one, chain = DELEGATION_SAMPLES
    assert decode_delegation_info(one) == DelegationInfo("nipc/b.lan.test", ("A$@LAN.TEST",))
    assert decode_delegation_info(chain) == DelegationInfo(
        "nipc/c.lan.test", ("A$@LAN.TEST", "B$@LAN.TEST"))


@pytest.mark.parametrize(("at", "fmt", "value", "why"), [
    (16, "<I", 0, "null S4U_DELEGATION_INFO pointer"),
    (20, "<H", 0x20, "Length 32 exceeds MaximumLength"),
    (20, "<H", 0x1D, "odd byte length"),
    (32, "<I", 0, "null pointer with count 1"),
    (36, "<I", 5, "array size 5 differs from MaximumLength"),
    (28, "<I", 3, "array size 1 differs from count 3"),
    (28, "<I", 1 << 30, "array size 1 differs from count"),
    (48, "<H", 0, "contains NUL"),
    (104, "<H", 0xD800, "not valid UTF-16"),
])
def test_malformed_delegation_info(at: int, fmt: str, value: int, why: str) -> None:
    blob = bytearray(DELEGATION_SAMPLES[0])
    struct.pack_into(fmt, blob, at, value)
    with pytest.raises(PacError, match=why):
        decode_delegation_info(bytes(blob))


def test_delegation_info_truncated_and_padded() -> None:
    for sample in DELEGATION_SAMPLES:
        for cut in range(0, len(sample), 7):
            with pytest.raises(PacError):
                decode_delegation_info(sample[:cut])
    padded = bytearray(DELEGATION_SAMPLES[0] + bytes(8))
    struct.pack_into("<I", padded, 8, len(padded) - 16)
    with pytest.raises(PacError, match="unexplained bytes"):
        decode_delegation_info(bytes(padded))


@settings(max_examples=600, deadline=None)
@given(_mutated(DELEGATION_SAMPLES))
def test_fuzz_mutated_delegation_info(blob: bytes) -> None:
    try:
        info = decode_delegation_info(blob)
    except PacError:
        return
    assert all("\x00" not in name for name in (info.target, *info.transited))
