"""Typed, frozen nodes of the network IR.

A network is a list of *layers* in topological order: one :class:`Input` (the pixel source), spiking
:class:`GatedIF` layers (neurons and synchronous relays) and one :class:`Readout` accumulator. Each
non-input layer owns the synapses that feed it; several synapses into one layer are summed (this is
how residual adds are expressed). Every synapse delivers one step after the spike
(:data:`bsnn_lava.dynamics.SYNAPSE_DELAY_STEPS`).

Units: a synapse weight is the input a neuron receives per unit of its source's output (per spike,
or per pixel unit for the input layer), in the neuron's own scale. In a float network a spike of
layer d is worth ``threshold_d`` real activation units; in an integer network every quantity is an
integer in the receiving layer's scale (``scale`` integer units per float unit).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np


class IRError(ValueError):
    """An IR node or network is malformed; the message names the layer and the field."""


def _array(value, name: str, field_name: str) -> np.ndarray:
    """Float64 read-only copy of ``value``; rejects NaN and infinity."""
    arr = np.array(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise IRError(f"layer {name!r}: field {field_name!r} has NaN or infinite values")
    arr.setflags(write=False)
    return arr


def _pair(value, name: str, field_name: str) -> Tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or not all(int(v) == v and v >= 0 for v in pair):
        raise IRError(f"layer {name!r}: field {field_name!r} must be two non-negative integers, got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class Schedule:
    """When a layer integrates and fires (see :func:`bsnn_lava.dynamics.phase`).

    ``mode``: ``bistable`` | ``if`` | ``warmup``; ``offset_steps``: first active step (may be negative
    for the input); ``window_steps``: window length P in steps; ``frames`` (bistable only): active
    for this many frames of 2P steps, then idle (``None``: no limit).
    """
    mode: str
    offset_steps: int
    window_steps: int
    frames: Optional[int] = None

    def __post_init__(self):
        if self.mode not in ("bistable", "if", "warmup"):
            raise IRError(f"schedule mode must be bistable, if or warmup, got {self.mode!r}")
        if int(self.window_steps) != self.window_steps or self.window_steps < 1:
            raise IRError(f"schedule window_steps must be a positive integer, got {self.window_steps!r}")
        if int(self.offset_steps) != self.offset_steps:
            raise IRError(f"schedule offset_steps must be an integer, got {self.offset_steps!r}")
        if self.frames is not None and (isinstance(self.frames, bool) or int(self.frames) != self.frames
                                        or self.frames < 1):
            raise IRError(f"schedule frames must be None or a positive integer, got {self.frames!r}")
        if self.frames is not None and self.mode != "bistable":
            raise IRError(f"schedule frames needs mode 'bistable', got {self.mode!r}")


@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-D cross-correlation synapse (torch semantics, zero padding).

    ``weight``: (out_channels, in_channels / groups, kernel_h, kernel_w); ``stride``, ``padding``,
    ``dilation``: (h, w) in pixels; ``groups``: input and output channels split into this many
    groups, output group g reading input group g only (depthwise: groups = channels);
    ``weight_exp``: integer networks apply ``weight * 2**weight_exp`` (0 for float networks).
    """
    weight: np.ndarray
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    weight_exp: int = 0
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        object.__setattr__(self, "weight", _array(self.weight, "?", "weight"))
        object.__setattr__(self, "stride", _pair(self.stride, "?", "stride"))
        object.__setattr__(self, "padding", _pair(self.padding, "?", "padding"))
        object.__setattr__(self, "dilation", _pair(self.dilation, "?", "dilation"))
        if self.weight.ndim != 4:
            raise IRError(f"conv2d weight must have 4 dimensions, got shape {self.weight.shape}")
        if min(self.stride) < 1 or min(self.dilation) < 1:
            raise IRError(f"conv2d stride and dilation must be >= 1, got {self.stride}, {self.dilation}")
        if isinstance(self.groups, bool) or int(self.groups) != self.groups or self.groups < 1 \
                or self.weight.shape[0] % self.groups:
            raise IRError(f"conv2d groups must be a positive integer dividing the {self.weight.shape[0]} output "
                          f"channels, got {self.groups!r}")
        object.__setattr__(self, "groups", int(self.groups))

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel_extent(self) -> Tuple[int, int]:
        """The input pixels one kernel spans (h, w): ``dilation * (kernel - 1) + 1``."""
        return tuple(self.dilation[i] * (self.weight.shape[2 + i] - 1) + 1 for i in range(2))

    def output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise IRError(f"conv2d expects input (C={self.in_channels}, H, W), got {input_shape}")
        extent = self.kernel_extent
        out_hw = [(input_shape[1 + i] + 2 * self.padding[i] - extent[i]) // self.stride[i] + 1 for i in range(2)]
        if min(out_hw) < 1:
            raise IRError(f"conv2d kernel {self.weight.shape[2:]} does not fit input {input_shape}")
        return (self.weight.shape[0], out_hw[0], out_hw[1])

    def full_weight(self) -> np.ndarray:
        """The weight as one (out_channels, in_channels, extent_h, extent_w) kernel of groups 1 and
        dilation 1: zeros between groups and between dilated taps (the same map)."""
        out_ch, per_group = self.weight.shape[:2]
        full = np.zeros((out_ch, self.in_channels, *self.kernel_extent))
        dy, dx = self.dilation
        for g in range(self.groups):
            rows = slice(g * out_ch // self.groups, (g + 1) * out_ch // self.groups)
            full[rows, g * per_group:(g + 1) * per_group, ::dy, ::dx] = self.weight[rows]
        return full

    def fan_out(self, input_shape: Tuple[int, ...]) -> np.ndarray:
        """Synaptic operations one event of each input neuron causes: its nonzero weights onto
        output neurons that exist (padding borders and strides included). Shape ``input_shape``."""
        _, out_h, out_w = self.output_shape(input_shape)
        _, h_in, w_in = input_shape
        out_ch, per_group, kh, kw = self.weight.shape
        # (in_channels, kh, kw): output channels of its group each input channel reaches per tap
        nonzero = (self.weight != 0).reshape(self.groups, out_ch // self.groups, per_group, kh, kw).sum(axis=1)
        nonzero = nonzero.reshape(self.in_channels, kh, kw)
        counts = np.zeros(input_shape, dtype=np.int64)
        for ky in range(kh):
            rows = _tap_hits(h_in, ky * self.dilation[0], self.padding[0], self.stride[0], out_h)
            for kx in range(kw):
                cols = _tap_hits(w_in, kx * self.dilation[1], self.padding[1], self.stride[1], out_w)
                counts += nonzero[:, ky, kx, None, None] * (rows[:, None] & cols[None, :])
        return counts


@dataclass(frozen=True, eq=False)
class Dense:
    """Fully connected synapse on the source flattened in (C, H, W) order.

    ``weight``: (out_features, in_features); ``weight_exp`` as for :class:`Conv2d`.
    """
    weight: np.ndarray
    weight_exp: int = 0

    def __post_init__(self):
        object.__setattr__(self, "weight", _array(self.weight, "?", "weight"))
        if self.weight.ndim != 2:
            raise IRError(f"dense weight must have 2 dimensions, got shape {self.weight.shape}")

    def output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if int(np.prod(input_shape)) != self.weight.shape[1]:
            raise IRError(f"dense expects {self.weight.shape[1]} inputs, source has shape {input_shape}")
        return (self.weight.shape[0],)

    def fan_out(self, input_shape: Tuple[int, ...]) -> np.ndarray:
        """Nonzero weights from each input neuron (shape ``input_shape``)."""
        self.output_shape(input_shape)
        return (self.weight != 0).sum(axis=0).reshape(input_shape).astype(np.int64)


def _tap_hits(size_in: int, tap: int, padding: int, stride: int, size_out: int) -> np.ndarray:
    """Which input positions kernel tap ``tap`` connects to an existing output position."""
    offset = np.arange(size_in) + padding - tap  # = stride * output position
    return (offset >= 0) & (offset % stride == 0) & (offset // stride < size_out)


SynapseOp = Union[Conv2d, Dense]


@dataclass(frozen=True)
class MaxPool:
    """Max pooling of a source's outputs before a synapse's op (torch's ``max_pool2d``, padding never
    winning: every output is non-negative). ``kernel``, ``stride``, ``padding``: (h, w) in pixels.

    A bistable neuron whose window count is c fires on the first c steps of its fire window (binary
    spikes: a thermometer code) or sends c once (graded), so the per-step maximum of what the pooled
    neurons send is what the neuron with the largest count sends: the max of the counts, step by
    step (:func:`bsnn_lava.dynamics.max_pool`).
    """
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int] = (0, 0)

    def __post_init__(self):
        for field_name in ("kernel", "stride", "padding"):
            object.__setattr__(self, field_name, _pair(getattr(self, field_name), "?", f"pool {field_name}"))
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise IRError(f"max pool kernel and stride must be >= 1, got {self.kernel}, {self.stride}")
        if any(2 * self.padding[i] > self.kernel[i] for i in range(2)):
            raise IRError(f"max pool padding {self.padding} must be at most half the kernel {self.kernel}")

    def output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(input_shape) != 3:
            raise IRError(f"max pool expects a (C, H, W) source, got {input_shape}")
        out_hw = [(input_shape[1 + i] + 2 * self.padding[i] - self.kernel[i]) // self.stride[i] + 1 for i in range(2)]
        if min(out_hw) < 1:
            raise IRError(f"max pool kernel {self.kernel} does not fit input {input_shape}")
        return (input_shape[0], out_hw[0], out_hw[1])

    def taps(self, input_shape: Tuple[int, ...]) -> np.ndarray:
        """(outputs, kernel_h * kernel_w) int64: the flat (C, H, W) input index each output reads per
        kernel tap; a tap in the padding repeats one of its window's inputs (which leaves the max as
        it is)."""
        c, out_h, out_w = self.output_shape(input_shape)
        _, h, w = input_shape
        ch, oy, ox, ky, kx = np.ix_(np.arange(c), np.arange(out_h), np.arange(out_w), np.arange(self.kernel[0]),
                                    np.arange(self.kernel[1]))
        iy = oy * self.stride[0] - self.padding[0] + ky
        ix = ox * self.stride[1] - self.padding[1] + kx
        # a padded tap reads the window's nearest input instead (always one of the window's own)
        iy, ix = np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)
        index = (ch * h + iy) * w + ix
        return np.broadcast_to(index, (c, out_h, out_w, *self.kernel)).reshape(c * out_h * out_w, -1).astype(np.int64)

    def coverage(self, input_shape: Tuple[int, ...]) -> np.ndarray:
        """How many pooling windows read each input neuron (shape ``input_shape``): the events one
        spike makes in the pooling stage."""
        taps = np.sort(self.taps(input_shape), axis=1)
        first = np.ones(taps.shape, dtype=bool)  # each window counts an input once (padded taps repeat)
        first[:, 1:] = taps[:, 1:] != taps[:, :-1]
        return np.bincount(taps[first], minlength=int(np.prod(input_shape))).reshape(input_shape)


@dataclass(frozen=True, eq=False)
class Synapse:
    """A weighted connection from layer ``source`` (by name) into the layer that owns it; with a
    ``pool``, the op reads the max-pooled source."""
    source: str
    op: SynapseOp
    pool: Optional[MaxPool] = None

    def input_shape(self, source_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        """The shape the op reads: the source's, pooled where the synapse pools."""
        return tuple(source_shape) if self.pool is None else self.pool.output_shape(tuple(source_shape))


#: The largest value an :class:`Input` sends: an 8-bit pixel.
PIXEL_MAX = 255


@dataclass(frozen=True, eq=False)
class Input:
    """Pixel source: emits the raw image (graded, 0..255) on every step its schedule fires.

    ``shape``: (C, H, W).
    """
    name: str
    shape: Tuple[int, ...]
    schedule: Schedule
    kind = "input"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise IRError(f"layer {self.name!r}: input shape must be (C, H, W), got {self.shape}")

    @property
    def synapses(self) -> Tuple[Synapse, ...]:
        return ()


def _broadcast_param(node, field_name: str, allow_spatial: bool) -> None:
    """Check that a per-layer parameter is a scalar, per channel, or (if allowed) per neuron."""
    arr = _array(getattr(node, field_name), node.name, field_name)
    shapes = [(), (node.shape[0],)] + ([tuple(node.shape)] if allow_spatial else [])
    if arr.shape not in shapes:
        raise IRError(f"layer {node.name!r}: field {field_name!r} has shape {arr.shape}, "
                      f"expected one of {shapes}")
    object.__setattr__(node, field_name, arr)


@dataclass(frozen=True, eq=False)
class GatedIF:
    """Layer of gated integrate-and-fire neurons with reset by subtraction.

    Per step (see :func:`bsnn_lava.dynamics.gated_if_step`): when integrating,
    ``v += sum(synapse inputs) + bias``; when firing, spike if ``v >= threshold`` and subtract it.

    ``shape``: (C, H, W) or (N,); ``threshold``: scalar or per channel; ``bias``: scalar, per channel
    or per neuron, added on every integrate step; ``v_init``: initial potential, scalar or per channel
    (absolute, same units as ``threshold``); ``role``: ``neuron`` or ``relay`` (a synchronous neuron on
    a shortcut: identity synapse, relays its input one window later); ``scale``: integer units per
    float unit (1.0 in float networks); ``origin``: the ANN module or graph node it came from;
    ``frame_reset`` (bistable only): ``v`` restarts from ``v_init`` at the start of every integrate
    window (:func:`bsnn_lava.dynamics.frame_starts`), so every frame repeats the first one's spike
    counts instead of carrying the residual potential over. ``payload_max``: the largest value one
    spike carries: 1 for binary spikes; above 1 a *graded* spike carries
    ``clip(floor(v / threshold), 0, payload_max)`` (Loihi 2's graded spikes) and subtracts that many
    thresholds; a synapse multiplies its weight by the payload. ``ann_clip``: the upper bound of the
    ANN activation it replaces, in the layer's units (ReLU6: 6 scale units; ``None``: a ReLU). Only
    the reference ANN (:func:`bsnn_lava.sim.ann_forward`) reads it: the converter keeps the threshold
    at or below it, and a spike rate saturates at the threshold, so the neuron clips by itself.
    """
    name: str
    shape: Tuple[int, ...]
    synapses: Tuple[Synapse, ...]
    threshold: np.ndarray
    bias: np.ndarray
    v_init: np.ndarray
    schedule: Schedule
    role: str = "neuron"
    scale: float = 1.0
    origin: str = ""
    frame_reset: bool = False
    payload_max: int = 1
    ann_clip: Optional[float] = None
    kind = "gated_if"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "synapses", tuple(self.synapses))
        _broadcast_param(self, "threshold", allow_spatial=False)
        _broadcast_param(self, "bias", allow_spatial=True)
        _broadcast_param(self, "v_init", allow_spatial=False)
        if np.any(self.threshold <= 0):
            raise IRError(f"layer {self.name!r}: threshold must be > 0")
        if self.role not in ("neuron", "relay"):
            raise IRError(f"layer {self.name!r}: role must be 'neuron' or 'relay', got {self.role!r}")
        if not self.synapses:
            raise IRError(f"layer {self.name!r}: a neuron layer needs at least one synapse")
        object.__setattr__(self, "frame_reset", bool(self.frame_reset))
        if isinstance(self.payload_max, bool) or int(self.payload_max) != self.payload_max or self.payload_max < 1:
            raise IRError(f"layer {self.name!r}: payload_max must be a positive integer, got {self.payload_max!r}")
        object.__setattr__(self, "payload_max", int(self.payload_max))
        if self.ann_clip is not None:
            if not np.isfinite(self.ann_clip) or self.ann_clip <= 0:
                raise IRError(f"layer {self.name!r}: ann_clip must be None or a positive number, got {self.ann_clip!r}")
            object.__setattr__(self, "ann_clip", float(self.ann_clip))
        if self.frame_reset and self.schedule.mode != "bistable":
            raise IRError(f"layer {self.name!r}: frame_reset needs a bistable schedule, got mode {self.schedule.mode!r}")

    @property
    def window_count_max(self) -> int:
        """The largest output of one fire window (sum of payloads): ``window_steps * payload_max``."""
        return self.schedule.window_steps * self.payload_max


@dataclass(frozen=True, eq=False)
class Readout:
    """Non-spiking output accumulator: ``v += sum(synapse inputs) + bias`` on integrate steps.

    The prediction at step t is ``argmax(v)`` (first index on ties). ``shape``: (N,) classes;
    ``bias``: (N,) or scalar; ``scale``, ``origin`` as for :class:`GatedIF`.
    """
    name: str
    shape: Tuple[int, ...]
    synapses: Tuple[Synapse, ...]
    bias: np.ndarray
    schedule: Schedule
    scale: float = 1.0
    origin: str = ""
    kind = "readout"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "synapses", tuple(self.synapses))
        _broadcast_param(self, "bias", allow_spatial=False)
        if len(self.shape) != 1:
            raise IRError(f"layer {self.name!r}: readout shape must be (classes,), got {self.shape}")
        if not self.synapses:
            raise IRError(f"layer {self.name!r}: the readout needs at least one synapse")


Layer = Union[Input, GatedIF, Readout]

#: The one registry of layer and synapse types, keyed by the type name used in files and reports.
LAYER_TYPES = {cls.kind: cls for cls in (Input, GatedIF, Readout)}
SYNAPSE_TYPES = {"conv2d": Conv2d, "dense": Dense}


def replace(node, **changes):
    """A copy of a frozen node with some fields changed (validated again)."""
    return dataclasses.replace(node, **changes)
