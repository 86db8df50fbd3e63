"""IR -> IR passes of the converter: thresholds, synchronous relays, schedules."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..dynamics import SYNAPSE_DELAY_STEPS
from ..ir import PIXEL_MAX, Conv2d, Dense, GatedIF, Network, Schedule, Synapse, replace


def apply_thresholds(network: Network, scales: Mapping[str, np.ndarray], v_init: float) -> Network:
    """Threshold balancing: ``threshold_d = lambda_d``, ``v_init = v_init * threshold``, and every
    synapse weight multiplied by the spike value of its source (``lambda`` of the source's input
    channel; 1 for the pixel input). The ANN rates become ``activation / lambda``."""
    spike_value = {network.input.name: np.array(1.0)}
    spike_value.update({name: np.asarray(s, dtype=np.float64) for name, s in scales.items()})
    layers = [network.input]
    for layer in network.layers[1:]:
        synapses = tuple(replace(s, op=_scale_inputs(s.op, spike_value[s.source], s.input_shape(network[s.source].shape)))
                         for s in layer.synapses)
        if isinstance(layer, GatedIF):
            theta = spike_value[layer.name]
            layer = replace(layer, synapses=synapses, threshold=theta, v_init=v_init * theta)
        else:
            layer = replace(layer, synapses=synapses)
        layers.append(layer)
    return network.with_layers(layers)


def _scale_inputs(op, value: np.ndarray, source_shape) -> object:
    """``op`` with its weight multiplied per input channel by ``value`` (scalar or (C,))."""
    if value.ndim == 0:
        return replace(op, weight=op.weight * value)
    if isinstance(op, Conv2d):  # output group g reads input channels g * C_in/groups onwards
        out_channels, in_per_group = op.weight.shape[:2]
        group_of_output = np.arange(out_channels) // (out_channels // op.groups)
        per_weight = value.reshape(op.groups, in_per_group)[group_of_output]
        return replace(op, weight=op.weight * per_weight[:, :, None, None])
    per_input = np.repeat(value, int(np.prod(source_shape[1:])) if len(source_shape) == 3 else 1)
    return replace(op, weight=op.weight * per_input[None, :])


def identity_op(shape):
    """The identity synapse for a source of ``shape``: a 1x1 conv or an identity matrix."""
    if len(shape) == 3:
        return Conv2d(np.eye(shape[0])[:, :, None, None])
    return Dense(np.eye(shape[0]))


def insert_relays(network: Network) -> Network:
    """Put synchronous relays on every synapse that skips layers, so all inputs of a layer arrive
    in the same window: a synapse from a source k layers shallower than the layer's deepest source
    gets a chain of k relays (identity synapse, threshold 1, v_init 0: c spikes in, c out one window
    later). Relays go right before the layer they feed. Relays of the input (a layer reading the
    pixels beside spiking layers: a pre-activation ResNet's residual stream, a stem without a ReLU
    added later) send graded spikes of up to :data:`~bsnn_lava.ir.PIXEL_MAX`: each step's payload a
    pixel value, so the image reaches the layer exactly (the pixels are integers >= 0)."""
    depth: Dict[str, int] = {network.input.name: 0}
    layers = [network.input]
    for layer in network.layers[1:]:
        deepest = max(depth[s.source] for s in layer.synapses)
        synapses = []
        for synapse in layer.synapses:
            source = synapse.source
            payload_max = PIXEL_MAX if source == network.input.name else 1
            for k in range(1, deepest - depth[source] + 1):
                shape = network[synapse.source].shape
                relay_name = f"{synapse.source}_relay{k}_{layer.name}"
                layers.append(GatedIF(relay_name, shape, (Synapse(source, identity_op(shape)),), threshold=1.0,
                                      bias=0.0, v_init=0.0, schedule=layer.schedule, role="relay",
                                      origin=f"synchronous relay {k} of {synapse.source} -> {layer.name}",
                                      payload_max=payload_max))
                depth[relay_name] = depth[synapse.source] + k
                source = relay_name
            synapses.append(replace(synapse, source=source))  # a max pool stays after the relays
        depth[layer.name] = deepest + 1
        layers.append(replace(layer, synapses=tuple(synapses)))
    return network.with_layers(layers)


def assign_schedules(network: Network, mode: str, window_steps: int, frames: Optional[int] = None) -> Network:
    """Offsets so that each layer starts integrating when its inputs first arrive.

    The input fires from step 0: with ``mode`` bistable it emits the image in windows
    [0, P), [2P, 3P), ...; otherwise every step. A layer's offset is a source offset plus the
    source's latency (P steps of integration, none for ``if``) plus the synaptic delay: the latest
    source for bistable and warmup layers (relays make all sources equal; without relays the early
    branch's input is lost and counted), the earliest for ``if`` layers (they integrate whatever
    arrives). ``frames`` (bistable): every layer, the input included, stops after that many frames.
    """
    latency = 0 if mode == "if" else window_steps
    input_schedule = Schedule(mode if mode == "bistable" else "if", -latency, window_steps, frames)
    offsets = {network.input.name: input_schedule.offset_steps}
    layers = [replace(network.input, schedule=input_schedule)]
    for layer in network.layers[1:]:
        pick = min if mode == "if" else max
        offset = pick(offsets[s.source] for s in layer.synapses) + latency + SYNAPSE_DELAY_STEPS
        offsets[layer.name] = offset
        layers.append(replace(layer, schedule=Schedule(mode, offset, window_steps, frames)))
    return network.with_layers(layers)


def set_spiking_fields(network: Network, **changes) -> Network:
    """The same ``changes`` (e.g. ``frame_reset=True``, ``payload_max=L``) on every spiking layer,
    neurons and relays; relays of the pixels keep their payload (:attr:`Network.pixel_relays`)."""
    pixel = {layer.name for layer in network.pixel_relays}
    return network.with_layers([replace(layer, **{k: v for k, v in changes.items()
                                                  if not (k == "payload_max" and layer.name in pixel)})
                                if isinstance(layer, GatedIF) else layer for layer in network.layers])
