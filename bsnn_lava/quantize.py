"""Float network -> integer network for a hardware profile (Loihi-style fixed point).

Every layer (spiking or readout) gets its own integer scale ``s`` (integer units per float unit):
its synapse weights become 8-bit signed mantissas with a per-synapse exponent
(``weight_int = mant * 2**weight_exp``, ``0 <= weight_exp <= exp_max``), its threshold, initial
potential and bias become integers in the same scale (the bias representable as a 13-bit mantissa
with a shared exponent). All synapses into a layer, residual branches included, land in that
layer's scale. A spike is worth one unit of its source's output, so scales never need to agree
across layers.

Choosing ``s`` for a spiking layer: as large as the weights allow (largest weight = full mantissa
at the profile's largest exponent), but with the threshold at most
``2**(state_bits - 1 - headroom_bits - ceil(log2(P + 1)))``, so a full window (P + 1 thresholds)
plus ``2**headroom_bits`` times more (overdriven neurons, residues) fits the signed state. The readout
integrates for the whole run, so it keeps exponent 0 (largest weight = 127). The choices are recorded
in ``provenance["quantization"]``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple, Union

import numpy as np

from hw_profiles import HardwareProfile, load_profile

from .ir import GatedIF, Network, Readout, Synapse, replace


def quantize(network: Network, profile: Union[str, HardwareProfile] = "loihi2", headroom_bits: int = 6,
             max_exponent: Optional[int] = None) -> Network:
    """The integer version of a float ``network`` for ``profile`` (a name, path or profile).

    ``max_exponent``: cap the weight and bias exponents below the profile's (0 for stock lava-dl
    netx, whose fixed-point convolution ignores weight exponents).
    """
    if network.numeric == "int":
        raise ValueError("the network is already quantized")
    hw = profile if isinstance(profile, HardwareProfile) else load_profile(profile)
    if not 0 <= headroom_bits < hw.state_bits - 2:
        raise ValueError(f"headroom_bits must be in [0, {hw.state_bits - 2}), got {headroom_bits}")
    if max_exponent is not None:
        hw = dataclasses.replace(hw, weight_exp_max=min(hw.weight_exp_max, max_exponent),
                                 bias_exp_max=max(hw.bias_exp_min, min(hw.bias_exp_max, max_exponent)))
    mant_max = 2 ** (hw.weight_mantissa_bits - 1) - 1
    exp_max = max(0, hw.weight_exp_max)
    layers = [network.input]
    records: Dict[str, dict] = {}
    for layer in network.layers[1:]:
        weight_max = max(float(np.max(np.abs(s.op.weight))) for s in layer.synapses) or 1.0
        if isinstance(layer, GatedIF):
            window_bits = math.ceil(math.log2(layer.schedule.window_steps + 1))
            theta_cap = min(2.0 ** (hw.state_bits - 1 - headroom_bits - window_bits),
                            hw.threshold_mant_max * 2.0 ** hw.threshold_shift)
            scale = min(mant_max * 2.0 ** exp_max / weight_max, theta_cap / float(np.max(layer.threshold)))
        else:
            scale = mant_max / weight_max
        synapses, exps = zip(*(_quantize_synapse(s, scale, mant_max, exp_max) for s in layer.synapses))
        bias, bias_exp, n_bias_clipped = _quantize_bias(layer.bias * scale, hw)
        changes = dict(synapses=synapses, bias=bias, scale=scale)
        if isinstance(layer, GatedIF):
            changes.update(threshold=np.maximum(np.round(layer.threshold * scale), 1), v_init=np.round(layer.v_init * scale))
        layers.append(replace(layer, **changes))
        records[layer.name] = {"scale": scale, "weight_exp": list(exps), "bias_exp": bias_exp,
                               "n_bias_clipped": n_bias_clipped}
    provenance = dict(network.provenance)
    provenance["quantization"] = {
        "profile": hw.name, "state_bits": hw.state_bits, "weight_mantissa_bits": hw.weight_mantissa_bits,
        "weight_exp_max": exp_max, "bias_mantissa_bits": hw.bias_mant_bits, "bias_exp_max": hw.bias_exp_max,
        "headroom_bits": headroom_bits, "layers": records}
    return Network(layers, numeric="int", provenance=provenance)


def _quantize_synapse(synapse: Synapse, scale: float, mant_max: int, exp_max: int) -> Tuple[Synapse, int]:
    scaled = synapse.op.weight * scale
    peak = float(np.max(np.abs(scaled)))
    exp = 0 if peak <= mant_max else min(exp_max, math.ceil(math.log2(peak / mant_max)))
    mant = np.clip(np.round(scaled / 2.0 ** exp), -mant_max - 1, mant_max)
    return Synapse(synapse.source, replace(synapse.op, weight=mant, weight_exp=exp)), exp


def _quantize_bias(scaled: np.ndarray, hw: HardwareProfile) -> Tuple[np.ndarray, int, int]:
    """Integer bias ``mant * 2**exp`` with one exponent per layer; returns (bias, exp, n_clipped)."""
    mant_max = 2 ** (hw.bias_mant_bits - 1) - 1
    peak = float(np.max(np.abs(scaled))) if scaled.size else 0.0
    exp = hw.bias_exp_min
    while exp < hw.bias_exp_max and round(peak / 2.0 ** exp) > mant_max:
        exp += 1
    mant = np.round(scaled / 2.0 ** exp)
    n_clipped = int(np.sum(np.abs(mant) > mant_max))
    return np.clip(mant, -mant_max - 1, mant_max) * 2.0 ** exp, exp, n_clipped
