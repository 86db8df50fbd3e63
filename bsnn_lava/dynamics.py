"""Fixed-point and floating-point neuron arithmetic shared by every backend.

This module is the only home of the gated integrate-and-fire update. The torch reference simulator
(`bsnn_lava.sim`) and the Lava process models (`bsnn_lava.lava.procs`) call these functions with their
own arrays (numpy or torch): every function here uses only operators that both array types spell
the same way (``+ - * >= != // .clip() .sum()``), so the two backends cannot drift apart. It imports
nothing from torch or from the rest of the project.

Time is counted in steps; ``t`` is a 0-based step index. Units of a neuron's state ``v`` are the
neuron's own integer scale in a quantized network, or real units in a float network.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

#: Every synapse delivers its output one step after the spike that caused it, as Lava's Dense and
#: Conv process models do (they send the previous step's accumulation to avoid deadlocks).
SYNAPSE_DELAY_STEPS = 1

#: Neuron presets (schedule modes). ``bistable``: alternate windows of integrate-only and fire-only;
#: ``if``: integrate and fire every step; ``warmup``: integrate only in the first window, then
#: integrate and fire every step.
MODES = ("bistable", "if", "warmup")

#: Loihi 2 neuron state (membrane potential, accumulators) is a 24-bit signed integer.
STATE_BITS = 24
#: Loihi synaptic weights: 8-bit signed mantissa with a shared per-layer exponent.
WEIGHT_MANT_BITS = 8


def phase(t: int, mode: str, offset_steps: int, window_steps: int, frames: Optional[int] = None) -> Tuple[bool, bool]:
    """Return ``(integrate, fire)`` for step ``t`` of a layer with the given schedule.

    Before ``offset_steps`` the layer is idle (neither). From then on the window index is
    ``n = (t - offset_steps) // window_steps``; ``bistable`` integrates in even windows and fires in
    odd ones, ``if`` does both every step, ``warmup`` integrates in window 0 and does both after.
    ``frames`` (bistable only; ``None``: no limit): the layer is idle again after that many frames
    (integrate-and-fire window pairs), so a one-frame network processes each image exactly once.
    """
    if t < offset_steps:
        return False, False
    if mode == "if":
        return True, True
    window_index = (t - offset_steps) // window_steps
    if mode == "bistable":
        if frames is not None and window_index >= 2 * frames:
            return False, False
        return window_index % 2 == 0, window_index % 2 == 1
    if mode == "warmup":
        return True, window_index >= 1
    raise ValueError(f"unknown neuron mode {mode!r}; known: {', '.join(MODES)}")


def frame_starts(t: int, mode: str, offset_steps: int, window_steps: int, frames: Optional[int] = None) -> bool:
    """True on the first step of each integrate window of a bistable layer (every ``2 * window_steps``
    steps from ``offset_steps``): where a layer with *frame reset* restarts from ``v_init``, so every
    frame of 2P steps computes the same function of its input (the first frame's)."""
    return (mode == "bistable" and t >= offset_steps and (t - offset_steps) % (2 * window_steps) == 0
            and (frames is None or t - offset_steps < 2 * window_steps * frames))


def stream_frame(t: int, offset_steps: int, window_steps: int) -> int:
    """The frame (0-based; negative before the offset) that step ``t`` of a bistable layer belongs to.

    A frame is one integrate window and one fire window, ``2 * window_steps`` steps from
    ``offset_steps``. In a streamed run (:class:`StreamPlan`) the input shows round k of the images
    during its frame k, and with frame reset every layer's frame k is a function of its sources'
    frame k only (their spikes arrive in the layer's integrate window, one synaptic delay after they
    are sent), so every layer's frame k processes round k and the readout's frame k predicts it.
    """
    return (t - offset_steps) // (2 * window_steps)


def stream_steps(n_rounds: int, latency_steps: int, window_steps: int) -> int:
    """Steps of a streamed run of ``n_rounds`` rounds: the first round's ``latency_steps`` (the
    readout's first complete frame), then one frame period (``2 * window_steps``) per further round."""
    return latency_steps + 2 * window_steps * (n_rounds - 1)


def stream_prediction_step(k: int, latency_steps: int, window_steps: int) -> int:
    """The 0-based step after which the readout holds round ``k``'s prediction (the end of the
    readout's k-th integrate window): ``latency_steps - 1 + 2 * window_steps * k``."""
    return latency_steps - 1 + 2 * window_steps * k


class StreamPlan:
    """Which image a streamed run shows where: images enter ``lanes`` at a time, one *round* per frame.

    Image ``i`` is in round ``i // lanes``, lane ``i % lanes``; ``n_rounds = ceil(n_images / lanes)``.
    A run may simulate only the lanes ``[lane_start, lane_stop)`` (a rank's share under torchrun);
    its lane ``l`` is global lane ``lane_start + l``. Rounds fill lanes in order, so only the last round
    can be partial, and the lanes that have an image in a round are a prefix of the run's lanes:
    the others are idle in that round's frame (:func:`gated_if_step`'s ``active_lanes``).
    """

    def __init__(self, n_images: int, lanes: int, lane_start: int = 0, lane_stop: Optional[int] = None):
        lane_stop = lanes if lane_stop is None else lane_stop
        for name, value, low in (("n_images", n_images, 1), ("lanes", lanes, 1), ("lane_start", lane_start, 0)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not lane_start < lane_stop <= lanes:
            raise ValueError(f"the run's lanes [{lane_start}, {lane_stop}) must lie within the {lanes} lanes")
        self.n_images, self.lanes = int(n_images), int(lanes)
        self.lane_start, self.lane_stop = int(lane_start), int(lane_stop)
        self.n_rounds = -(-self.n_images // self.lanes)

    @property
    def run_lanes(self) -> int:
        """Lanes this run simulates (the leading axis of its states)."""
        return self.lane_stop - self.lane_start

    def round_images(self, k: int) -> Tuple[int, int]:
        """``(start, stop)``: the indices of the images this run shows in round ``k``, one per lane
        from its first lane (empty when the round has none for these lanes)."""
        start = min(k * self.lanes + self.lane_start, self.n_images)
        return start, min(k * self.lanes + self.lane_stop, self.n_images)

    def active_lanes(self, k: int) -> int:
        """How many of this run's lanes (a prefix) hold an image in round ``k`` (0 outside the run)."""
        if k < 0 or k >= self.n_rounds:
            return 0
        start, stop = self.round_images(k)
        return stop - start

    def image_indices(self):
        """The indices of the images this run shows, in the order it shows them (round by round)."""
        return [i for k in range(self.n_rounds) for i in range(*self.round_images(k))]


def state_limits(state_bits: int) -> Tuple[int, int]:
    """Smallest and largest value of a signed ``state_bits``-bit integer."""
    return -(1 << (state_bits - 1)), (1 << (state_bits - 1)) - 1


def count_true(mask: Any, per_sample: bool = False) -> Any:
    """The number of true elements of ``mask``; with ``per_sample``, one count per index of its
    leading (sample) axis."""
    return mask.reshape(mask.shape[0], math.prod(mask.shape[1:])).sum(1) if per_sample else mask.sum()


def saturate(v: Any, state_bits: Optional[int], per_sample: bool = False) -> Tuple[Any, Any]:
    """Clip ``v`` to a signed ``state_bits``-bit range; return ``(v_clipped, n_saturated)``
    (:func:`count_true` of the clipped elements).

    ``state_bits=None`` means unbounded (float networks): ``v`` is returned unchanged with count 0.
    """
    if state_bits is None:
        return v, 0
    lo, hi = state_limits(state_bits)
    return v.clip(lo, hi), count_true((v < lo) | (v > hi), per_sample)


def gated_if_step(v: Any, a_in: Any, bias: Any, threshold: Any, integrate: bool, fire: bool,
                  state_bits: Optional[int] = None, restart: Any = None, payload_max: int = 1,
                  per_sample: bool = False, active_lanes: Optional[int] = None) -> Tuple[Any, Any, Any, Any]:
    """One step of the gated integrate-and-fire neuron with reset by subtraction.

    Args:
        v: membrane potential, one value per neuron (any shape).
        a_in: synaptic input delivered this step (same shape as ``v``), or ``None`` for no input.
        bias: added on every integrate step (broadcasts against ``v``).
        threshold: spike threshold (broadcasts against ``v``); a spike subtracts it from ``v``.
        integrate, fire: the gates for this step, from :func:`phase`.
        state_bits: saturate ``v`` to this signed width after integrating (``None``: float, no bound).
        restart: ``v_init`` on a step where the layer's frame restarts (:func:`frame_starts` with
            frame reset), else ``None``: ``v`` is set to it (broadcast) before anything else.
        payload_max: 1 for binary spikes (spike where ``v >= threshold``); above 1, graded spikes:
            each neuron sends ``clip(floor(v / threshold), 0, payload_max)`` (0: no spike).
        per_sample: ``v``'s leading axis indexes samples (a batch of images): the two counts are
            returned per sample (:func:`count_true`), else in total.
        active_lanes: in a streamed run (:class:`StreamPlan`), the number of leading samples that
            hold an image in this step's frame; the other samples are idle: they keep their state,
            send nothing and count nothing. ``None``: every sample takes the step.

    Returns:
        ``(spikes, v, n_lost_input, n_saturated)``: ``spikes`` is a boolean array (binary) or the
        payloads in ``v``'s dtype (graded), or ``None`` when the layer cannot fire this step; either
        way a neuron subtracts ``spikes * threshold``. ``n_lost_input`` counts neurons whose nonzero
        input was discarded because the layer was not integrating; ``n_saturated`` clipped neurons.
    """
    if active_lanes is not None and active_lanes < v.shape[0]:
        return _step_active_lanes(v, a_in, bias, threshold, integrate, fire, state_bits, restart, payload_max,
                                  per_sample, active_lanes)
    n_lost_input = 0
    n_saturated = 0
    if restart is not None:
        v = v * 0 + restart
    if integrate:
        v = v + bias if a_in is None else v + a_in + bias
        v, n_saturated = saturate(v, state_bits, per_sample)
    elif a_in is not None:
        n_lost_input = count_true(a_in != 0, per_sample)
    spikes = None
    if fire:
        spikes = v >= threshold if payload_max == 1 else (v // threshold).clip(0, payload_max)
        v = v - spikes * threshold
    return spikes, v, n_lost_input, n_saturated


def _step_active_lanes(v, a_in, bias, threshold, integrate, fire, state_bits, restart, payload_max, per_sample,
                       active_lanes):
    """:func:`gated_if_step` on the first ``active_lanes`` samples; the rest keep ``v`` and send nothing."""
    n = active_lanes
    spikes, v_active, n_lost, n_saturated = gated_if_step(
        v[:n], None if a_in is None else a_in[:n], bias, threshold, integrate, fire, state_bits, restart, payload_max,
        per_sample)
    v_all = v * 1  # a copy, in either array type
    v_all[:n] = v_active
    if spikes is not None:
        silent = (v != v) if payload_max == 1 else v * 0  # no spikes in the idle samples
        silent[:n] = spikes
        spikes = silent
    if per_sample:  # zero counts for the idle samples
        n_lost, n_saturated = _pad_counts(n_lost, v), _pad_counts(n_saturated, v)
    return spikes, v_all, n_lost, n_saturated


def _pad_counts(counts: Any, like: Any) -> Any:
    """Per-sample ``counts`` of the leading samples, then zeros: one count per sample of ``like``."""
    padded = count_true(like != like, per_sample=True)  # zeros, in ``like``'s array type
    if not isinstance(counts, int):
        padded[:counts.shape[0]] = counts
    return padded


def window_spike_count(v: Any, threshold: Any, count_max: int) -> Tuple[Any, Any]:
    """What a neuron sends in one fire-only window, and the residual.

    ``count_max``: the window's steps times the payload of a spike (``window_steps`` for binary
    spikes). Equal to that many repeated fire-only :func:`gated_if_step` calls for integer-valued
    state: ``count = clip(floor(v / threshold), 0, count_max)`` (spikes, or the sum of the payloads),
    ``v -= count * threshold``. Step j of the window carries :func:`window_payload` of the count,
    since ``v`` only decreases while firing.
    """
    count = (v // threshold).clip(0, count_max)
    return count, v - count * threshold


def window_payload(count: Any, j: int, payload_max: int) -> Any:
    """The payload sent on step j (0-based) of a fire window whose total is ``count`` (from
    :func:`window_spike_count`): ``clip(count - j * payload_max, 0, payload_max)``; for binary spikes
    (``payload_max`` 1) this is 1 where ``count > j``."""
    return (count - j * payload_max).clip(0, payload_max)


def max_pool(x: Any, taps: Any, maximum: Callable[[Any, Any], Any]) -> Any:
    """Max pooling of what a layer sends: ``x`` (batch, inputs) flattened in (C, H, W) order, ``taps``
    (outputs, k) the input each output reads per kernel tap (:meth:`bsnn_lava.ir.MaxPool.taps`),
    ``maximum`` the backend's elementwise maximum (``numpy.maximum``, ``torch.maximum``). Returns
    (batch, outputs).

    Exact on counts and on step by step messages: ``window_payload`` is monotone in the count, so
    ``window_payload(max_i c_i, j) = max_i window_payload(c_i, j)`` for every step j of a fire
    window (binary spikes: the OR of the pooled neurons' spikes).
    """
    pooled = x[:, taps[:, 0]]
    for j in range(1, taps.shape[1]):
        pooled = maximum(pooled, x[:, taps[:, j]])
    return pooled
