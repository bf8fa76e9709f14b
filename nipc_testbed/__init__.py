"""The throwaway domain NIPC is tested and shown on: the sandbox (Samba AD and MIT KDCs, hosts
as namespaces), its LDAP realm, the machine prerequisites it checks, and ``nipc demo``.

It lives beside ``nipc`` in the checkout, not inside it: its accounts have fixed passwords
and it builds namespaces as root, so it must never be installed with the daemon.  The wheel
carries ``nipc`` and ``twisted.plugins`` only (setup.cfg); the sdist carries this package for
the tests, and a checkout's editable install (scripts/bootstrap) finds it from anywhere.
"""
