"""The converted network as a trainable torch module: fine-tuning on the chip's integers and for energy.

:class:`FoldedNetwork` holds a bistable network with frame reset (from :func:`bsnn_lava.convert` of a
clip-floor-shift model: BatchNorm and normalisation folded, relays inserted) and computes its frame
(:func:`bsnn_lava.sim.frame_forward`) with trainable weights, biases and thresholds: the last phase
of ``finetune(..., hw=..., energy=..., rate_target=...)``.

With a hardware profile the training forward pass uses what the integer network will hold: every
layer's integer scale as :func:`bsnn_lava.quantize.quantize` chooses it, weights rounded to the
profile's mantissas and the layer's exponent, thresholds, initial potentials and biases rounded on
theirs (``torch.fake_quantize_per_tensor_affine`` on the scaled values: exact power-of-two grids,
gradients straight through inside the range), the state clipped to its signed width. In eval mode
the module computes the deployed network's frame exactly (float64): :meth:`deployed` is
``quantize(network(), hw)``, the same rounding to nearest, so the trained module and the integer
network it converts to predict the same class on every image.

:class:`FrameCost` counts the synaptic operations of a frame as ``bsnn profile`` counts a one-frame
run (binary: spikes x fan-out; graded: sending neurons x fan-out; pixels: nonzero pixels x fan-out
on each step the input shows them; max-pooled synapses: the pooling stage's events plus the pooled
events x fan-out), differentiably through the straight-through counts; :func:`frame_cost` averages it
over images on a network's exact frame.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hw_profiles import HardwareProfile

from ..dynamics import state_limits
from ..ir import Conv2d, GatedIF, Network, replace
from ..sim.kernels import pool_outputs

#: Bounds of the fake-quantize calls whose values the grid does not clip (thresholds, V(0)).
_UNBOUNDED = 2 ** 40


def _param_shape(values: np.ndarray, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """How a scalar, per-channel or per-neuron IR parameter broadcasts against ``(batch, *shape)``."""
    values = np.asarray(values)
    return (-1, 1, 1) if values.ndim == 1 and len(shape) == 3 else values.shape


def _bias_scale(layer) -> np.ndarray:
    """What a layer's bias is stored relative to, shaped like the bias: its channel's threshold where
    both are per channel (or the bias per neuron), else the largest threshold; the readout's largest
    bias."""
    bias = np.asarray(layer.bias)
    if not isinstance(layer, GatedIF):
        return np.full(bias.shape, max(float(np.max(np.abs(bias), initial=0.0)), 1e-12))
    threshold = np.asarray(layer.threshold)
    if threshold.ndim == 1 and bias.ndim >= 1:
        return np.broadcast_to(threshold.reshape(-1, *([1] * (bias.ndim - 1))), bias.shape).copy()
    return np.full(bias.shape, float(np.max(threshold)))


class FoldedNetwork(nn.Module):
    """A float bistable network with frame reset, its frame computed by torch with trainable parameters.

    ``network``: the float IR (every spiking layer ``frame_reset``). Trainable: the synapse weights of
    every neuron layer and of the readout (their zeros stay zero, so fan-outs and synaptic operation
    counts keep their structure), biases and thresholds (``v_init`` follows the threshold at its
    fraction, theta / 2 for a converted clip-floor-shift model); relays are fixed. A synapse weight is
    the model's (BatchNorm folded) times its source's count unit: the source neuron layer's current
    threshold (through any relays: as in the clip-floor-shift model, a source's threshold scales what
    it sends) or ``1 / (pixel_max std)`` for the pixels. Each value is stored relative to a fixed
    scale, so that a step of Adam is a relative change of the same size everywhere: a weight to its
    output channel's largest initial one (folding BatchNorm scales the channels apart), a threshold
    to its initial value, a bias to its channel's initial threshold.

    ``hw``: a hardware profile (integer grid in the training forward pass, :meth:`deployed` the
    integer network) or ``None`` (the float network). ``headroom_bits``: as :func:`quantize`.

    ``forward(images)``: raw pixels ``(batch, C, H, W)`` -> logits in the units of the model the
    network was converted from (the readout's frame divided by P and the readout's scale).
    """

    def __init__(self, network: Network, hw: Optional[HardwareProfile] = None, headroom_bits: int = 6):
        super().__init__()
        if network.numeric != "float" or network.mode != "bistable" or not network.frame_reset:
            raise ValueError("FoldedNetwork needs a float bistable network with frame reset (convert a model fine-tuned "
                             "with clip-floor-shift activations)")
        self.skeleton = network
        self.hw = hw
        self.headroom_bits = int(headroom_bits)
        self.window = network.window_steps
        self.values = nn.ParameterDict()
        index = {layer.name: i for i, layer in enumerate(network.layers)}
        #: (layer, synapse) -> index of the layer whose threshold is the unit of a source count, or None (pixels)
        self.count_unit: Dict[Tuple[int, int], Optional[int]] = {}
        converter = network.provenance.get("converter", {})
        pixel_unit = 1.0 / (float(converter.get("pixel_max", 255.0)) * torch.as_tensor(converter.get("std", [1.0]),
                                                                                       dtype=torch.float64))
        for i, layer in enumerate(network.layers[1:], start=1):
            trainable = not (isinstance(layer, GatedIF) and layer.role == "relay")
            for k, synapse in enumerate(layer.synapses):
                weight = torch.tensor(synapse.op.weight, dtype=torch.float64)
                if not trainable:
                    self.register_buffer(f"fixed_w{i}_{k}", weight.float())
                    continue
                origin = self._count_origin(synapse.source)
                self.count_unit[(i, k)] = None if origin is None else index[origin]
                channels = self._input_channels(synapse, network[synapse.source].shape)
                self.register_buffer(f"channel{i}_{k}", channels)
                source_units = pixel_unit if origin is None else torch.tensor(network[origin].threshold,
                                                                              dtype=torch.float64)
                if origin is None:
                    self.register_buffer(f"pixel_unit{i}_{k}", source_units.float())
                model_weight = weight / source_units.expand(network[synapse.source].shape[0])[channels]
                row = model_weight.abs().reshape(model_weight.shape[0], -1).amax(1).clamp(min=1e-12)
                row = row.reshape(-1, *([1] * (model_weight.ndim - 1)))
                self.register_buffer(f"scale_w{i}_{k}", row.float())
                self.values[f"w{i}_{k}"] = nn.Parameter((model_weight / row).float())
                self.register_buffer(f"mask{i}_{k}", weight != 0)
            self._add(f"b{i}", layer.bias, trainable, _bias_scale(layer))
            if isinstance(layer, GatedIF):
                self._add(f"t{i}", layer.threshold, trainable, layer.threshold)
                fraction = np.asarray(layer.v_init) / np.asarray(layer.threshold)
                self.register_buffer(f"f{i}", torch.as_tensor(fraction, dtype=torch.float32))
        self._deployed: Optional[Network] = None
        self._cost: Optional[FrameCost] = None

    def _count_origin(self, source: str) -> Optional[str]:
        """The neuron layer whose counts reach a synapse from ``source`` (through relays), or
        ``None`` for the pixels."""
        layer = self.skeleton[source]
        while isinstance(layer, GatedIF) and layer.role == "relay":
            layer = self.skeleton[layer.synapses[0].source]
        return None if layer is self.skeleton.input else layer.name

    @staticmethod
    def _input_channels(synapse, source_shape) -> torch.Tensor:
        """The source channel each weight reads, shaped to broadcast against the weight: conv
        ``(out, in / groups, 1, 1)``, dense ``(1, inputs)`` (inputs in (C, H, W) order)."""
        op = synapse.op
        if isinstance(op, Conv2d):
            out, per_group = op.weight.shape[:2]
            group = torch.arange(out) // (out // op.groups)
            return (group[:, None] * per_group + torch.arange(per_group)[None, :])[:, :, None, None]
        shape = synapse.input_shape(source_shape)
        return (torch.arange(int(np.prod(shape))) // int(np.prod(shape[1:])))[None, :]

    def _add(self, name: str, value, trainable: bool, scale=None) -> None:
        """A bias or threshold: trainable, stored relative to ``scale`` (broadcasting against it), or fixed."""
        value = torch.tensor(np.asarray(value), dtype=torch.float64)
        if trainable:
            scale = torch.tensor(np.asarray(scale), dtype=torch.float64)
            self.register_buffer(f"scale_{name}", scale.float())
            self.values[name] = nn.Parameter((value / scale).float())
        else:
            self.register_buffer(f"fixed_{name}", value.float())

    def value(self, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Parameter ``name`` (``w<i>_<k>``, ``b<i>``, ``t<i>``) in the network's float units, computed
        in ``dtype`` (default: the stored one's): a trainable weight is its model-unit value times its
        source's count unit (zeros kept)."""
        if name not in self.values:
            fixed = getattr(self, f"fixed_{name}")
            return fixed if dtype is None else fixed.to(dtype)
        stored = self.values[name] if dtype is None else self.values[name].to(dtype)
        stored = stored * getattr(self, f"scale_{name}").to(stored.dtype)
        if not name.startswith("w"):
            return stored
        i, k = map(int, name[1:].split("_"))
        origin = self.count_unit[(i, k)]
        units = getattr(self, f"pixel_unit{i}_{k}") if origin is None else self.value(f"t{origin}", stored.dtype)
        source_channels = self.skeleton[self.skeleton.layers[i].synapses[k].source].shape[0]
        units = units.to(stored.dtype).expand(source_channels)[getattr(self, f"channel{i}_{k}")]
        return stored * getattr(self, f"mask{i}_{k}") * units

    def train(self, mode: bool = True):
        self._deployed = None  # parameters may change: the deployed network is rebuilt when next needed
        return super().train(mode)

    @property
    def layers(self):
        return self.skeleton.layers

    # --- the trained network as IR ----------------------------------------------------------
    def network(self) -> Network:
        """The float network with the current parameters (float64 of the stored values); with a
        hardware profile its provenance says which integer grid it was trained on."""
        from ..quantize import TRAINED_INTEGERS, trained_integers_record

        layers = [self.skeleton.input]
        with torch.no_grad():
            for i, layer in enumerate(self.skeleton.layers[1:], start=1):
                synapses = [replace(s, op=replace(s.op, weight=self._array(f"w{i}_{k}")))
                            for k, s in enumerate(layer.synapses)]
                changes = dict(synapses=synapses, bias=self._array(f"b{i}"))
                if isinstance(layer, GatedIF):
                    threshold = self._array(f"t{i}")
                    changes.update(threshold=threshold, v_init=getattr(self, f"f{i}").double().cpu().numpy() * threshold)
                layers.append(replace(layer, **changes))
        provenance = dict(self.skeleton.provenance)
        if self.hw is not None:
            provenance[TRAINED_INTEGERS] = trained_integers_record(self.hw, self.headroom_bits)
        return Network(layers, numeric="float", provenance=provenance)

    def _array(self, name: str) -> np.ndarray:
        return self.value(name, torch.float64).cpu().numpy()

    def deployed(self) -> Network:
        """What runs: the integer network for the hardware profile (rounded to nearest on the grid
        the training used), or the float network without one. Cached until the next ``train()``."""
        if self._deployed is None:
            from ..quantize import quantize

            network = self.network()
            self._deployed = network if self.hw is None else quantize(network, self.hw, self.headroom_bits)
        return self._deployed

    # --- forward ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (model units) of raw images ``(batch, C, H, W)``: the training forward pass in
        training mode, the deployed network's exact frame (float64) in eval mode."""
        if not self.training:
            return self.deployed_logits(images)
        return self.frame(images)[0]

    @torch.no_grad()
    def deployed_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The deployed network's frame (:func:`frame_forward`, float64, exact) in model units."""
        from ..sim import frame_forward

        network = self.deployed()
        readout, _ = frame_forward(network, images.to(torch.float64))
        return readout / (self.window * network.readout.scale)

    def frame(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The training forward pass: ``(logits, counts)``, counts per spiking layer (batch, *shape),
        straight-through (their gradient is the potential's over the threshold), and the input's
        (P times the pixels). In the dtype of the stored parameters."""
        dtype = self.values[next(iter(self.values))].dtype
        net = self.skeleton
        synapses = iter(self.cost(images.device).synapses)
        rows = (tuple(next(synapses) for _ in layer.synapses) for layer in net.layers[1:])
        counts = {net.input.name: images.to(dtype) * self.window}
        limits = None if self.hw is None else state_limits(self.hw.state_bits)
        for i, layer in enumerate(net.layers[1:], start=1):
            weights, bias, threshold, v_init, scale = self._layer_values(i, layer)
            v = None
            for synapse, weight, (_, pooled, _) in zip(layer.synapses, weights, next(rows)):
                x = counts[synapse.source]
                if pooled is not None:
                    x = pool_outputs(x, *pooled[:2])
                if isinstance(synapse.op, Conv2d):
                    op = synapse.op
                    y = F.conv2d(x, weight, None, op.stride, op.padding, op.dilation, op.groups)
                else:
                    y = x.reshape(x.shape[0], -1) @ weight.T
                v = y if v is None else v + y
            v = v + self.window * bias
            if isinstance(layer, GatedIF):
                v = v + v_init
            if limits is not None:
                v = v.clamp(*limits)
            if not isinstance(layer, GatedIF):
                return v / (self.window * scale), counts
            ratio = v / threshold
            floor = torch.div(v.detach(), threshold.detach(), rounding_mode="floor")
            counts[layer.name] = (ratio + (floor - ratio).detach()).clamp(0, layer.window_count_max)
        raise ValueError("the network has no readout")

    def _layer_values(self, i: int, layer):
        """``(weights, bias, threshold, v_init, scale)`` of layer ``i`` as the forward pass uses them:
        float values, or with a hardware profile the integers (fake-quantized) and the layer's scale."""
        weights = [self.value(f"w{i}_{k}") for k in range(len(layer.synapses))]
        bias = self._broadcast(self.value(f"b{i}"), layer.bias, layer.shape)
        is_neuron = isinstance(layer, GatedIF)
        threshold = self._broadcast(self.value(f"t{i}"), layer.threshold, layer.shape) if is_neuron else None
        v_init = None
        if is_neuron:
            v_init = threshold * self._broadcast(getattr(self, f"f{i}").to(threshold.dtype), layer.v_init, layer.shape)
        if self.hw is None:
            return weights, bias, threshold, v_init, 1.0
        from ..quantize import bias_exponent, neuron_scale, readout_scale, weight_exponent, weight_grid

        mant_max, exp_max = weight_grid(self.hw)
        weight_max = max(float(w.detach().abs().max()) for w in weights)
        if is_neuron:
            scale = neuron_scale(self.hw, self.headroom_bits, layer.window_count_max, weight_max,
                                 float(threshold.detach().max()))
        else:
            scale = readout_scale(self.hw, weight_max, float(bias.detach().abs().max()))
        integer = []
        for w in weights:
            exp = weight_exponent(float(w.detach().abs().max()) * scale, mant_max, exp_max)
            integer.append(_on_grid(w * scale, 2.0 ** exp, -mant_max - 1, mant_max))
        bias_mant = 2 ** (self.hw.bias_mant_bits - 1) - 1
        bias_int = _on_grid(bias * scale, 2.0 ** bias_exponent(float(bias.detach().abs().max()) * scale, self.hw),
                            -bias_mant - 1, bias_mant)
        if not is_neuron:
            return integer, bias_int, None, None, scale
        threshold_int = _on_grid(threshold * scale, 1.0, 0, _UNBOUNDED).clamp(min=1)
        v_init_int = _on_grid(v_init * scale, 1.0, -_UNBOUNDED, _UNBOUNDED)
        return integer, bias_int, threshold_int, v_init_int, scale

    @staticmethod
    def _broadcast(value: torch.Tensor, like: np.ndarray, shape) -> torch.Tensor:
        return value.reshape(_param_shape(like, shape))

    # --- energy -------------------------------------------------------------------------------
    def cost(self, device) -> "FrameCost":
        """The :class:`FrameCost` of the network (built once per device)."""
        if self._cost is None or self._cost.device != torch.device(device):
            self._cost = FrameCost(self.skeleton, device)
        return self._cost


def _on_grid(scaled: torch.Tensor, step: float, low: int, high: int) -> torch.Tensor:
    """``clip(round(scaled / step), low, high) * step`` with a straight-through gradient inside the
    range (``step`` a power of two: exact)."""
    return torch.fake_quantize_per_tensor_affine(scaled, step, 0, low, high)


class FrameCost:
    """The synaptic operations and spikes of one frame of ``network``, as ``bsnn profile`` counts a
    run of one frame (``frames=1``): every synapse's events times its op's fan-out (the nonzero
    weights each input reaches); a max-pooled synapse's pooled events (the max of its window's
    events) times the fan-out, plus each event times the pooling windows that read its neuron.

    Events per neuron in a frame (:meth:`events`): a binary layer's spike count, a graded layer's
    0 or 1 (its count clipped at 1: straight-through where the count is), a relay of the pixels in a
    binary network its nonzero steps (``ceil(count / 255)``), the input's nonzero pixels once per
    step it shows them (P binary, 1 graded). Fan-outs and pooling taps are built once, on ``device``.
    """

    def __init__(self, network: Network, device="cpu"):
        self.network = network
        self.device = torch.device(device)
        self.graded = {network.input.name} | {l.name for l in network.spiking_layers if l.payload_max > 1}
        self.synapses = []  # (source, taps or None, pooled shape, fan_out, coverage or None)
        for layer in network.layers[1:]:
            for s in layer.synapses:
                shape = network[s.source].shape
                fan_out = torch.as_tensor(s.op.fan_out(s.input_shape(shape)), dtype=torch.float64, device=device)
                pooled = None if s.pool is None else (
                    torch.as_tensor(s.pool.taps(shape), device=device), s.pool.output_shape(shape),
                    torch.as_tensor(s.pool.coverage(shape), dtype=torch.float64, device=device))
                self.synapses.append((s.source, pooled, fan_out))

    def events(self, counts: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Events per neuron of every sender (batch, *shape), from the frame's counts (the input's:
        P times its pixels, as :meth:`FoldedNetwork.frame` gives them)."""
        net, events = self.network, {}
        for layer in net.layers[:-1]:
            c = counts[layer.name]
            if layer is net.input:
                events[layer.name] = (c != 0).to(c.dtype) * net.window_steps
            elif layer.payload_max == 1:
                events[layer.name] = c
            elif net.window_steps == 1:
                events[layer.name] = c.clamp(max=1)
            else:  # graded spikes over a window of several steps: the pixels' relays (no gradient to pass)
                events[layer.name] = torch.ceil(c.detach() / layer.payload_max)
        return events

    def __call__(self, counts: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(synops, synops_graded, spikes)`` per image ``(batch,)`` in float64: ``synops_graded``
        the part caused by graded events (pixels, graded spikes), which the profile prices apart;
        differentiable through the counts."""
        events = self.events(counts)
        synops = synops_graded = 0.0
        for source, pooled, fan_out in self.synapses:
            e = events[source].to(torch.float64)
            if pooled is None:
                cost = (e * fan_out).flatten(1).sum(1)
            else:
                taps, shape, coverage = pooled
                cost = (pool_outputs(e, taps, shape) * fan_out).flatten(1).sum(1) + (e * coverage).flatten(1).sum(1)
            synops = synops + cost
            if source in self.graded:
                synops_graded = synops_graded + cost
        spikes = sum(events[l.name].to(torch.float64).flatten(1).sum(1) for l in self.network.spiking_layers)
        return synops, synops_graded, spikes


def frame_cost(network: Network, images: torch.Tensor, batch_size: int = 250) -> Dict[str, float]:
    """One frame of a bistable network with frame reset on raw ``images`` (batch, C, H, W)
    (:func:`bsnn_lava.sim.frame_forward`, float64, exact): ``synops``, ``synops_graded`` and
    ``spikes`` per image (:class:`FrameCost`, averaged over the images) and ``predictions`` (the
    class of each image, a list)."""
    from ..sim import frame_forward

    cost = FrameCost(network, images.device)
    totals = {"synops": 0.0, "synops_graded": 0.0, "spikes": 0.0}
    predictions = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(torch.float64)
            readout, counts = frame_forward(network, x)
            counts[network.input.name] = x * network.window_steps
            for key, value in zip(totals, cost(counts)):
                totals[key] += float(value.sum())
            predictions.append(readout.argmax(1))
    n = max(images.shape[0], 1)
    return {**{k: v / n for k, v in totals.items()}, "predictions": torch.cat(predictions).tolist()}
