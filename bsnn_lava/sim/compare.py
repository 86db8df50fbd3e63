"""Two simulations of the same images compared image by image (paired), step by step.

Two networks that differ slightly (float vs fixed point, two roundings) agree on most images; the
difference of their accuracies is decided by the few images on which exactly one is right. Its
standard error therefore comes from those discordant images, not from the accuracy itself: with
``n_a`` images only run ``a`` gets right and ``n_b`` only ``b`` gets right (out of ``n``), the
difference is ``(n_a - n_b) / n`` and its standard error
``sqrt((n_a + n_b) / n - ((n_a - n_b) / n) ** 2) / sqrt(n)`` (the paired-sample formula, McNemar's
setting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .result import SimResult, first_crossing


@dataclass(frozen=True)
class PairedComparison:
    """Run ``a`` against run ``b`` on the same ``n_samples`` images; arrays have one entry per step
    (entry t: after ``t + 1`` steps). Accuracies and differences are fractions (x 100 for points).

    ``only_a``/``only_b``: images that only ``a``/``b`` classifies correctly at that step;
    ``ann_accuracy``: the ANN's accuracy on these images (from run ``a``).
    """
    n_samples: int
    accuracy_a: np.ndarray
    accuracy_b: np.ndarray
    only_a: np.ndarray
    only_b: np.ndarray
    ann_accuracy: float

    @property
    def difference(self) -> np.ndarray:
        """``accuracy_a - accuracy_b`` per step."""
        return (self.only_a - self.only_b) / self.n_samples

    @property
    def standard_error(self) -> np.ndarray:
        """Paired standard error of :attr:`difference` per step."""
        discordant = (self.only_a + self.only_b) / self.n_samples
        return np.sqrt(np.maximum(discordant - self.difference ** 2, 0.0) / self.n_samples)

    def steps_to_within(self, points: float) -> Optional[int]:
        """First T (steps) at which run ``a`` is within ``points`` of the ANN on these images."""
        return first_crossing(self.accuracy_a, self.ann_accuracy - points / 100.0)


def compare_runs(a: SimResult, b: SimResult, labels, samples=None) -> PairedComparison:
    """Compare two simulations of the same images (and steps); ``samples``: an index or slice
    selecting the images to compare (default all)."""
    if a.ann_predictions is None:
        raise ValueError("run a was simulated without the ANN (ann=False); compare_runs needs its ANN predictions")
    if a.predictions_per_step.shape != b.predictions_per_step.shape:
        raise ValueError(f"the runs differ in shape (steps, images): {a.predictions_per_step.shape} vs "
                         f"{b.predictions_per_step.shape}")
    labels = np.asarray(labels)
    if labels.shape != (a.n_samples,):
        raise ValueError(f"{labels.shape[0] if labels.ndim else 0} labels for {a.n_samples} images")
    select = slice(None) if samples is None else samples
    y = labels[select]
    if y.size == 0:
        raise ValueError("no images selected")
    correct_a = a.predictions_per_step[:, select] == y
    correct_b = b.predictions_per_step[:, select] == y
    return PairedComparison(
        n_samples=int(y.size), accuracy_a=correct_a.mean(axis=1), accuracy_b=correct_b.mean(axis=1),
        only_a=(correct_a & ~correct_b).sum(axis=1), only_b=(~correct_a & correct_b).sum(axis=1),
        ann_accuracy=float(np.mean(a.ann_predictions[select] == y)))
