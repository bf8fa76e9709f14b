"""Unit tests of the daemon's configuration (``nipc.config``): TOML in, frozen Config out.

Unknown keys are errors (a typo never silently means "default"), and every error is a
ConfigError whose message names the key.
"""

from __future__ import annotations

import copy
import grp
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nipc.config import (
    DEFAULT_PORT,
    DEFAULT_SOCKET,
    Config,
    ConfigError,
    CredentialMode,
    HostSection,
    KerberosSection,
    PeerAddress,
    from_mapping,
    load,
    parse_peer_address,
)

MINIMAL: dict[str, Any] = {
    "host": {"name": "a.example.com", "realm": "EXAMPLE.COM"},
    "kerberos": {"keytab": "/etc/nipc/nipc.keytab", "principal": "nipc/a.example.com"},
}


def doc(**sections: dict[str, Any]) -> dict[str, Any]:
    """The minimal valid document with some sections merged in (a value of ``...`` deletes)."""
    result = copy.deepcopy(MINIMAL)
    for name, values in sections.items():
        sect = result.setdefault(name, {})
        for key, value in values.items():
            if value is ...:
                sect.pop(key, None)
            else:
                sect[key] = value
    return result


def config_error(document: Any) -> str:
    """from_mapping(document) must raise ConfigError; return its message."""
    with pytest.raises(ConfigError) as info:
        from_mapping(document)
    return str(info.value)


# ------------------------------------------------------------------------- from_mapping


class TestDefaults:
    def test_minimal(self) -> None:
        """Only host name/realm and the keytab/principal are required; the rest has defaults."""
        cfg = from_mapping(MINIMAL)
        assert cfg == Config(
            host=HostSection(name="a.example.com", realm="EXAMPLE.COM"),
            kerberos=KerberosSection(mode=CredentialMode.PROTOCOL_TRANSITION,
                                     keytab=Path("/etc/nipc/nipc.keytab"),
                                     principal="nipc/a.example.com"),
        )
        assert cfg.local.socket == Path(DEFAULT_SOCKET)
        assert cfg.local.mode == 0o666
        assert cfg.peer.port == DEFAULT_PORT
        assert cfg.peer.max_hops == 8
        assert cfg.kerberos.allow_root is False
        assert cfg.peers == {}
        assert cfg.kerberos.krb5_config is None and cfg.log.file is None
        assert cfg.host.service_name == "nipc@a.example.com"
        assert cfg.kerberos.realms(cfg.host.realm) == ("EXAMPLE.COM",)

    def test_every_key(self) -> None:
        """A document setting every key gives those values, converted to their types."""
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        cfg = from_mapping(
            {
                "host": {"name": "A.Example.COM.", "realm": "EXAMPLE.COM"},
                "kerberos": {
                    "mode": "own-ccache",
                    "keytab": "/k.keytab",
                    "principal": "nipc/a.example.com@EXAMPLE.COM",
                    "krb5_config": "/etc/krb5.test.conf",
                    "ccache_template": "KEYRING:persistent:%{uid}",
                    "trusted_realms": ["EXAMPLE.COM", "OTHER.COM"],
                    "allow_root": True,
                },
                "local": {"socket": "/run/x/x.sock", "owner": me, "group": group, "mode": "0660"},
                "peer": {"listen": "::", "port": 1234, "max_hops": 3},
                "peers": {"B.Example.COM": "10.0.0.2:99", "c.example.com": "[fd00::3]"},
                "timeouts": {
                    "request": 1, "handshake": 2.5, "connect": 0.5, "keepalive_idle": 7,
                    "user_timeout": 9, "link_idle": 600,
                },
                "log": {"file": "/var/log/nipc.log"},
            }
        )
        assert cfg.host.name == "a.example.com"
        assert cfg.kerberos.mode is CredentialMode.OWN_CCACHE
        assert cfg.kerberos.krb5_config == Path("/etc/krb5.test.conf")
        assert cfg.kerberos.ccache_template == "KEYRING:persistent:%{uid}"
        assert cfg.kerberos.realms(cfg.host.realm) == ("EXAMPLE.COM", "OTHER.COM")
        assert cfg.kerberos.allow_root is True
        assert cfg.local.socket == Path("/run/x/x.sock")
        assert (cfg.local.owner, cfg.local.group) == (os.getuid(), os.getgid())
        assert cfg.local.mode == 0o660
        assert (cfg.peer.listen, cfg.peer.port, cfg.peer.max_hops) == ("::", 1234, 3)
        assert cfg.peers == {
            "b.example.com": PeerAddress("10.0.0.2", 99),
            "c.example.com": PeerAddress("fd00::3", DEFAULT_PORT),
        }
        assert (cfg.timeouts.request, cfg.timeouts.handshake, cfg.timeouts.connect) == (1, 2.5, 0.5)
        assert (cfg.timeouts.keepalive_idle, cfg.timeouts.user_timeout, cfg.timeouts.link_idle) == (7, 9, 600)
        assert cfg.log.file == Path("/var/log/nipc.log")

    def test_config_is_frozen(self) -> None:
        """The configuration is read once; the dataclass cannot be changed afterwards."""
        cfg = from_mapping(MINIMAL)
        with pytest.raises(AttributeError):
            cfg.host.name = "other"  # type: ignore[misc]

    def test_numeric_owner_and_group(self) -> None:
        """Owner and group may be numeric ids."""
        cfg = from_mapping(doc(local={"owner": 123, "group": 456}))
        assert (cfg.local.owner, cfg.local.group) == (123, 456)


