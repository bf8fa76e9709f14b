"""What the sandbox needs from the machine, checked once before anything is built.

Without this, a missing Debian package shows up deep inside a build step: Samba's provision
failing with "Please install samba-ad-provision package", repeated by every test that uses
the sandbox.  Each need names the Debian package that ships it, so that the check fails with
one line that says what is missing and the command that installs it.
``tests/test_prerequisites.py`` asks dpkg that these packages really ship these files and
that ``scripts/bootstrap`` installs them (or something that Depends on them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

SCHEMA_DIR = "/usr/share/samba/setup/ad-schema"


@dataclass(frozen=True)
class Need:
    """A command (looked up on ``PATH``) or an absolute path, and the package that ships it."""

    what: str
    package: str

    def present(self) -> bool:
        if os.path.isabs(self.what):
            return os.path.exists(self.what)
        return shutil.which(self.what) is not None


#: Hosts (namespaces, their own mounts and names), the processes run as their users, and
#: the client installed for the system Python on each.
COMMON = (
    Need("ip", "iproute2"),
    Need("setpriv", "util-linux"),
    Need("nsenter", "util-linux"),
    Need("unshare", "util-linux"),
    Need("mount", "mount"),
    Need("hostname", "hostname"),
    Need("/usr/bin/python3", "python3-minimal"),
    Need("kinit", "krb5-user"),
    Need("kdestroy", "krb5-user"),
)
#: The Samba AD DC (``LAN.TEST``): provision reads its base schema (the 2012_R2 default)
#: and its setup files from samba-ad-provision, which samba-ad-dc only Recommends.
SAMBA = (
    Need("samba", "samba"),
    Need("samba-tool", "samba-common-bin"),
    Need("winbindd", "winbind"),
    Need(f"{SCHEMA_DIR}/AD_DS_Attributes__Windows_Server_2012_R2.ldf", "samba-ad-provision"),
    Need(f"{SCHEMA_DIR}/AD_DS_Classes__Windows_Server_2012_R2.ldf", "samba-ad-provision"),
    Need("/usr/share/samba/setup/provision.reg", "samba-ad-provision"),
)
#: The plain MIT KDC (``MIT.TEST``).
MIT = (
    Need("krb5kdc", "krb5-kdc"),
    Need("kdb5_util", "krb5-kdc"),
    Need("kadmin.local", "krb5-admin-server"),
)


#: MIT krb5 on the LDAP back end (``LDAP.TEST``): a private slapd and the kldap plugin.
LDAP = (
    Need("slapd", "slapd"),
    Need("/usr/lib/ldap/back_mdb.so", "slapd"),
    Need("/etc/ldap/schema/core.schema", "slapd"),
    Need("ldapmodify", "ldap-utils"),
    Need("kdb5_ldap_util", "krb5-kdc-ldap"),
    Need("/usr/lib/x86_64-linux-gnu/krb5/plugins/kdb/kldap.so", "krb5-kdc-ldap"),
    Need("/usr/share/doc/krb5-kdc-ldap/kerberos.schema.gz", "krb5-kdc-ldap"),
)


def sandbox_needs(samba: bool = True, mit: bool = True, ldap: bool = True) -> tuple[Need, ...]:
    """What a sandbox with these realms needs (by default all of them, as Sandbox builds)."""
    return (COMMON + (SAMBA if samba else ()) + (MIT if mit or ldap else ())
            + (LDAP if ldap else ()))


def missing(needs: Iterable[Need]) -> list[Need]:
    return [n for n in needs if not n.present()]


def describe(lacking: Iterable[Need]) -> str:
    """One line: what is missing, and the command that installs it."""
    lacking = list(lacking)
    packages = " ".join(dict.fromkeys(n.package for n in lacking))
    return (f"missing {', '.join(n.what for n in lacking)}: install with "
            f"`apt-get install --no-install-recommends {packages}` (./scripts/bootstrap "
            "installs everything NIPC needs)")
