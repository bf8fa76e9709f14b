"""The sandbox's third realm: MIT krb5 on the LDAP back end (FreeIPA's KDC model).

MIT's default DB2 back end keeps no delegation list, so S4U2Proxy fails there; with the
LDAP back end (``krb5-kdc-ldap`` and a private ``slapd``) MIT does protocol transition and
constrained delegation, including a second hop, the way FreeIPA's KDC does (see
``KERBEROS.md``). Building it takes about a second and a half: a ``slapd`` on an
``ldapi://`` socket in the realm's directory, the Kerberos container made by
``kdb5_ldap_util``, principals by ``kadmin.local`` (``+ok_to_auth_as_delegate`` allows
S4U2Self) and each host's delegation list (``krbAllowedToDelegateTo``, which kadmin cannot
set) by ``ldapmodify``. The KDC runs in its own network namespace; slapd is reached only
through its socket file.
"""

from __future__ import annotations

import gzip
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

REALM = "LDAP.TEST"
DOMAIN = "ldap.test"
#: Hosts of this realm and the last octet of their addresses.
HOSTS = {"p": 31, "q": 32, "r": 33}
KDC_OCTET = 4
BASE_DN = "dc=ldap,dc=test"
ADMIN_DN = f"cn=admin,{BASE_DN}"
CONTAINER_DN = f"cn=krbcontainer,{BASE_DN}"
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
KERBEROS_SCHEMA = Path("/usr/share/doc/krb5-kdc-ldap/kerberos.schema.gz")

Run = Callable[..., object]


