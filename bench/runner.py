"""NIPC benchmark (issue 7): NIPC side by side with raw sockets, ssh -L and socat over TLS.

Run through ``bench/run`` (which installs the tools and builds ``bench.c``); see
``bench/README.md`` for what every number means. Everything happens inside a sandbox of
its own (namespace prefix ``nipb-``): the server (``bench server``) runs on host b, every
client on host a (the Unix-socket ceiling: client on b), and the relays of each contender
on a and b. Traffic stays between the sandbox's namespaces.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from nipc_testbed.sandbox import Host, Sandbox, SandboxError, _terminate  # noqa: E402

BUILD = HERE / "build"
BENCH = BUILD / "bench"
PREFIX = "nipb-"
SERVER_PORT = 5201
SSHD_PORT = 2222
SOCAT_PORT = 4433
TLS_PORT = 4443
PG = Path("/usr/lib/postgresql/15/bin")  # installed by scripts/bootstrap (imports test)
PG_SOCKET = ".s.PGSQL.5432"
CLK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30

PROFILES: dict[str, dict[str, Any]] = {
    "full": dict(
        reps=5, tput_bytes=GIB, tput2_bytes=GIB, lat_n=10000, conn_n=1000, rate_secs=30.0,
        rate_procs=4, cold_n=10, fresh_ssh_n=20, tls_secs=10.0, hold_n=5000,
        socat_hold_n=500, hold_reps=3, hold_batch=50, pg_secs=20, pg_reps=3, pg_clients=4,
        pg_threads=2, defaults_secs=10.0,
    ),
    "quick": dict(
        reps=3, tput_bytes=256 << 20, tput2_bytes=128 << 20, lat_n=2000, conn_n=200,
        rate_secs=3.0, rate_procs=4, cold_n=5, fresh_ssh_n=10, tls_secs=3.0, hold_n=5000,
        socat_hold_n=200, hold_reps=1, hold_batch=50, pg_secs=5, pg_reps=3, pg_clients=4,
        pg_threads=2, defaults_secs=5.0,
    ),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- processes: CPU and memory of a relay's process tree -----------------------------------


def _proc_table() -> dict[int, int]:
    """pid -> ppid for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            table[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    return table


def tree(roots: list[int]) -> list[int]:
    """``roots`` and all their live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(roots: list[int]) -> float:
    """utime+stime (+ cutime+cstime of reaped children) over the live tree of ``roots``.

    A forked child's time counts in its own entry while it lives and in its parent's
    cutime/cstime once reaped, so before/after deltas count every child once.
    """
    total = 0
    for pid in tree(roots):
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return total / CLK


def rss_kb(roots: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) in KB over the live tree of ``roots``."""
    rss = pss = 0
    for pid in tree(roots):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]



# --- the contenders -------------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    label: str
    addr: str
    client: Host
    user: Any = None  # run the client as this sandbox user (NIPC: alice)
    relays: Callable[[], tuple[list[int], list[int]]] = lambda: ([], [])
    hold_n: int = 0  # 0: no hold measurement (no relays, or same relays as another row)
    probe: bool = True
    #: pgbench's socket directory (-h) on ``client``; None: no pgbench through this row
    pg: Path | None = None
    #: start the relays afresh (before each hold repetition); None: nothing long-lived
    fresh: Callable[[], None] | None = None

    def argv(self, *args: Any) -> list[str]:
        return self.client.exec_argv([str(BENCH), self.addr, *map(str, args)], self.user)


