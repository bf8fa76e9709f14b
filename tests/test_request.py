"""Unit tests of the local protocol (SPEC section 2): ``nipc.request`` and ``nipc.errors``.

Pure functions, no I/O; every test names the rule of the specification it checks.
"""

from __future__ import annotations

import errno
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nipc.errors import ERRNO_NAMES, MAX_MESSAGE, NipcError, clean_message, from_oserror
from nipc.request import (
    MAX_LINE,
    MAX_PATH,
    ConnectRequest,
    PeerRequest,
    check_host,
    check_path,
    error_reply,
    ok_reply,
    parse_answer,
    parse_reply,
    parse_request,
    parse_target,
    take_line,
)

# The errno names SPEC section 2 lists; NipcError must accept every one of them.
SPEC_ERRNO_NAMES = {
    "EACCES", "ENOENT", "ECONNREFUSED", "ENOTSOCK", "ENAMETOOLONG", "EINVAL",
    "EHOSTUNREACH", "ETIMEDOUT", "ENOKEY", "EKEYREJECTED", "EKEYEXPIRED", "EPROTO",
    "EPERM", "EAGAIN", "ELOOP",
}


def errno_of(call: object, *args: object) -> str:
    """Run ``call(*args)``, which must raise NipcError; return its errno name."""
    with pytest.raises(NipcError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.errno_name


# --------------------------------------------------------------------------- take_line


class TestTakeLine:
    def test_needs_more_bytes_without_newline(self) -> None:
        """Until the newline arrives there is no line yet: None, not an error."""
        assert take_line(b"") is None
        assert take_line(b"CONNECT /run/x.sock@b.example") is None

    def test_splits_line_from_following_bytes(self) -> None:
        """Bytes after the request line are kept, not lost (SPEC 2: nothing is lost)."""
        assert take_line(b"CONNECT /s@h\nearly data\n\x00\xff") == (
            b"CONNECT /s@h",
            b"early data\n\x00\xff",
        )

    def test_first_newline_ends_the_line(self) -> None:
        """Only the first newline counts; a second request is just data that follows."""
        assert take_line(b"PEER\nPEER\n") == (b"PEER", b"PEER\n")

    def test_crlf_is_left_for_parse_request(self) -> None:
        """``\\r\\n`` is accepted: take_line keeps the CR, parse_request drops it."""
        line, rest = take_line(b"PEER\r\nxyz")  # type: ignore[misc]
        assert line == b"PEER\r" and rest == b"xyz"
        assert parse_request(line) == PeerRequest()

    def test_exactly_4096_bytes_including_newline_is_accepted(self) -> None:
        """At most 4096 bytes *including* the newline: 4095 + newline is fine."""
        line = b"x" * (MAX_LINE - 1)
        assert take_line(line + b"\n") == (line, b"")
        assert take_line(line + b"\nmore") == (line, b"more")

    def test_4097_bytes_including_newline_is_refused(self) -> None:
        """4096 bytes before the newline make a 4097-byte line: EINVAL."""
        assert errno_of(take_line, b"x" * MAX_LINE + b"\n") == "EINVAL"

    def test_crlf_counts_toward_the_limit(self) -> None:
        """The CR is part of the 4096 bytes: 4094 + CRLF fits, 4095 + CRLF does not."""
        assert take_line(b"x" * (MAX_LINE - 2) + b"\r\n") is not None
        assert errno_of(take_line, b"x" * (MAX_LINE - 1) + b"\r\n") == "EINVAL"

    def test_overlong_partial_line_is_refused_early(self) -> None:
        """Once 4096 bytes without a newline are buffered, no line can come: EINVAL now."""
        assert take_line(b"x" * (MAX_LINE - 1)) is None
        assert errno_of(take_line, b"x" * MAX_LINE) == "EINVAL"
        assert errno_of(take_line, b"x" * (10 * MAX_LINE)) == "EINVAL"

    @settings(max_examples=200)
    @given(st.binary(max_size=MAX_LINE + 64))
    def test_any_bytes_give_a_value_or_nipc_error(self, data: bytes) -> None:
        """For any bytes take_line returns None, a split, or raises NipcError: nothing else."""
        try:
            result = take_line(data)
        except NipcError as e:
            assert e.errno_name == "EINVAL"
            assert b"\n" not in data[:MAX_LINE]
            return
        if result is None:
            assert b"\n" not in data and len(data) < MAX_LINE
        else:
            line, rest = result
            assert b"\n" not in line and line + b"\n" + rest == data
            assert len(line) + 1 <= MAX_LINE

    @settings(max_examples=100)
    @given(st.binary(max_size=300).filter(lambda b: b"\n" not in b), st.binary(max_size=300))
    def test_incremental_arrival(self, line: bytes, rest: bytes) -> None:
        """Fed byte by byte, the line appears exactly when its newline arrives."""
        stream = line + b"\n" + rest
        for i in range(len(line) + 1):
            assert take_line(stream[:i]) is None
        assert take_line(stream[: len(line) + 1]) == (line, b"")
        assert take_line(stream) == (line, rest)


# ------------------------------------------------------------------------ parse_request


class TestParseRequest:
    def test_connect(self) -> None:
        """``CONNECT <absolute-path>@<host>`` gives the path and the host."""
        req = parse_request(b"CONNECT /run/app/app.sock@b.example.com")
        assert req == ConnectRequest("/run/app/app.sock", "b.example.com")
        assert isinstance(req, ConnectRequest)
        assert req.target == "/run/app/app.sock@b.example.com"

    def test_connect_with_crlf(self) -> None:
        """A trailing CR (the client sent ``\\r\\n``) is dropped."""
        assert parse_request(b"CONNECT /s@h\r") == ConnectRequest("/s", "h")

    def test_only_one_cr_is_dropped(self) -> None:
        """Only one CR is the line ending; a second is part of the host name, which is bad."""
        assert errno_of(parse_request, b"CONNECT /s@h\r\r") == "EINVAL"

    def test_splits_at_last_at_sign(self) -> None:
        """Paths may contain ``@``, host names cannot: the split is at the LAST ``@``."""
        assert parse_request(b"CONNECT /run/a@b/c@d.sock@host") == ConnectRequest(
            "/run/a@b/c@d.sock", "host"
        )

    def test_at_sign_in_host_part_cannot_hide(self) -> None:
        """Since the split is at the last ``@``, an ``@`` after it is impossible; ``/p@`` has no host."""
        assert errno_of(parse_request, b"CONNECT /p@") == "EINVAL"

    def test_missing_at_sign(self) -> None:
        """No ``@<host>`` at all is a malformed request: EINVAL."""
        assert errno_of(parse_request, b"CONNECT /run/x.sock") == "EINVAL"

    def test_host_is_normalised(self) -> None:
        """The host comes back lower-case and without a final dot."""
        assert parse_request(b"CONNECT /s@B.Example.COM.") == ConnectRequest("/s", "b.example.com")

    def test_path_with_spaces_and_utf8(self) -> None:
        """Paths are UTF-8 and may contain spaces."""
        req = parse_request("CONNECT /run/my app/sökt.sock@h".encode())
        assert req == ConnectRequest("/run/my app/sökt.sock", "h")

    def test_localhost(self) -> None:
        """``localhost`` is a valid host (routed locally by the daemon)."""
        assert parse_request(b"CONNECT /s@localhost") == ConnectRequest("/s", "localhost")

    def test_peer(self) -> None:
        """``PEER`` (with or without CR) is the server's identity query."""
        assert parse_request(b"PEER") == PeerRequest()
        assert parse_request(b"PEER\r") == PeerRequest()

    @pytest.mark.parametrize(
        "line",
        [
            b"",
            b"\r",
            b"PEER ",
            b"PEER x",
            b"peer",
            b"connect /s@h",
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT\t/s@h",
            b" CONNECT /s@h",
            b"CONNECT  /s@h",  # two spaces: the path would be " /s", not absolute
            b"LISTEN /s@h",
            b"CONNECT @h",
        ],
    )
    def test_malformed_requests(self, line: bytes) -> None:
        """Anything but the two request forms, spelled exactly, is EINVAL."""
        assert errno_of(parse_request, line) == "EINVAL"

    @pytest.mark.parametrize(
        "line", [b"CONNECT /s\xff@h", b"CONNECT /s@h\xc3", b"\xfe\xff", b"CONNECT /\xed\xa0\x80@h"]
    )
    def test_invalid_utf8(self, line: bytes) -> None:
        """The line is UTF-8; invalid sequences (including encoded surrogates) are EINVAL."""
        assert errno_of(parse_request, line) == "EINVAL"

    def test_relative_path(self) -> None:
        """The path must be absolute."""
        assert errno_of(parse_request, b"CONNECT run/x.sock@h") == "EINVAL"

    def test_abstract_names(self) -> None:
        """Abstract names (``@name`` or a leading NUL) are refused with EINVAL."""
        assert errno_of(parse_request, b"CONNECT @abstract@h") == "EINVAL"
        assert errno_of(parse_request, b"CONNECT \x00abstract@h") == "EINVAL"

    def test_nul_in_path(self) -> None:
        """A NUL anywhere in the path is refused."""
        assert errno_of(parse_request, b"CONNECT /run/x\x00y.sock@h") == "EINVAL"

    def test_path_of_107_bytes_fits(self) -> None:
        """``sun_path`` holds 107 bytes plus the NUL: exactly 107 bytes is accepted."""
        path = "/" + "p" * (MAX_PATH - 1)
        assert parse_request(f"CONNECT {path}@h".encode()) == ConnectRequest(path, "h")

    def test_path_of_108_bytes_is_too_long(self) -> None:
        """108 bytes do not fit ``sun_path``: ENAMETOOLONG."""
        path = "/" + "p" * MAX_PATH
        assert errno_of(parse_request, f"CONNECT {path}@h".encode()) == "ENAMETOOLONG"

    def test_path_length_counts_utf8_bytes_not_characters(self) -> None:
        """60 characters of two bytes each are 120 bytes: too long, though only 61 characters."""
        path = "/" + "é" * 60
        assert len(path) < MAX_PATH < len(path.encode())
        assert errno_of(parse_request, f"CONNECT {path}@h".encode()) == "ENAMETOOLONG"
        fits = "/" + "é" * 53  # 107 bytes
        assert len(fits.encode()) == MAX_PATH
        assert parse_request(f"CONNECT {fits}@h".encode()) == ConnectRequest(fits, "h")

    def test_long_line_within_limit_but_long_path(self) -> None:
        """A line under 4096 bytes whose path is long is ENAMETOOLONG, not EINVAL."""
        line = b"CONNECT /" + b"a" * 3000 + b"@h"
        assert errno_of(parse_request, line) == "ENAMETOOLONG"

    def test_bad_host(self) -> None:
        """The host must be a DNS name."""
        assert errno_of(parse_request, b"CONNECT /s@bad_host") == "EINVAL"
        assert errno_of(parse_request, b"CONNECT /s@h st") == "EINVAL"

    @settings(max_examples=300)
    @given(st.binary(max_size=200))
    @example(b"CONNECT \x00@h")
    @example(b"CONNECT /\xed\xa0\x80@h")
    def test_any_bytes_give_a_request_or_nipc_error(self, line: bytes) -> None:
        """For ANY bytes parse_request returns a request or raises NipcError: nothing else."""
        try:
            req = parse_request(line)
        except NipcError as e:
            assert e.errno_name in ("EINVAL", "ENAMETOOLONG")
            assert "\n" not in e.message
        else:
            assert isinstance(req, (ConnectRequest, PeerRequest))

    @settings(max_examples=200)
    @given(
        st.text(st.characters(codec="utf-8"), max_size=120),
        st.text(max_size=30),
    )
    def test_any_connect_text_gives_a_request_or_nipc_error(self, path: str, host: str) -> None:
        """Well-formed verbs with arbitrary targets: a valid request or NipcError, nothing else."""
        line = f"CONNECT {path}@{host}".encode("utf-8", "surrogatepass")
        try:
            req = parse_request(line)
        except NipcError as e:
            assert e.errno_name in ("EINVAL", "ENAMETOOLONG")
        else:
            assert isinstance(req, ConnectRequest)
            assert req.path.startswith("/") and "\0" not in req.path
            assert len(req.path.encode()) <= MAX_PATH
            assert check_host(req.host) == req.host

    @settings(max_examples=200)
    @given(st.binary(max_size=MAX_LINE + 16))
    def test_take_then_parse_any_bytes(self, data: bytes) -> None:
        """The daemon's pipeline (take_line then parse_request) raises only NipcError."""
        try:
            result = take_line(data)
            if result is not None:
                parse_request(result[0])
        except NipcError:
            pass


# -------------------------------------------------------------------------- parse_target


class TestParseTarget:
    """The one parser of ``path@host``: the daemon's ``CONNECT`` line, the endpoint and the
    command all read a target with it (issue 13: there were three)."""

    def test_target(self) -> None:
        assert parse_target("/run/a@b/c.sock@B.Example.") == ConnectRequest("/run/a@b/c.sock",
                                                                             "b.example")

    def test_no_host(self) -> None:
        with pytest.raises(NipcError) as e:
            parse_target("/run/x.sock")
        assert e.value.errno_name == "EINVAL" and "must be '/path@host'" in e.value.message

    @settings(max_examples=300)
    @given(st.text(st.characters(codec="utf-8"), max_size=150))
    @example("/s@h")
    @example("@h")
    @example("/s@")
    @example("/s@h\r")
    def test_the_connect_line_reads_its_target_with_it(self, target: str) -> None:
        """``CONNECT <target>`` gives exactly what ``parse_target(target)`` gives: the same
        request, or the same refusal (a final CR ends the line, it is not the target's)."""
        target = target.removesuffix("\r")
        def outcome(call: object, arg: object) -> object:
            try:
                return call(arg)  # type: ignore[operator]
            except NipcError as e:
                return (e.errno_name, e.message)

        assert outcome(parse_request, f"CONNECT {target}".encode()) == outcome(parse_target,
                                                                               target)

    @settings(max_examples=200)
    @given(st.text(st.characters(codec="utf-8"), max_size=60),
           st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}",
                         fullmatch=True))
    def test_a_valid_target_round_trips(self, tail: str, host: str) -> None:
        """Any path (``@`` included) before the LAST ``@``: ``.target`` gives it back."""
        path = "/" + tail
        try:
            req = parse_target(f"{path}@{host}")
        except NipcError as e:  # a control character or an overlong path: refused as such
            assert e.errno_name in ("EINVAL", "ENAMETOOLONG")
            return
        assert (req.path, req.host, req.target) == (path, host, f"{path}@{host}")


