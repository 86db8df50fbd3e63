"""Percentile threshold calibration: plain data out (layer name -> activation scale lambda)."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from tqdm.auto import tqdm

from ..ir import Network
from ..sim.ann import activation, ann_forward
from ..sim.kernels import NetworkKernels
from ..thresholds import positive_percentile


def calibrate(network: Network, images: torch.Tensor, percentile: float = 99.9, channelwise: bool = False,
              batch_size: int = 100, progress: bool = False) -> Dict[str, np.ndarray]:
    """Activation scale of every spiking layer of a real-unit network (thresholds 1).

    ``lambda`` is the ``percentile``-th percentile of the layer's positive ANN activations over
    ``images`` (raw pixels, (N, C, H, W)), over the whole layer (scalar) or per channel
    (``channelwise``; shape (C,)). Zero activations are left out, as in snntoolbox; a layer (or
    channel) with no positive activation gets 1.0.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    kernels = NetworkKernels(network, torch.float64, images.device)
    collected: Dict[str, list] = {layer.name: [] for layer in network.spiking_layers}
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc="calibrate", disable=not progress, leave=False):
        _, pre = ann_forward(network, images[start:start + batch_size], kernels)
        for name, z in pre.items():
            act = activation(z, network[name]).to(torch.float32)
            # channels first, everything else flattened: (C, batch * H * W)
            collected[name].append(act.transpose(0, 1).reshape(act.shape[1], -1).cpu().numpy())
    scales = {}
    for name, chunks in collected.items():
        act = np.concatenate(chunks, axis=1)
        scales[name] = (np.array([positive_percentile(row, percentile) for row in act]) if channelwise
                        else np.array(positive_percentile(act.ravel(), percentile)))
        clip = network[name].ann_clip
        if clip is not None:  # a clipped activation's neuron saturates at or below its clip
            scales[name] = np.minimum(scales[name], clip)
    return scales
