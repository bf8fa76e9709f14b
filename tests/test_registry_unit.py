"""The registry of routed connections (SPEC section 6), with real Unix sockets in this
process and no daemon: a connection is recognised by the kernel's word (our pid, the
abstract name ``nipc/<conn_id>``), never by a claim; delegation evidence is indexed by the
caller's uid and released with the connection; who may chain from whom."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.registry import (
    Registry, Routed, abstract_name, check_may_chain, held_by, new_connection_id, one_caller,
)

ALICE = LocalIdentity("alice", 1000, 1000, (1000,))
BOB = LocalIdentity("bob", 1001, 1001, (1001,))


def routed(who: LocalIdentity = ALICE, principal: str = "alice@T", delegation: object = None,
           conn_id: str | None = None) -> Routed:
    return Routed(conn_id or new_connection_id(), who, principal, ("a.test",), "a.test",
                  delegation=delegation)


@pytest.fixture
def pair(tmp_path: os.PathLike[str]) -> Iterator[tuple[socket.socket, socket.socket, str]]:
    """A server end (as a destination accepts it) of a connection made as the daemon makes
    one: the client end bound to the abstract name of a fresh connection id."""
    conn_id = new_connection_id()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(str(tmp_path), "s.sock"))
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.bind(abstract_name(conn_id))
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    with client, server:
        yield client, server, conn_id


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_connection_is_found_by_its_server_end(pair: tuple[socket.socket, socket.socket, str]
                                                 ) -> None:
    _, server, conn_id = pair
    registry = Registry()
    assert registry.for_fd(server.fileno()) is None  # ours, but not registered
    made = routed(conn_id=conn_id)
    registry.add(made)
    before = open_fds()
    assert registry.for_fd(server.fileno()) is made
    assert open_fds() == before  # the duplicate it looked through is closed
    registry.remove(conn_id)
    assert registry.for_fd(server.fileno()) is None and len(registry) == 0


def test_anything_else_is_not_a_connection_and_costs_no_descriptor(tmp_path: os.PathLike[str]
                                                                   ) -> None:
    """A pipe, a socket pair, a client bound to a look-alike name elsewhere: none is ours."""
    registry = Registry()
    read, write = os.pipe()
    one, two = socket.socketpair()
    try:
        before = open_fds()
        assert registry.for_fd(read) is None
        assert registry.for_fd(one.fileno()) is None
        assert registry.for_fd(9999) is None  # not open at all
        assert open_fds() == before
    finally:
        for fd in (read, write):
            os.close(fd)
        one.close()
        two.close()


def test_delegations_are_indexed_by_the_callers_uid_and_released_with_the_connection() -> None:
    registry = Registry()
    evidence = object()
    alice = routed(ALICE, delegation=evidence)
    bob = routed(BOB, "bob@T", delegation=object())
    plain = routed(ALICE)  # no delegation: never a chaining candidate
    for made in (alice, bob, plain):
        registry.add(made)
    assert registry.delegations_for(ALICE.uid) == {alice.conn_id: alice}
    assert registry.delegations_for(4242) == {}
    service = frozenset({4242})
    assert registry.delegations_for(4242, service) == {alice.conn_id: alice, bob.conn_id: bob}
    registry.remove(alice.conn_id)
    assert alice.delegation is None  # the evidence ticket goes with the connection
    assert registry.delegations_for(ALICE.uid) == {}
    registry.remove(alice.conn_id)  # twice is harmless
    assert len(registry) == 2


def test_only_the_same_user_or_a_service_account_may_chain() -> None:
    made = routed(ALICE)
    check_may_chain(ALICE.uid, made, frozenset())
    check_may_chain(4242, made, frozenset({4242}))
    with pytest.raises(NipcError) as e:
        check_may_chain(BOB.uid, made, frozenset({4242}))
    assert e.value.errno_name == "EPERM" and "alice@T" in e.value.message


def test_an_implicit_chain_never_guesses_between_callers() -> None:
    first, again = routed(), routed()
    assert one_caller([]) is None
    assert one_caller([first, again]) is first  # one caller, two connections
    with pytest.raises(NipcError) as e:
        one_caller([first, routed(BOB, "bob@T")])
    assert e.value.errno_name == "EINVAL"


def test_the_connections_a_process_holds_are_found_through_its_descriptors(
        pair: tuple[socket.socket, socket.socket, str]) -> None:
    """This process holds the server end: held_by finds it among the candidates (through
    pidfd_getfd, as the daemon looks into a caller), and nothing for a process that is
    gone or for no candidates."""
    _, _, conn_id = pair
    made = routed(conn_id=conn_id, delegation=object())
    other = routed(delegation=object())
    candidates = {made.conn_id: made, other.conn_id: other}
    before = open_fds()
    assert held_by(os.getpid(), candidates) == [made]
    assert open_fds() == before
    assert held_by(os.getpid(), {}) == []
    assert held_by(2**22 + 12345, candidates) == []  # no such process
