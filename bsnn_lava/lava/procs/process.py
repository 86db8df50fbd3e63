"""Lava Processes of a bistable spiking network: interfaces only (ports, Vars, validated proc_params).

Every Process keeps the IR's torch order: a layer of shape (C, H, W) has ports and Vars of shape
(C, H, W), flattened in C, H, W order wherever a synapse needs a vector. Time is counted in steps.
The behaviour lives in :mod:`bsnn_lava.lava.procs.models`, and the neuron arithmetic in
:mod:`bsnn_lava.dynamics`.

One process per layer: a :class:`GatedIF` or :class:`Readout` process holds the layer's incoming
synapses (:func:`conv_synapse`, :func:`dense_synapse`), one input port ``s_in<k>`` per synapse, wired
to the source's ``s_out``; the synapses' outputs are summed (the residual add). Lava's cost per step
is mostly per-process messaging, so a layer is one process, not one per synapse and one for the
neurons. Timing: a process sends, at the start of step t, what it computed at step t - 1 (nothing on
a sample's first step), so its targets integrate on step t the spikes (or pixels) of step t - 1: the
one-step synaptic delay of Lava's Dense and Conv (:data:`bsnn_lava.dynamics.SYNAPSE_DELAY_STEPS`),
and since every process sends before it receives, no process waits for another within a step.

A run presents ``n_samples`` samples one after another, ``steps_per_sample`` steps each: on the first
step of a sample every neuron restarts from ``v_init`` (the readout from 0), nothing from the last
sample is delivered, and the input shows the next image. Schedules
(:func:`bsnn_lava.dynamics.phase`) use the step index within the sample.

Batches (CPU models only): with ``batch_size`` B > 1 a run presents B images at once, in lockstep,
and every port and every per-neuron Var gets a leading batch axis, (B, C, H, W); the counters
``n_lost_input`` and ``n_saturated`` have shape (B,). Sample k is then the k-th batch of B images, and
Lava's messaging cost per step is paid once for all of them. B = 1 (the default) keeps the unbatched
shapes, the layout of one image per core that a Loihi 2 mapping has.

Streams: with ``stream`` (the fields of a :class:`bsnn_lava.dynamics.StreamPlan`: ``n_images``,
``lanes``, ``lane_start``, ``lane_stop``; bistable schedules only) a run is one sample that shows a
new round of B images every frame: the input shows round k during its frame k
(:func:`bsnn_lava.dynamics.stream_frame`), every layer's frame k processes round k, the lanes without
an image in a round are idle in its frames, and the readout restarts from 0 at the start of each of its
frames, so after its frame k it holds round k's prediction.

Activity logs: a process may get ``log_paths``, ``.npy`` files created by the caller (see
:func:`bsnn_lava.lava.run.run_lava`) that the model writes during the run, because ``Var.get``
transfers one element per message. Every log of a layer or the input has a leading axis of the B
images of the current sample (length 1 without batches): ``counts`` (B, steps_per_sample) spike
events of the layer per step, ``totals`` (B, *shape) events per neuron, ``raster`` (B,
steps_per_sample, *shape) bool (the payloads for graded spikes), optional; ``lost_input`` and
``saturated`` (B,) the neuron-steps of the sample's images that lost input or saturated, optional;
the readout's ``v`` (B, steps_per_sample, classes) holds its potential after every step; in a stream,
``frame_spiked`` (B, R, *shape) bool of a layer holds, in slot ``k % R``, which neurons sent a spike in
its frame k (cleared when the frame starts; R frames kept); ``synops``
(B, steps_per_sample, n_outgoing) of a sending process (the input, a layer) counts, per outgoing
synapse, the synaptic operations (nonzero weights of the active inputs) of what it sent on each
step (its ``fan_outs``, in the order given). Each file holds the current sample and is overwritten
by the next.
"""
from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from bsnn_lava.dynamics import MODES, StreamPlan
from bsnn_lava.ir import Conv2d