class LdapKdc:
    """slapd + an MIT KDC with the LDAP back end, in ``dir``; ``run`` and ``spawn`` are the
    sandbox's own (failures name the command; spawned processes are stopped by ``down``)."""

    def __init__(self, dir: Path, netns: str, address: str, password: str, run: Run,
                 spawn: Callable[[Sequence[str], Path, dict[str, str], str], object]) -> None:
        self.dir = dir
        self.netns = netns
        self.address = address
        self._password = password  # the directory administrator's (a throwaway realm)
        self._run = run
        self._spawn = spawn

    @property
    def socket(self) -> Path:
        return self.dir / "ldapi"

    @property
    def uri(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.socket), safe="")

    def env(self) -> dict[str, str]:
        return {"KRB5_CONFIG": str(self.dir / "krb5.conf"),
                "KRB5_KDC_PROFILE": str(self.dir / "kdc.conf")}

    def principal_dn(self, principal: str) -> str:
        return f"krbPrincipalName={principal},cn={REALM},{CONTAINER_DN}"

    # -- building --

    def build(self, services: dict[str, Path], users: Sequence[str], password: str) -> None:
        """The directory, the realm, a service principal per host (``services``: principal
        -> keytab), and ``users`` with ``password``; then the KDC starts."""
        self.dir.mkdir(mode=0o700, exist_ok=True)  # made early, so the hosts hide it
        self._start_slapd()
        self._create_realm()
        for principal, keytab in services.items():
            self.kadmin(f"addprinc -randkey +ok_to_auth_as_delegate {principal}")
            self.kadmin(f"ktadd -k {keytab} {principal}")
            keytab.chmod(0o600)
        for user in users:
            self.kadmin(f"addprinc -pw {password} {user}")
        argv = ["ip", "netns", "exec", self.netns, "krb5kdc", "-n"]
        self._spawn(argv, self.dir / "krb5kdc.out", self.env(), "krb5kdc-ldap")

    def _start_slapd(self) -> None:
        schema = self.dir / "kerberos.schema"
        schema.write_bytes(gzip.decompress(KERBEROS_SCHEMA.read_bytes()))
        (self.dir / "db").mkdir()
        includes = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in SCHEMAS)
        (self.dir / "slapd.conf").write_text(
            includes + f"include {schema}\n"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            f"pidfile {self.dir / 'slapd.pid'}\n"
            "database mdb\nmaxsize 104857600\n"
            f'suffix "{BASE_DN}"\nrootdn "{ADMIN_DN}"\nrootpw {self._password}\n'
            f"directory {self.dir / 'db'}\n"
            "index objectClass eq\nindex krbPrincipalName eq,pres,sub\n"
        )
        argv = ["slapd", "-d", "0", "-f", str(self.dir / "slapd.conf"), "-h", self.uri]
        self._spawn(argv, self.dir / "slapd.out", {}, "slapd")
        base = (f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
                "o: ldap.test\ndc: ldap\n")
        deadline = time.monotonic() + 30
        while True:  # the socket file appears before slapd answers on it
            try:
                self.ldap("ldapadd", base)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _create_realm(self) -> None:
        keyfile = self.dir / "service.keyfile"
        (self.dir / "kdc.conf").write_text(
            "[kdcdefaults]\n    kdc_listen = 88\n    kdc_tcp_listen = 88\n"
            f"\n[realms]\n    {REALM} = {{\n"
            "        database_module = ldap\n"
            f"        key_stash_file = {self.dir / 'stash'}\n"
            f"        acl_file = {self.dir / 'kadm5.acl'}\n"
            "        max_life = 10h\n        max_renewable_life = 7d\n    }\n"
            "\n[dbmodules]\n    ldap = {\n        db_library = kldap\n"
            f"        ldap_servers = {self.uri}\n"
            f"        ldap_kerberos_container_dn = {CONTAINER_DN}\n"
            f"        ldap_kdc_dn = {ADMIN_DN}\n        ldap_kadmind_dn = {ADMIN_DN}\n"
            f"        ldap_service_password_file = {keyfile}\n    }}\n"
            f"\n[logging]\n    kdc = FILE:{self.dir / 'krb5kdc.log'}\n"
        )
        (self.dir / "krb5.conf").write_text(
            f"[libdefaults]\n    default_realm = {REALM}\n"
            f"\n[realms]\n    {REALM} = {{\n        kdc = {self.address}\n    }}\n"
        )
        (self.dir / "kadm5.acl").write_text("")
        admin = ["kdb5_ldap_util", "-D", ADMIN_DN, "-w", self._password, "-H", self.uri]
        self._run([*admin, "create", "-subtrees", BASE_DN, "-r", REALM, "-s", "-P",
                   secrets.token_urlsafe(24)], env=self.env())
        self._run([*admin, "stashsrvpw", "-f", str(keyfile), ADMIN_DN],
                  input=f"{self._password}\n{self._password}\n", env=self.env())

    # -- administration --

    def kadmin(self, query: str) -> None:
        self._run(["kadmin.local", "-r", REALM, "-q", query], env=self.env())

    def ldap(self, tool: str, ldif: str) -> None:
        self._run([tool, "-x", "-D", ADMIN_DN, "-w", self._password, "-H", self.uri], input=ldif)

    def allow_delegation(self, principal: str, targets: Sequence[str]) -> None:
        """``principal`` may ask S4U2Proxy tickets to ``targets`` (its krbAllowedToDelegateTo;
        takes effect without a KDC restart)."""
        values = "".join(f"krbAllowedToDelegateTo: {t}\n" for t in targets)
        self.ldap("ldapmodify", f"dn: {self.principal_dn(principal)}\nchangetype: modify\n"
                                f"replace: krbAllowedToDelegateTo\n{values}")

    def allow_tickets(self, principal: str, allowed: bool) -> None:
        """Lock or unlock ``principal`` at the KDC (``-allow_tix``: KDC_ERR_CLIENT_REVOKED)."""
        self.kadmin(f"modprinc {'+' if allowed else '-'}allow_tix {principal}")


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("slapd", "kdb5_ldap_util", "ldapmodify")) \
        and KERBEROS_SCHEMA.exists()