class BenchError(RuntimeError):
    pass


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.p = dict(PROFILES["quick" if args.quick else "full"])
        if args.reps:
            self.p["reps"] = self.p["pg_reps"] = args.reps
        if args.hold_reps is not None:
            self.p["hold_reps"] = args.hold_reps
        stamp = datetime.datetime.now().strftime("%Y-%m-%d")
        self.out = Path(args.out) if args.out else HERE / "results" / stamp
        self.sb: Sandbox | None = None
        self.procs: list[subprocess.Popen[Any]] = []
        self.named: dict[str, subprocess.Popen[Any]] = {}
        self.results: dict[str, Any] = {"runs": {}, "cold": {}, "hold": {}, "errors": []}
        self.samples: dict[str, list[float]] = {}  # connect latency samples (s), for the CDF
        self.contenders: dict[str, Contender] = {}

    # -- set-up --

    def prepare_files(self) -> None:
        """Throwaway ssh keys and sshd config, and a TLS certificate for socat/openssl."""
        ssh = BUILD / "ssh"
        if ssh.exists():
            shutil.rmtree(ssh)
        ssh.mkdir(parents=True)
        for key in ("host_ed25519", "client_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nipb",
                            "-f", str(ssh / key)], check=True)
        shutil.copy(ssh / "client_ed25519.pub", ssh / "authorized_keys")
        (ssh / "sshd_config").write_text(
            f"Port {SSHD_PORT}\n"
            "ListenAddress {b}\n"
            f"HostKey {ssh / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}\n"
            f"PidFile {ssh / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "AllowStreamLocalForwarding yes\n"
            "AllowTcpForwarding yes\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "UseDNS no\n"
            "MaxStartups 200:30:400\n"
            "MaxSessions 100\n"
            "LogLevel ERROR\n"
        )
        tls = BUILD / "tls"
        if tls.exists():
            shutil.rmtree(tls)
        tls.mkdir()
        # EC P-256, like NIPC's ephemeral certificates.
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=b.lan.test",
             "-addext", "subjectAltName=DNS:b.lan.test,IP:10.77.0.12",
             "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem")],
            check=True, capture_output=True,
        )
        (tls / "both.pem").write_text((tls / "key.pem").read_text() + (tls / "cert.pem").read_text())

    def spawn(self, name: str, argv: list[str], *, stdin: Any = subprocess.DEVNULL,
              umask: int = -1) -> subprocess.Popen[Any]:
        logf = open(self.rundir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdin=stdin, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, umask=umask)
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def wait_socket(self, path: Path, proc: subprocess.Popen[Any], what: str,
                    timeout: float = 20) -> None:
        import socket as pysocket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{what} exited {proc.returncode}: "
                                 + (self.rundir / f"{what}.log").read_text()[-2000:])
            if path.exists():
                with pysocket.socket(pysocket.AF_UNIX) as s:
                    try:
                        s.connect(str(path))
                        return
                    except OSError:
                        pass
            time.sleep(0.05)
        raise BenchError(f"{what}: {path} not accepting after {timeout}s")

    def up(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.nofile = hard
        log(f"RLIMIT_NOFILE raised to {hard} (inherited by daemons, relays, clients)")
        log(f"sandbox up (prefix {self.args.prefix}, Samba AD realm only)")
        self.sb = Sandbox(prefix=self.args.prefix, mit=False)
        self.sb.up()
        a, b = self.sb.hosts["a"], self.sb.hosts["b"]
        self.a, self.b = a, b
        self.alice = a.user("alice")
        self.rundir = self.sb.root / "bench"
        self.rundir.mkdir(mode=0o755)
        self.rundir.chmod(0o755)
        self.sampledir = self.rundir / "samples"  # clients running as alice write here too
        self.sampledir.mkdir()
        self.sampledir.chmod(0o1777)
        for h in (a, b):  # short TIME_WAIT reuse and a wide port range: connect-rate tests
            for k, v in (("net.ipv4.tcp_tw_reuse", "1"),
                         ("net.ipv4.ip_local_port_range", "1024 65000"),
                         ("net.core.somaxconn", "8192")):
                h.run(["sysctl", "-q", "-w", f"{k}={v}"], check=False)
        srv = self.rundir / "server.sock"
        self.server_sock = srv
        proc = self.spawn("server", b.exec_argv([str(BENCH), "server", str(srv),
                                                 f"{b.address}:{SERVER_PORT}"]), umask=0)
        self.wait_socket(srv, proc, "server")
        log("bench server on b")

        # sshd on b, and two forwards from a: plain -N -L, and -tt -L (TCP_NODELAY)
        ssh = BUILD / "ssh"
        cfg = self.rundir / "sshd_config"
        cfg.write_text((ssh / "sshd_config").read_text().replace("{b}", b.address))
        b.path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.spawn("sshd", b.exec_argv(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)]))
        self.ssh_base = [
            "ssh", "-F", "/dev/null", "-i", str(ssh / "client_ed25519"),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "StreamLocalBindUnlink=yes",
            # pgbench runs as alice: the forwarded sockets must accept her (default 0177)
            "-o", "StreamLocalBindMask=0111",
            "-o", "ExitOnForwardFailure=yes", "-c", "aes128-gcm@openssh.com",
            "-p", str(SSHD_PORT),
        ]
        deadline = time.monotonic() + 20
        while a.run([*self.ssh_base, f"root@{b.address}", "true"], check=False).returncode:
            if time.monotonic() > deadline:
                raise BenchError("sshd on b not answering: "
                                 + (self.rundir / "sshd.log").read_text()[-2000:])
            time.sleep(0.2)
        self.start_postgres()
        for name in ("ssh", "ssh-tt"):
            self.start_forward(name)
        log("sshd on b; ssh -N -L and ssh -tt -L forwards on a (bench server and PostgreSQL)")

        # socat OPENSSL pair
        tls = BUILD / "tls"
        self.spawn("socat-b", b.exec_argv([
            "socat", f"OPENSSL-LISTEN:{SOCAT_PORT},bind={b.address},fork,reuseaddr,backlog=4096,"
            f"cert={tls / 'cert.pem'},key={tls / 'key.pem'},verify=0",
            f"UNIX-CONNECT:{srv}"]))
        p = self.spawn("socat-a", a.exec_argv([
            "socat", f"UNIX-LISTEN:{self.rundir / 'socat.sock'},fork,unlink-early,backlog=4096",
            f"OPENSSL:{b.address}:{SOCAT_PORT},cafile={tls / 'cert.pem'},verify=1,"
            "commonname=b.lan.test"]))
        self.wait_socket(self.rundir / "socat.sock", p, "socat-a")
        log("socat OPENSSL pair")

        # NIPC daemons (first connect after start: the cold figure, measured later)
        self.configure_nipc()
        a.start_daemon()
        b.start_daemon()
        log("NIPC daemons on a and b")

        named = self.named

        def tree_of(name: str) -> list[int]:
            return [named[name].pid]

        sshd_pid = lambda: [named["sshd"].pid]  # noqa: E731
        h = self.p
        cs = [
            Contender("unix", "Unix socket (ceiling, client on b)", f"unix:{srv}", b,
                      pg=self.pg_sockets),
            Contender("tcp", "raw TCP a->b", f"tcp:{b.address}:{SERVER_PORT}", a),
            Contender("ssh", "ssh -N -L aes128-gcm", f"unix:{self.rundir / 'ssh.sock'}", a,
                      relays=lambda: (tree_of("ssh"), sshd_pid()), hold_n=h["hold_n"],
                      pg=self.pg_dir("ssh"), fresh=lambda: self.start_forward("ssh")),
            Contender("ssh-tt", "ssh -tt -L aes128-gcm (TCP_NODELAY)",
                      f"unix:{self.rundir / 'sshtt.sock'}", a,
                      relays=lambda: (tree_of("ssh-tt"), sshd_pid()), pg=self.pg_dir("ssh-tt")),
            Contender("socat", "socat OPENSSL pair", f"unix:{self.rundir / 'socat.sock'}", a,
                      relays=lambda: (tree_of("socat-a"), tree_of("socat-b")),
                      hold_n=h["socat_hold_n"]),
            Contender("nipc", "NIPC", f"nipc:{a.socket_path}:{srv}@{b.fqdn}", a,
                      user=self.alice, relays=self.nipc_relays, hold_n=h["hold_n"],
                      pg=self.pg_dir("nipc"), fresh=self.restart_daemons),
        ]
        only = set(self.args.only.split(",")) if self.args.only else None
        self.contenders = {c.name: c for c in cs if only is None or c.name in only}

    def pg_dir(self, name: str) -> Path:
        """The directory on a holding contender ``name``'s PostgreSQL socket (pgbench -h)."""
        return self.rundir / f"pg-{name}"

    def start_postgres(self) -> None:
        """PostgreSQL on b, on a Unix socket only, with ``peer`` authentication: b's uid names
        the role. The ssh forwards' sshd connects as root, so pg_ident maps root to alice
        (every other account to its own name); pgbench's tables belong to alice."""
        b = self.b
        data, self.pg_sockets = self.rundir / "pgdata", self.rundir / "pg"
        self.pg_socket = self.pg_sockets / PG_SOCKET
        for d in (data, self.pg_sockets):
            d.mkdir()
            b.run(["chown", "postgres:postgres", str(d)])

        def run(argv: list[Any], user: str = "postgres") -> None:
            proc = b.run(["runuser", "-u", user, "--", *map(str, argv)], check=False,
                         timeout=300)
            if proc.returncode:
                raise BenchError(f"PostgreSQL set-up: {argv[0]} exited {proc.returncode}: "
                                 + (proc.stdout + proc.stderr)[-1500:])

        run([PG / "initdb", "-D", data, "--auth-local=peer", "--auth-host=reject",
             "-U", "postgres"])
        (data / "pg_hba.conf").write_text("local all all peer map=bench\n")
        (data / "pg_ident.conf").write_text("bench root alice\nbench /^(.*)$ \\1\n")
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.pg_sockets}' "
                   "-c max_connections=100")
        run([PG / "pg_ctl", "-D", data, "-o", options, "-w", "-l", data / "postgres.log",
             "start"])
        self.pg_data = data
        run([PG / "psql", "-h", self.pg_sockets, "-d", "postgres", "-c",
             "CREATE ROLE alice LOGIN", "-c", "CREATE DATABASE bench OWNER alice"])
        run([PG / "pgbench", "-i", "-q", "-h", self.pg_sockets, "-U", "alice", "bench"],
            user="alice")
        for name in ("ssh", "ssh-tt", "nipc"):
            self.pg_dir(name).mkdir(mode=0o755)
        log("PostgreSQL 15 on b (peer authentication), pgbench tables (scale 1) as alice")

    def stop_postgres(self) -> None:
        if getattr(self, "pg_data", None) is not None:
            self.b.run(["runuser", "-u", "postgres", "--", str(PG / "pg_ctl"), "-D",
                        str(self.pg_data), "-m", "immediate", "stop"], check=False)

    def start_forward(self, name: str) -> None:
        """(Re)start contender ``name``'s ssh client on a ("ssh": -N, "ssh-tt": an open -tt
        session, which sets TCP_NODELAY): a forward to the bench server and one to
        PostgreSQL, both as root on b."""
        old = self.named.get(name)
        if old is not None and old.poll() is None:
            _terminate([old.pid])
        sock = self.rundir / {"ssh": "ssh.sock", "ssh-tt": "sshtt.sock"}[name]
        fwd = ["-L", f"{sock}:{self.server_sock}",
               "-L", f"{self.pg_dir(name) / PG_SOCKET}:{self.pg_socket}"]
        if name == "ssh":
            argv, stdin = [*self.ssh_base, "-N", *fwd, f"root@{self.b.address}"], subprocess.DEVNULL
        else:
            argv = [*self.ssh_base, "-tt", *fwd, f"root@{self.b.address}", "sleep", "1000000"]
            stdin = subprocess.PIPE
        p = self.spawn(name, self.a.exec_argv(argv), stdin=stdin)
        self.wait_socket(sock, p, name)
        self.wait_socket(self.pg_dir(name) / PG_SOCKET, p, name)

    def configure_nipc(self) -> None:
        """An import of b's PostgreSQL socket on a's daemon (pgbench's NIPC path), the lifted
        limits on both; the configs without the limits are kept for the defaults run."""
        a, b = self.a, self.b
        a.config_path.write_text(a.config_path.read_text() + f"""
[[imports]]
socket = "{self.pg_dir('nipc') / PG_SOCKET}"
target = "{self.pg_socket}@{b.fqdn}"
mode = "0666"
""")
        self.shipped_configs = {h.name: h.config_path.read_text() for h in (a, b)}
        self.lift_nipc_limits()

    def restart_daemons(self) -> None:
        """Both NIPC daemons afresh (b first: a's import connects to it), then a warm-up
        connect so that what follows starts from filled caches, not a cold connect."""
        for h in (self.a, self.b):
            h.stop_daemon()
        self.b.start_daemon()
        self.a.start_daemon()
        self.client(self.contenders["nipc"], "conn", 3)

    #: Admission limits high enough not to cap the measurement (5,000 held by one uid,
    #: thousands of handshakes per second): the benchmark measures the daemon, not its
    #: quotas. Every key of the shipped [limits] must be here (a new one is reported as an
    #: error); the counts fit 20,000 descriptors, so the daemon's RLIMIT_NOFILE check holds.
    BENCH_LIMITS = {"max_connections": 6000, "max_per_caller": 6000,
                    "handshakes_per_second": 1000000, "handshake_burst": 1000000,
                    "max_pending_peers": 512, "max_pending_per_source": 512,
                    "peer_handshakes_per_second": 1000000, "max_inbound": 6000,
                    "max_inbound_per_source": 6000, "max_stuck": 6000,
                    "max_stuck_per_caller": 6000}

    def lift_nipc_limits(self) -> None:
        """Append BENCH_LIMITS as [limits] to both daemons' nipcd.toml; the shipped defaults
        (etc/nipcd.toml) go into the results beside them."""
        shipped = shipped_limits()
        self.results["nipc_limits_shipped"] = shipped
        unknown = sorted(set(shipped) - set(self.BENCH_LIMITS))
        if unknown:
            self.results["errors"].append(
                f"[limits] keys the benchmark does not lift (add them to BENCH_LIMITS): {unknown}")
        lines = [f"{k} = {v}" for k, v in self.BENCH_LIMITS.items() if k in shipped]
        self.results["nipc_limits"] = dict(kv.split(" = ") for kv in lines)
        if not lines:
            return
        for h in (self.a, self.b):
            text = h.config_path.read_text()
            if "[limits]" not in text:
                h.config_path.write_text(text + "\n[limits]\n" + "\n".join(lines) + "\n")
        log("NIPC [limits] lifted for the benchmark: " + ", ".join(lines))

    def nipc_relays(self) -> tuple[list[int], list[int]]:
        pa, pb = self.a.daemon_pid(), self.b.daemon_pid()
        return ([pa] if pa else []), ([pb] if pb else [])

    def down(self) -> None:
        if self.args.keep and self.sb is not None:
            log(f"--keep: sandbox left up (root {self.sb.root}); remove with: "
                f".venv/bin/python -m nipc_testbed.sandbox down --prefix {self.args.prefix}")
            return
        self.stop_postgres()
        alive = [p.pid for p in self.procs if p.poll() is None]
        if alive:
            _terminate(alive)
        if self.sb is not None:
            self.sb.down()
            log("sandbox down")

    # -- running the client --

    def client(self, c: Contender, *args: Any, timeout: float = 600,
               samples: Path | None = None) -> tuple[list[str], float, float, float]:
        """Run ``bench ADDR args`` for ``c``; returns (output fields, wall s, CPU A, CPU B)."""
        ra, rb = c.relays()
        ca0, cb0 = cpu_seconds(ra), cpu_seconds(rb)
        env = {**os.environ, "BENCH_SAMPLES": str(samples) if samples else ""}
        t0 = time.monotonic()
        proc = subprocess.run(c.argv(*args), capture_output=True, text=True, timeout=timeout,
                              env=env)
        wall = time.monotonic() - t0
        ca1, cb1 = cpu_seconds(ra), cpu_seconds(rb)
        if proc.returncode != 0:
            raise BenchError(f"{c.name}: bench {' '.join(map(str, args))} exited "
                             f"{proc.returncode}: {proc.stderr.strip()[-1500:]}")
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        return lines[-1].split(), wall, ca1 - ca0, cb1 - cb0

    def record(self, name: str, metric: str, value: Any) -> None:
        self.results["runs"].setdefault(name, {}).setdefault(metric, []).append(value)

    def attempt(self, c: Contender, metric: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except (BenchError, subprocess.TimeoutExpired) as e:
            msg = f"{c.name} {metric}: {e}"
            log("ERROR " + msg)
            self.results["errors"].append(msg)

    # -- the measurements --

    def m_tput(self, c: Contender) -> None:
        n = self.p["tput_bytes"]
        f, wall, ca, cb = self.client(c, "tput", n)
        gib = n / GIB
        self.record(c.name, "tput_MBps", float(f[3]))
        if c.relays() != ([], []):
            self.record(c.name, "cpu_s_per_GiB_A", ca / gib)
            self.record(c.name, "cpu_s_per_GiB_B", cb / gib)

    def m_tput2(self, c: Contender) -> None:
        n = self.p["tput2_bytes"]
        f, wall, ca, cb = self.client(c, "tput2", n)
        self.record(c.name, "tput2_MBps", float(f[3]))
        if c.relays() != ([], []):  # both directions moved: 2n bytes through each relay
            self.record(c.name, "cpu2_s_per_GiB_A", ca / (2 * n / GIB))
            self.record(c.name, "cpu2_s_per_GiB_B", cb / (2 * n / GIB))

    def m_lat(self, c: Contender) -> None:
        f, *_ = self.client(c, "lat", self.p["lat_n"])
        self.record(c.name, "rtt_p50_us", float(f[2]))
        self.record(c.name, "rtt_p99_us", float(f[3]))

    def m_conn(self, c: Contender) -> None:
        n = self.p["conn_n"]
        tmp = self.sampledir / f"{c.name}.txt"
        f, wall, ca, cb = self.client(c, "conn", n, samples=tmp)
        self.samples.setdefault(f"{c.name} (warm)", []).extend(
            float(x) for x in tmp.read_text().split())
        self.record(c.name, "connect_p50_us", float(f[2]))
        self.record(c.name, "connect_p99_us", float(f[3]))
        if c.relays() != ([], []):
            self.record(c.name, "cpu_ms_per_connect_A", ca / n * 1e3)
            self.record(c.name, "cpu_ms_per_connect_B", cb / n * 1e3)

    def m_rate(self, c: Contender) -> None:
        secs, procs = self.p["rate_secs"], self.p["rate_procs"]
        f, wall, ca, cb = self.client(c, "rate", secs, procs, timeout=secs + 120)
        ok, err = int(f[1]), int(f[2])
        self.record(c.name, "rate_per_s", float(f[4]))
        self.record(c.name, "rate_errors", err)
        if err:
            self.results["errors"].append(f"{c.name} rate: {err} failed connects of {ok + err}")
        if c.relays() != ([], []) and ok:
            self.record(c.name, "rate_cpu_ms_per_connect_AB", (ca + cb) / ok * 1e3)

    METRICS = ("tput", "tput2", "lat", "conn", "rate")

    def pgbench(self, c: Contender, connect: bool, run: list[str]) -> dict[str, Any]:
        """``pgbench -S`` (select only) as alice on ``c``'s client host through ``c``'s path,
        ``-c 4 -j 2``; ``connect``: -C, a new connection per transaction. ``run`` is -T SECS
        or -t N. Returns its figures and the relays' CPU over the run."""
        p = self.p
        argv = [str(PG / "pgbench"), "-n", "-S", *(["-C"] if connect else []),
                "-c", str(p["pg_clients"]), "-j", str(p["pg_threads"]), *run,
                "-h", str(c.pg), "-U", "alice", "bench"]
        ra, rb = c.relays()
        ca0, cb0 = cpu_seconds(ra), cpu_seconds(rb)
        proc = subprocess.run(c.client.exec_argv(argv, c.client.user("alice")),
                              capture_output=True, text=True, timeout=p["pg_secs"] + 120)
        ca, cb = cpu_seconds(ra) - ca0, cpu_seconds(rb) - cb0
        out = proc.stdout

        def num(pattern: str) -> float | None:
            m = re.search(pattern, out, re.M)
            return float(m.group(1)) if m else None

        res = {"tps": num(r"^tps = ([\d.]+)"), "lat_ms": num(r"^latency average = ([\d.]+) ms"),
               "tx": num(r"^number of transactions actually processed: (\d+)"),
               "failed": num(r"^number of failed transactions: (\d+)") or 0,
               "conn_ms": num(r"^average connection time = ([\d.]+) ms"),
               "aborted": len(re.findall(r"client \d+ aborted", proc.stderr)),
               "rc": proc.returncode, "cpu_s_A": ca, "cpu_s_B": cb}
        if res["tps"] is None or not res["tx"]:
            raise BenchError(f"{c.name}: pgbench exited {proc.returncode}: "
                             + (out + proc.stderr).strip()[-1500:])
        if proc.returncode or res["aborted"]:
            res["stderr"] = proc.stderr.strip()[-600:]
        return res

    def m_pgbench(self, c: Contender, connect: bool) -> None:
        w = "pgC" if connect else "pgS"
        res = self.pgbench(c, connect, ["-T", str(self.p["pg_secs"])])
        if res["rc"] or res["aborted"]:
            self.results["errors"].append(f"{c.name} pgbench {w}: {res['stderr']}")
        self.record(c.name, f"{w}_tps", res["tps"])
        self.record(c.name, f"{w}_lat_ms", res["lat_ms"])
        if connect:
            self.record(c.name, f"{w}_conn_ms", res["conn_ms"])
        if c.relays() != ([], []):  # -C: one connection per transaction
            for side in "AB":
                self.record(c.name, f"{w}_cpu_ms_per_tx_{side}",
                            res[f"cpu_s_{side}"] / res["tx"] * 1e3)

    def run_pgbench(self) -> None:
        """pgbench through every path with one (b directly, ssh -L, open ssh -tt -L, NIPC's
        import), persistent connections then -C, each repetition in a rotated order."""
        names = [n for n, c in self.contenders.items() if c.pg is not None]
        for n in names:  # warm-up: caches filled, backends' catalogs read
            c = self.contenders[n]
            self.attempt(c, "pgbench warm-up", lambda c=c: self.pgbench(c, True, ["-t", "20"]))
        for rep in range(self.p["pg_reps"]):
            order = names[rep % len(names):] + names[:rep % len(names)]
            log(f"pgbench rep {rep + 1}/{self.p['pg_reps']} order {' '.join(order)} "
                f"(load {loadavg()})")
            for connect in (False, True):
                for name in order:
                    c = self.contenders[name]
                    self.attempt(c, "pgbench -S" + " -C" * connect,
                                 lambda c=c, k=connect: self.m_pgbench(c, k))

    def run_reps(self) -> None:
        names = list(self.contenders)
        for c in self.contenders.values():  # one warm-up connect each (NIPC: caches filled)
            self.attempt(c, "warmup", lambda c=c: self.client(c, "conn", 3))
        for rep in range(self.p["reps"]):
            order = names[rep % len(names):] + names[:rep % len(names)]
            log(f"rep {rep + 1}/{self.p['reps']} order {' '.join(order)} (load {loadavg()})")
            for metric in self.METRICS:
                for name in order:
                    c = self.contenders[name]
                    self.attempt(c, metric, lambda c=c, m=metric: getattr(self, f"m_{m}")(c))

    def run_cold(self) -> None:
        """NIPC's first connect after both daemons start (no tickets or creds cached), and a
        fresh ssh session (TCP + key exchange + auth + a command) from a to b."""
        if "nipc" in self.contenders:
            c = self.contenders["nipc"]
            vals = []
            for i in range(self.p["cold_n"]):
                for h in (self.a, self.b):
                    h.stop_daemon()
                self.b.start_daemon()
                self.a.start_daemon()
                try:
                    f, *_ = self.client(c, "conn", 1)
                    vals.append(float(f[2]))
                except BenchError as e:
                    self.results["errors"].append(f"nipc cold connect {i}: {e}")
            self.results["cold"]["nipc_cold_connect_us"] = vals
            self.samples["nipc (cold)"] = [v / 1e6 for v in vals]
            log(f"nipc cold connect p50 {statistics.median(vals) / 1e3:.1f} ms" if vals else
                "nipc cold connect: no samples")
        vals = []
        for _ in range(self.p["fresh_ssh_n"]):
            t0 = time.perf_counter()
            proc = self.a.run([*self.ssh_base, f"root@{self.b.address}", "true"], check=False)
            dt = time.perf_counter() - t0
            if proc.returncode == 0:
                vals.append(dt * 1e6)
        self.results["cold"]["fresh_ssh_session_us"] = vals
        self.samples["fresh ssh session"] = [v / 1e6 for v in vals]
        if vals:
            log(f"fresh ssh session p50 {statistics.median(vals) / 1e3:.1f} ms")

    def run_tls_baseline(self) -> None:
        """What a fresh TLS 1.3 handshake per connection allows: openssl s_time -new against
        openssl s_server (EC P-256), a -> b; CPU of both sides per handshake."""
        tls = BUILD / "tls"
        srv = self.spawn("s_server", self.b.exec_argv([
            "openssl", "s_server", "-quiet", "-accept", f"{self.b.address}:{TLS_PORT}",
            "-cert", str(tls / "cert.pem"), "-key", str(tls / "key.pem"), "-tls1_3"]))
        time.sleep(0.5)
        s0 = cpu_seconds([srv.pid])
        # s_time's CPU: ``ip netns exec`` execs into it, so it is our direct child, and the
        # only one reaped meanwhile: the RUSAGE_CHILDREN delta is its own.
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.run(self.a.exec_argv([
            "openssl", "s_time", "-connect", f"{self.b.address}:{TLS_PORT}", "-new",
            "-time", str(int(self.p["tls_secs"]))]), capture_output=True, text=True,
            timeout=self.p["tls_secs"] + 60)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        s1 = cpu_seconds([srv.pid])
        _terminate([srv.pid])
        out = proc.stdout + proc.stderr
        n = None
        for line in out.splitlines():
            parts = line.split()
            if "connections in" in line and parts and parts[0].isdigit():
                n = int(parts[0])
                break
        if not n:
            self.results["errors"].append(f"openssl s_time: no result: {out[-500:]}")
            return
        client = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / n * 1e3
        server = (s1 - s0) / n * 1e3
        cpus = os.cpu_count() or 1
        self.results["tls_baseline"] = {
            "handshakes": n, "wall_s": wall, "sequential_rate_per_s": n / wall,
            "client_cpu_ms_per_handshake": client, "server_cpu_ms_per_handshake": server,
            "cpu_cap_rate_per_s": cpus * 1e3 / (client + server),
            "s_time_output": [ln for ln in out.strip().splitlines() if "connections" in ln],
        }
        log(f"fresh TLS 1.3 handshake: {n / wall:.0f}/s sequential, "
            f"{client:.2f} + {server:.2f} ms CPU, cap {cpus * 1e3 / (client + server):.0f}/s")

    def run_hold(self, c: Contender, n: int) -> dict[str, Any]:
        """Open ``n`` idle routed connections at once; relays' RSS before, with, after."""
        ra, rb = c.relays()
        roots = ra + rb
        r0, p0 = rss_kb(roots)
        probe = None
        if c.probe:
            probe = subprocess.Popen(c.argv("probe", 3600, 1000), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
            probe.stdout.readline()  # "probing"
        t0 = time.monotonic()
        hold = subprocess.Popen(c.argv("hold", n, self.p["hold_batch"]), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        res: dict[str, Any] = {"n": n}
        lines: list[str] = []

        def reader() -> None:
            for line in hold.stdout:
                lines.append(line)

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and hold.poll() is None and not any(
                ln.startswith("held") for ln in lines):
            time.sleep(0.1)
        res["open_s"] = time.monotonic() - t0
        held = any(ln.startswith("held") for ln in lines)
        time.sleep(1.0)
        r1, p1 = rss_kb(roots)
        if probe is not None:
            probe.send_signal(signal.SIGINT)
            out, err = probe.communicate(timeout=30)
            f = out.split()
            if out.strip() and f[0] == "lat":
                res["probe_rtt_p50_us"], res["probe_rtt_p99_us"] = float(f[2]), float(f[3])
                res["probe_rtt_max_us"] = float(f[5])
            else:
                res["probe_error"] = err.strip()[-500:]
        for ln in lines:
            if ln.startswith("holdconn"):
                f = ln.split()
                res["hold_connect_p50_us"], res["hold_connect_p99_us"] = float(f[2]), float(f[3])
                res["hold_connect_max_us"] = float(f[5])
        if not held:
            hold.kill()
            err = hold.stderr.read() if hold.stderr else ""
            res["error"] = f"hold did not complete (rc {hold.poll()}): {err.strip()[-1000:]}"
            self.results["errors"].append(f"{c.name} hold {n}: {res['error']}")
        else:
            hold.stdin.close()
            hold.wait(timeout=120)
        time.sleep(3.0)
        r2, p2 = rss_kb(roots)
        res.update(rss_before_kb=r0, rss_held_kb=r1, rss_after_close_kb=r2,
                   pss_before_kb=p0, pss_held_kb=p1, pss_after_close_kb=p2,
                   rss_per_conn_kb=(r1 - r0) / n, pss_per_conn_kb=(p1 - p0) / n,
                   rss_retained_after_close_kb=r2 - r0, settle_s=3.0)
        log(f"{c.name} hold {n}: {res['rss_per_conn_kb']:.1f} KB/conn RSS, "
            f"retained {r2 - r0} KB after close, open {res['open_s']:.1f}s, "
            f"probe max {res.get('probe_rtt_max_us', float('nan')) / 1e3:.1f} ms")
        # still healthy afterwards?
        try:
            self.client(c, "conn", 5)
            res["healthy_after"] = True
        except BenchError as e:
            res["healthy_after"] = False
            self.results["errors"].append(f"{c.name} after hold: {e}")
        return res

    def run_holds(self) -> None:
        """Each repetition starts from fresh relays (daemons, ssh client): otherwise later ones
        start from memory that earlier measurements (or repetitions) already grew."""
        for rep in range(self.p["hold_reps"]):
            for c in self.contenders.values():
                if c.hold_n:
                    try:
                        if c.fresh is not None:
                            c.fresh()
                        res = self.run_hold(c, c.hold_n)
                    except (BenchError, SandboxError, subprocess.TimeoutExpired) as e:
                        res = {"error": str(e)}
                        self.results["errors"].append(f"{c.name} hold: {e}")
                    self.results["hold"].setdefault(c.name, []).append(res)

    def run_defaults(self) -> None:
        """NIPC with the shipped [limits] instead of lifted ones, briefly: the connection rate
        and pgbench -S -C / -S, with what the daemons refused. Do the defaults fit a busy
        host? (Last: it leaves the daemons on the shipped limits.)"""
        if "nipc" not in self.contenders:
            return
        c = self.contenders["nipc"]
        secs = self.p["defaults_secs"]
        shipped = self.results.get("nipc_limits_shipped") or {}
        limits = "".join(f"{k} = {v}\n" for k, v in shipped.items())
        for h in (self.a, self.b):  # written out: what etc/nipcd.toml ships is what runs
            h.stop_daemon()
            h.config_path.write_text(self.shipped_configs[h.name] + "\n[limits]\n" + limits)
        marks = {h.name: h.log_path.stat().st_size if h.log_path.exists() else 0
                 for h in (self.a, self.b)}
        res: dict[str, Any] = {"limits": shipped, "secs": secs}
        try:
            self.restart_daemons()
            for connect in (True, False):  # the real client first, with a full token bucket
                r = self.pgbench(c, connect, ["-T", str(int(secs))])
                res["pgC" if connect else "pgS"] = {k: r.get(k) for k in (
                    "tps", "lat_ms", "tx", "failed", "aborted", "rc", "stderr")}
            f, wall, ca, cb = self.client(c, "rate", secs, self.p["rate_procs"],
                                          timeout=secs + 120)
            res["rate_per_s"], res["rate_errors"] = float(f[4]), int(f[2])
        except (BenchError, SandboxError, subprocess.TimeoutExpired) as e:
            res["error"] = str(e)[-1000:]
            self.results["errors"].append(f"defaults run: {e}")
        res["refused"] = {h.name: self.refusals(h, marks[h.name]) for h in (self.a, self.b)}
        self.results["defaults"] = res
        log(f"shipped limits: rate {res.get('rate_per_s', 0):.0f}/s "
            f"({res.get('rate_errors')} failed), refused {res['refused']}")

    @staticmethod
    def refusals(h: Host, offset: int) -> dict[str, int]:
        """Audit records after byte ``offset`` of ``h``'s log that are not "routed", by
        errno and reason."""
        out: dict[str, int] = {}
        if not h.log_path.exists():
            return out
        with open(h.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        for line in text.split("\n"):
            try:
                ev = json.loads(line.strip("\x1e \r"))
            except ValueError:
                continue
            a = ev.get("nipc_audit") if isinstance(ev, dict) else None
            if isinstance(a, dict) and a.get("result") != "routed":
                key = f"{a.get('errno')}: {str(a.get('reason'))[:100]}"
                out[key] = out.get(key, 0) + 1
        return out

    # -- the whole run --

    def main(self) -> int:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["meta"] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "profile": "quick" if self.args.quick else "full",
            "params": self.p,
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "loadavg_start": Path("/proc/loadavg").read_text().strip(),
            "versions": versions(),
            "other_netns": sorted(ln.split()[0] for ln in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
                if ln.strip() and not ln.startswith(self.args.prefix)),
        }
        self.prepare_files()
        try:
            self.up()
            self.run_cold()
            self.run_tls_baseline()
            self.run_reps()
            self.run_pgbench()
            self.run_holds()
            self.run_defaults()
            self.results["nipc_log_findings"] = self.nipc_log_findings()
        finally:
            self.down()
        self.results["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
        self.results["meta"]["duration_s"] = time.monotonic() - started
        from report import write_report
        write_report(self.results, self.samples, self.contenders_meta(), self.out)
        log(f"report in {self.out} ({self.results['meta']['duration_s']:.0f}s)")
        return 0

    def contenders_meta(self) -> dict[str, str]:
        return {c.name: c.label for c in self.contenders.values()}

    def nipc_log_findings(self) -> dict[str, Any]:
        """What the NIPC daemons logged at warn level or above, failures, and audit records
        of connections that were not routed; the matching lines go to logs/ (capped)."""
        found: dict[str, Any] = {}
        for h in (self.a, self.b):
            counts: dict[str, int] = {}
            audit: dict[str, int] = {}
            kept: list[str] = []
            total = 0
            for path in (h.log_path, h.out_path):
                if not path.exists():
                    continue
                # twistd's JSON log is RFC 7464 JSON text sequences: \x1e before each record
                for line in path.read_text(errors="replace").split("\n"):
                    line = line.strip("\x1e \r")
                    if not line:
                        continue
                    total += 1
                    try:
                        ev = json.loads(line)
                    except ValueError:  # twistd's plain output (nipcd.out)
                        if any(k in line.lower() for k in ("traceback", "error", "exception")):
                            counts[line[:120]] = counts.get(line[:120], 0) + 1
                            kept.append(line)
                        continue
                    a = ev.get("nipc_audit")
                    if isinstance(a, dict):
                        result = str(a.get("result"))
                        if result != "routed":
                            result += f" {a.get('errno')}: {str(a.get('reason'))[:80]}"
                        audit[result] = audit.get(result, 0) + 1
                        if result != "routed":
                            kept.append(line)
                        continue
                    level = (ev.get("log_level") or {}).get("name", "")
                    if level in ("warn", "error", "critical") or "log_failure" in ev:
                        key = f"{level}: {ev.get('log_namespace')}: {str(ev.get('log_format'))[:100]}"
                        counts[key] = counts.get(key, 0) + 1
                        kept.append(line)
            if kept:
                dest = self.out / "logs" / f"nipcd-{h.name}-findings.jsonl"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text("\n".join(kept[:300] + (["...", *kept[-100:]] if len(kept) > 400
                                                          else kept[300:])) + "\n")
            found[h.name] = {"log_lines": total, "findings": sum(counts.values()),
                             "top": sorted(counts.items(), key=lambda kv: -kv[1])[:15],
                             "audit_results": audit}
        return found


def shipped_limits() -> dict[str, int]:
    """The [limits] keys and defaults etc/nipcd.toml ships (every key is set there)."""
    import tomllib
    return dict(tomllib.loads((ROOT / "etc" / "nipcd.toml").read_text()).get("limits", {}))


def versions() -> dict[str, str]:
    def first(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"

    import twisted
    return {"openssh": first(["ssh", "-V"]), "socat": first(["sh", "-c", "socat -V | sed -n 2p"]),
            "openssl": first(["openssl", "version"]),
            "python": sys.version.split()[0], "twisted": twisted.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer reps (~5 min)")
    ap.add_argument("--reps", type=int,
                    help="repetitions (default 5 full, 3 quick; pgbench 3 both)")
    ap.add_argument("--hold-reps", type=int,
                    help="repetitions of the 5,000-connection hold (default 3 full, 1 quick)")
    ap.add_argument("--only", help="comma-separated contenders: unix,tcp,ssh,ssh-tt,socat,nipc")
    ap.add_argument("--out", help="result directory (default bench/results/<date>)")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    ap.add_argument("--prefix", default=PREFIX,
                    help=f"sandbox prefix (default {PREFIX}): two runs side by side need two")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run: needs root", file=sys.stderr)
        return 1
    sys.path.insert(0, str(HERE))
    bench = Bench(args)

    def on_signal(sig: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    return bench.main()


if __name__ == "__main__":
    sys.exit(main())