# --------------------------------------------------------------------------- check_path


class TestCheckPath:
    def test_valid(self) -> None:
        """An absolute path is returned unchanged."""
        assert check_path("/run/nipc/nipc.sock") == "/run/nipc/nipc.sock"
        assert check_path("/") == "/"

    @pytest.mark.parametrize(
        "path,name",
        [
            ("", "EINVAL"),
            ("relative.sock", "EINVAL"),
            ("./x", "EINVAL"),
            ("@abstract", "EINVAL"),
            ("\0abstract", "EINVAL"),
            ("/a\0b", "EINVAL"),
            ("/" + "x" * MAX_PATH, "ENAMETOOLONG"),
            ("/" + "€" * 36, "ENAMETOOLONG"),  # 1 + 108 bytes, 37 characters
            ("/a\nb", "EINVAL"),
            ("/a\rb", "EINVAL"),
            ("/a\x1b[2Jb", "EINVAL"),
            ("/a\x85b", "EINVAL"),  # NEL, a C1 control
            ("/a\u2028b", "EINVAL"),  # LINE SEPARATOR
            ("/a\u202eb", "EINVAL"),  # RIGHT-TO-LEFT OVERRIDE
            ("/a\u200bb", "EINVAL"),  # ZERO WIDTH SPACE
        ],
    )
    def test_refused(self, path: str, name: str) -> None:
        """Relative, abstract, NUL-holding, control-holding and over-long paths are
        refused with their errno."""
        assert errno_of(check_path, path) == name

    def test_abstract_name_wins_over_length(self) -> None:
        """An abstract name is EINVAL even when it is also too long."""
        assert errno_of(check_path, "@" + "x" * 500) == "EINVAL"

    def test_control_characters_are_named_not_echoed(self) -> None:
        """The refusal names the character, so the reply and the log stay one line."""
        with pytest.raises(NipcError) as info:
            check_path("/x\nnipc-audit result=routed")
        assert info.value.message == "socket path contains the control character U+000A"

    def test_a_carriage_return_inside_a_request_line_is_refused(self) -> None:
        """Only one trailing CR belongs to the line end; one inside the path is refused."""
        assert errno_of(parse_request, b"CONNECT /a\rb@host") == "EINVAL"

    def test_lone_surrogate_is_refused(self) -> None:
        """A str that is not encodable as UTF-8 (reachable via JSON on the wire) is EINVAL."""
        assert errno_of(check_path, "/\ud800") == "EINVAL"


