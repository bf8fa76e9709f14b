"""NIPC: networked IPC. Reach a Unix-domain socket on another host as yourself.

``nipc.connect("/run/dns/dns.sock@machine-b.lan.local")`` returns a connected socket; the
server on the other host sees your projected identity in ``SO_PEERCRED``.
"""

from nipc.client import connect, peer_identity

__all__ = ["connect", "peer_identity"]
