"""Network IR: the one representation every stage produces or consumes."""
from .network import Network, validate_layers
from .nodes import (LAYER_TYPES, PIXEL_MAX, SYNAPSE_TYPES, Conv2d, Dense, GatedIF, Input, IRError, MaxPool, Readout,
                    Schedule, Synapse, replace)

__all__ = ["Network", "validate_layers", "LAYER_TYPES", "PIXEL_MAX", "SYNAPSE_TYPES", "Conv2d", "Dense", "GatedIF",
           "Input", "IRError", "MaxPool", "Readout", "Schedule", "Synapse", "replace"]
