"""Lava Processes and CPU process models of a bistable spiking network.

This package holds only ``process.py`` (interfaces) and ``models.py`` (behaviour), because Lava's
compiler imports every module in a Process's folder to find its models. Importing it applies the
Python 3.11 fixes of :mod:`bsnn_lava.lava.compat` first; nothing here imports torch.
"""
from bsnn_lava.lava.compat import ensure_lava_importable

ensure_lava_importable()

from bsnn_lava.lava.procs.process import (MAX_INPUTS, EventCount, GatedIF, PixelInput, Readout,  # noqa: E402
                                          conv_synapse, dense_synapse, pooled_fan_out, pooled_synapse)

__all__ = ["GatedIF", "Readout", "PixelInput", "EventCount", "conv_synapse", "dense_synapse", "pooled_fan_out",
           "pooled_synapse", "MAX_INPUTS"]
