"""A small, strict decoder of the Microsoft PAC buffers NIPC reports in ``PEER``.

python-gssapi hands the acceptor the PAC's buffers as name attributes
(``urn:mspac:logon-info``, ``urn:mspac:upn-dns-info``). The KDC signed them, but the
decoder is still written as if the bytes were hostile: it runs inside the daemon, and a
parser bug there must cost one refused identity, never the process.  So every offset,
length, count, pointer and conformance value is checked before it is used, counts are
capped, nothing recurses, and the only exception that leaves this module is
:class:`PacError`.  Pure: no I/O, stdlib only.

References: MS-PAC 2.5 (KERB_VALIDATION_INFO), 2.9 (S4U_DELEGATION_INFO), 2.10
(UPN_DNS_INFO); MS-RPCE 2.2.6 (type serialization version 1) and the NDR rules of C706
ch. 14; MS-DTYP 2.4.2 (SID).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "DelegationInfo",
    "LogonInfo",
    "PacError",
    "UpnDnsInfo",
    "decode_delegation_info",
    "decode_logon_info",
    "decode_upn_dns_info",
    "format_sid",
]

#: Largest buffer accepted at all. Windows' default MaxTokenSize is 48000 bytes; a PAC
#: buffer a thousand times bigger is an attack, and refusing it up front bounds all work.
MAX_BUFFER = 1 << 20
#: Largest element count of any NDR array (groups, extra SIDs, resource groups). Windows
#: refuses tokens with more than 1024 SIDs; the cap only has to stop absurd allocations.
MAX_COUNT = 16384
#: MS-DTYP 2.4.2: a SID has at most 15 sub-authorities.
MAX_SUB_AUTHORITIES = 15

#: UserFlags bits (MS-PAC 2.5) callers may want to test.
LOGON_EXTRA_SIDS = 0x20
LOGON_RESOURCE_GROUPS = 0x200
#: UPN_DNS_INFO Flags bits (MS-PAC 2.10).
UPN_CONSTRUCTED = 0x1
UPN_EXTENDED = 0x2

_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
_FILETIME_NEVER = 0x7FFF_FFFF_FFFF_FFFF


class PacError(Exception):
    """The buffer is not a well-formed PAC piece; the only exception this module raises."""


@dataclass(frozen=True)
class LogonInfo:
    """The identity fields of KERB_VALIDATION_INFO, with SIDs already composed as strings."""

    account_name: str
    full_name: str
    logon_domain_name: str
    logon_server: str
    user_sid: str
    primary_group_sid: str
    group_sids: tuple[str, ...]
    extra_sids: tuple[str, ...]
    resource_group_sids: tuple[str, ...]
    logon_time: datetime | None
    user_flags: int


@dataclass(frozen=True)
class DelegationInfo:
    """S4U_DELEGATION_INFO: the KDC's own record of constrained delegation (PAC type 11).

    ``transited`` lists the services that delegated, first hop first, as the KDC wrote
    them (each S4U2Proxy appends its requester); ``target`` is the service the last
    S4U2Proxy asked for (MS-PAC 2.9).
    """

    target: str
    transited: tuple[str, ...]


@dataclass(frozen=True)
class UpnDnsInfo:
    """UPN_DNS_INFO; ``sam_name`` and ``sid`` only when the extended flag (S) is set."""

    upn: str
    dns_domain: str
    flags: int
    sam_name: str | None
    sid: str | None


# -- SIDs --

_Sid = tuple[int, tuple[int, ...]]  # (identifier authority, sub-authorities)


def _parse_sid(raw: bytes) -> _Sid:
    """Binary SID (MS-DTYP 2.4.2.2) of exactly ``len(raw)`` bytes -> its parts."""
    if len(raw) < 8:
        raise PacError("SID shorter than its 8-byte header")
    revision, count = raw[0], raw[1]
    if revision != 1:
        raise PacError(f"SID revision {revision} is not 1")
    if count > MAX_SUB_AUTHORITIES:
        raise PacError(f"SID has {count} sub-authorities (at most {MAX_SUB_AUTHORITIES})")
    if len(raw) != 8 + 4 * count:
        raise PacError(f"SID of {count} sub-authorities is {len(raw)} bytes, not {8 + 4 * count}")
    authority = int.from_bytes(raw[2:8], "big")
    return authority, struct.unpack_from(f"<{count}I", raw, 8)


def _sid_str(sid: _Sid) -> str:
    """MS-DTYP 2.4.2.1 string form; an authority of 2**32 or more is written in hex the way
    Windows' ConvertSidToStringSid does (``0x`` and 12 lower-case digits)."""
    authority, subs = sid
    auth = str(authority) if authority < 1 << 32 else f"0x{authority:012x}"
    return "-".join(["S-1", auth, *map(str, subs)])