class TestRequired:
    @pytest.mark.parametrize(
        "section,key", [("host", "name"), ("host", "realm"), ("kerberos", "keytab"),
                        ("kerberos", "principal")]
    )
    def test_missing_required_key(self, section: str, key: str) -> None:
        """Each required key missing gives a ConfigError naming it."""
        assert f"{section}.{key}" in config_error(doc(**{section: {key: ...}}))

    @pytest.mark.parametrize("section", ["host", "kerberos"])
    def test_missing_required_section(self, section: str) -> None:
        """A missing required section is reported by its first required key."""
        document = copy.deepcopy(MINIMAL)
        del document[section]
        assert f"{section}." in config_error(document)

    def test_empty_document(self) -> None:
        """An empty file is not a configuration."""
        assert "is required" in config_error({})


class TestUnknown:
    @pytest.mark.parametrize(
        "section", ["host", "kerberos", "local", "peer", "timeouts", "log"]
    )
    def test_unknown_key(self, section: str) -> None:
        """An unknown key in any section is an error naming the section and the key."""
        message = config_error(doc(**{section: {"tyop_key": 1}}))
        assert "tyop_key" in message and section in message

    def test_unknown_section(self) -> None:
        """An unknown section is an error naming it."""
        message = config_error(doc(kerberoz={"keytab": "/x"}))
        assert "kerberoz" in message

    def test_several_unknown_keys_all_named(self) -> None:
        """Every unknown key is named, not just the first."""
        message = config_error(doc(local={"sokcet": "/x", "mdoe": "0600"}))
        assert "sokcet" in message and "mdoe" in message

    @pytest.mark.parametrize("section", ["host", "kerberos", "local", "peer", "peers", "timeouts", "log"])
    def test_section_must_be_a_table(self, section: str) -> None:
        """A section given as a scalar or list is an error naming it."""
        document = copy.deepcopy(MINIMAL)
        document[section] = ["not", "a", "table"]
        assert f"[{section}]" in config_error(document)