#: Log files each process kind accepts (the ``log_paths`` keys), and which of them it needs.
LOG_FIELDS = {"gated_if": ("counts", "totals", "raster", "lost_input", "saturated", "synops", "frame_spiked"),
              "readout": ("v", "lost_input", "saturated"), "pixel_input": ("synops",), "event_count": ("counts",)}
REQUIRED_LOG_FIELDS = {"gated_if": ("counts", "totals"), "readout": ("v",), "pixel_input": (),
                       "event_count": ("counts",)}
#: The CPU models keep a convolution's sparse matrix (one entry per nonzero weight and output
#: position: memory grows as weights x output positions) next to its kernel, the ``matrix`` form,
#: while that matrix holds at most this many nonzero weights (48 MB): small layers, and identity maps
#: of relays, whose few events it handles fastest. Otherwise the ``kernel`` form: the weights once.
#: bench/results/lava_kernel.md.
MATRIX_FORM_MAX_WEIGHTS = 4_000_000
CONV_FORMS = ("matrix", "kernel")
#: A dense synapse (``models.DenseSynapse``: its mantissas once, in :func:`mantissa_dtype`) converts the
#: rows of its active inputs to the type it multiplies in this many values at a time (8 bytes each at
#: most: a bounded scratch, whatever the layer's size).
DENSE_CHUNK_VALUES = 2 ** 22
#: Input ports of a layer process: ``s_in0`` .. ``s_in<MAX_INPUTS - 1>``, one per incoming synapse;
#: the ports of a layer with fewer synapses stay unconnected (shape (1,), never read).
MAX_INPUTS = 4


def _schedule_params(mode: str, offset_steps: int, window_steps: int, steps_per_sample: int,
                     frames: ty.Optional[int] = None, stream: ty.Optional[ty.Mapping[str, int]] = None,
                     batch_size: int = 1) -> dict:
    """The schedule (and the stream, module docstring) as proc_params; ``ValueError`` for anything
    :func:`dynamics.phase` cannot run, or a stream whose lanes are not the ``batch_size``."""
    if stream is not None:
        plan = StreamPlan(**stream)
        if mode != "bistable":
            raise ValueError(f"a stream needs mode 'bistable', got {mode!r}")
        if plan.run_lanes != batch_size:
            raise ValueError(f"the stream's lanes [{plan.lane_start}, {plan.lane_stop}) must be the batch_size "
                             f"{batch_size} of the process")
        stream = dict(n_images=plan.n_images, lanes=plan.lanes, lane_start=plan.lane_start, lane_stop=plan.lane_stop)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for field_name, value, low in (("window_steps", window_steps, 1), ("steps_per_sample", steps_per_sample, 1),
                                   ("offset_steps", offset_steps, None)):
        if isinstance(value, bool) or int(value) != value or (low is not None and value < low):
            bound = f" >= {low}" if low is not None else ""
            raise ValueError(f"{field_name} must be an integer{bound}, got {value!r}")
    if frames is not None and (isinstance(frames, bool) or int(frames) != frames or frames < 1 or mode != "bistable"):
        raise ValueError(f"frames must be None or a positive integer (bistable only), got {frames!r}")
    return dict(mode=mode, offset_steps=int(offset_steps), window_steps=int(window_steps),
                steps_per_sample=int(steps_per_sample), frames=None if frames is None else int(frames), stream=stream)


def _integer_at_least(value, field_name: str, low: int = 1) -> int:
    """``value`` as an int; ``ValueError`` naming ``field_name`` unless it is an integer >= ``low``."""
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{field_name} must be an integer >= {low}, got {value!r}")
    return int(value)


def batched(shape: ty.Tuple[int, ...], batch_size: int) -> ty.Tuple[int, ...]:
    """The port and Var shape of a layer of ``shape`` for ``batch_size`` images: ``shape`` itself for
    one image, else ``(batch_size, *shape)``."""
    return tuple(shape) if batch_size == 1 else (batch_size, *shape)