def _with_rid(domain: _Sid, rid: int) -> str:
    """Domain SID + RID, refusing a result longer than any SID may be."""
    if len(domain[1]) >= MAX_SUB_AUTHORITIES:
        raise PacError("domain SID has no room for a RID")
    return _sid_str((domain[0], (*domain[1], rid)))


def format_sid(raw: bytes) -> str:
    """Binary SID (RPC_SID without NDR framing, as in UPN_DNS_INFO) -> ``"S-1-..."``."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise PacError(f"SID must be bytes, not {type(raw).__name__}")
    return _sid_str(_parse_sid(bytes(raw)))


# -- NDR reading --


def _as_bytes(data: object) -> bytes:
    """Accept only byte strings, and refuse oversized ones before any work is done."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PacError(f"PAC buffer must be bytes, not {type(data).__name__}")
    try:
        size = memoryview(data).nbytes
    except (TypeError, ValueError) as e:  # a released memoryview, for one
        raise PacError(f"unusable PAC buffer: {e}") from None
    if size > MAX_BUFFER:
        raise PacError(f"PAC buffer of {size} bytes exceeds {MAX_BUFFER}")
    return bytes(data)


def _utf16(raw: bytes, what: str) -> str:
    """UTF-16LE -> str; unpaired surrogates and NULs are refused (names reach logs and JSON)."""
    try:
        text = raw.decode("utf-16-le")
    except UnicodeDecodeError:
        raise PacError(f"{what} is not valid UTF-16") from None
    if "\x00" in text:
        raise PacError(f"{what} contains NUL")
    return text


@dataclass(frozen=True)
class _StrHeader:
    """An RPC_UNICODE_STRING as it sits inline: byte lengths and the referent ID."""

    what: str
    length: int
    maximum: int
    referent: int


