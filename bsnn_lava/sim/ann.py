"""The ANN that a network converts: each spiking layer as a ReLU, each rate in spikes per step.

For a layer with threshold theta and synaptic pre-activation ``z = sum(W r_source) + bias`` the
ANN rate is ``relu(z) / theta`` (the firing rate the SNN approximates, unclipped); the input's rate is
the raw pixel value; the readout's logits are ``z``. For a network fresh from ``lower`` (all
thresholds 1) this is exactly the source model applied to normalised images.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..ir import Network
from .kernels import NetworkKernels


@torch.no_grad()
def ann_forward(network: Network, images: torch.Tensor, kernels: Optional[NetworkKernels] = None,
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Return ``(logits, pre_activations)`` for a batch of raw images ``(batch, C, H, W)``.

    ``pre_activations`` maps every spiking layer's name to its ``z`` (batch, *shape).
    """
    kernels = kernels or NetworkKernels(network, torch.float64, images.device)
    rates = {network.input.name: images.to(kernels.dtype)}
    pre_activations: Dict[str, torch.Tensor] = {}
    batch = images.shape[0]
    logits = None
    for layer in network.layers[1:]:
        params = kernels.params[layer.name]
        z = kernels.synaptic_input(layer.name, rates, integer_input=False) + params["bias"]
        z = z.expand(batch, *layer.shape)
        if layer.kind == "readout":
            logits = z
        else:
            pre_activations[layer.name] = z
            rates[layer.name] = torch.relu(z) / params["threshold"]
    return logits, pre_activations