class TestTypes:
    @pytest.mark.parametrize(
        "section,key,value",
        [
            ("host", "name", 1),
            ("host", "realm", ["EXAMPLE.COM"]),
            ("kerberos", "keytab", 1),
            ("kerberos", "principal", True),
            ("kerberos", "mode", 1),
            ("kerberos", "mode", ["own-ccache"]),
            ("kerberos", "krb5_config", 5),
            ("kerberos", "ccache_template", 5),
            ("kerberos", "trusted_realms", "EXAMPLE.COM"),
            ("kerberos", "trusted_realms", [1]),
            ("kerberos", "allow_root", "false"),
            ("kerberos", "allow_root", 0),
            ("kerberos", "caller_ticket_reuse", "10"),
            ("kerberos", "caller_ticket_reuse", True),
            ("kerberos", "caller_ticket_reuse", 0),
            ("kerberos", "caller_ticket_reuse", -1),
            ("local", "socket", 1),
            ("local", "owner", 1.5),
            ("local", "owner", True),
            ("local", "group", [0]),
            ("local", "mode", True),
            ("local", "mode", 6.6),
            ("local", "mode", []),
            ("peer", "listen", 0),
            ("peer", "port", "7445"),
            ("peer", "port", True),
            ("peer", "port", 7445.0),
            ("peer", "max_hops", "8"),
            ("peer", "max_hops", 8.5),
            ("timeouts", "request", "10"),
            ("timeouts", "handshake", True),
            ("timeouts", "keepalive_idle", 1.5),
            ("log", "file", 1),
        ],
    )
    def test_wrong_type(self, section: str, key: str, value: Any) -> None:
        """A value of the wrong type is a ConfigError naming the key, never another exception."""
        assert key in config_error(doc(**{section: {key: value}}))

    def test_bad_credential_mode(self) -> None:
        """kerberos.mode is one of the two documented modes."""
        assert "kerberos.mode" in config_error(doc(kerberos={"mode": "password"}))

    @pytest.mark.parametrize("name", ["bad_name", "a..b", "", "-a.example", "a b"])
    def test_bad_host_name(self, name: str) -> None:
        """host.name must be a DNS name like the ones requests name."""
        assert "host.name" in config_error(doc(host={"name": name}))

    def test_host_name_is_normalised_like_requests(self) -> None:
        """host.name is lower-cased without a final dot, so it matches parsed request hosts."""
        assert from_mapping(doc(host={"name": "A.Example.COM."})).host.name == "a.example.com"

    def test_unknown_user_and_group(self) -> None:
        """A socket owner or group that NSS does not know is an error naming the key."""
        assert "local.owner" in config_error(doc(local={"owner": "no-such-user-nipc-test"}))
        assert "local.group" in config_error(doc(local={"group": "no-such-group-nipc-test"}))


class TestSocketMode:
    @pytest.mark.parametrize(
        "value,expected",
        [("0666", 0o666), ("0600", 0o600), ("660", 0o660), ("0o640", 0o640), ("0", 0),
         (0o660, 0o660), (438, 0o666), ("7777", 0o7777)],
    )
    def test_octal_mode(self, value: Any, expected: int) -> None:
        """local.mode is an octal string (as chmod takes it) or a TOML integer (0o660)."""
        assert from_mapping(doc(local={"mode": value})).local.mode == expected

    @pytest.mark.parametrize("value", ["0999", "rw-rw-rw-", "", "0x1b6", "-1", "17777", -1, 0o10000])
    def test_bad_mode(self, value: Any) -> None:
        """Non-octal strings and values outside 0..0o7777 are refused, naming local.mode."""
        assert "local.mode" in config_error(doc(local={"mode": value}))


class TestTimeouts:
    @pytest.mark.parametrize(
        "key", ["request", "handshake", "connect", "keepalive_idle", "user_timeout", "link_idle"]
    )
    @pytest.mark.parametrize("value", [0, -1])
    def test_must_be_positive(self, key: str, value: int) -> None:
        """Every timeout must be positive."""
        assert f"timeouts.{key}" in config_error(doc(timeouts={key: value}))

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.0])
    def test_must_be_finite(self, value: float) -> None:
        """TOML's nan and inf are not usable timeouts."""
        assert "timeouts.request" in config_error(doc(timeouts={"request": value}))

    def test_fractions_allowed(self) -> None:
        """Timeouts in seconds may be fractional (keepalive_idle is whole seconds)."""
        cfg = from_mapping(doc(timeouts={"request": 0.25, "keepalive_idle": 1}))
        assert cfg.timeouts.request == 0.25 and cfg.timeouts.keepalive_idle == 1