# --------------------------------------------------------------------------- check_host


class TestCheckHost:
    @pytest.mark.parametrize(
        "host,expected",
        [
            ("b", "b"),
            ("localhost", "localhost"),
            ("B.Example.COM", "b.example.com"),
            ("b.example.com.", "b.example.com"),
            ("host-1.sub-2.example", "host-1.sub-2.example"),
            ("123.example", "123.example"),
            ("a" * 63 + ".example", "a" * 63 + ".example"),
        ],
    )
    def test_valid(self, host: str, expected: str) -> None:
        """DNS names (letters, digits, hyphens) come back lower-case without the final dot."""
        assert check_host(host) == expected

    @pytest.mark.parametrize(
        "host",
        [
            "",
            ".",
            "..",
            "a..b",
            "a.b..",
            ".a",
            "-a",
            "a-",
            "a.-b",
            "a_b",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "a@b",
            "a/b",
            "a:7445",
            "[::1]",
            "a" * 64,
            "ä.example",
            "xn--ä",
            "\u212aerberos.example",  # KELVIN SIGN lower-cases to an ASCII "k"
            "\u0130nternal",  # LATIN CAPITAL I WITH DOT ABOVE
        ],
    )
    def test_invalid(self, host: str) -> None:
        """Anything that is not an ASCII DNS name is EINVAL."""
        assert errno_of(check_host, host) == "EINVAL"

    def test_length_limit(self) -> None:
        """A name of 253 characters is fine (254 with the final dot); 254 is too long."""
        name = ".".join(["a" * 63] * 3 + ["a" * 61])
        assert len(name) == 253
        assert check_host(name) == name
        assert check_host(name + ".") == name
        assert errno_of(check_host, name + "a") == "EINVAL"

    @settings(max_examples=200)
    @given(st.text(max_size=300))
    def test_any_text_gives_a_normal_name_or_nipc_error(self, host: str) -> None:
        """Any str: a normalised ASCII DNS name (idempotent) or NipcError, nothing else."""
        try:
            name = check_host(host)
        except NipcError as e:
            assert e.errno_name == "EINVAL"
            assert len(e.message) <= MAX_MESSAGE
        else:
            assert name.isascii() and name == name.lower() and not name.endswith(".")
            assert set(name) <= set(string.ascii_lowercase + string.digits + "-.")
            assert check_host(name) == name

    @settings(max_examples=100)
    @given(
        st.lists(
            st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True),
            min_size=1,
            max_size=5,
        ),
        st.booleans(),
    )
    def test_generated_valid_names(self, labels: list[str], dot: bool) -> None:
        """Every well-formed name is accepted and lower-cased."""
        host = ".".join(labels) + ("." if dot else "")
        assert check_host(host) == ".".join(labels).lower()