class _Ndr:
    """Little-endian NDR20 reader over one object buffer; every read is bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def align(self, n: int) -> None:
        self.pos += -self.pos % n
        if self.pos > len(self.data):
            raise PacError("truncated (alignment padding)")

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining():
            raise PacError(f"truncated: need {n} bytes at {self.pos}, have {self.remaining()}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u16(self) -> int:
        self.align(2)
        value: int = struct.unpack("<H", self.take(2))[0]
        return value

    def u32(self) -> int:
        self.align(4)
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def filetime(self) -> int:
        """FILETIME is two ULONGs (alignment 4, not 8), low word first."""
        low, high = self.u32(), self.u32()
        return high << 32 | low

    def conformance(self, expected: int, size: int, what: str) -> None:
        """The max count of a conformant array: must match the inline count and fit."""
        count = self.u32()
        if count != expected:
            raise PacError(f"{what}: array size {count} differs from count {expected}")
        if count > MAX_COUNT:
            raise PacError(f"{what}: {count} elements exceed the cap of {MAX_COUNT}")
        if count * size > self.remaining():
            raise PacError(f"{what}: {count} elements do not fit in the buffer")

    def string_header(self, what: str) -> _StrHeader:
        length, maximum, referent = self.u16(), self.u16(), self.u32()
        if length % 2 or maximum % 2:
            raise PacError(f"{what}: odd byte length of a UTF-16 string")
        if length > maximum:
            raise PacError(f"{what}: Length {length} exceeds MaximumLength {maximum}")
        if referent == 0 and length:
            raise PacError(f"{what}: null pointer with Length {length}")
        return _StrHeader(what, length, maximum, referent)

    def string_body(self, h: _StrHeader) -> str:
        """The deferred conformant-varying WCHAR array of a non-null string."""
        if h.referent == 0:
            return ""
        max_count, offset, actual = self.u32(), self.u32(), self.u32()
        if max_count != h.maximum // 2:
            raise PacError(f"{h.what}: array size {max_count} differs from MaximumLength")
        if offset != 0:
            raise PacError(f"{h.what}: nonzero array offset {offset}")
        if actual != h.length // 2:
            raise PacError(f"{h.what}: array length {actual} differs from Length")
        return _utf16(self.take(h.length), h.what)

    def sid(self, what: str) -> _Sid:
        """A deferred RPC_SID: conformance (sub-authority count), then the SID itself."""
        count = self.u32()
        if count > MAX_SUB_AUTHORITIES:
            raise PacError(f"{what}: {count} sub-authorities (at most {MAX_SUB_AUTHORITIES})")
        raw = self.take(8 + 4 * count)
        if raw[1] != count:
            raise PacError(f"{what}: SubAuthorityCount {raw[1]} differs from array size {count}")
        return _parse_sid(raw)

    def rids(self, count: int, referent: int, what: str) -> tuple[int, ...]:
        """A deferred GROUP_MEMBERSHIP array; only the RIDs matter here."""
        if referent == 0:
            if count:
                raise PacError(f"{what}: null pointer with count {count}")
            return ()
        self.conformance(count, 8, what)
        raw = self.take(8 * count)
        return tuple(struct.unpack_from(f"<{2 * count}I", raw)[::2])

    def sid_and_attributes(self, count: int, referent: int, what: str) -> tuple[_Sid, ...]:
        """A deferred KERB_SID_AND_ATTRIBUTES array, then the SIDs its pointers defer."""
        if referent == 0:
            if count:
                raise PacError(f"{what}: null pointer with count {count}")
            return ()
        self.conformance(count, 8, what)
        pointers = struct.unpack_from(f"<{2 * count}I", self.take(8 * count))[::2]
        if 0 in pointers:
            raise PacError(f"{what}: null SID pointer")
        return tuple(self.sid(what) for _ in pointers)


def _object_buffer(data: bytes) -> bytes:
    """Strip and check the type serialization version 1 header (MS-RPCE 2.2.6)."""
    if len(data) < 16:
        raise PacError("shorter than the 16-byte serialization header")
    version, endian, header_length = struct.unpack_from("<BBH", data, 0)
    if version != 1:
        raise PacError(f"serialization version {version} is not 1")
    if endian != 0x10:
        raise PacError(f"endianness 0x{endian:02x}: only little-endian (0x10) is supported")
    if header_length != 8:
        raise PacError(f"common header length {header_length} is not 8")
    (length,) = struct.unpack_from("<I", data, 8)
    if length % 8:
        raise PacError(f"object buffer length {length} is not a multiple of 8")
    if not 16 + length <= len(data) < 16 + length + 8:
        raise PacError(f"object buffer length {length} does not match {len(data) - 16} bytes")
    return data[16 : 16 + length]


def _filetime(value: int) -> datetime | None:
    """0 and 0x7FFF... mean "not set" / "never"; anything beyond datetime's range is refused."""
    if value in (0, _FILETIME_NEVER):
        return None
    try:
        return _FILETIME_EPOCH + timedelta(microseconds=value // 10)
    except OverflowError:
        raise PacError(f"FILETIME {value} is out of range") from None


def decode_logon_info(data: bytes) -> LogonInfo:
    """Decode the ``urn:mspac:logon-info`` buffer: a serialized pointer to KERB_VALIDATION_INFO."""
    r = _Ndr(_object_buffer(_as_bytes(data)))
    if r.u32() == 0:
        raise PacError("null KERB_VALIDATION_INFO pointer")
    # The fixed part, in MS-PAC 2.5 order; embedded pointers are only referent IDs here.
    logon_time = r.filetime()
    for _ in range(5):  # LogoffTime .. PasswordMustChange
        r.filetime()
    names = [
        r.string_header(w)
        for w in ("EffectiveName", "FullName", "LogonScript", "ProfilePath",
                  "HomeDirectory", "HomeDirectoryDrive")
    ]
    r.take(4)  # LogonCount, BadPasswordCount (two USHORTs)
    user_id, primary_group_id, group_count, groups_ptr = r.u32(), r.u32(), r.u32(), r.u32()
    user_flags = r.u32()
    r.take(16)  # UserSessionKey
    server_h, domain_h = r.string_header("LogonServer"), r.string_header("LogonDomainName")
    domain_sid_ptr = r.u32()
    r.take(8 + 4 + 4 + 8 + 8 + 4 + 4)  # Reserved1 .. Reserved3
    sid_count, extra_ptr = r.u32(), r.u32()
    res_domain_ptr, res_count, res_ptr = r.u32(), r.u32(), r.u32()

    # The deferred referents, in the order their pointers appeared (NDR 14.3.12.3).
    texts = [r.string_body(h) for h in names]
    group_rids = r.rids(group_count, groups_ptr, "GroupIds")
    logon_server, logon_domain = r.string_body(server_h), r.string_body(domain_h)
    if domain_sid_ptr == 0:
        raise PacError("no LogonDomainId")
    domain_sid = r.sid("LogonDomainId")
    extra = r.sid_and_attributes(sid_count, extra_ptr, "ExtraSids")
    res_domain = r.sid("ResourceGroupDomainSid") if res_domain_ptr else None
    res_rids = r.rids(res_count, res_ptr, "ResourceGroupIds")
    if res_rids and res_domain is None:
        raise PacError("ResourceGroupIds without ResourceGroupDomainSid")
    if r.remaining() >= 8:
        raise PacError(f"{r.remaining()} unexplained bytes after KERB_VALIDATION_INFO")

    return LogonInfo(
        account_name=texts[0],
        full_name=texts[1],
        logon_domain_name=logon_domain,
        logon_server=logon_server,
        user_sid=_with_rid(domain_sid, user_id),
        primary_group_sid=_with_rid(domain_sid, primary_group_id),
        group_sids=tuple(_with_rid(domain_sid, rid) for rid in group_rids),
        extra_sids=tuple(map(_sid_str, extra)),
        resource_group_sids=(
            tuple(_with_rid(res_domain, rid) for rid in res_rids) if res_domain else ()
        ),
        logon_time=_filetime(logon_time),
        user_flags=user_flags,
    )


def decode_delegation_info(data: bytes) -> DelegationInfo:
    """Decode the ``urn:mspac:delegation-info`` buffer: a serialized pointer to
    S4U_DELEGATION_INFO (MS-PAC 2.9)."""
    r = _Ndr(_object_buffer(_as_bytes(data)))
    if r.u32() == 0:
        raise PacError("null S4U_DELEGATION_INFO pointer")
    target_h = r.string_header("S4U2proxyTarget")
    count, services_ptr = r.u32(), r.u32()
    # The deferred referents in pointer order: the target's characters, then the array of
    # RPC_UNICODE_STRINGs, then each element's characters.
    target = r.string_body(target_h)
    if services_ptr == 0:
        if count:
            raise PacError(f"S4UTransitedServices: null pointer with count {count}")
        headers: list[_StrHeader] = []
    else:
        r.conformance(count, 8, "S4UTransitedServices")
        headers = [r.string_header("S4UTransitedServices") for _ in range(count)]
    transited = tuple(r.string_body(h) for h in headers)
    if r.remaining() >= 8:
        raise PacError(f"{r.remaining()} unexplained bytes after S4U_DELEGATION_INFO")
    return DelegationInfo(target=target, transited=transited)


_UPN_HEADER = struct.Struct("<HHHHI")
_UPN_EXTENSION = struct.Struct("<HHHH")


def decode_upn_dns_info(data: bytes) -> UpnDnsInfo:
    """Decode the ``urn:mspac:upn-dns-info`` buffer (not NDR: offsets from its start)."""
    buf = _as_bytes(data)
    if len(buf) < _UPN_HEADER.size:
        raise PacError("UPN_DNS_INFO shorter than its header")
    upn_len, upn_off, dns_len, dns_off, flags = _UPN_HEADER.unpack_from(buf)
    header = _UPN_HEADER.size
    extension: tuple[int, int, int, int] | None = None
    if flags & UPN_EXTENDED:
        if len(buf) < header + _UPN_EXTENSION.size:
            raise PacError("UPN_DNS_INFO shorter than its extended header")
        extension = _UPN_EXTENSION.unpack_from(buf, header)
        header += _UPN_EXTENSION.size

    def region(length: int, offset: int, what: str) -> bytes:
        if length == 0:
            return b""
        if offset < header or offset + length > len(buf):
            raise PacError(f"{what} ({length} bytes at {offset}) outside the buffer")
        return buf[offset : offset + length]

    def text(length: int, offset: int, what: str) -> str:
        if length % 2:
            raise PacError(f"{what}: odd byte length {length}")
        return _utf16(region(length, offset, what), what)

    upn = text(upn_len, upn_off, "Upn")
    dns_domain = text(dns_len, dns_off, "DnsDomainName")
    sam_name = sid = None
    if extension is not None:
        sam_len, sam_off, sid_len, sid_off = extension
        sam_name = text(sam_len, sam_off, "SamName")
        sid = _sid_str(_parse_sid(region(sid_len, sid_off, "Sid")))
    return UpnDnsInfo(upn=upn, dns_domain=dns_domain, flags=flags, sam_name=sam_name, sid=sid)
