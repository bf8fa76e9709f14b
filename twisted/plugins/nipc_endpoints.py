"""The ``nipc:`` endpoint string, so any Twisted program can reach a socket on another host.

    nipc:/run/app/app.sock@b.example.com
    nipc:target=/run/app/app.sock@b.example.com:daemon=/run/nipc/nipc.sock:timeout=30

Endpoint strings split on ``:`` and treat ``=`` as a keyword marker, so a ``:``, ``=`` or
``\\`` inside the socket path is written ``\\:``, ``\\=``, ``\\\\``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer

from nipc.endpoint import NIPCClientEndpoint


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class NIPCClientParser:
    """Parses ``nipc:`` strings into :class:`nipc.endpoint.NIPCClientEndpoint`."""

    prefix = "nipc"

    def parseStreamClient(self, reactor: Any, *args: object,
                          **kwargs: object) -> NIPCClientEndpoint:
        unknown = set(kwargs) - {"target", "daemon", "timeout"}
        if unknown:
            raise ValueError(f"nipc: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             "expected target, daemon, timeout")
        targets = [str(a) for a in (*args, *([kwargs["target"]] if "target" in kwargs else []))]
        if len(targets) != 1:
            raise ValueError(
                "nipc: expected exactly one '/path@host' target"
                + (" (write ':' inside the path as '\\:')" if len(targets) > 1 else "")
            )
        timeout: dict[str, float] = {}
        if "timeout" in kwargs:
            try:
                timeout["timeout"] = float(str(kwargs["timeout"]))
            except ValueError:
                raise ValueError(f"nipc: timeout must be seconds, got {kwargs['timeout']!r}") from None
        daemon = str(kwargs["daemon"]) if "daemon" in kwargs else None
        return NIPCClientEndpoint(reactor, targets[0], daemon, **timeout)


nipcClientParser = NIPCClientParser()

__all__ = ["nipcClientParser"]