# ---------------------------------------------------------------------------- replies


class TestReplies:
    def test_ok(self) -> None:
        """``OK\\n`` is the success reply; the client reads it as no error."""
        assert ok_reply() == b"OK\n"
        assert parse_reply(ok_reply()[:-1]) is None
        assert parse_reply(b"OK\r") is None

    def test_error_reply_format(self) -> None:
        """``ERR <ERRNO-NAME> <message>\\n``."""
        assert error_reply(NipcError("ENOENT", "no such socket")) == b"ERR ENOENT no such socket\n"

    def test_error_reply_hostile_message_is_one_line(self) -> None:
        """Newlines, CRs, NULs, escapes and Unicode line separators cannot split the reply."""
        hostile = "a\nOK\r\nb\x00c\x1b[2Jd\u2028e\u2029f\x85g\ud800h"
        reply = error_reply(NipcError("EACCES", hostile))
        assert reply.endswith(b"\n") and reply.count(b"\n") == 1 and b"\r" not in reply
        assert reply.decode("utf-8").startswith("ERR EACCES a OK")

    def test_error_reply_is_bounded(self) -> None:
        """A huge message is cut, so the reply always fits the client's line buffer."""
        reply = error_reply(NipcError("EPROTO", "\U0001f600" * 10_000))
        assert len(reply) <= MAX_LINE

    @settings(max_examples=300)
    @given(st.sampled_from(sorted(ERRNO_NAMES)), st.text(max_size=600))
    def test_error_reply_is_always_one_line_and_round_trips(self, name: str, message: str) -> None:
        """For any message the reply is one UTF-8 line, and parse_reply gives the error back."""
        error = NipcError(name, message)
        reply = error_reply(error)
        assert reply.endswith(b"\n") and reply.count(b"\n") == 1
        assert len(reply) <= MAX_LINE
        reply.decode("utf-8")  # valid UTF-8
        back = parse_reply(reply[:-1])
        assert back is not None
        assert (back.errno_name, back.message) == (error.errno_name, error.message)
        assert error.message == clean_message(message)

    @pytest.mark.parametrize(
        "line",
        [b"", b"ok", b"OK ", b"OK\n", b"ERR", b"ERR ", b"ERR EBOGUS x", b"ERR eacces x",
         b"HELLO", b"\xff\xfe", b"ERR ENOENT\xff"],
    )
    def test_unexpected_replies_are_eproto(self, line: bytes) -> None:
        """A reply that is neither ``OK`` nor ``ERR <known errno> ...`` becomes EPROTO."""
        error = parse_reply(line)
        assert error is not None and error.errno_name == "EPROTO"

    def test_error_without_message(self) -> None:
        """``ERR ENOENT`` with no message is that errno with an empty message."""
        error = parse_reply(b"ERR ENOENT")
        assert error is not None and error.errno_name == "ENOENT" and error.message == ""

    @settings(max_examples=300)
    @given(st.binary(max_size=500))
    def test_parse_reply_never_raises(self, line: bytes) -> None:
        """Any reply line: None or a NipcError value; parse_reply itself never raises."""
        result = parse_reply(line)
        assert result is None or isinstance(result, NipcError)
        if result is not None:
            assert "\n" not in result.message and len(result.message) <= MAX_MESSAGE

    def test_client_gets_oserror(self) -> None:
        """A client library turns the reply into ``OSError(errno, msg)``."""
        error = parse_reply(b"ERR ECONNREFUSED nobody listening")
        assert error is not None
        os_error = error.to_oserror()
        assert os_error.errno == errno.ECONNREFUSED
        assert os_error.strerror == "nobody listening"
        assert isinstance(os_error, ConnectionRefusedError)


