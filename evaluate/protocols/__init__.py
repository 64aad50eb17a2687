"""Probe protocols. Each module of this package registers one protocol by name; see `base.py` for
the interface, so adding a protocol means adding one file here."""

from genrep.evaluate.protocols.base import PROTOCOLS, Protocol

__all__ = ["PROTOCOLS", "Protocol"]
