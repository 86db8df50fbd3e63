"""Value ranges an integer network must respect: float32 exactness and the recorded profile.

A network's ``provenance["quantization"]`` (written by :func:`bsnn_lava.quantize.quantize`) records
its hardware profile's limits; every key is optional and only the keys present are enforced, by the
writer (it refuses to write) and by the reader (it refuses to read):

- ``weight_mantissa_bits`` (int b): every weight mantissa lies in [-2**(b-1), 2**(b-1) - 1];
- ``weight_exp_min``, ``weight_exp_max`` (int): bounds of every synapse's ``weight_exp``;
- ``bias_mantissa_bits`` and ``bias_exp_max`` (ints, both needed): |bias| <= 2**(b-1) * 2**exp_max;
- ``state_bits`` (int s): thresholds, biases and initial potentials lie in [-2**(s-1), 2**(s-1) - 1];
- ``threshold_max`` (number): largest threshold;
- ``graded_payload_bits`` (int g, 0 for binary-spike chips): a graded spike's payload (``payload_max``
  above 1) fits g unsigned bits.

All values are in the layer's integer units.

Float networks have no limits besides finiteness.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

#: float32 represents every integer of magnitude up to 2**24 exactly (integer-network weights).
FLOAT32_EXACT_MAX = 2 ** 24

_INT_KEYS = ("weight_mantissa_bits", "weight_exp_min", "weight_exp_max", "bias_mantissa_bits", "bias_exp_max",
             "state_bits", "graded_payload_bits")


@dataclass(frozen=True)
class Limits:
    """The recorded limits (``None`` = not recorded)."""
    weight_mantissa_bits: Optional[int] = None
    weight_exp_min: Optional[int] = None
    weight_exp_max: Optional[int] = None
    bias_mantissa_bits: Optional[int] = None
    bias_exp_max: Optional[int] = None
    state_bits: Optional[int] = None
    threshold_max: Optional[float] = None
    graded_payload_bits: Optional[int] = None


def limits_from_provenance(provenance: Mapping[str, Any]) -> Limits:
    """The limits recorded in ``provenance["quantization"]``; raises ``ValueError`` on bad entries."""
    quant = provenance.get("quantization")
    if quant is None:
        return Limits()
    if not isinstance(quant, Mapping):
        raise ValueError(f"provenance 'quantization' must be a JSON object, got {type(quant).__name__}")
    values = {}
    for key in _INT_KEYS:
        if key in quant:
            value = quant[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"provenance quantization.{key} must be an integer, got {value!r}")
            low = 0 if key == "graded_payload_bits" else 1
            if key.endswith("_bits") and not low <= value <= 64:
                raise ValueError(f"provenance quantization.{key} must be in {low}..64, got {value}")
            values[key] = value
    if "threshold_max" in quant:
        value = quant["threshold_max"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"provenance quantization.threshold_max must be a positive number, got {value!r}")
        values["threshold_max"] = float(value)
    return Limits(**values)


def payload_problem(payload_max: int, limits: Limits) -> Optional[str]:
    """Why a layer's graded payloads do not fit the recorded payload bits (``None`` if they do)."""
    if payload_max == 1 or limits.graded_payload_bits is None:
        return None
    if payload_max.bit_length() > limits.graded_payload_bits:
        have = (f"{limits.graded_payload_bits}-bit payloads" if limits.graded_payload_bits
                else "binary spikes only")
        return (f"is {payload_max}: graded spikes need {payload_max.bit_length()} payload bits, the recorded "
                f"profile has {have}")
    return None


def _signed_range(bits: int):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def integer_problem(values: np.ndarray) -> Optional[str]:
    """Why ``values`` are not exact integers (``None`` if they are)."""
    if not np.array_equal(values, np.round(values)):
        bad = values[values != np.round(values)].flat[0]
        return f"is not integer-valued in an integer network (e.g. {bad!r})"
    return None


def weight_problem(weight: np.ndarray, weight_exp: int, limits: Limits) -> Optional[str]:
    """Why an integer network's weight mantissas or exponent break float32 exactness or the limits."""
    problem = integer_problem(weight)
    if problem:
        return problem
    largest = float(np.max(np.abs(weight))) if weight.size else 0.0
    if largest > FLOAT32_EXACT_MAX:
        return (f"magnitude {largest:.0f} exceeds 2**24, the largest integer float32 stores exactly "
                "(use a larger weight_exp)")
    if limits.weight_mantissa_bits is not None and weight.size:
        low, high = _signed_range(limits.weight_mantissa_bits)
        if weight.min() < low or weight.max() > high:
            return (f"values in [{weight.min():.0f}, {weight.max():.0f}] exceed the recorded "
                    f"{limits.weight_mantissa_bits}-bit mantissa range [{low}, {high}]")
    if limits.weight_exp_min is not None and weight_exp < limits.weight_exp_min:
        return f"weight_exp {weight_exp} is below the recorded minimum {limits.weight_exp_min}"
    if limits.weight_exp_max is not None and weight_exp > limits.weight_exp_max:
        return f"weight_exp {weight_exp} is above the recorded maximum {limits.weight_exp_max}"
    return None


def state_problem(values: np.ndarray, limits: Limits) -> Optional[str]:
    """Why a threshold, bias or initial potential does not fit the recorded state width."""
    if limits.state_bits is None or not values.size:
        return None
    low, high = _signed_range(limits.state_bits)
    if values.min() < low or values.max() > high:
        return f"values exceed the recorded {limits.state_bits}-bit state range [{low}, {high}]"
    return None


def threshold_problem(threshold: np.ndarray, limits: Limits) -> Optional[str]:
    if limits.threshold_max is not None and threshold.size and threshold.max() > limits.threshold_max:
        return f"maximum {threshold.max():g} exceeds the recorded threshold_max {limits.threshold_max:g}"
    return state_problem(threshold, limits)


def bias_problem(bias: np.ndarray, limits: Limits) -> Optional[str]:
    if None not in (limits.bias_mantissa_bits, limits.bias_exp_max) and bias.size:
        largest = 2 ** (limits.bias_mantissa_bits - 1 + limits.bias_exp_max)
        if np.abs(bias).max() > largest:
            return (f"magnitude {np.abs(bias).max():g} exceeds 2**{limits.bias_mantissa_bits - 1} * "
                    f"2**{limits.bias_exp_max}, the recorded bias mantissa and exponent range")
    return state_problem(bias, limits)