def _state_bits(state_bits: ty.Optional[int]) -> ty.Optional[int]:
    if state_bits is not None and (isinstance(state_bits, bool) or int(state_bits) != state_bits or state_bits < 2):
        raise ValueError(f"state_bits must be None (unbounded) or an integer >= 2, got {state_bits!r}")
    return None if state_bits is None else int(state_bits)


def _log_paths(kind: str, log_paths: ty.Optional[ty.Mapping[str, str]]) -> ty.Optional[dict]:
    if log_paths is None:
        return None
    unknown = sorted(set(log_paths) - set(LOG_FIELDS[kind]))
    missing = sorted(set(REQUIRED_LOG_FIELDS[kind]) - set(log_paths))
    if unknown or missing:
        raise ValueError(f"log_paths of a {kind} process: unknown {unknown}, missing {missing}; "
                         f"fields: {', '.join(LOG_FIELDS[kind])}")
    return {key: str(path) for key, path in log_paths.items()}


def _add_params(process: AbstractProcess, **params) -> None:
    """Validated meta-parameters into ``proc_params`` after ``AbstractProcess.__init__`` (as LIFReset)."""
    for key, value in params.items():
        process.proc_params[key] = value


def _full(value, shape: ty.Tuple[int, ...], field_name: str) -> np.ndarray:
    """``value`` as an array of ``shape`` (a scalar is repeated); ``ValueError`` otherwise."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in ((), tuple(shape)):
        raise ValueError(f"{field_name} must be a scalar or have shape {tuple(shape)}, got {arr.shape}")
    return np.broadcast_to(arr, shape).copy()


def _weight(weight, weight_exp) -> ty.Tuple[np.ndarray, int]:
    weight = np.asarray(weight, dtype=np.float64)
    if not np.all(np.isfinite(weight)):
        raise ValueError("weight has NaN or infinite values")
    if isinstance(weight_exp, bool) or int(weight_exp) != weight_exp:
        raise ValueError(f"weight_exp must be an integer, got {weight_exp!r}")
    return weight, int(weight_exp)


def dense_synapse(weight, in_shape, weight_exp: int = 0, max_input: int = 255) -> dict:
    """A fully connected synapse on the source flattened in (C, H, W) order, as a layer process's
    ``synapses`` entry: it delivers ``(weight * 2**weight_exp) @ s`` of what the source sent.

    Args:
        weight: (out_features, in_features) mantissas (integers for ``fixed_pt``).
        in_shape: the source's shape (its product is ``in_features``).
        weight_exp: power-of-two exponent of the weights (>= 0 for ``fixed_pt``).
        max_input: the largest value the source sends (255 for pixels, 1 for binary spikes, the
            largest payload for graded spikes).
    Raises:
        ValueError: a weight that does not fit ``in_shape``, or bad values.
    """
    weight, weight_exp = _weight(weight, weight_exp)
    in_shape = tuple(int(s) for s in in_shape)
    if weight.ndim != 2 or weight.shape[1] != int(np.prod(in_shape)):
        raise ValueError(f"weight must be (out_features, {int(np.prod(in_shape))}), got {weight.shape}")
    return dict(kind="dense", weight=weight, weight_exp=weight_exp, in_shape=in_shape, out_shape=(weight.shape[0],),
                max_input=_integer_at_least(max_input, "max_input"))


def conv_synapse(weight, in_shape, stride=(1, 1), padding=(0, 0), weight_exp: int = 0, max_input: int = 255,
                 dilation=(1, 1), groups: int = 1, form: ty.Optional[str] = None) -> dict:
    """A 2-D cross-correlation synapse (torch semantics: zero padding) as a layer process's
    ``synapses`` entry.

    Args:
        weight: (out_channels, in_channels / groups, kernel_h, kernel_w) mantissas.
        in_shape: the source's (C, H, W); the output shape follows torch's ``conv2d``.
        stride, padding, dilation: (h, w) in pixels.
        weight_exp, max_input: as for :func:`dense_synapse`.
        groups: output group g reads input group g only (depthwise: groups = channels).
        form: how the CPU models hold it, ``"matrix"`` or ``"kernel"`` (the same sums either way);
            ``None``: :func:`conv_form`'s choice.
    """
    weight, weight_exp = _weight(weight, weight_exp)
    in_shape = tuple(int(s) for s in in_shape)
    stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
    dilation, groups = tuple(int(d) for d in dilation), int(groups)
    if weight.ndim != 4 or len(in_shape) != 3 or groups < 1 or weight.shape[0] % groups \
            or weight.shape[1] * groups != in_shape[0]:
        raise ValueError(f"weight (out, in / groups, kh, kw) {weight.shape} with groups {groups} does not fit "
                         f"input (C, H, W) {in_shape}")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2 or min(stride + dilation) < 1 or min(padding) < 0:
        raise ValueError(f"stride and dilation must be two integers >= 1 and padding two integers >= 0, got "
                         f"{stride}, {dilation}, {padding}")
    out_hw = [(in_shape[1 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
              for i in range(2)]
    if min(out_hw) < 1:
        raise ValueError(f"kernel {weight.shape[2:]} does not fit input {in_shape} with padding {padding}")
    if form is None:
        form = conv_form(int(Conv2d(weight, stride, padding, 0, dilation, groups).fan_out(in_shape).sum()))
    if form not in CONV_FORMS:
        raise ValueError(f"form must be one of {', '.join(CONV_FORMS)} or None, got {form!r}")
    return dict(kind="conv", weight=weight, weight_exp=weight_exp, in_shape=in_shape,
                out_shape=(weight.shape[0], *out_hw), stride=stride, padding=padding, dilation=dilation,
                groups=groups, max_input=_integer_at_least(max_input, "max_input"), form=form)


def mantissa_dtype(weight: np.ndarray, integer: bool):
    """The smallest signed integer type holding every mantissa of ``weight`` (``integer``), else float64."""
    if not integer:
        return np.float64
    if weight.size == 0:
        return np.int8
    low, high = float(weight.min()), float(weight.max())
    return next(t for t in (np.int8, np.int16, np.int32, np.int64)
                if np.iinfo(t).min <= low and high <= np.iinfo(t).max)


def conv_form(matrix_weights: int) -> str:
    """The form of a convolution synapse in the CPU models, ``"matrix"`` or ``"kernel"``, from the
    nonzero weights its sparse matrix would hold (``Conv2d.fan_out(input_shape).sum()``): the one
    selection rule (:data:`MATRIX_FORM_MAX_WEIGHTS`)."""
    return "matrix" if matrix_weights <= MATRIX_FORM_MAX_WEIGHTS else "kernel"


def pooled_synapse(spec: dict, source_shape, taps) -> dict:
    """``spec`` (:func:`conv_synapse` or :func:`dense_synapse` on the pooled shape) reading the
    max-pooled messages of a source of ``source_shape``: ``taps`` (pooled neurons, k), the source
    neuron each pooled neuron reads per kernel tap (:meth:`bsnn_lava.ir.MaxPool.taps`)."""
    source_shape = tuple(int(s) for s in source_shape)
    taps = np.asarray(taps, dtype=np.int64)
    if (taps.ndim != 2 or taps.shape[0] != int(np.prod(spec["in_shape"])) or taps.min() < 0
            or taps.max() >= int(np.prod(source_shape))):
        raise ValueError(f"taps {taps.shape} do not pool a source of shape {source_shape} into {spec['in_shape']}")
    return dict(spec, pool_taps=taps, message_shape=source_shape)


def pooled_fan_out(coverage, taps, fan_out) -> dict:
    """A sender's ``fan_outs`` entry for a max-pooled synapse: each event costs ``coverage`` (pooling
    windows reading the neuron), each event the pool passes on its ``fan_out`` (of the pooled shape)."""
    return dict(coverage=np.asarray(coverage, dtype=np.int64).reshape(-1), taps=np.asarray(taps, dtype=np.int64),
                fan_out=np.asarray(fan_out, dtype=np.int64).reshape(-1))


def _add_inputs(process: AbstractProcess, synapses: ty.Sequence[dict], shape: ty.Tuple[int, ...],
                batch_size: int) -> None:
    """The input ports ``s_in<k>`` of a layer process for its incoming ``synapses``, into proc_params."""
    synapses = list(synapses)
    if len(synapses) > MAX_INPUTS:
        raise ValueError(f"a layer process takes at most {MAX_INPUTS} incoming synapses, got {len(synapses)}")
    for k, synapse in enumerate(synapses):
        if tuple(synapse["out_shape"]) != tuple(shape):
            raise ValueError(f"synapse {k} delivers shape {tuple(synapse['out_shape'])} to a layer of shape {shape}")
    for k in range(MAX_INPUTS):
        message_shape = synapses[k].get("message_shape", synapses[k]["in_shape"]) if k < len(synapses) else None
        port_shape = batched(message_shape, batch_size) if k < len(synapses) else (1,)
        setattr(process, f"s_in{k}", InPort(shape=port_shape))
    process.proc_params["synapses"] = synapses


def _fan_outs(fan_outs: ty.Sequence, shape: ty.Tuple[int, ...]) -> ty.List:
    """Per outgoing synapse, the nonzero weights each of the ``shape`` sources drives (int64, flat),
    or for a max-pooled synapse its :func:`pooled_fan_out`."""
    size = int(np.prod(shape))
    checked = [f if isinstance(f, dict) else np.asarray(f, dtype=np.int64).reshape(-1) for f in fan_outs]
    per_neuron = [f["coverage"] if isinstance(f, dict) else f for f in checked]
    if any(f.size != size or (f < 0).any() for f in per_neuron):
        raise ValueError(f"every fan-out must hold {size} non-negative counts")
    return checked


class GatedIF(AbstractProcess):
    """Layer of gated integrate-and-fire neurons with reset by subtraction (bistable, relay, IF, warm-up),
    with its incoming synapses.

    Per step (:func:`bsnn_lava.dynamics.gated_if_step`): the synapses deliver what the sources sent
    (module docstring: the one-step delay); when integrating, ``v += input + bias`` (saturated to
    ``state_bits``); when firing, spike on ``v >= threshold`` and subtract it (graded,
    ``payload_max > 1``: send ``p = clip(floor(v / threshold), 0, payload_max)`` and subtract ``p``
    thresholds); input that arrives while not integrating is discarded and counted.

    Args:
        shape: (C, H, W) or (N,).
        synapses: the incoming synapses (:func:`conv_synapse`, :func:`dense_synapse`), at most
            :data:`MAX_INPUTS`; synapse k's source connects to ``s_in<k>``.
        threshold, bias, v_init: scalars or arrays of ``shape`` (integer scale for ``fixed_pt``).
        mode, offset_steps, window_steps, frames: the schedule (see :func:`bsnn_lava.dynamics.phase`).
        steps_per_sample: steps per sample; the neurons restart from ``v_init`` every this many steps.
        stream: the stream a run shows (module docstring), or ``None``.
        frame_reset: also restart from ``v_init`` at the start of every integrate window (bistable
            only; :func:`bsnn_lava.dynamics.frame_starts`).
        payload_max: 1 for binary spikes, else the largest payload of a graded spike.
        state_bits: signed width of ``v`` in ``fixed_pt`` (``None``: unbounded).
        batch_size: images run at once (module docstring).
        fan_outs: per outgoing synapse, the nonzero weights each neuron drives (for the ``synops`` log;
            :func:`pooled_fan_out` for a max-pooled one).
        log_paths: activity log files (module docstring), or ``None``.

    Vars: ``v`` (batched), ``threshold``, ``bias``, ``v_init`` (one value per neuron, shared by the
    batch); counters over the whole run ``n_spikes`` (spike events per neuron, batched; a graded
    spike is one), ``n_lost_input`` and ``n_saturated`` (neuron-steps, shape (B,)). Ports (batched):
    ``s_in<k>``, ``s_out`` (0/1 spikes, or graded payloads).
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], synapses: ty.Sequence[dict], threshold, bias, v_init, mode: str,
                 offset_steps: int, window_steps: int, steps_per_sample: int, frames: ty.Optional[int] = None,
                 stream: ty.Optional[ty.Mapping[str, int]] = None,
                 frame_reset: bool = False, payload_max: int = 1, state_bits: ty.Optional[int] = None,
                 batch_size: int = 1, fan_outs: ty.Sequence[np.ndarray] = (),
                 log_paths: ty.Optional[ty.Mapping[str, str]] = None, name: ty.Optional[str] = None):
        shape = tuple(int(s) for s in shape)
        super().__init__(shape=shape, name=name)
        batch_size = _integer_at_least(batch_size, "batch_size")
        if frame_reset and mode != "bistable":
            raise ValueError(f"frame_reset needs mode 'bistable', got {mode!r}")
        _add_params(self, state_bits=_state_bits(state_bits), log_paths=_log_paths("gated_if", log_paths),
                    frame_reset=bool(frame_reset), payload_max=_integer_at_least(payload_max, "payload_max"),
                    batch_size=batch_size, fan_outs=_fan_outs(fan_outs, shape),
                    **_schedule_params(mode, offset_steps, window_steps, steps_per_sample, frames, stream, batch_size))
        threshold = _full(threshold, shape, "threshold")
        if np.any(threshold <= 0):
            raise ValueError("threshold must be > 0")
        v_init = _full(v_init, shape, "v_init")
        io_shape = batched(shape, batch_size)
        _add_inputs(self, synapses, shape, batch_size)
        self.s_out = OutPort(shape=io_shape)
        self.v = Var(shape=io_shape, init=np.broadcast_to(v_init, io_shape).copy())
        self.threshold = Var(shape=shape, init=threshold)
        self.bias = Var(shape=shape, init=_full(bias, shape, "bias"))
        self.v_init = Var(shape=shape, init=v_init)
        self.n_spikes = Var(shape=io_shape, init=0)
        self.n_lost_input = Var(shape=(batch_size,), init=0)
        self.n_saturated = Var(shape=(batch_size,), init=0)


