"""The bsnn-netx layout, and the one registry of layer and synapse codecs.

Every IR layer kind (``bsnn_lava.ir.LAYER_TYPES``: ``input``, ``gated_if``, ``readout``) and synapse
kind (``bsnn_lava.ir.SYNAPSE_TYPES``: ``conv2d``, ``dense``) has exactly one codec here: the name it
has in the file and the functions that write and read its fields. See ``docs/format.md``.

Units: weights are the input per unit of source output (spike or pixel value) in the target's scale;
an integer network applies ``weight * 2**weight_exp``. Thresholds, biases and initial potentials are
in the layer's own units (``scale`` integer units per float unit). Steps are simulation time steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import h5py
import numpy as np

from bsnn_lava.dynamics import MODES
from bsnn_lava.ir import LAYER_TYPES, SYNAPSE_TYPES, Conv2d, Dense, GatedIF, Input, IRError, MaxPool, Readout, Schedule

from . import h5io
from .errors import UnknownTypeError
from .h5io import Where
from .limits import (Limits, bias_problem, integer_problem, payload_problem, state_problem, threshold_problem,
                     weight_problem)

#: Version 2 added ``neuron/frame_reset`` (gated IF) and ``neuron/frames`` (every schedule); version 3
#: ``neuron/payload_max`` (gated IF: 1 binary spikes, above 1 graded); version 4 conv ``dilation`` and
#: ``groups`` other than 1, ``neuron/ann_clip`` (gated IF; 0: none) and a synapse's max pooling
#: (``pool_kernel``, ``pool_stride``, ``pool_padding``; absent: none); version 5 relays of the input (a relay
#: whose synapse reads layer 0 carries the pixels to a deeper layer, graded payloads up to 255 in any network).
#: Older files still read (no frame reset, no frame limit, binary spikes, dense undilated convolutions, no
#: relay of the input).
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
ROLES = ("neuron", "relay")


@dataclass(frozen=True)
class Context:
    """What every codec needs besides its node: where it is, the numeric kind, the profile limits."""
    where: Where
    numeric: str
    limits: Limits
    version: int = FORMAT_VERSION
    input_name: Optional[str] = None  #: the input layer's name (reading the layers after it)

    def weight_itemsize(self) -> int:
        """Bytes per stored weight: float32 (exact integers) in integer networks, else float64."""
        return 4 if self.numeric == "int" else 8


def _check(where: Where, field: str, problem, reading: bool) -> None:
    """Raise the reader's or the writer's error for ``field`` if there is a ``problem``."""
    if problem:
        raise where.error(field, problem) if reading else where.export_error(field, problem)


# --- synapses --------------------------------------------------------------------------------------

def _write_weight(group: h5py.Group, op, ctx: Context) -> None:
    if ctx.numeric == "int":
        _check(ctx.where, "weight", weight_problem(op.weight, op.weight_exp, ctx.limits), reading=False)
    h5io.put_array(group, "weight", op.weight, np.float32 if ctx.numeric == "int" else np.float64)
    h5io.put_int(group, "weight_exp", op.weight_exp)


def _read_weight(group: h5py.Group, ctx: Context, expected: Callable) -> Tuple[np.ndarray, int]:
    weight = h5io.get_array(group, "weight", ctx.where, ctx.weight_itemsize(), expected)
    weight_exp = h5io.get_int(group, "weight_exp", ctx.where)
    if ctx.numeric == "int":
        _check(ctx.where, "weight", weight_problem(weight, weight_exp, ctx.limits), reading=True)
    return weight, weight_exp


def write_conv2d(group: h5py.Group, op: Conv2d, ctx: Context) -> None:
    """Torch layout (out, in / groups, kH, kW); stride, padding, dilation (H, W) in pixels; groups."""
    _write_weight(group, op, ctx)
    h5io.put_ints(group, "stride", op.stride)
    h5io.put_ints(group, "padding", op.padding)
    h5io.put_ints(group, "dilation", op.dilation)
    h5io.put_int(group, "groups", op.groups)


def read_conv2d(group: h5py.Group, ctx: Context, source_shape, shape) -> Conv2d:
    where = ctx.where
    stride = h5io.get_ints(group, "stride", where, 2)
    padding = h5io.get_ints(group, "padding", where, 2)
    if min(stride) < 1 or min(padding) < 0:
        raise where.error("stride" if min(stride) < 1 else "padding", "must be >= 1 (stride), >= 0 (padding)")
    dilation = h5io.get_ints(group, "dilation", where, 2)
    if min(dilation) < 1 or (ctx.version < 4 and dilation != (1, 1)):
        raise where.error("dilation", f"is {dilation}; expected two integers >= 1 (format version 4 and later; "
                                      "(1, 1) before)")
    groups = h5io.get_int(group, "groups", where)
    if len(source_shape) != 3 or len(shape) != 3:
        raise where.error("type", f"conv needs (C, H, W) source and layer shapes, got {source_shape} -> {shape}")
    if groups < 1 or (ctx.version < 4 and groups != 1) or shape[0] % groups or source_shape[0] % groups:
        raise where.error("groups", f"is {groups}; expected a positive integer dividing the source's "
                                    f"{source_shape[0]} and the layer's {shape[0]} channels (1 before format version 4)")

    def expected(w_shape):
        fits = len(w_shape) == 4 and w_shape[:2] == (shape[0], source_shape[0] // groups) and all(
            1 <= dilation[i] * (w_shape[2 + i] - 1) + 1 <= source_shape[1 + i] + 2 * padding[i] for i in range(2))
        return None if fits else (f"has shape {w_shape}, expected ({shape[0]}, {source_shape[0] // groups}, kH, kW) "
                                  f"with kernels fitting the padded source {source_shape}")

    weight, weight_exp = _read_weight(group, ctx, expected)
    return Conv2d(weight, stride=stride, padding=padding, weight_exp=weight_exp, dilation=dilation, groups=groups)


def write_pool(group: h5py.Group, pool: MaxPool) -> None:
    """A synapse's max pooling of its source (format version 4): ``pool_kernel``, ``pool_stride``,
    ``pool_padding``, (H, W) in pixels. Absent: no pooling."""
    h5io.put_ints(group, "pool_kernel", pool.kernel)
    h5io.put_ints(group, "pool_stride", pool.stride)
    h5io.put_ints(group, "pool_padding", pool.padding)


def read_pool(group: h5py.Group, ctx: Context, source_shape) -> Optional[MaxPool]:
    """The synapse's :class:`MaxPool`, or ``None`` where the file has none (every file before
    version 4)."""
    where = ctx.where
    if ctx.version < 4 or not h5io.has(group, "pool_kernel", where):
        return None
    fields = {name: h5io.get_ints(group, f"pool_{name}", where, 2) for name in ("kernel", "stride", "padding")}
    if min(fields["kernel"]) < 1 or min(fields["stride"]) < 1 or min(fields["padding"]) < 0:
        bad = next(n for n in ("kernel", "stride", "padding") if min(fields[n]) < (0 if n == "padding" else 1))
        raise where.error(f"pool_{bad}", f"is {fields[bad]}; expected integers >= {0 if bad == 'padding' else 1}")
    try:
        pool = MaxPool(**fields)
        pool.output_shape(tuple(source_shape))
    except IRError as err:
        raise where.error("pool_kernel", err) from None
    return pool


def write_dense(group: h5py.Group, op: Dense, ctx: Context) -> None:
    """Weight (out, in) on the source flattened in (C, H, W) order."""
    _write_weight(group, op, ctx)


def read_dense(group: h5py.Group, ctx: Context, source_shape, shape) -> Dense:
    want = (int(np.prod(shape)), int(np.prod(source_shape)))
    weight, weight_exp = _read_weight(
        group, ctx, lambda w_shape: None if w_shape == want else f"has shape {w_shape}, expected {want}")
    return Dense(weight, weight_exp=weight_exp)


# --- layers ----------------------------------------------------------------------------------------

def _write_schedule(neuron: h5py.Group, schedule: Schedule) -> None:
    h5io.put_str(neuron, "mode", schedule.mode)
    h5io.put_int(neuron, "offset_steps", schedule.offset_steps)
    h5io.put_int(neuron, "window_steps", schedule.window_steps)
    h5io.put_int(neuron, "frames", schedule.frames or 0)


def _read_schedule(neuron: h5py.Group, where: Where, version: int) -> Schedule:
    mode = h5io.get_str(neuron, "mode", where)
    if mode not in MODES:
        raise where.error("mode", f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    window = h5io.get_int(neuron, "window_steps", where)
    if window < 1:
        raise where.error("window_steps", f"must be >= 1, got {window}")
    frames = h5io.get_int(neuron, "frames", where) if version >= 2 else 0
    if frames < 0 or (frames and mode != "bistable"):
        raise where.error("frames", f"is {frames}; expected 0 (no limit) or, for a bistable schedule, a positive count")
    return Schedule(mode, h5io.get_int(neuron, "offset_steps", where), window, frames or None)


def _param_shapes(shape, spatial: bool):
    return [(), (shape[0],)] + ([tuple(shape)] if spatial and len(shape) > 1 else [])


def _range_problem(key: str, values: np.ndarray, limits: Limits):
    check = {"threshold": threshold_problem, "bias": bias_problem}.get(key, state_problem)
    return check(values, limits)


def _write_param(neuron: h5py.Group, key: str, values: np.ndarray, ctx: Context) -> None:
    """A float64 threshold, bias or v_init (scalar, per channel or per neuron as in the IR)."""
    if ctx.numeric == "int":
        _check(ctx.where.sub("neuron"), key, _range_problem(key, values, ctx.limits), reading=False)
    h5io.put_array(neuron, key, values)


def _read_param(neuron: h5py.Group, key: str, where: Where, ctx: Context, shape, spatial: bool) -> np.ndarray:
    allowed = _param_shapes(shape, spatial)
    values = h5io.get_array(neuron, key, where, 8, lambda s: None if s in allowed else
                            f"has shape {s}, expected one of {allowed}")
    if key == "threshold" and np.any(values <= 0):
        raise where.error(key, "must be > 0")
    if ctx.numeric == "int":
        _check(where, key, integer_problem(values) or _range_problem(key, values, ctx.limits), reading=True)
    return values


def write_input(group: h5py.Group, neuron: h5py.Group, layer: Input, ctx: Context) -> None:
    """Raw pixels (0..255) on the steps its schedule fires; ``neuron/`` holds only the schedule."""
    _write_schedule(neuron, layer.schedule)


def read_input(group: h5py.Group, neuron: h5py.Group, ctx: Context, name: str, shape, synapses) -> Input:
    if len(shape) != 3:
        raise ctx.where.error("shape", f"the input shape must be (C, H, W), got {shape}")
    return Input(name, shape, _read_schedule(neuron, ctx.where.sub("neuron"), ctx.version))


def write_gated_if(group: h5py.Group, neuron: h5py.Group, layer: GatedIF, ctx: Context) -> None:
    """Gated IF, reset by subtraction: role, schedule, frame_reset (0 or 1), payload_max (1: binary),
    threshold, v_init, bias, scale; ``origin``."""
    h5io.put_str(group, "origin", layer.origin)
    h5io.put_str(neuron, "role", layer.role)
    _write_schedule(neuron, layer.schedule)
    h5io.put_int(neuron, "frame_reset", int(layer.frame_reset))
    _check(ctx.where.sub("neuron"), "payload_max", payload_problem(layer.payload_max, ctx.limits), reading=False)
    h5io.put_int(neuron, "payload_max", layer.payload_max)
    h5io.put_float(neuron, "ann_clip", layer.ann_clip or 0.0)
    for key in ("threshold", "v_init", "bias"):
        _write_param(neuron, key, getattr(layer, key), ctx)
    h5io.put_float(neuron, "scale", layer.scale)


def read_gated_if(group: h5py.Group, neuron: h5py.Group, ctx: Context, name: str, shape, synapses) -> GatedIF:
    where = ctx.where.sub("neuron")
    role = h5io.get_str(neuron, "role", where)
    if role not in ROLES:
        raise where.error("role", f"unknown role {role!r} (known: {', '.join(ROLES)})")
    if role == "relay" and ctx.version < 5 and any(s.source == ctx.input_name for s in synapses):
        raise where.error("role", f"is 'relay' reading the input {ctx.input_name!r}: relays of the pixels came with "
                                  f"format version 5, this file is version {ctx.version}")
    params = {key: _read_param(neuron, key, where, ctx, shape, spatial=(key == "bias"))
              for key in ("threshold", "v_init", "bias")}
    frame_reset = False
    if ctx.version >= 2:
        frame_reset = h5io.get_int(neuron, "frame_reset", where)
        if frame_reset not in (0, 1):
            raise where.error("frame_reset", f"is {frame_reset}, expected 0 or 1")
    schedule = _read_schedule(neuron, where, ctx.version)
    if frame_reset and schedule.mode != "bistable":
        raise where.error("frame_reset", f"is 1, which needs a bistable schedule (mode is {schedule.mode!r})")
    payload_max = h5io.get_int(neuron, "payload_max", where) if ctx.version >= 3 else 1
    if payload_max < 1:
        raise where.error("payload_max", f"is {payload_max}; expected 1 (binary spikes) or more (graded)")
    _check(where, "payload_max", payload_problem(payload_max, ctx.limits), reading=True)
    ann_clip = h5io.get_float(neuron, "ann_clip", where) if ctx.version >= 4 else 0.0
    if not ann_clip >= 0:
        raise where.error("ann_clip", f"is {ann_clip}; expected 0 (a ReLU) or the positive ceiling of a clipped "
                                      "activation")
    return GatedIF(name, shape, synapses, schedule=schedule, role=role, frame_reset=bool(frame_reset),
                   payload_max=payload_max, ann_clip=ann_clip or None,
                   scale=h5io.get_float(neuron, "scale", where),
                   origin=h5io.get_str(group, "origin", ctx.where), **params)


def write_readout(group: h5py.Group, neuron: h5py.Group, layer: Readout, ctx: Context) -> None:
    """Non-spiking accumulator: schedule, bias, scale; ``origin``."""
    h5io.put_str(group, "origin", layer.origin)
    _write_schedule(neuron, layer.schedule)
    _write_param(neuron, "bias", layer.bias, ctx)
    h5io.put_float(neuron, "scale", layer.scale)


def read_readout(group: h5py.Group, neuron: h5py.Group, ctx: Context, name: str, shape, synapses) -> Readout:
    where = ctx.where.sub("neuron")
    if len(shape) != 1:
        raise ctx.where.error("shape", f"the readout shape must be (classes,), got {shape}")
    return Readout(name, shape, synapses, bias=_read_param(neuron, "bias", where, ctx, shape, spatial=False),
                   schedule=_read_schedule(neuron, where, ctx.version), scale=h5io.get_float(neuron, "scale", where),
                   origin=h5io.get_str(group, "origin", ctx.where))


# --- the registry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Codec:
    """An IR type (``kind``), its name in the file (``file_type``) and its field writer and reader."""
    kind: str
    file_type: str
    write: Callable
    read: Callable


#: IR layer kind -> codec; ``file_type`` is the layer's ``neuron/type``.
LAYER_CODECS: Dict[str, Codec] = {
    "input": Codec("input", "BSNN_INPUT", write_input, read_input),
    "gated_if": Codec("gated_if", "BSNN_GIF", write_gated_if, read_gated_if),
    "readout": Codec("readout", "BSNN_READOUT", write_readout, read_readout),
}
#: IR synapse kind -> codec; ``file_type`` is netx's layer ``type`` (and ``synapse/<k>/type``).
SYNAPSE_CODECS: Dict[str, Codec] = {
    "conv2d": Codec("conv2d", "conv", write_conv2d, read_conv2d),
    "dense": Codec("dense", "dense", write_dense, read_dense),
}
if set(LAYER_CODECS) != set(LAYER_TYPES) or set(SYNAPSE_CODECS) != set(SYNAPSE_TYPES):
    raise ImportError("netx_export codecs are out of step with bsnn_lava.ir.LAYER_TYPES/SYNAPSE_TYPES")


def _lookup(registry: Dict[str, Codec], key: str, what: str, by_file_type: bool) -> Codec:
    for codec in registry.values():
        if (codec.file_type if by_file_type else codec.kind) == key:
            return codec
    raise UnknownTypeError(what, key, [c.file_type if by_file_type else c.kind for c in registry.values()])


def layer_codec(kind: str) -> Codec:
    """The codec of an IR layer kind; :class:`UnknownTypeError` names the known kinds."""
    return _lookup(LAYER_CODECS, kind, "layer kind", by_file_type=False)


def layer_codec_for_file(neuron_type: str) -> Codec:
    return _lookup(LAYER_CODECS, neuron_type, "neuron type", by_file_type=True)


def synapse_kind(op) -> str:
    """The ``SYNAPSE_TYPES`` name of a synapse op."""
    for kind, cls in SYNAPSE_TYPES.items():
        if type(op) is cls:
            return kind
    raise UnknownTypeError("synapse class", type(op).__name__, [c.__name__ for c in SYNAPSE_TYPES.values()])


def synapse_codec(kind: str) -> Codec:
    return _lookup(SYNAPSE_CODECS, kind, "synapse kind", by_file_type=False)


def synapse_codec_for_file(synapse_type: str) -> Codec:
    return _lookup(SYNAPSE_CODECS, synapse_type, "synapse type", by_file_type=True)
