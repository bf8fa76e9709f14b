"""A real nipcd on this host only (twistd, no peers, no Kerberos): local connects
(``PATH@localhost``) are made as the caller, so the admin socket and the metrics endpoint
can be tested against a daemon doing real work, in a second or so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def solo_keytab(path: Path) -> Path:
    """A keytab for nipc/solo.test@SOLO.TEST, unless it holds entries already: the daemon
    checks it at start, although no KDC ever knows its key (nothing leaves the host)."""
    if not path.exists() or path.stat().st_size <= 2:  # absent, or only the version
        path.unlink(missing_ok=True)
        subprocess.run(["ktutil"], input="addent -password -p nipc/solo.test@SOLO.TEST -k 1 "
                       f"-e aes256-cts-hmac-sha1-96\nSolo-Key-1\nwkt {path}\nquit\n",
                       text=True, check=True, capture_output=True, timeout=30)
        path.chmod(0o600)
    return path


def solo_config(root: Path, socket: Path, port: int, extra: str = "") -> str:
    """A one-host daemon config for root-only tests of the local path (no Kerberos)."""
    return f"""
[host]
name = "solo.test"
realm = "SOLO.TEST"
[kerberos]
keytab = "{solo_keytab(root / 'none.keytab')}"
principal = "nipc/solo.test@SOLO.TEST"
[local]
socket = "{socket}"
[peer]
listen = "127.0.0.1"
port = {port}
{extra}
"""


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it is still there after 10 s; its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class LocalDaemon:
    """nipcd in ``root`` (a directory), with ``extra`` TOML appended to its config."""

    def __init__(self, root: Path, extra: str = "", twistd_args: Sequence[str] = ()) -> None:
        self.root = root
        root.chmod(0o755)
        self.socket = root / "nipc.sock"
        self.admin = root / "admin.sock"
        self.metrics_port = free_port()
        self.config = root / "nipcd.toml"
        self.config.write_text(solo_config(root, self.socket, free_port(), f"""
[metrics]
listen = "127.0.0.1:{self.metrics_port}"
{extra}"""))
        twistd = str(Path(sys.executable).parent / "twistd")
        self.out = open(root / "nipcd.out", "wb")
        self.proc = subprocess.Popen([twistd, "-n", "--pidfile=", *twistd_args, "nipc", "--config", str(self.config)],
                                     stdout=self.out, stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + 20
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("nipcd did not start:\n" + (root / "nipcd.out").read_text()[-3000:])
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return self.admin.exists()

    def logged(self, text: str, timeout: float = 20) -> str:
        """The log once it holds ``text``: the gate accepts before start-up is logged to
        its end (the gate's own checks come after it listens)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text: str = answer.read().decode()
            return text

    def log(self) -> str:
        return (self.root / "nipcd.out").read_text()

    def stop(self) -> None:
        stop_process(self.proc)
        self.out.close()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        sample, _, rest = key.partition("{")
        if sample != name:
            continue
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if got == want:
            return float(value)
    return None


def environ_for_cli() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def reload_daemon(gate: Path) -> None:
    """``nipc reload`` on the admin socket beside the daemon's ``gate``; it must be applied."""
    done = subprocess.run([sys.executable, "-m", "nipc.cli", "reload", "--admin",
                           str(gate.parent / "admin.sock")],
                          capture_output=True, text=True, timeout=60, env=environ_for_cli())
    assert done.returncode == 0, done.stdout + done.stderr
