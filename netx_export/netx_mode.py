"""Stock-netx export: what lava-dl 0.6's ``netx.hdf5.Network`` loads unchanged.

Expressible networks: integer networks whose every layer has exactly one synapse, from the layer
before it, and ``if`` schedules. Each layer becomes a netx ``conv`` or ``dense`` layer with a CUBA
neuron (Lava's fixed-point LIF) that is a non-leaky IF with no current memory: ``iDecay = 4096``
(the current is the present step's input only), ``vDecay = 0`` (no voltage leak), ``vThMant =
threshold - 1`` (LIF spikes on ``v > vth``, the IR on ``v >= threshold``; integers), reset to zero.
A ``flatten`` layer precedes every dense layer fed by a (C, H, W) layer. The input layer has no
``neuron`` group, so ``net.inp`` is the first synapse's input (W, H, C) and takes the raw pixels as
graded spikes (``Network(..., input_message_bits=8)``). Not carried over: ``v_init``, schedule
offsets, reset by subtraction, the readout's never-firing (it gets the largest threshold).
"""
from __future__ import annotations

import h5py
import numpy as np

from bsnn_lava.ir import Conv2d, Dense, GatedIF, Network

from . import h5io
from .errors import NetxExportError
from .h5io import Where

#: Lava's fixed-point Conv declares 8-bit signed weights; used for dense too.
WEIGHT_RANGE = (-128, 127)
#: Lava LIF ``bias_mant``: signed 13 bits (netx uses ``bias_exp = 6``, the same scale as weights).
BIAS_RANGE = (-4096, 4095)
#: Lava LIF ``vth``: unsigned 17 bits.
VTH_MAX = 2 ** 17 - 1
#: CUBA decays on a 12-bit scale (4096 = 1): current forgets every step, voltage never leaks.
I_DECAY, V_DECAY, REF_DELAY = 4096, 0, 1


def fill_netx(h5: h5py.File, network: Network, path: str) -> None:
    """Write ``network`` in stock netx layout into the open file ``h5``; refuse what it cannot hold."""
    if network.numeric != "int":
        raise NetxExportError(f"cannot write {path} in netx mode: the network is {network.numeric}; stock netx "
                              "needs integer weights, biases and thresholds (quantize it first)")
    for i, layer in enumerate(network.layers):  # structure first: refuse before looking at values
        where = Where(path, i, layer.name)
        if layer.schedule.mode != "if":
            raise where.export_error("neuron/mode", f"is {layer.schedule.mode!r}; netx mode needs 'if' schedules "
                                     "(stock CUBA neurons have no integrate/fire gating)")
        if i:
            _single_synapse(layer, network.layers[i - 1].name, where)
    layers = h5.create_group("layer")
    first = layers.create_group("0")
    h5io.put_str(first, "type", "input")
    h5io.put_ints(first, "shape", network.input.shape)
    for i, layer in enumerate(network.layers[1:], start=1):
        where = Where(path, i, layer.name)
        source = network.layers[i - 1]
        op = _single_synapse(layer, source.name, where)
        if isinstance(op, Dense) and len(source.shape) == 3:
            flatten = layers.create_group(str(len(layers)))
            h5io.put_str(flatten, "type", "flatten")
            h5io.put_ints(flatten, "shape", (int(np.prod(source.shape)),))
        group = layers.create_group(str(len(layers)))
        h5io.put_str(group, "type", "conv" if isinstance(op, Conv2d) else "dense")
        h5io.put_ints(group, "shape", layer.shape)
        h5io.put_array(group, "weight", _weight(op, where), np.float32)
        if isinstance(op, Conv2d):
            h5io.put_ints(group, "stride", op.stride)
            h5io.put_ints(group, "padding", op.padding)
            h5io.put_ints(group, "dilation", op.dilation)
            h5io.put_int(group, "groups", op.groups)
        h5io.put_array(group, "bias", _bias(layer, where), np.float32)
        _write_cuba(group.create_group("neuron"), layer, where)


def _single_synapse(layer, previous: str, where: Where):
    if len(layer.synapses) != 1 or layer.synapses[0].source != previous:
        sources = [s.source for s in layer.synapses]
        raise where.export_error("inputs", f"sources {sources}; netx mode needs exactly one synapse from the "
                                 f"previous layer {previous!r} (stock netx has no residual connections)")
    if layer.synapses[0].pool is not None:
        raise where.export_error("pool_kernel", "max pooling: stock netx has no pooling layer (write the bsnn format)")
    return layer.synapses[0].op


def _weight(op, where: Where) -> np.ndarray:
    """``weight * 2**weight_exp`` as exact integers in :data:`WEIGHT_RANGE`."""
    weight = op.weight * 2.0 ** op.weight_exp
    if not np.array_equal(weight, np.round(weight)):
        raise where.export_error("weight", f"weight * 2**weight_exp ({op.weight_exp}) is not integer-valued")
    if weight.size and (weight.min() < WEIGHT_RANGE[0] or weight.max() > WEIGHT_RANGE[1]):
        raise where.export_error("weight", f"values in [{weight.min():.0f}, {weight.max():.0f}] exceed the "
                                 f"8-bit range {list(WEIGHT_RANGE)} of Lava's fixed-point synapses")
    return weight


def _bias(layer, where: Where) -> np.ndarray:
    """Bias in netx's layout: per channel (C,), or per neuron in Lava's (W, H, C) order."""
    bias = layer.bias
    if bias.size and (bias.min() < BIAS_RANGE[0] or bias.max() > BIAS_RANGE[1]):
        raise where.export_error("neuron/bias", f"values exceed the 13-bit range {list(BIAS_RANGE)} of "
                                 "Lava's LIF bias mantissa")
    if bias.ndim == 0:
        return np.full(layer.shape[0], float(bias))
    return bias.transpose(2, 1, 0) if bias.ndim == 3 else bias


def _write_cuba(neuron: h5py.Group, layer, where: Where) -> None:
    if isinstance(layer, GatedIF):
        values = np.unique(layer.threshold)
        if values.size != 1:
            raise where.export_error("neuron/threshold", "per-channel thresholds cannot be expressed (CUBA's "
                                     "vThMant is one value per layer)")
        vth = int(values[0]) - 1
        if vth > VTH_MAX:
            raise where.export_error("neuron/threshold", f"{int(values[0])} exceeds {VTH_MAX + 1}, the largest "
                                     "threshold of Lava's LIF (17-bit vThMant)")
    else:  # the readout accumulates; the largest threshold keeps it from firing for as long as possible
        vth = VTH_MAX
    h5io.put_str(neuron, "type", "CUBA")
    h5io.put_int(neuron, "vThMant", vth)
    h5io.put_int(neuron, "iDecay", I_DECAY)
    h5io.put_int(neuron, "vDecay", V_DECAY)
    h5io.put_int(neuron, "refDelay", REF_DELAY)
