"""nipc/compat.py: the private Twisted names nipc relies on exist in the installed Twisted,
are all declared there, and are used nowhere else."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import twisted

from nipc import compat

ROOT = Path(__file__).resolve().parents[1]


def _twisted_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def _has(cls: type, name: str) -> bool:
    """A class attribute, or an instance attribute its (Twisted) source assigns."""
    if hasattr(cls, name):
        return True
    sources = [inspect.getsource(c) for c in cls.__mro__ if c.__module__.startswith("twisted.")]
    return any(f"self.{name} =" in source for source in sources)


def lost(private: dict[str, tuple[str, ...]],
         signatures: dict[tuple[str, str], list[str]]) -> list[str]:
    """What the installed Twisted lacks of ``private`` and ``signatures``, by full name."""
    missing = []
    for dotted, names in private.items():
        try:
            cls = _twisted_class(dotted)
        except (ImportError, AttributeError):
            missing.append(dotted)
            continue
        missing += [f"{dotted}.{name}" for name in names if not _has(cls, name)]
    for (dotted, name), params in signatures.items():
        method = getattr(_twisted_class(dotted), name, None)
        if method is None:
            missing.append(f"{dotted}.{name}")
            continue
        found = list(inspect.signature(getattr(method, "__func__", method)).parameters)
        if found != params:
            missing.append(f"{dotted}.{name}{inspect.signature(method)} (nipc expects {params})")
    return missing


def test_private_twisted_names_nipc_relies_on_exist() -> None:
    gone = lost(compat.PRIVATE_NAMES, compat.SIGNATURES)
    assert not gone, (f"Twisted {twisted.__version__} lacks private names nipc/compat.py "
                      f"overrides or reads (checked with {compat.CHECKED_WITH}): "
                      f"{', '.join(gone)}")


def test_a_lost_name_is_named() -> None:
    """The check above is not vacuous: a name Twisted lacks is reported by its full name."""
    tls = "twisted.protocols.tls.TLSMemoryBIOProtocol"
    assert lost({tls: ("_write", "_noSuchName")}, {(tls, "_gone"): ["self"]}) == [
        f"{tls}._noSuchName", f"{tls}._gone"]
    assert lost({"twisted.internet.tcp.NoSuchPort": ()}, {}) == ["twisted.internet.tcp.NoSuchPort"]


def test_every_override_in_compat_is_declared() -> None:
    """A private method or attribute a compat class redefines is in PRIVATE_NAMES, so a
    Twisted that drops it is noticed (its override would otherwise just go unused)."""
    declared = {(dotted, name) for dotted, names in compat.PRIVATE_NAMES.items() for name in names}
    undeclared = []
    for ours in vars(compat).values():
        if not (isinstance(ours, type) and ours.__module__ == compat.__name__):
            continue
        for name in vars(ours):
            if not name.startswith("_") or name.startswith("__"):
                continue
            for base in ours.__mro__[1:]:
                dotted = f"{base.__module__}.{base.__qualname__}"
                if base.__module__.startswith("twisted.") and name in vars(base):
                    if (dotted, name) not in declared:
                        undeclared.append(f"{ours.__name__}.{name} overrides {dotted}.{name}")
                    break
    assert not undeclared, undeclared


def _private_uses(tree: ast.AST, names: set[str]) -> list[str]:
    """Private Twisted names ``tree`` imports, reads off another object, or asks getattr for."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
            uses += [alias.name for alias in node.names if alias.name.startswith("_")]
        elif (isinstance(node, ast.Attribute) and node.attr in names
              and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            uses.append(node.attr)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value in names):
            uses.append(node.value)
    return uses


def test_no_other_module_uses_a_private_twisted_name() -> None:
    names = {name for names in compat.PRIVATE_NAMES.values() for name in names
             if name.startswith("_")} | {dotted.rpartition(".")[2] for dotted in compat.PRIVATE_NAMES
                                         if dotted.rpartition(".")[2].startswith("_")}
    found = {}
    for path in sorted((ROOT / "nipc").rglob("*.py")):
        if path.name == "compat.py":
            continue
        uses = _private_uses(ast.parse(path.read_text()), names)
        if uses:
            found[str(path.relative_to(ROOT))] = uses
    assert not found, f"private Twisted names outside nipc/compat.py: {found}"


def test_lean_poll_dispatches_and_logs_what_a_handler_raises() -> None:
    """The lean epoll loop, on a real reactor and real sockets: each ready descriptor's
    handler runs; one that raises even from its error handling is logged (as Twisted's
    per-event wrapper would have) and the others still run."""
    import socket

    from twisted.internet.epollreactor import EPollReactor
    from twisted.logger import globalLogPublisher

    reactor = EPollReactor()  # type: ignore[no-untyped-call]
    compat.lean_poll(reactor)
    seen: list[str] = []

    class Reader:
        def __init__(self, sock: socket.socket, name: str) -> None:
            self.sock, self.name = sock, name

        def fileno(self) -> int:
            return self.sock.fileno()

        def logPrefix(self) -> str:
            return self.name

        def doRead(self) -> None:
            seen.append(self.name)
            if self.name == "bad":
                raise RuntimeError("read fails")

        def connectionLost(self, reason: object) -> None:
            raise RuntimeError("and so does its loss")

    pairs = [socket.socketpair() for _ in range(2)]
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for (ours, theirs), name in zip(pairs, ("bad", "good")):
            reactor.addReader(Reader(ours, name))  # type: ignore[arg-type]
            theirs.send(b"x")
        reactor.doIteration(0)  # type: ignore[attr-defined]
    finally:
        globalLogPublisher.removeObserver(events.append)
        for pair in pairs:
            for sock in pair:
                sock.close()
    assert sorted(seen) == ["bad", "good"]
    assert any(e.get("log_failure") is not None and "unhandled error" in str(e.get("log_format"))
               for e in events), events