class TestPeerSection:
    @pytest.mark.parametrize("port", [0, -1, 65536])
    def test_bad_listen_port(self, port: int) -> None:
        """peer.port is a TCP port."""
        assert "peer.port" in config_error(doc(peer={"port": port}))

    @pytest.mark.parametrize("hops", [0, -3])
    def test_max_hops_positive(self, hops: int) -> None:
        """peer.max_hops is positive."""
        assert "peer.max_hops" in config_error(doc(peer={"max_hops": hops}))

    def test_chain_accounts(self) -> None:
        """peer.chain_accounts: user names or uids, as uids; nobody by default."""
        assert from_mapping(doc()).peer.chain_accounts == frozenset()
        cfg = from_mapping(doc(peer={"chain_accounts": ["root", 4242]}))
        assert cfg.peer.chain_accounts == frozenset({0, 4242})

    @pytest.mark.parametrize("accounts", [["no-such-user-x"], [True], "root", [1.5]])
    def test_bad_chain_accounts(self, accounts: Any) -> None:
        """A user that does not exist, or anything but a list of names and uids, is named."""
        assert "peer.chain_accounts" in config_error(doc(peer={"chain_accounts": accounts}))

    def test_peer_value_must_be_a_string(self) -> None:
        """[peers] maps a host to an "address:port" string."""
        assert "peers.b.example" in config_error(doc(peers={"b.example": 7445}))

    def test_peer_key_must_be_a_host_name(self) -> None:
        """A [peers] key that no request could name is an error."""
        assert "peers.bad_name" in config_error(doc(peers={"bad_name": "10.0.0.1"}))

    def test_bad_peer_address_names_the_key(self) -> None:
        """A bad peer address names its key."""
        assert "peers.b.example" in config_error(doc(peers={"b.example": "10.0.0.1:http"}))


# --------------------------------------------------------------------- parse_peer_address


class TestPeerAddress:
    @pytest.mark.parametrize(
        "text,host,port",
        [
            ("10.0.0.2:8000", "10.0.0.2", 8000),
            ("b.example.com:1", "b.example.com", 1),
            ("b.example.com:65535", "b.example.com", 65535),
            ("b.example.com", "b.example.com", DEFAULT_PORT),
            ("10.0.0.2", "10.0.0.2", DEFAULT_PORT),
            ("[fd00::2]:8000", "fd00::2", 8000),
            ("[fd00::2]", "fd00::2", DEFAULT_PORT),
            ("fd00::2", "fd00::2", DEFAULT_PORT),  # several colons: a bare IPv6 address
        ],
    )
    def test_valid(self, text: str, host: str, port: int) -> None:
        """host:port, [v6]:port and a bare host (default port)."""
        assert parse_peer_address(text, "peers.x") == PeerAddress(host, port)

    @pytest.mark.parametrize(
        "text",
        [
            "", ":8000", "[]:8000", "[fd00::2", "[fd00::2]8000", "[fd00::2]:", "[fd00::2]:x",
            "host:", "host:0", "host:65536", "host:-1", "host:http", "host:+80", "host: 80",
            "host:8_0", "host:٨٠", "host:80 ", "host:1e3",
        ],
    )
    def test_invalid(self, text: str) -> None:
        """Empty hosts, unclosed brackets, missing, non-decimal or out-of-range ports are refused."""
        with pytest.raises(ConfigError) as info:
            parse_peer_address(text, "peers.b.example")
        assert "peers.b.example" in str(info.value)

    @settings(max_examples=200)
    @given(st.text(max_size=40))
    def test_any_text(self, text: str) -> None:
        """Any text gives an address with a valid port, or ConfigError; nothing else."""
        try:
            address = parse_peer_address(text, "peers.x")
        except ConfigError as e:
            assert "peers.x" in str(e)
        else:
            assert address.host and 0 < address.port < 65536

    @settings(max_examples=100)
    @given(st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), st.integers(1, 65535))
    def test_round_trip(self, host: str, port: int) -> None:
        """``f"{host}:{port}"`` parses back to the same host and port."""
        assert parse_peer_address(f"{host}:{port}", "p") == PeerAddress(host, port)
        assert parse_peer_address(f"[{host}]:{port}", "p") == PeerAddress(host, port)


# ----------------------------------------------------------------------------------- load


