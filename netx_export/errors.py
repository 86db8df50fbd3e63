"""Errors of the netx exporter and reader; every message is one line."""
from __future__ import annotations

from typing import Iterable


class NetxFormatError(ValueError):
    """A file is not a valid bsnn-netx file; the message names the file, the layer and the field."""


class NetxExportError(ValueError):
    """A network cannot be written in the requested mode; the message names the layer and field."""


class UnknownTypeError(ValueError):
    """A layer, synapse or neuron type has no entry in the codec registry."""

    def __init__(self, what: str, name: object, known: Iterable[str]):
        super().__init__(f"unknown {what} {name!r} (known: {', '.join(sorted(known))})")


def one_line(text: object) -> str:
    """``str(text)`` with every line break folded into ``; `` (messages must stay on one line)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
