"""The peer link's boundary on live daemons (issue 14 items 1, 2, 3, 6, 9).

Real daemons on the sandbox's hosts a and b, real TLS on b's peer port, attackers in other
hosts' network namespaces (``link_flood_tool.py``). Links that close must really close:
the daemons' sockets are counted with ``ss`` inside their namespaces. Floods measure a
legitimate caller's latency (alice, a -> b) and b's descriptors and memory while they run.

Test configuration (written into a's and b's nipcd.toml, restored afterwards): the one of
test_hostile (timeouts 3 s, ``max_pending_peers`` 16) and ``link_idle`` = LINK_IDLE.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from nipc.peer import CLOSE_GRACE
from nipc.sandbox import Host
from support import UnixServer
from test_hostile import HANDSHAKE_TIMEOUT, Lan, hostile_config, legit_connect

pytestmark = pytest.mark.integration

LINK_IDLE = 2


def link_config(text: str) -> str:
    return hostile_config(text).replace("[timeouts]\n", f"[timeouts]\nlink_idle = {LINK_IDLE}\n")


@pytest.fixture(scope="module")
def lan(samba_hosts: dict[str, Host], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    originals = {n: samba_hosts[n].config_path.read_text() for n in ("a", "b")}
    for name in ("a", "b"):
        samba_hosts[name].config_path.write_text(link_config(originals[name]))
        samba_hosts[name].start_daemon()
    server = UnixServer(str(samba_hosts["b"].run_dir / "links.sock"))
    lan = Lan(samba_hosts, originals, server, tmp_path_factory.mktemp("links") / "tokens.hex")
    try:
        yield lan
    finally:
        server.close()
        for name in ("a", "b"):
            samba_hosts[name].stop_daemon()
            samba_hosts[name].config_path.write_text(originals[name])


def daemon_sockets(host: Host, port: int) -> int:
    """TCP sockets of ``host``'s daemon to or from ``port`` (not the listening one), as
    ``ss`` sees them inside the host's namespace."""
    pid = host.daemon_pid()
    assert pid
    out = host.run(["ss", "-Htanp", f"( sport = :{port} or dport = :{port} )"]).stdout
    return sum(1 for line in out.splitlines()
               if f"pid={pid}," in line and not line.startswith("LISTEN"))


def wait_for_sockets(lan: Lan, want: int, within: float) -> dict[str, int]:
    """Poll until a's and b's daemons each hold ``want`` link sockets, or ``within`` passed;
    the last counts."""
    deadline = time.monotonic() + within
    while True:
        counts = {h.name: daemon_sockets(h, lan.b.port) for h in (lan.a, lan.b)}
        if all(n == want for n in counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


# -- item 2: links that really close -------------------------------------------------------


def test_an_idle_link_really_closes(lan: Lan) -> None:
    """After link_idle without a connection, a closes its link to b: the TLS close is
    answered and both daemons' sockets are gone (before the fix both stayed ESTABLISHED)."""
    assert wait_for_sockets(lan, 0, 15) == {"a": 0, "b": 0}
    for _ in range(3):
        legit_connect(lan)
    assert wait_for_sockets(lan, 1, 0) == {"a": 1, "b": 1}, "one link, reused"
    counts = wait_for_sockets(lan, 0, LINK_IDLE + 5)
    assert counts == {"a": 0, "b": 0}, counts


def test_a_retired_link_to_a_hung_peer_is_aborted_after_the_grace(lan: Lan) -> None:
    """b stopped (SIGSTOP): alice's connect times out, which retires a's link; its TLS close
    is never answered, so a aborts it after CLOSE_GRACE. Once b runs again it drops its end."""
    assert wait_for_sockets(lan, 0, 15) == {"a": 0, "b": 0}
    legit_connect(lan)
    time.sleep(0.5)  # the connection's channel ends (b's server answers alice's close)
    pid = lan.b.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(OSError):
            legit_connect(lan)
        start = time.monotonic()
        bound = CLOSE_GRACE + LINK_IDLE + 5
        while daemon_sockets(lan.a, lan.b.port) and time.monotonic() - start < bound:
            time.sleep(0.2)
        took = time.monotonic() - start
        assert daemon_sockets(lan.a, lan.b.port) == 0, f"a kept its retired link for {took:.1f}s"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_for_sockets(lan, 0, 10) == {"a": 0, "b": 0}
    legit_connect(lan)
