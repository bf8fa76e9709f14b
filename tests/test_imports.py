"""Imports: a local socket on a that stands for a socket on b, so unmodified programs
work across hosts. Proven with a real PostgreSQL on b using ``peer`` authentication:
psql on a, through the import, logs in as alice's role and is refused as bob."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nipc_testbed.sandbox import Host

pytestmark = pytest.mark.integration

PG = Path("/usr/lib/postgresql/15/bin")


def as_postgres(b: Host, *argv: str) -> subprocess.CompletedProcess[str]:
    """A PostgreSQL command on b as b's postgres account: peer authentication names the
    connecting uid by b's own /etc/passwd."""
    return b.run(["runuser", "-u", "postgres", "--", *argv], check=False, timeout=120)


@pytest.fixture(scope="module")
def postgres_on_b(samba_hosts: dict[str, Host]) -> Iterator[Path]:
    """A private PostgreSQL cluster on b listening only on a Unix socket, peer auth."""
    if not (PG / "initdb").exists():
        pytest.fail("PostgreSQL 15 missing: scripts/bootstrap installs postgresql-15")
    b = samba_hosts["b"]
    data, sockets = b.dir / "pgdata", b.run_dir / "pg"
    for d in (data, sockets):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        b.run(["chown", "postgres:postgres", str(d)])
    proc = as_postgres(b, str(PG / "initdb"), "-D", str(data), "--auth-local=peer",
                       "--auth-host=reject", "-U", "postgres")
    assert proc.returncode == 0, proc.stderr
    options = f"-c listen_addresses='' -c unix_socket_directories='{sockets}'"
    proc = as_postgres(b, str(PG / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                       "-l", str(data / "postgres.log"), "start")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        proc = as_postgres(b, str(PG / "psql"), "-h", str(sockets), "-d", "postgres", "-c",
                           "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;")
        assert proc.returncode == 0, proc.stderr
        yield sockets / ".s.PGSQL.5432"
    finally:
        as_postgres(b, str(PG / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")


@pytest.fixture(scope="module")
def imported(samba_hosts: dict[str, Host], postgres_on_b: Path) -> Iterator[Path]:
    """a's daemon with an import of b's PostgreSQL socket; yields the import directory."""
    a, b = samba_hosts["a"], samba_hosts["b"]
    directory = a.dir / "imports" / "pg"
    with a.reconfigured(lambda text: text + f"""
[[imports]]
socket = "{directory / '.s.PGSQL.5432'}"
target = "{postgres_on_b}@{b.fqdn}"
mode = "0666"
""", start=True), b.running():
        yield directory


def psql(user: str, directory: Path, role: str) -> subprocess.CompletedProcess[str]:
    """psql as ``user`` on the host of the import ``directory`` (a)."""
    return Host.owning(directory).run(
        ["runuser", "-u", user, "--", str(PG / "psql"), "-h", str(directory), "-U", role,
         "-d", "postgres", "-Atc", "SELECT current_user"], check=False, timeout=60)


def test_psql_through_an_import_logs_in_as_alice(imported: Path) -> None:
    proc = psql("alice", imported, "alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "alice"


def test_psql_as_bob_cannot_be_alice(imported: Path) -> None:
    """peer authentication on b sees bob's projected uid: he cannot claim alice's role."""
    proc = psql("bob", imported, "alice")
    assert proc.returncode != 0
    assert "Peer authentication failed" in proc.stderr, proc.stderr
    assert psql("bob", imported, "bob").stdout.strip() == "bob"


def test_a_refused_import_connection_is_reset(samba_hosts: dict[str, Host], imported: Path) -> None:
    """carol has no account on b: the import cannot answer with ERR, so the connection is
    reset and a's audit line says why."""
    proc = psql("carol", imported, "carol")
    assert proc.returncode != 0
    log = samba_hosts["a"].log_path.read_text()
    assert "EPERM" in log and "carol" in log
