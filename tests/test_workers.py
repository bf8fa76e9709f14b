"""Warm worker threads (nipc.workers) on real threads with real identity switches: a job
of one identity never runs on another's thread, a thread whose credentials changed is
never used again, idle threads end, the caps hold."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from nipc.errors import NipcError
from nipc.identity import LocalIdentity
from nipc.impersonate import become, run_as
from nipc.workers import WarmThreads
from acting import signallable
from tests.conftest import require_root

X = LocalIdentity("x", 61001, 61001, (61001, 61003))
Y = LocalIdentity("y", 61002, 61002, (61002,))


class _ThreadReactor:
    """Just enough reactor: results are delivered on the worker thread itself."""

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


def _where() -> tuple[int, tuple[int, int, int], tuple[int, int, int], tuple[int, ...]]:
    """The thread a job ran on and its credentials."""
    return (threading.get_native_id(), os.getresuid(), os.getresgid(),
            tuple(sorted(os.getgroups())))


def run(pool: WarmThreads, identity: LocalIdentity | None, job: Callable[[], Any]) -> Any:
    """``job``'s result (or its failure) through ``pool``, waited for."""
    out: list[Any] = []
    done = threading.Event()
    pool.run(_ThreadReactor(), identity, job).addBoth(  # type: ignore[arg-type]
        lambda r: (out.append(r), done.set()))
    assert done.wait(10)
    return out[0]


