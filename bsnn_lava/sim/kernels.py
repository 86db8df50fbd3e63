"""Torch tensors for a network's synapses and per-layer parameters (shared by every simulator)."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import Conv2d, Network


class SynapseKernel:
    """One synapse as a torch op on a batch of source outputs ``(batch, *source_shape)``."""

    def __init__(self, op, dtype: torch.dtype, device):
        weight = op.weight * (2.0 ** op.weight_exp)
        self.weight = torch.tensor(weight, dtype=dtype, device=device)
        self.is_conv = isinstance(op, Conv2d)
        self.stride = getattr(op, "stride", None)
        self.padding = getattr(op, "padding", None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            return F.conv2d(x, self.weight, None, self.stride, self.padding)
        return x.reshape(x.shape[0], -1) @ self.weight.T


def layer_param(values: np.ndarray, shape: Tuple[int, ...], dtype, device) -> torch.Tensor:
    """A scalar, per-channel or per-neuron parameter shaped to broadcast against ``(batch, *shape)``."""
    t = torch.tensor(np.asarray(values), dtype=dtype, device=device)
    if t.ndim == 1 and len(shape) == 3:
        t = t.reshape(-1, 1, 1)
    return t


class NetworkKernels:
    """Synapse kernels and broadcast parameters of every layer, in one dtype on one device."""

    def __init__(self, network: Network, dtype: torch.dtype, device):
        self.network = network
        self.dtype = dtype
        self.device = device
        self.synapses: Dict[str, List[Tuple[str, SynapseKernel]]] = {
            layer.name: [(s.source, SynapseKernel(s.op, dtype, device)) for s in layer.synapses]
            for layer in network.layers}
        self.params: Dict[str, Dict[str, torch.Tensor]] = {}
        for layer in network.layers[1:]:
            names = ("threshold", "bias", "v_init") if layer.kind == "gated_if" else ("bias",)
            self.params[layer.name] = {n: layer_param(getattr(layer, n), layer.shape, dtype, device) for n in names}

    def synaptic_input(self, name: str, outputs: Dict[str, torch.Tensor]):
        """Sum of this layer's synapses applied to the given source outputs (``None`` when all sources
        are silent, i.e. missing from ``outputs`` or ``None``)."""
        total = None
        for source, kernel in self.synapses[name]:
            x = outputs.get(source)
            if x is None:
                continue
            y = kernel(x)
            total = y if total is None else total + y
        return total