class TestLoad:
    def test_load_file(self, tmp_path: Path) -> None:
        """A TOML file is read into a Config."""
        path = tmp_path / "nipcd.toml"
        path.write_text(
            '[host]\nname = "a.example.com"\nrealm = "EXAMPLE.COM"\n'
            '[kerberos]\nkeytab = "/k"\nprincipal = "nipc/a.example.com"\n'
            '[local]\nmode = "0600"\n[peers]\n"b.example.com" = "[fd00::2]:7000"\n'
        )
        cfg = load(path)
        assert cfg.host.name == "a.example.com" and cfg.local.mode == 0o600
        assert cfg.peers["b.example.com"] == PeerAddress("fd00::2", 7000)
        assert load(str(path)) == cfg

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a ConfigError naming the path."""
        path = tmp_path / "absent.toml"
        with pytest.raises(ConfigError, match="absent.toml"):
            load(path)

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is not a configuration file."""
        with pytest.raises(ConfigError):
            load(tmp_path)

    @pytest.mark.parametrize(
        "text", ["[host\nname = 1", "name = ", "x = 'a'\nx = 'b'", "\xff", "[host]\nname = a.b"]
    )
    def test_bad_toml(self, tmp_path: Path, text: str) -> None:
        """Malformed TOML is a ConfigError naming the file, not a TOMLDecodeError."""
        path = tmp_path / "bad.toml"
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(ConfigError, match="bad.toml"):
            load(path)

    def test_typo_in_file(self, tmp_path: Path) -> None:
        """A typo in the file is reported by key, through load too."""
        path = tmp_path / "nipcd.toml"
        path.write_text(
            '[host]\nname = "a"\nrealm = "R"\n[kerberos]\nkeytab = "/k"\nprincipal = "p"\n'
            "[timeouts]\nhandshak = 3\n"
        )
        with pytest.raises(ConfigError, match="handshak"):
            load(path)

    @settings(max_examples=100, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(["host", "kerberos", "local", "peer", "peers", "timeouts", "log"]),
            st.dictionaries(
                st.sampled_from(["name", "realm", "keytab", "principal", "mode", "socket",
                                 "owner", "group", "port", "max_hops", "listen", "request",
                                 "file", "allow_root", "b.example", "trusted_realms"]),
                st.none() | st.booleans() | st.integers(-2, 70000) | st.floats()
                | st.text(max_size=12) | st.lists(st.text(max_size=5), max_size=2),
                max_size=6,
            ),
            max_size=7,
        )
    )
    def test_any_document_gives_config_or_config_error(self, document: dict[str, Any]) -> None:
        """Any mapping of roughly the right shape gives a Config or a ConfigError, nothing else."""
        for sect in document.values():
            sect.pop("owner", None)  # NSS lookups of random names are slow; covered above
            sect.pop("group", None)
        try:
            from_mapping(document)
        except ConfigError:
            pass


def test_imports_are_parsed_and_checked() -> None:
    """[[imports]]: a socket path and a CONNECT target, checked like a request line."""
    doc = {**MINIMAL, "imports": [{"socket": "/run/nipc/pg/.s.PGSQL.5432",
                                     "target": "/run/postgresql/.s.PGSQL.5432@B.example.",
                                     "mode": "0660"}]}
    (imp,) = from_mapping(doc).imports
    assert (imp.path, imp.host, imp.mode) == ("/run/postgresql/.s.PGSQL.5432", "b.example", 0o660)
    for bad in ({"socket": "/s"}, {"socket": "/s", "target": "rel@h"},
                {"socket": "/s", "target": "/p@h", "colour": 1}, "nope"):
        with pytest.raises(ConfigError):
            from_mapping({**MINIMAL, "imports": [bad]})


def test_the_shipped_example_config_loads() -> None:
    """etc/nipcd.toml documents every key; it must stay a valid configuration."""
    from pathlib import Path

    from nipc.config import load

    config = load(Path(__file__).resolve().parents[1] / "etc" / "nipcd.toml")
    assert config.host.name


# ------------------------------------------------- messages that say what was expected (issue 11)


