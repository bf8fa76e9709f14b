"""A full log disk costs log lines, never routing (issue 14 item 8).

b's ``[log] file`` lives on a small tmpfs of its own. Filled up, b keeps routing, says so
once on its other log (stdout here, the journal under systemd) without a traceback, counts
the lines it drops in ``nipc_log_lines_dropped_total``, and says once more when the file
can be written again.
"""

from __future__ import annotations

import errno
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_root
from nipc_testbed.sandbox import Host
from support import UnixServer, run_client

pytestmark = pytest.mark.integration

SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
ROUTES = 5


@pytest.fixture(scope="module")
def small_disk(samba_hosts: dict[str, Host]) -> Iterator[Path]:
    """A 256 KiB tmpfs in b's directory, mounted before b's daemon starts (so its mount
    namespace has it too), holding b's JSON log; b serves metrics on its own address."""
    require_root()
    a, b = samba_hosts["a"], samba_hosts["b"]
    where = b.dir / "logfs"
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "nipc-logfs",
                    str(where)], check=True)
    log_file = where / "nipcd.json"
    try:
        with a.running(), b.reconfigured(
                lambda text: re.sub(r'(?m)^file = .*$', f'file = "{log_file}"', text)
                + f'\n[metrics]\nlisten = "{b.address}:9745"\n', start=True):
            yield log_file
    finally:
        subprocess.run(["umount", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    return filler


def dropped(b: Host) -> float:
    text = b.run([sys.executable, "-c", SCRAPE, f"http://{b.address}:9745/metrics"]).stdout
    found = re.search(r"(?m)^nipc_log_lines_dropped_total (\S+)$", text)
    assert found, "no nipc_log_lines_dropped_total in b's metrics"
    return float(found.group(1))


def greet(a: Host, server: UnixServer, b: Host) -> None:
    out = run_client("alice", str(a.socket_path), "greet", f"{server.path}@{b.fqdn}")
    assert "error" not in out, out


def wait_for(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_full_log_disk_costs_lines_not_routing(samba_hosts: dict[str, Host],
                                                 small_disk: Path) -> None:
    a, b = samba_hosts["a"], samba_hosts["b"]
    server = UnixServer(str(b.run_dir / "logdisk-echo.sock"))
    try:
        greet(a, server, b)
        wait_for(lambda: "nipc-audit" in small_disk.read_text(errors="replace"),
                 "b's first audit line never reached its log file")
        assert dropped(b) == 0
        stdout_before = b.out_path.stat().st_size
        filler = fill(small_disk.parent)
        for _ in range(ROUTES):
            greet(a, server, b)  # routing goes on
        wait_for(lambda: dropped(b) >= ROUTES, "the dropped-line counter did not rise")
        said = b.out_path.read_bytes()[stdout_before:].decode(errors="replace")
        assert "Traceback" not in said and "Temporarily disabling observer" not in said, said
        assert said.count("cannot write the log file") == 1, said
        assert str(small_disk) in said and "No space left on device" in said, said

        filler.unlink()
        greet(a, server, b)
        wait_for(lambda: "is written again" in b.out_path.read_text(errors="replace"),
                 "b did not say its log file works again")
        said = b.out_path.read_bytes()[stdout_before:].decode(errors="replace")
        assert said.count("is written again") == 1 and "Traceback" not in said, said
        wait_for(lambda: small_disk.read_text(errors="replace").count("nipc-audit") >= 2,
                 "audit lines are not written to the file again")
    finally:
        server.close()
