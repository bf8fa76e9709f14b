"""Twisted plugins: ``twistd nipc`` (the daemon)."""

from nipc.tap import serviceMaker

__all__ = ["serviceMaker"]
