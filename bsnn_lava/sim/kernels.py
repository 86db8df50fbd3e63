"""Torch tensors for a network's synapses and per-layer parameters (shared by every simulator)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..dynamics import max_pool
from ..ir import Conv2d, MaxPool, Network


#: float32 represents every integer up to 2**24 exactly.
_FLOAT32_EXACT = 2 ** 24


def pool_outputs(x: torch.Tensor, taps: torch.Tensor, pooled_shape: Tuple[int, ...]) -> torch.Tensor:
    """A batch of a source's outputs ``(batch, *source_shape)`` max-pooled
    (:func:`bsnn_lava.dynamics.max_pool` with ``taps``, :meth:`bsnn_lava.ir.MaxPool.taps`)."""
    return max_pool(x.reshape(x.shape[0], -1), taps, torch.maximum).reshape(x.shape[0], *pooled_shape)


@dataclass
class Outgoing:
    """A synapse as its source counts it: column ``index`` of the synaptic operation log;
    ``fan_out``, the op's nonzero weights from each of its inputs. A max-pooled synapse also has the
    pool's ``taps`` and its ``coverage`` (pooling windows reading each source neuron): an event
    costs ``coverage`` operations in the pooling stage, and every event the pool passes on (the OR
    of a window's events, :func:`bsnn_lava.dynamics.max_pool`) its ``fan_out``."""
    index: int
    fan_out: torch.Tensor
    taps: Optional[torch.Tensor] = None
    coverage: Optional[torch.Tensor] = None

    def synops(self, events: torch.Tensor, per_neuron: torch.Tensor) -> torch.Tensor:
        """The operations of ``events``, a boolean (batch, *source shape), whose sum over the batch
        is ``per_neuron`` (the caller's, computed once for all of a source's synapses)."""
        if self.taps is None:
            return (per_neuron * self.fan_out).sum()
        pooled = max_pool(events.reshape(events.shape[0], -1), self.taps, torch.maximum).sum(dim=0)
        return (pooled.to(self.fan_out.dtype) * self.fan_out.reshape(-1)).sum() + (per_neuron * self.coverage).sum()


class SynapseKernel:
    """One synapse as a torch op on a batch of source outputs ``(batch, *source_shape)``.

    Integer synapses compute on the mantissas and multiply by ``2**weight_exp`` afterwards. For
    integer inputs (spikes, spike counts, pixels) no partial sum can lose precision in float32 when
    ``max_input * max_row_sum(|mantissa|) < 2**24``: then the (much faster) float32 weights are used
    and the result is converted to ``dtype``. Real-valued inputs (ANN rates) always use ``dtype``.
    """

    def __init__(self, op, dtype: torch.dtype, device, max_input: float, pool: Optional[MaxPool] = None,
                 source_shape: Optional[Tuple[int, ...]] = None):
        #: max pooling of the source before the op: (taps on the device, pooled shape), or ``None``
        self.pool = None if pool is None else (torch.as_tensor(pool.taps(source_shape), device=device),
                                               pool.output_shape(source_shape))
        row_sums = np.abs(op.weight).reshape(op.weight.shape[0], -1).sum(axis=1)
        integer = np.array_equal(op.weight, np.round(op.weight))
        #: True when float32 computes this synapse exactly for integer inputs up to ``max_input``
        self.exact_in_float32 = integer and max_input * float(row_sums.max()) < _FLOAT32_EXACT
        self.weight = torch.tensor(op.weight, dtype=dtype, device=device)
        self.weight_float32 = (self.weight.to(torch.float32) if self.exact_in_float32 and dtype != torch.float32
                               else None)
        self.weight_scale = 2.0 ** op.weight_exp
        #: the largest ``|output|`` of any neuron for inputs in ``[-max_input, max_input]``
        self.output_bound = max_input * float(row_sums.max()) * self.weight_scale
        self.dtype = dtype
        self.is_conv = isinstance(op, Conv2d)
        self.conv_args = (op.stride, op.padding, op.dilation, op.groups) if self.is_conv else None

    def __call__(self, x: torch.Tensor, absolute: bool = False, integer_input: bool = True) -> torch.Tensor:
        """The synapse's output; ``absolute=True`` uses ``|weight|`` (a bound on partial sums);
        ``integer_input=False`` for real-valued inputs."""
        weight = self.weight_float32 if integer_input and self.weight_float32 is not None else self.weight
        weight = weight.abs() if absolute else weight
        if self.pool is not None:
            x = pool_outputs(x, *self.pool)
        x = x.to(weight.dtype)
        if self.is_conv:
            y = F.conv2d(x, weight, None, *self.conv_args)
        else:
            y = x.reshape(x.shape[0], -1) @ weight.T
        y = y.to(self.dtype)
        return y if self.weight_scale == 1.0 else y * self.weight_scale


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
        # the largest value a synapse ever sees: a window's spike count (sum of payloads), or P pixels of 255
        window = network.window_steps
        max_input = {layer.name: float(window * getattr(layer, "payload_max", 1)) for layer in network.layers}
        max_input[network.input.name] = 255.0 * window
        self.synapses: Dict[str, List[Tuple[str, SynapseKernel]]] = {
            layer.name: [(s.source, SynapseKernel(s.op, dtype, device, max_input[s.source], s.pool,
                                                  network[s.source].shape)) for s in layer.synapses]
            for layer in network.layers}
        # synaptic operations per event of each source neuron, one entry per synapse, in layer order
        self.synapse_names: List[str] = []
        self.outgoing: Dict[str, List[Outgoing]] = {layer.name: [] for layer in network.layers}
        for layer in network.layers:
            for (_, kernel), s in zip(self.synapses[layer.name], layer.synapses):
                name = f"{layer.name}<-{s.source}"
                while name in self.synapse_names:
                    name += "'"
                source_shape = network[s.source].shape
                fan_out = torch.tensor(s.op.fan_out(s.input_shape(source_shape)), dtype=dtype, device=device)
                coverage = None if s.pool is None else torch.tensor(s.pool.coverage(source_shape), dtype=dtype,
                                                                    device=device)
                self.outgoing[s.source].append(Outgoing(len(self.synapse_names), fan_out,
                                                        None if s.pool is None else kernel.pool[0], coverage))
                self.synapse_names.append(name)
        #: per layer: the largest ``|synaptic input|`` of one window, every source at its largest value
        self.drive_bound = {layer.name: sum(k.output_bound for _, k in self.synapses[layer.name])
                            for layer in network.layers}
        self.params: Dict[str, Dict[str, torch.Tensor]] = {}
        for layer in network.layers[1:]:
            names = ("threshold", "bias", "v_init") if layer.kind == "gated_if" else ("bias",)
            self.params[layer.name] = {n: layer_param(getattr(layer, n), layer.shape, dtype, device) for n in names}

    def all_synapses(self):
        """``(target, kernel)`` for every synapse of the network."""
        return [(name, kernel) for name, kernels in self.synapses.items() for _, kernel in kernels]

    def synaptic_input(self, name: str, outputs: Dict[str, torch.Tensor], absolute: bool = False,
                       integer_input: bool = True):
        """Sum of this layer's synapses applied to the given source outputs (``None`` when all sources
        are silent, i.e. missing from ``outputs`` or ``None``); ``absolute``: with ``|weight|``;
        ``integer_input=False`` for real-valued outputs (ANN rates)."""
        total = None
        for source, kernel in self.synapses[name]:
            x = outputs.get(source)
            if x is None:
                continue
            y = kernel(x, absolute, integer_input)
            total = y if total is None else total + y
        return total