class TestParseAnswer:
    """The one parser of ``OK <json>`` (``PEER`` in the library, ``STATUS``/``RELOAD`` in the
    command; issue 13: there were two)."""

    def test_object(self) -> None:
        assert parse_answer(b'OK {"uid": 1201, "groups": [1]}') == {"uid": 1201, "groups": [1]}

    def test_error(self) -> None:
        error = parse_answer(b"ERR EPERM only root may reload the daemon")
        assert isinstance(error, NipcError)
        assert (error.errno_name, error.message) == ("EPERM", "only root may reload the daemon")

    @pytest.mark.parametrize("line", [b"OK", b"OK ", b"OK []", b'OK "x"', b"OK {", b"OK\r",
                                      b"", b"ERR EBOGUS x", b"HELLO", b"\xff"])
    def test_anything_else_is_eproto(self, line: bytes) -> None:
        error = parse_answer(line)
        assert isinstance(error, NipcError) and error.errno_name == "EPROTO"

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    @example(b"OK {}")
    def test_never_raises(self, line: bytes) -> None:
        """Any line: a dict or a NipcError value, one printable line."""
        answer = parse_answer(line)
        if isinstance(answer, NipcError):
            assert "\n" not in answer.message and len(answer.message) <= MAX_MESSAGE
        else:
            assert isinstance(answer, dict) and line.startswith(b"OK ")


