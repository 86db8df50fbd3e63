"""Network IR <-> lava-dl netx HDF5.

- :func:`write` (``mode="bsnn"``): every IR detail in a strict superset of netx's layout (residual
  inputs, custom neuron types, schedules, provenance, format version, content digest); atomic.
- :func:`write` (``mode="netx"``): only what stock lava-dl netx loads (sequential IF networks as CUBA).
- :func:`read`: the exact inverse of the bsnn mode, validating every field; errors are
  :class:`NetxFormatError` with one line naming the file, the layer and the field.

The layout is documented field by field in ``docs/format.md``.
"""
from .errors import NetxExportError, NetxFormatError, UnknownTypeError
from .reader import read
from .schema import FORMAT_VERSION, LAYER_CODECS, SYNAPSE_CODECS
from .writer import WRITE_MODES, write

__all__ = ["write", "read", "NetxFormatError", "NetxExportError", "UnknownTypeError", "FORMAT_VERSION",
           "LAYER_CODECS", "SYNAPSE_CODECS", "WRITE_MODES"]
