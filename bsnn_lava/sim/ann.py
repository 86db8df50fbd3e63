"""The ANNs a network computes: the rate ANN it approximates, and the frame it computes exactly.

:func:`ann_forward`: each spiking layer as a ReLU, each rate in spikes per step.

For a layer with threshold theta and synaptic pre-activation ``z = sum(W r_source) + bias`` the
ANN rate is ``relu(z) / theta`` (the firing rate the SNN approximates, not clipped at the threshold;
``min(relu(z), ann_clip) / theta`` for a clipped activation such as ReLU6); the input's rate is
the raw pixel value; the readout's logits are ``z``. For a network fresh from ``lower`` (all
thresholds 1) this is exactly the source model applied to normalised images.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..dynamics import state_limits, window_spike_count
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
            rates[layer.name] = activation(z, layer) / params["threshold"]
    return logits, pre_activations


def activation(z: torch.Tensor, layer) -> torch.Tensor:
    """The ANN activation a spiking layer stands for: ``relu(z)``, clipped at ``layer.ann_clip``
    where it has one (ReLU6 and other clipped ReLUs), in the layer's units."""
    clip = getattr(layer, "ann_clip", None)
    return torch.relu(z) if clip is None else z.clamp(0.0, clip)


@torch.no_grad()
def frame_forward(network: Network, images: torch.Tensor, kernels: Optional[NetworkKernels] = None,
                  ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One frame of a bistable network computed layer by layer, without time: the quantized ANN
    that the network equals after its first complete frame (and after every frame with frame reset).

    For every spiking layer ``V = v_init + P bias + sum_s W_s c_s`` (the input's ``c`` is P times
    its pixels) and ``c = clip(floor(V / theta), 0, P g)`` (:func:`bsnn_lava.dynamics.window_spike_count`;
    ``g`` the largest payload of a spike, 1 for binary spikes);
    the readout is ``P bias + sum_s W_s c_s``. For a network converted from a clip-floor-shift model
    that is P times the model's logits. Arithmetic in float64: exact for integer networks, for which a
    layer whose partial sums within the window could leave the signed state range raises ``ValueError``
    (the window would then depend on the order of its spikes).

    Returns ``(readout, counts)``: (batch, classes) and layer name -> spike counts (batch, *shape).
    """
    if network.mode != "bistable":
        raise ValueError(f"frame_forward needs a bistable network, this one is {network.mode!r}")
    kernels = kernels or NetworkKernels(network, torch.float64, images.device)
    window = network.window_steps
    counts = {network.input.name: images.to(kernels.dtype) * window}
    limit = None if network.state_bits is None else state_limits(network.state_bits)[1]
    batch = images.shape[0]
    for layer in network.layers[1:]:
        params = kernels.params[layer.name]
        v = kernels.synaptic_input(layer.name, counts) + window * params["bias"]
        if layer.kind == "gated_if":
            v = v + params["v_init"]
        if limit is not None:
            bound = kernels.synaptic_input(layer.name, counts, absolute=True) + window * params["bias"].abs()
            if layer.kind == "gated_if":
                bound = bound + params["v_init"].abs()
            if bool((bound > limit).any()):
                raise ValueError(f"layer {layer.name!r}: a window's partial sums may exceed the "
                                 f"{network.state_bits}-bit state; its frame is not a function of the counts alone")
        v = v.expand(batch, *layer.shape)
        if layer.kind == "readout":
            return v, {name: c for name, c in counts.items() if name != network.input.name}
        counts[layer.name], _ = window_spike_count(v, params["threshold"], layer.window_count_max)
    raise ValueError("the network has no readout")


class ReferenceANN:
    """The ANN a run of ``network`` is compared with (``SimResult.ann_predictions``, ``ann_accuracy``)
    and the pre-activations that SIN is counted against.

    A bistable network with frame reset computes its frame at every complete frame, exactly (the
    clip-floor-shift ANN of a fine-tuned model, the P-level quantized ANN of a post-training one):
    its ANN is :func:`frame_forward` (float64). Any other network approximates the rates of
    :func:`ann_forward`, which stays its ANN (and where an integer network's frame is not a function
    of its counts, :func:`frame_forward` refuses and the rates are used). ``kind``: ``frame`` or ``rates``.
    """

    def __init__(self, network: Network, kernels: NetworkKernels):
        self.network, self.kernels = network, kernels
        self.kind = "frame" if network.mode == "bistable" and network.frame_reset else "rates"
        self.frame_kernels = None

    def __call__(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(logits, pre_activations)`` of raw ``images`` (batch, C, H, W)."""
        logits, pre = ann_forward(self.network, images.to(self.kernels.dtype), self.kernels)
        if self.kind == "frame":
            if self.frame_kernels is None:
                self.frame_kernels = NetworkKernels(self.network, torch.float64, images.device)
            try:
                logits, _ = frame_forward(self.network, images, self.frame_kernels)
            except ValueError:
                self.kind = "rates"
        return logits, pre
