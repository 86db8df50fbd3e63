"""What a simulation returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np


@dataclass
class StreamRecord:
    """What a streamed run adds to its :class:`SimResult`: a new round of ``lanes`` images entered
    every ``frame_steps`` steps, and each image's prediction was read ``latency_steps`` after it
    entered (:class:`bsnn_lava.dynamics.StreamPlan`).

    Per image (rows in the order of ``image_index``, its 0-based position in the images given):
    ``prediction_step`` the 0-based step after which its prediction was read, ``readout`` the readout
    potentials then (n_samples, classes; integer-valued in an integer network)."""
    lanes: int
    n_rounds: int
    latency_steps: int
    frame_steps: int
    image_index: np.ndarray
    prediction_step: np.ndarray
    readout: np.ndarray


@dataclass
class SimResult:
    """Counts and accuracy of one simulation of ``n_samples`` images for ``n_steps`` steps.

    ``accuracy[t]``: fraction of correct predictions after step t, i.e. after ``t + 1`` steps
    (``None`` without labels). ``n_spikes_per_step[t, i]``: spikes of spiking layer
    ``layer_names[i]`` at step t, summed over samples. ``n_sin``: neurons with ANN pre-activation
    <= 0 that spiked (spikes of inactivated neurons), summed over samples, for neuron layers
    (relays repeat their source and are left out). ``n_lost_input``:
    neuron-steps whose nonzero input was discarded (not integrating). ``n_saturated``: neuron-steps
    clipped to the state range (integer networks). ``n_synops_per_step[t, k]``: synaptic operations
    (events x nonzero fan-out) of synapse ``synapse_names[k]`` (``target<-source``) caused by the
    events its source sent at step t (input pixels count as graded events where nonzero).
    ``n_spikes_per_neuron[layer]``: spikes of each neuron, summed over steps and samples.
    ``predictions_per_step[t, i]``: the class predicted for sample i after ``t + 1`` steps (argmax
    of the readout potential, first index on ties); ``predictions`` is its last row.
    ``ann_predictions[i]``: the class the equivalent ANN predicts for sample i (``n_sin``,
    ``ann_predictions`` and ``ann_accuracy`` are ``None`` for a run without the ANN). ``frame_limit``: the
    frames each layer ran (:meth:`bsnn_lava.ir.Network.for_run`).

    A streamed run (``stream`` set, :class:`StreamRecord`) has one prediction per image, read at the
    end of its frame: ``predictions_per_step`` and ``accuracy`` are ``None``, :attr:`final_accuracy`
    is the accuracy of ``predictions``, and the per-step counts cover the whole stream.
    """
    n_steps: int
    n_samples: int
    layer_names: Tuple[str, ...]
    n_spikes_per_step: np.ndarray
    synapse_names: Tuple[str, ...]
    n_synops_per_step: np.ndarray
    n_spikes_per_neuron: Dict[str, np.ndarray]
    n_sin: Optional[Dict[str, int]]
    n_lost_input: Dict[str, int]
    n_saturated: Dict[str, int]
    n_neurons: Dict[str, int]
    predictions: np.ndarray
    predictions_per_step: Optional[np.ndarray]
    ann_predictions: Optional[np.ndarray]
    accuracy: Optional[np.ndarray] = None
    ann_accuracy: Optional[float] = None
    method: str = "step"
    extras: Dict[str, object] = field(default_factory=dict)
    stream: Optional[StreamRecord] = None
    #: streamed runs with labels: how many ``predictions`` are right
    final_correct: Optional[int] = None
    #: the frame limit every layer of a bistable network ran with (``None``: none; a choice of the run)
    frame_limit: Optional[int] = None

    @property
    def final_accuracy(self) -> Optional[float]:
        """The accuracy of ``predictions``: after the last step, or (streamed) at each image's frame."""
        if self.stream is not None:
            return None if self.final_correct is None else self.final_correct / self.n_samples
        return None if self.accuracy is None else float(self.accuracy[-1])

    @property
    def images_per_step(self) -> float:
        """Images predicted per simulated step (all lanes of a streamed run; one image at a time, 1 / T
        per image: the run shows its images one after another)."""
        return self.n_samples / (self.n_steps if self.stream is not None else self.n_steps * self.n_samples)

    @property
    def n_spikes(self) -> Dict[str, int]:
        """Total spikes per spiking layer over all steps and samples."""
        totals = self.n_spikes_per_step.sum(axis=0)
        return {name: int(n) for name, n in zip(self.layer_names, totals)}

    def steps_to_within(self, points: float) -> Optional[int]:
        """Smallest number of steps T at which accuracy reaches ``ann_accuracy - points/100``
        (first crossing), or ``None`` if it never does within the run."""
        if self.accuracy is None or self.ann_accuracy is None:
            return None
        return first_crossing(self.accuracy, self.ann_accuracy - points / 100.0)

    def steps_to_stay_within(self, points: float) -> Optional[int]:
        """Smallest T from which accuracy stays at or above ``ann_accuracy - points/100`` until the
        end of the run (``None`` if the last step is below)."""
        if self.accuracy is None or self.ann_accuracy is None:
            return None
        return sustained_crossing(self.accuracy, self.ann_accuracy - points / 100.0)

    def steps_to_final_prediction(self) -> np.ndarray:
        """Per image, the smallest T (1-based steps) from which the predicted class stays the one
        predicted after the last step (1 if it never changed); streamed: the step (1-based) after
        which its prediction was read."""
        if self.stream is not None:
            return self.stream.prediction_step + 1
        changed = self.predictions_per_step != self.predictions_per_step[-1]  # (steps, images)
        last_change = np.where(changed.any(axis=0), changed.shape[0] - 1 - np.argmax(changed[::-1], axis=0), -1)
        return (last_change + 2).astype(np.int64)

    def per_image(self, labels=None) -> Dict[str, list]:
        """Columns, one entry per image in run order: ``index`` (0-based position in the images
        given), ``label`` (when ``labels`` are given), ``prediction`` (after the last step),
        ``ann_prediction`` (runs with the ANN), ``final_from_step`` (:meth:`steps_to_final_prediction`)."""
        columns = {"index": list(range(self.n_samples))}
        if labels is not None:
            columns["label"] = [int(v) for v in np.asarray(labels)]
        columns["prediction"] = [int(v) for v in self.predictions]
        if self.ann_predictions is not None:
            columns["ann_prediction"] = [int(v) for v in self.ann_predictions]
        if self.stream is None:
            columns["final_from_step"] = [int(v) for v in self.steps_to_final_prediction()]
        else:
            columns["prediction_step"] = [int(v) for v in self.stream.prediction_step + 1]
            columns["readout"] = [[_number(v) for v in row] for row in self.stream.readout]
        return columns

    def summary(self, labels=None) -> Dict[str, object]:
        """JSON-compatible digest (curves as lists; ``images``: :meth:`per_image`; ``stream``: the
        stream's timing, for a streamed run)."""
        stream = None
        if self.stream is not None:
            s = self.stream
            stream = {"lanes": s.lanes, "rounds": s.n_rounds, "latency_steps": s.latency_steps,
                      "frame_steps": s.frame_steps, "images_per_step": self.images_per_step,
                      "accuracy": self.final_accuracy}
        return {
            "n_steps": self.n_steps, "n_samples": self.n_samples, "method": self.method,
            "ann_accuracy": self.ann_accuracy, "stream": stream, "frame_limit": self.frame_limit,
            "accuracy": None if self.accuracy is None else [float(a) for a in self.accuracy],
            "n_spikes": self.n_spikes, "n_synops": dict(zip(self.synapse_names, map(int, self.n_synops_per_step.sum(0)))),
            "n_sin": self.n_sin, "n_lost_input": self.n_lost_input,
            "n_saturated": self.n_saturated, "n_neurons": self.n_neurons,
            "images": self.per_image(labels),
        }


def first_crossing(accuracy, level: float) -> Optional[int]:
    """Smallest T (1-based steps) with ``accuracy[T - 1] >= level``, or ``None``."""
    reached = np.nonzero(np.asarray(accuracy) >= level - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else None


def sustained_crossing(accuracy, level: float) -> Optional[int]:
    """Smallest T (1-based steps) with ``accuracy[t] >= level`` for every t >= T - 1, or ``None``."""
    below = np.nonzero(np.asarray(accuracy) < level - 1e-12)[0]
    if below.size == 0:
        return 1
    return None if below[-1] == len(accuracy) - 1 else int(below[-1]) + 2


def _number(value: float):
    """An int where the value is integral (readout potentials of integer networks), else a float."""
    return int(value) if float(value).is_integer() else float(value)
