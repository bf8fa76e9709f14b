"""NIPC: networked IPC. Reach a Unix-domain socket on another host as yourself.

``nipc.connect("/run/dns/dns.sock@machine-b.lan.local")`` returns a connected socket; the
server on the other host sees your projected identity in ``SO_PEERCRED``.
"""

from nipc.client import connect, peer_identity

#: The one place the version is written: setup.cfg reads it, ``nipc --version`` and the
#: daemon's ``nipc status`` answer show it.
__version__ = "0.1.0"

__all__ = ["__version__", "connect", "peer_identity"]
