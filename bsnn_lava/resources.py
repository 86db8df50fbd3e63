"""Does a network fit a chip? Layers -> cores under a hardware profile's limits.

Mapping model (an estimate, documented so it can be checked): each spiking or readout layer gets its
own cores, neurons tiled in (row, column, channel) order so a core holds whole output rows where it
can; a neuron's synapses are its nonzero fan-in weights, stored at the profile's weight mantissa width
(no weight sharing assumed, which is conservative for convolutions on Loihi 2); a core's input axons
are the distinct source neurons its neurons read. A core's neuron count is the largest that meets the
neurons-per-core, synaptic-memory and input-axon limits. The pixel input is injected from the host and
takes no core. A max-pooled synapse adds one pooling compartment per pooled value to its target's
cores (a dendritic compartment joining its window's spikes with a MAX, as Loihi's multi-compartment
neurons can; not verified on hardware here) and its axons are the source neurons under the windows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Union

import numpy as np

from hw_profiles import HardwareProfile, load_profile

from .ir import PIXEL_MAX, Conv2d, GatedIF, Network


@dataclass(frozen=True)
class LayerUsage:
    """Resources of one layer: counts of neurons, synapses (fan-in), cores and per-core use."""
    name: str
    kind: str
    n_neurons: int
    fan_in: int
    n_cores: int
    neurons_per_core: int
    axons_per_core: int
    synaptic_bits_per_core: int
    pool_compartments: int = 0


@dataclass
class ResourceReport:
    profile: str
    layers: List[LayerUsage]
    n_cores: int
    n_chips: int
    violations: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.violations

    def format(self) -> str:
        """The layer table, totals, and every violated limit."""
        header = f"{'layer':<28} {'type':<8} {'neurons':>8} {'fan-in':>7} {'cores':>6} {'neur/core':>9} " \
                 f"{'axons/core':>10} {'syn bits/core':>13}"
        rows = [header, "-" * len(header)]
        for u in self.layers:
            rows.append(f"{u.name[:28]:<28} {u.kind:<8} {u.n_neurons:>8} {u.fan_in:>7} {u.n_cores:>6} "
                        f"{u.neurons_per_core:>9} {u.axons_per_core:>10} {u.synaptic_bits_per_core:>13}")
        rows.append("-" * len(header))
        rows.append(f"total: {sum(u.n_neurons for u in self.layers)} neurons, {self.n_cores} cores, "
                    f"{self.n_chips} chip(s) of {self.profile}")
        rows += [f"note: {n}" for n in self.notes]
        rows += [f"VIOLATION: {v}" for v in self.violations] or ["fits: no limit violated"]
        return "\n".join(rows)


def check_resources(network: Network, profile: Union[str, HardwareProfile] = "loihi2") -> ResourceReport:
    """Map ``network`` onto cores of ``profile`` and list every violated limit."""
    hw = profile if isinstance(profile, HardwareProfile) else load_profile(profile)
    report = ResourceReport(hw.name, [], 0, 0)
    for layer in network.layers[1:]:
        report.layers.append(_map_layer(network, layer, hw, report.violations))
    report.n_cores = sum(u.n_cores for u in report.layers)
    report.n_chips = math.ceil(report.n_cores / hw.cores_per_chip)
    if hw.chips_per_system is not None and report.n_chips > hw.chips_per_system:
        report.violations.append(f"network needs {report.n_chips} chips, the largest {hw.name} system has "
                                 f"{hw.chips_per_system}")
    if hw.input_axons_per_core is None:
        report.notes.append(f"{hw.name} publishes no input-axon limit per core: not checked")
    if network.numeric == "int":
        report.violations.extend(_range_violations(network, hw))
    else:
        report.notes.append("float network: weight, threshold and bias ranges not checked (quantize first)")
    report.violations.extend(filter(None, (graded_payload_problem(layer, hw) for layer in network.spiking_layers)))
    pixel_relays = {layer.name for layer in network.pixel_relays}
    graded = [layer.payload_max for layer in network.spiking_layers if layer.payload_max > 1
              and layer.name not in pixel_relays]
    if graded and max(graded).bit_length() <= hw.graded_payload_bits:
        report.notes.append(f"graded spikes in {len(graded)} layers: payloads up to {max(graded)} need "
                            f"{max(graded).bit_length()}-bit messages; {hw.name} carries {hw.graded_payload_bits}")
    if pixel_relays and hw.graded_payload_bits >= PIXEL_MAX.bit_length():
        neurons = sum(u.n_neurons for u in report.layers if u.name in pixel_relays)
        cores = sum(u.n_cores for u in report.layers if u.name in pixel_relays)
        report.notes.append(f"{len(pixel_relays)} relays carry the pixels to deeper layers (a layer reads the image "
                            f"beside spiking layers): {neurons} relay neurons on {cores} cores, sending each pixel as "
                            f"graded spikes of up to {PIXEL_MAX} ({PIXEL_MAX.bit_length()}-bit payloads) once per "
                            f"window step; binary-spike chips cannot carry them, as they cannot take the pixel input")
    pooled = sum(u.pool_compartments for u in report.layers)
    if pooled:
        report.notes.append(f"max pooling: {pooled} pooling compartments (one per pooled value, a MAX join of its "
                            "window's spikes) counted on their target layers' cores; this mapping is an estimate, "
                            "not checked on Loihi")
    if hw.graded_payload_bits < 8:
        report.violations.append(f"input {network.input.name!r}: the pixels reach the first layer as graded spikes, "
                                 f"which need 8 payload bits; {hw.name} has {hw.graded_payload_bits} (binary spikes "
                                 "only). Deploy on Loihi 2 (bsnn check NET --hw loihi2): bsnn has no pixel encoding "
                                 "for binary-spike chips")
    return report


def graded_payload_problem(layer: GatedIF, hw: HardwareProfile) -> Optional[str]:
    """Why ``layer``'s graded spikes do not fit ``hw``'s spike messages (``None`` if they do, or if
    its spikes are binary)."""
    if layer.payload_max == 1 or layer.payload_max.bit_length() <= hw.graded_payload_bits:
        return None
    have = f"{hw.graded_payload_bits}-bit payloads" if hw.graded_payload_bits else "binary spikes only"
    return (f"layer {layer.name!r}: graded spikes with payloads up to {layer.payload_max} need "
            f"{layer.payload_max.bit_length()}-bit spike messages; {hw.name} has {have}")


def _fan_in(layer) -> int:
    total = 0
    for s in layer.synapses:
        w = s.op.weight
        per_neuron = (w.reshape(w.shape[0], -1) != 0).sum(axis=1)
        total += int(per_neuron.max()) if per_neuron.size else 0
    return total


def _axons(network: Network, layer, neurons: int) -> int:
    """Distinct source neurons read by ``neurons`` consecutive neurons (row-major tiles)."""
    total = 0
    for s in layer.synapses:
        source_shape = network[s.source].shape
        if isinstance(s.op, Conv2d) and len(layer.shape) == 3:
            c_out, h_out, w_out = layer.shape
            rows = min(h_out, math.ceil(neurons / (c_out * w_out)))
            span = (rows - 1) * s.op.stride[0] + s.op.kernel_extent[0]  # rows of the op's input
            if s.pool is not None:  # the source rows under those pooled rows
                span = (span - 1) * s.pool.stride[0] + s.pool.kernel[0]
            total += source_shape[0] * min(source_shape[1], span) * source_shape[2]
        else:
            total += int(np.prod(source_shape))
    return total


def _map_layer(network: Network, layer, hw: HardwareProfile, violations: List[str]) -> LayerUsage:
    n = int(np.prod(layer.shape))
    pools = sum(int(np.prod(s.input_shape(network[s.source].shape))) for s in layer.synapses if s.pool is not None)
    fan_in = _fan_in(layer)
    bits_per_neuron = max(1, fan_in * hw.weight_mantissa_bits)
    # pooling compartments share the cores in proportion: (1 + pools / n) compartments per neuron
    per_core = min(n, max(1, int(hw.neurons_per_core * n / (n + pools))), hw.synaptic_memory_bits_per_core // bits_per_neuron)
    if per_core < 1:
        violations.append(f"layer {layer.name!r}: one neuron needs {bits_per_neuron} bits of synaptic memory "
                          f"(fan-in {fan_in} x {hw.weight_mantissa_bits} bits), a core has "
                          f"{hw.synaptic_memory_bits_per_core}")
        per_core = 1
    limit = hw.input_axons_per_core
    while limit is not None and per_core > 1 and _axons(network, layer, per_core) > limit:
        per_core = max(1, per_core // 2)
    axons = _axons(network, layer, per_core)
    if limit is not None and axons > limit:
        violations.append(f"layer {layer.name!r}: one neuron reads {axons} source neurons, a core has {limit} "
                          "input axons")
    kind = layer.role if isinstance(layer, GatedIF) else "readout"
    return LayerUsage(layer.name, kind, n, fan_in, math.ceil(n / per_core), per_core, axons,
                      per_core * bits_per_neuron, pools)


def _range_violations(network: Network, hw: HardwareProfile) -> List[str]:
    problems = []
    w_lo, w_hi = -2 ** (hw.weight_mantissa_bits - 1), 2 ** (hw.weight_mantissa_bits - 1) - 1
    theta_max = hw.threshold_mant_max * 2 ** hw.threshold_shift
    bias_max = (2 ** (hw.bias_mant_bits - 1) - 1) * 2 ** hw.bias_exp_max
    state_max = 2 ** (hw.state_bits - 1) - 1
    for layer in network.layers[1:]:
        for s in layer.synapses:
            w = s.op.weight
            if w.min() < w_lo or w.max() > w_hi:
                problems.append(f"layer {layer.name!r}: synapse from {s.source!r}: weight mantissa range "
                                f"[{w.min():.0f}, {w.max():.0f}] exceeds {hw.weight_mantissa_bits}-bit [{w_lo}, {w_hi}]")
            if not hw.weight_exp_min <= s.op.weight_exp <= hw.weight_exp_max:
                problems.append(f"layer {layer.name!r}: synapse from {s.source!r}: weight_exp {s.op.weight_exp} outside "
                                f"[{hw.weight_exp_min}, {hw.weight_exp_max}]")
        if np.max(np.abs(layer.bias), initial=0) > bias_max:
            problems.append(f"layer {layer.name!r}: bias {np.max(np.abs(layer.bias)):.0f} exceeds {bias_max}")
        if isinstance(layer, GatedIF):
            if np.max(layer.threshold) > min(theta_max, state_max):
                problems.append(f"layer {layer.name!r}: threshold {np.max(layer.threshold):.0f} exceeds "
                                f"{min(theta_max, state_max)}")
            if np.max(np.abs(layer.v_init)) > state_max:
                problems.append(f"layer {layer.name!r}: v_init exceeds the {hw.state_bits}-bit state")
    return problems