def wait_for(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_job_runs_only_on_a_thread_of_its_own_identity() -> None:
    """X's thread is reused for X (warm), never for Y or for the daemon's own jobs; every
    job sees exactly its identity: its groups and effective ids, the daemon's real and
    saved ids (see test_a_caller_cannot_signal_the_daemon_through_a_thread_acting_as_them)."""
    require_root()
    pool = WarmThreads(idle=5)
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    x1, x2 = run(pool, X, _where), run(pool, X, _where)
    y1, d1 = run(pool, Y, _where), run(pool, None, _where)
    assert x1 == x2, "X's second job did not reuse X's warm thread"
    assert x1[1:] == ((0, 61001, 0), (0, 61001, 0), (61001, 61003))
    assert y1[1:] == ((0, 61002, 0), (0, 61002, 0), (61002,))
    assert d1[1:] == before[:2] + (tuple(sorted(before[2])),)
    assert len({x1[0], y1[0], d1[0]}) == 3
    assert pool.alive() == 3
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == before


def test_a_thread_whose_credentials_changed_is_never_used_again() -> None:
    """A job that changes its thread's credentials ends that thread: the next job runs on
    another thread with the right credentials."""
    require_root()
    pool = WarmThreads(idle=5)
    first = run(pool, None, _where)

    def switch() -> int:
        become(Y)  # as a stray job might
        return threading.get_native_id()

    assert run(pool, None, switch) == first[0]
    assert wait_for(lambda: pool.alive() == 0), "the changed thread is still a worker"
    second = run(pool, None, _where)
    assert second[0] != first[0] and second[1:] == first[1:]


def test_a_worker_whose_job_went_back_to_the_daemon_is_never_used_again() -> None:
    """A job on X's worker that switches the thread back to the daemon's effective ids (it
    can: the real and saved ids stay the daemon's) ends that worker; X's next job runs on
    a new worker, as X."""
    require_root()
    pool = WarmThreads(idle=5)
    first = run(pool, X, _where)
    assert run(pool, X, _back_to_root) == first[0]
    assert wait_for(lambda: pool.alive() == 0), "the changed thread is still a worker"
    second = run(pool, X, _where)
    assert second[0] != first[0] and second[1:] == first[1:]


def _back_to_root() -> int:
    """This thread's effective ids back to root's (raw syscalls: this thread only)."""
    from nipc import impersonate

    impersonate._syscall("setresuid", -1, 0, -1)
    impersonate._syscall("setresgid", -1, 0, -1)
    return threading.get_native_id()


def test_a_caller_cannot_signal_the_daemon_through_a_thread_acting_as_them() -> None:
    """kill(2) lets a process signal a thread whose real or saved uid is its own, and
    SIGKILL or SIGSTOP to one thread acts on the whole daemon: a thread acting as X (a warm
    worker, or a fresh thread) must keep the daemon's real and saved ids, so a process of
    X's uid can signal none of them."""
    require_root()
    pool = WarmThreads(idle=5)
    release = threading.Event()
    tids: list[int] = []

    def held() -> None:
        tids.append(threading.get_native_id())
        release.wait(20)

    warm = pool.run(_ThreadReactor(), X, held)  # type: ignore[arg-type]
    fresh = run_as(_ThreadReactor(), Y, held)  # type: ignore[arg-type]
    try:
        assert wait_for(lambda: len(tids) == 2)
        assert signallable(os.getpid(), X.uid, X.gid, tids) == []
        assert signallable(os.getpid(), Y.uid, Y.gid, tids) == []
    finally:
        release.set()
    assert wait_for(lambda: warm.called and fresh.called)


def test_idle_threads_end() -> None:
    """A worker left without a job for ``idle`` seconds ends: its thread is gone from the
    process, and the next job starts a new one."""
    require_root()
    pool = WarmThreads(idle=0.3)
    tid = run(pool, X, _where)[0]
    assert wait_for(lambda: not Path(f"/proc/self/task/{tid}").exists())
    assert pool.alive() == 0
    assert run(pool, X, _where)[0] != tid


def test_the_caps_hold() -> None:
    """With 2 per identity and 3 in all, five jobs of X held at once make 2 warm workers
    (the rest run on fresh threads that switch only their effective ids), and Y then gets
    only 1; every job still runs as its identity."""
    require_root()
    pool = WarmThreads(idle=5, per_identity=2, total=3)
    release = threading.Event()
    seen: list[Any] = []
    lock = threading.Lock()

    def held() -> None:
        with lock:
            seen.append(_where())
        release.wait(10)

    outcomes: list[Any] = []
    for identity in (X,) * 5 + (Y,) * 2:
        pool.run(_ThreadReactor(), identity, held).addBoth(outcomes.append)  # type: ignore[arg-type]
    assert wait_for(lambda: len(seen) == 7)
    assert pool.alive() == 3
    assert all(s[1] == (0, 61001 if s[3] == (61001, 61003) else 61002, 0) for s in seen)
    release.set()
    assert wait_for(lambda: len(outcomes) == 7)
    assert not any(isinstance(o, Exception) or hasattr(o, "value") for o in outcomes), outcomes
    # The fresh threads have ended; the warm workers wait: two of X and one of Y.
    assert wait_for(lambda: sum(Path(f"/proc/self/task/{s[0]}").exists() for s in seen) == 3)
    warm = [s[1][1] for s in seen if Path(f"/proc/self/task/{s[0]}").exists()]
    assert sorted(warm) == [61001, 61001, 61002]


def test_a_failed_switch_refuses_the_job_and_keeps_no_worker() -> None:
    """An identity the kernel will not take (uid_t -1: "unchanged") refuses the job EPERM
    before it runs, and leaves no worker behind."""
    require_root()
    pool = WarmThreads(idle=5)
    ran: list[int] = []
    failure = run(pool, LocalIdentity("ghost", 2**32 - 1, 1000, (1000,)),
                  lambda: ran.append(1))
    assert not ran
    assert isinstance(failure.value, NipcError) and failure.value.errno_name == "EPERM"
    assert wait_for(lambda: pool.alive() == 0)


def test_a_switch_that_leaves_other_groups_refuses_the_job(monkeypatch: Any) -> None:
    """setgroups silently skipped (effective ids switched, root's groups kept): the worker's
    own check sees groups that are not exactly X's, refuses EPERM before the job runs, and
    ends."""
    require_root()
    import nipc.impersonate as imp

    real = imp._syscall
    monkeypatch.setattr(imp, "_syscall",
                        lambda name, *args: None if name == "setgroups" else real(name, *args))
    pool = WarmThreads(idle=5)
    ran: list[int] = []
    failure = run(pool, X, lambda: ran.append(1))
    assert not ran
    assert isinstance(failure.value, NipcError) and failure.value.errno_name == "EPERM"
    assert "exactly its credentials" in failure.value.message
    assert wait_for(lambda: pool.alive() == 0)