class Readout(AbstractProcess):
    """Non-spiking accumulator with its incoming synapses: ``v += input + bias`` on the steps its
    schedule integrates.

    The prediction after a step is ``argmax(v)`` (first index on ties). Arguments as for
    :class:`GatedIF` (``shape`` is (classes,)); in a stream ``v`` restarts from 0 every frame. Vars ``v``
    (batched), ``bias``, ``n_lost_input``, ``n_saturated``; ports ``s_in<k>`` only.
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], synapses: ty.Sequence[dict], bias, mode: str, offset_steps: int,
                 window_steps: int, steps_per_sample: int, frames: ty.Optional[int] = None,
                 stream: ty.Optional[ty.Mapping[str, int]] = None,
                 state_bits: ty.Optional[int] = None, batch_size: int = 1,
                 log_paths: ty.Optional[ty.Mapping[str, str]] = None, name: ty.Optional[str] = None):
        shape = tuple(int(s) for s in shape)
        super().__init__(shape=shape, name=name)
        batch_size = _integer_at_least(batch_size, "batch_size")
        _add_params(self, state_bits=_state_bits(state_bits), log_paths=_log_paths("readout", log_paths),
                    batch_size=batch_size, **_schedule_params(mode, offset_steps, window_steps, steps_per_sample, frames,
                                                              stream, batch_size))
        io_shape = batched(shape, batch_size)
        _add_inputs(self, synapses, shape, batch_size)
        self.v = Var(shape=io_shape, init=0)
        self.bias = Var(shape=shape, init=_full(bias, shape, "bias"))
        self.n_lost_input = Var(shape=(batch_size,), init=0)
        self.n_saturated = Var(shape=(batch_size,), init=0)


class PixelInput(AbstractProcess):
    """The pixel source: sends sample ``k``'s raw images as graded values (0..255) for every step of
    sample ``k`` on which its schedule fires, and nothing (zeros) for the others (one step later,
    module docstring); a sample is one image, or ``batch_size`` consecutive images. In a stream the
    k-th ``batch_size`` images are round k, shown in the input's frame k.

    Args:
        images: (n_images, C, H, W) integer pixels in 0..255, ``n_images`` a multiple of
            ``batch_size``; ``s_out`` has shape (C, H, W), batched (module docstring).
        mode, offset_steps, window_steps, steps_per_sample, frames, stream, batch_size, fan_outs, log_paths:
            as for :class:`GatedIF` (logs: ``synops`` only).
    """

    def __init__(self, *, images: np.ndarray, mode: str, offset_steps: int, window_steps: int,
                 steps_per_sample: int, frames: ty.Optional[int] = None,
                 stream: ty.Optional[ty.Mapping[str, int]] = None, batch_size: int = 1,
                 fan_outs: ty.Sequence[np.ndarray] = (), log_paths: ty.Optional[ty.Mapping[str, str]] = None,
                 name: ty.Optional[str] = None):
        images = np.asarray(images)
        shape = tuple(int(s) for s in images.shape[1:])
        super().__init__(shape=shape, name=name)
        batch_size = _integer_at_least(batch_size, "batch_size")
        if images.ndim != 4 or images.shape[0] < 1 or images.shape[0] % batch_size:
            raise ValueError(f"images must be (n_images, C, H, W) with n_images a positive multiple of batch_size "
                             f"{batch_size}, got {images.shape}")
        if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
            raise ValueError("images must hold integer pixel values in 0..255 (8-bit graded spikes)")
        if stream is not None and images.shape[0] != StreamPlan(**stream).n_rounds * batch_size:
            raise ValueError(f"a stream of {StreamPlan(**stream).n_rounds} rounds of {batch_size} images needs "
                             f"images of {StreamPlan(**stream).n_rounds * batch_size}, got {images.shape[0]}")
        _add_params(self, n_samples=int(images.shape[0]) // batch_size, batch_size=batch_size,
                    fan_outs=_fan_outs(fan_outs, shape), log_paths=_log_paths("pixel_input", log_paths),
                    **_schedule_params(mode, offset_steps, window_steps, steps_per_sample, frames, stream, batch_size))
        self.s_out = OutPort(shape=batched(shape, batch_size))
        self.images = Var(shape=images.shape, init=images.astype(np.uint8))


class EventCount(AbstractProcess):
    """A probe: counts the nonzero messages (spikes, graded spikes, deltas) it receives on each step
    into its ``counts`` log, ``(steps_per_sample,)`` int64. Connect any process's output port to
    ``s_in`` (an output port may feed several inputs) to count its events without changing it. The
    processes of this package send a step's spikes at the start of the next step (module docstring),
    so their counts appear one step later than the spikes.

    Args:
        shape: the shape of the port it listens to.
        steps_per_sample: steps per image (the log holds the current image).
        log_paths: ``{"counts": path}`` (module docstring).
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], steps_per_sample: int, log_paths: ty.Mapping[str, str],
                 name: ty.Optional[str] = None):
        shape = tuple(int(s) for s in shape)
        super().__init__(shape=shape, name=name)
        _add_params(self, steps_per_sample=_integer_at_least(steps_per_sample, "steps_per_sample"),
                    log_paths=_log_paths("event_count", log_paths))
        self.s_in = InPort(shape=shape)