# ----------------------------------------------------------------------------- errors


class TestErrors:
    def test_spec_errno_names_are_known(self) -> None:
        """Every errno name of SPEC section 2 is a real errno and allowed in NipcError."""
        assert SPEC_ERRNO_NAMES <= ERRNO_NAMES
        for name in ERRNO_NAMES:
            assert NipcError(name, "x").errno == getattr(errno, name)

    @pytest.mark.parametrize("name", ["EBOGUS", "", "eacces", "OK", "EIO", "ERR"])
    def test_unknown_errno_names_are_rejected(self, name: str) -> None:
        """The constructor refuses names outside the protocol's list (a programming error)."""
        with pytest.raises(ValueError):
            NipcError(name, "x")

    def test_str(self) -> None:
        """``str()`` is the errno name and the cleaned message."""
        assert str(NipcError("EPERM", "no\nway")) == "EPERM no way"

    def test_clean_message_strips_control_characters(self) -> None:
        """Every non-printable character (controls, separators, surrogates) becomes a space."""
        assert clean_message("a\nb\rc\td\x00e\x7ff\u2028g\ud800h") == "a b c d e f g h"
        assert clean_message("plain ascii, ünïcödé & emoji \U0001f600") == (
            "plain ascii, ünïcödé & emoji \U0001f600"
        )

    def test_clean_message_bounds_length(self) -> None:
        """Messages are cut to MAX_MESSAGE characters."""
        assert clean_message("x" * (MAX_MESSAGE + 50)) == "x" * MAX_MESSAGE
        assert len(NipcError("EINVAL", "y" * 10_000).message) == MAX_MESSAGE

    @settings(max_examples=200)
    @given(st.text(max_size=1000))
    def test_clean_message_properties(self, message: str) -> None:
        """clean_message gives one printable bounded line, and is idempotent."""
        clean = clean_message(message)
        assert len(clean) <= MAX_MESSAGE
        assert all(c.isprintable() for c in clean)
        assert clean_message(clean) == clean
        clean.encode("utf-8")

    @pytest.mark.parametrize(
        "code,name",
        [
            (errno.EACCES, "EACCES"),
            (errno.ENOENT, "ENOENT"),
            (errno.ECONNREFUSED, "ECONNREFUSED"),
            (errno.ENOTSOCK, "ENOTSOCK"),
            (errno.ENAMETOOLONG, "ENAMETOOLONG"),
            (errno.EPERM, "EPERM"),
            (errno.ETIMEDOUT, "ETIMEDOUT"),
            (errno.EHOSTUNREACH, "EHOSTUNREACH"),
            (errno.ELOOP, "ELOOP"),
            (errno.EAGAIN, "EAGAIN"),
            (errno.EWOULDBLOCK, "EAGAIN"),
            (errno.ECONNRESET, "ECONNRESET"),
            (errno.ENOTDIR, "ENOENT"),
            (errno.ECONNABORTED, "ECONNRESET"),
            (errno.EPIPE, "ECONNRESET"),
            (errno.EMFILE, "EAGAIN"),
            (errno.ENFILE, "EAGAIN"),
            (errno.ENOBUFS, "EAGAIN"),
            (errno.ENOMEM, "EAGAIN"),
            (errno.EIO, "EPROTO"),
            (errno.EXDEV, "EPROTO"),
        ],
    )
    def test_from_oserror(self, code: int, name: str) -> None:
        """A failed connect() maps to the errno the caller would have seen locally (or EPROTO)."""
        import os

        error = from_oserror(OSError(code, os.strerror(code)), "/run/x.sock")
        assert error.errno_name == name
        assert error.message.startswith("/run/x.sock: ")

    def test_from_oserror_without_errno(self) -> None:
        """An OSError that carries no errno at all is EPROTO, still with a message."""
        error = from_oserror(OSError("weird"), "connect")
        assert error.errno_name == "EPROTO" and "weird" in error.message

    def test_from_oserror_message_is_cleaned(self) -> None:
        """The ``what`` part (e.g. a path with a newline) cannot break the reply line."""
        error = from_oserror(OSError(errno.ENOENT, "No such file"), "/run/a\nb")
        assert "\n" not in error.message
        assert error_reply(error).count(b"\n") == 1

    @settings(max_examples=100)
    @given(st.integers(min_value=0, max_value=200), st.text(max_size=50))
    def test_from_oserror_any_errno(self, code: int, what: str) -> None:
        """Any errno value maps to some NipcError (never raises)."""
        error = from_oserror(OSError(code, "text"), what)
        assert error.errno_name in ERRNO_NAMES
