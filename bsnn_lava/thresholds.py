"""Threshold choices from a layer's activations: plain numpy, below the converter and the fine-tuning.

``positive_percentile``: the converter's calibration (a percentile of the positive activations).
``least_squares_threshold``: the threshold whose clip-floor-shift quantization with L levels comes
closest, in squared error, to the ReLU activations (the start that keeps low-level fine-tuning from
collapsing on deep networks, where a high percentile leaves most activations in the lowest level).
Activations are in real units; a threshold is in the same units.
"""
from __future__ import annotations

import numpy as np

#: Candidate thresholds of the least-squares search: these fractions of the largest activation
#: (the percentile's threshold is always a candidate too).
GRID_FRACTIONS = np.linspace(0.01, 1.0, 100)
#: At most this many activations enter the search (an even subsample of the rest).
MAX_SAMPLES = 200_000
#: Candidates x activations the search quantizes in one numpy call (8 bytes each): a channel with few
#: activations tries every candidate at once, one with many a candidate at a time.
SEARCH_BLOCK = 100_000


def positive_percentile(values: np.ndarray, percentile: float) -> float:
    """The ``percentile``-th percentile of the positive ``values`` (1.0 when none is positive)."""
    positive = values[values > 0]
    return float(np.percentile(positive, percentile)) if positive.size else 1.0


def clip_floor_shift(values: np.ndarray, threshold: float, levels: int) -> np.ndarray:
    """``threshold / L * clip(floor(x L / threshold + 1/2), 0, L)``: what a bistable neuron with
    V(0) = threshold / 2 and a window of L steps passes on (:class:`bsnn_lava.training.ClipFloorShift`)."""
    return np.clip(np.floor(values * levels / threshold + 0.5), 0, levels) * threshold / levels


def quantization_error(values: np.ndarray, threshold: float, levels: int) -> float:
    """Mean squared difference between ``relu(values)`` and their clip-floor-shift quantization."""
    relu = np.maximum(values, 0.0)
    return float(np.mean((relu - clip_floor_shift(relu, threshold, levels)) ** 2)) if relu.size else 0.0


def least_squares_threshold(values: np.ndarray, levels: int, percentile: float = 99.9) -> float:
    """The threshold, among :data:`GRID_FRACTIONS` of the largest activation and the
    ``percentile`` threshold, with the smallest :func:`quantization_error` (1.0 when no activation
    is positive). Zero and negative activations quantize to 0 whatever the threshold, so only the
    positive ones enter the search."""
    positive = np.asarray(values, dtype=np.float64).ravel()
    positive = positive[positive > 0]
    if positive.size == 0:
        return 1.0
    if positive.size > MAX_SAMPLES:
        positive = np.sort(positive)[np.linspace(0, positive.size - 1, MAX_SAMPLES).astype(np.int64)]
    candidates = np.append(GRID_FRACTIONS * positive.max(), positive_percentile(positive, percentile))
    rows = max(1, SEARCH_BLOCK // positive.size)
    errors = np.concatenate([np.mean((positive - clip_floor_shift(positive, candidates[i:i + rows, None], levels)) ** 2,
                                     axis=1) for i in range(0, candidates.size, rows)])
    return float(candidates[int(np.argmin(errors))])