class TestMessagesSayWhatWasExpected:
    @pytest.mark.parametrize("section,key,value,expected", [
        ("peer", "port", "7445", "peer.port: expected an integer, got a string ('7445')"),
        ("peer", "port", True, "peer.port: expected an integer, got true or false (True)"),
        ("timeouts", "request", "10", "timeouts.request: expected a number, got a string"),
        ("kerberos", "allow_root", "no", "kerberos.allow_root: expected true or false, got a string"),
        ("host", "name", ["a"], "host.name: expected a string, got a list"),
        ("local", "mode", 6.6, "local.mode: expected a string or an integer, got a number"),
    ])
    def test_wrong_type_names_both_types(self, section: str, key: str, value: Any,
                                         expected: str) -> None:
        """A wrong type says what the key wants and what it got, in an operator's words."""
        assert config_error(doc(**{section: {key: value}})).startswith(expected)

    def test_typo_suggests_the_key(self) -> None:
        """An unknown key near a known one says which one was probably meant (difflib)."""
        message = config_error(doc(kerberos={"keytabb": "/k"}))
        assert message.startswith("unknown key keytabb in [kerberos]; did you mean keytab?")

    def test_every_typo_gets_its_suggestion(self) -> None:
        message = config_error(doc(local={"sokcet": "/x", "mdoe": "0600"}))
        assert "unknown key mdoe in [local]; did you mean mode?" in message
        assert "unknown key sokcet in [local]; did you mean socket?" in message

    def test_no_suggestion_for_nothing_alike(self) -> None:
        """A key like no known one gets the list of known keys, not a wild guess."""
        message = config_error(doc(dns={"zzz": 1}))
        assert "did you mean" not in message and "(known: servers, timeout)" in message

    def test_section_typo(self) -> None:
        assert "unknown section kerberoz; did you mean kerberos?" in config_error(
            doc(kerberoz={"keytab": "/x"}))

    def test_import_key_typo(self) -> None:
        message = config_error({**MINIMAL, "imports": [{"socket": "/s", "target": "/p@h",
                                                        "tagret": "/p@h"}]})
        assert "unknown key tagret in imports[0]; did you mean target?" in message

    @pytest.mark.parametrize("line,number", [
        ("mode = 0666", "0666"), ("mode = 666", "666"), ("  mode=0660  # group only", "0660"),
    ])
    def test_unquoted_mode_says_quote_it(self, tmp_path: Path, line: str, number: str) -> None:
        """``mode = 0666`` is a TOML syntax error, ``mode = 666`` decimal 666 (0o1232): both
        are refused with the line and the quoted form to write instead."""
        path = tmp_path / "nipcd.toml"
        path.write_text('[host]\nname = "a"\nrealm = "R"\n[kerberos]\nkeytab = "/k"\n'
                        f'principal = "p"\n[local]\n{line}\n')
        with pytest.raises(ConfigError) as info:
            load(path)
        assert f"line 8: mode = {number} is not an octal mode" in str(info.value)
        assert f'quote it: mode = "{number.zfill(4)}"' in str(info.value)

    def test_toml_octal_and_quoted_modes_still_load(self, tmp_path: Path) -> None:
        path = tmp_path / "nipcd.toml"
        path.write_text('[host]\nname = "a"\nrealm = "R"\n[kerberos]\nkeytab = "/k"\n'
                        'principal = "p"\n[local]\nmode = 0o660\n[[imports]]\nsocket = "/s"\n'
                        'target = "/p@h"\nmode = "0600"\n')
        cfg = load(path)
        assert cfg.local.mode == 0o660 and cfg.imports[0].mode == 0o600


def test_log_journal_settings() -> None:
    """[log] journal is true, false or "auto" (default: native entries exactly under journald)."""
    assert from_mapping(MINIMAL).log.journal is None
    assert from_mapping(doc(log={"journal": True})).log.journal is True
    assert from_mapping(doc(log={"journal": "auto"})).log.journal is None
    cfg = from_mapping(doc(log={"journal": False, "journal_socket": "/j"}))
    assert cfg.log.journal is False and cfg.log.journal_socket == Path("/j")
    assert 'expected true, false or "auto"' in config_error(doc(log={"journal": "yes"}))
