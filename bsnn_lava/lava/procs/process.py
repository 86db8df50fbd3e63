"""Lava Processes of a bistable spiking network: interfaces only (ports, Vars, validated proc_params).

Every Process keeps the IR's torch order: a layer of shape (C, H, W) has ports and Vars of shape
(C, H, W), flattened in C, H, W order wherever a synapse needs a vector. Time is counted in steps.
The behaviour lives in :mod:`bsnn_lava.lava.procs.models`, and the neuron arithmetic in
:mod:`bsnn_lava.dynamics`.

A run presents ``n_samples`` images one after another, ``steps_per_sample`` steps each: on the first
step of a sample every neuron restarts from ``v_init`` (the readout from 0), every synapse delivers
nothing (no spike is in flight across samples), and the input shows the next image. Schedules
(:func:`bsnn_lava.dynamics.phase`) use the step index within the sample.

Batches (CPU models only): with ``batch_size`` B > 1 a run presents B images at once, in lockstep,
and every port and every per-neuron Var gets a leading batch axis, (B, C, H, W); the counters
``n_lost_input`` and ``n_saturated`` have shape (B,). Sample k is then the k-th batch of B images, and
Lava's messaging cost per step is paid once for all of them. B = 1 (the default) keeps the unbatched
shapes, the layout of one image per core that a Loihi 2 mapping has.

Activity logs: a process may get ``log_paths``, ``.npy`` files created by the caller (see
:func:`bsnn_lava.lava.run.run_lava`) that the model writes during the run, because ``Var.get``
transfers one element per message. Every log has a leading axis of the B images of the current
sample (length 1 without batches): ``counts`` (B, steps_per_sample) spike events of the layer per
step, ``totals`` (B, *shape) events per neuron, ``raster`` (B, steps_per_sample, *shape) bool (the
payloads for graded spikes), optional; ``lost_input`` and ``saturated`` (B,) the neuron-steps of
the sample's images that lost input or saturated, optional; the readout's ``v`` (B,
steps_per_sample, classes) holds its potential after every step; a synapse's ``synops`` (B,
steps_per_sample) counts the synaptic operations (nonzero weights of the active inputs) of the
events it received on each step. Each file holds the current sample and is overwritten by the next.
"""
from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from bsnn_lava.dynamics import MODES

#: Log files each process kind accepts (the ``log_paths`` keys), and which of them it needs.
LOG_FIELDS = {"gated_if": ("counts", "totals", "raster", "lost_input", "saturated"),
              "readout": ("v", "lost_input", "saturated"), "synapse": ("synops",),
              "event_count": ("counts",)}
REQUIRED_LOG_FIELDS = {"gated_if": ("counts", "totals"), "readout": ("v",), "synapse": ("synops",),
                       "event_count": ("counts",)}


def _schedule_params(mode: str, offset_steps: int, window_steps: int, steps_per_sample: int,
                     frames: ty.Optional[int] = None) -> dict:
    """The schedule as proc_params; ``ValueError`` for anything :func:`dynamics.phase` cannot run."""
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
                steps_per_sample=int(steps_per_sample), frames=None if frames is None else int(frames))


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


class GatedIF(AbstractProcess):
    """Layer of gated integrate-and-fire neurons with reset by subtraction (bistable, relay, IF, warm-up).

    Per step (:func:`bsnn_lava.dynamics.gated_if_step`): when integrating, ``v += a_in + bias``
    (saturated to ``state_bits``); when firing, spike on ``v >= threshold`` and subtract it (graded,
    ``payload_max > 1``: send ``p = clip(floor(v / threshold), 0, payload_max)`` and subtract ``p``
    thresholds); input that arrives while not integrating is discarded and counted.

    Args:
        shape: (C, H, W) or (N,).
        threshold, bias, v_init: scalars or arrays of ``shape`` (integer scale for ``fixed_pt``).
        mode, offset_steps, window_steps, frames: the schedule (see :func:`bsnn_lava.dynamics.phase`).
        steps_per_sample: steps per image; the neurons restart from ``v_init`` every this many steps.
        frame_reset: also restart from ``v_init`` at the start of every integrate window (bistable
            only; :func:`bsnn_lava.dynamics.frame_starts`).
        payload_max: 1 for binary spikes, else the largest payload of a graded spike.
        state_bits: signed width of ``v`` in ``fixed_pt`` (``None``: unbounded).
        batch_size: images run at once (module docstring).
        log_paths: activity log files (module docstring), or ``None``.

    Vars: ``v`` (batched), ``threshold``, ``bias``, ``v_init`` (one value per neuron, shared by the
    batch); counters over the whole run ``n_spikes`` (spike events per neuron, batched; a graded
    spike is one), ``n_lost_input`` and ``n_saturated`` (neuron-steps, shape (B,)). Ports (batched):
    ``a_in`` (synaptic input, several synapses are summed), ``s_out`` (0/1 spikes, or graded payloads).
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], threshold, bias, v_init, mode: str, offset_steps: int,
                 window_steps: int, steps_per_sample: int, frames: ty.Optional[int] = None, frame_reset: bool = False,
                 payload_max: int = 1, state_bits: ty.Optional[int] = None, batch_size: int = 1,
                 log_paths: ty.Optional[ty.Mapping[str, str]] = None, name: ty.Optional[str] = None):
        shape = tuple(int(s) for s in shape)
        batch_size = _integer_at_least(batch_size, "batch_size")
        super().__init__(shape=shape, name=name)
        if frame_reset and mode != "bistable":
            raise ValueError(f"frame_reset needs mode 'bistable', got {mode!r}")
        _add_params(self, state_bits=_state_bits(state_bits), log_paths=_log_paths("gated_if", log_paths),
                    frame_reset=bool(frame_reset), payload_max=_integer_at_least(payload_max, "payload_max"),
                    batch_size=batch_size, **_schedule_params(mode, offset_steps, window_steps, steps_per_sample, frames))
        threshold = _full(threshold, shape, "threshold")
        if np.any(threshold <= 0):
            raise ValueError("threshold must be > 0")
        v_init = _full(v_init, shape, "v_init")
        io_shape = batched(shape, batch_size)
        self.a_in = InPort(shape=io_shape)
        self.s_out = OutPort(shape=io_shape)
        self.v = Var(shape=io_shape, init=np.broadcast_to(v_init, io_shape).copy())
        self.threshold = Var(shape=shape, init=threshold)
        self.bias = Var(shape=shape, init=_full(bias, shape, "bias"))
        self.v_init = Var(shape=shape, init=v_init)
        self.n_spikes = Var(shape=io_shape, init=0)
        self.n_lost_input = Var(shape=(batch_size,), init=0)
        self.n_saturated = Var(shape=(batch_size,), init=0)


class Readout(AbstractProcess):
    """Non-spiking accumulator: ``v += a_in + bias`` on the steps its schedule integrates.

    The prediction after a step is ``argmax(v)`` (first index on ties). Arguments as for
    :class:`GatedIF` (``shape`` is (classes,)); Vars ``v`` (batched), ``bias``, ``n_lost_input``,
    ``n_saturated``; port ``a_in`` (batched) only.
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], bias, mode: str, offset_steps: int, window_steps: int,
                 steps_per_sample: int, frames: ty.Optional[int] = None, state_bits: ty.Optional[int] = None,
                 batch_size: int = 1, log_paths: ty.Optional[ty.Mapping[str, str]] = None,
                 name: ty.Optional[str] = None):
        shape = tuple(int(s) for s in shape)
        batch_size = _integer_at_least(batch_size, "batch_size")
        super().__init__(shape=shape, name=name)
        _add_params(self, state_bits=_state_bits(state_bits), log_paths=_log_paths("readout", log_paths),
                    batch_size=batch_size, **_schedule_params(mode, offset_steps, window_steps, steps_per_sample, frames))
        io_shape = batched(shape, batch_size)
        self.a_in = InPort(shape=io_shape)
        self.v = Var(shape=io_shape, init=0)
        self.bias = Var(shape=shape, init=_full(bias, shape, "bias"))
        self.n_lost_input = Var(shape=(batch_size,), init=0)
        self.n_saturated = Var(shape=(batch_size,), init=0)


class PixelInput(AbstractProcess):
    """The pixel source: sends sample ``k``'s raw images as graded values (0..255) on every step of
    sample ``k`` on which its schedule fires, and nothing (zeros) on the others; a sample is one
    image, or ``batch_size`` consecutive images.

    Args:
        images: (n_images, C, H, W) integer pixels in 0..255, ``n_images`` a multiple of
            ``batch_size``; ``s_out`` has shape (C, H, W), batched (module docstring).
        mode, offset_steps, window_steps, steps_per_sample, frames, batch_size: as for :class:`GatedIF`.
    """

    def __init__(self, *, images: np.ndarray, mode: str, offset_steps: int, window_steps: int,
                 steps_per_sample: int, frames: ty.Optional[int] = None, batch_size: int = 1,
                 name: ty.Optional[str] = None):
        images = np.asarray(images)
        shape = tuple(int(s) for s in images.shape[1:])
        batch_size = _integer_at_least(batch_size, "batch_size")
        super().__init__(shape=shape, name=name)
        if images.ndim != 4 or images.shape[0] < 1 or images.shape[0] % batch_size:
            raise ValueError(f"images must be (n_images, C, H, W) with n_images a positive multiple of batch_size "
                             f"{batch_size}, got {images.shape}")
        if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 255:
            raise ValueError("images must hold integer pixel values in 0..255 (8-bit graded spikes)")
        _add_params(self, n_samples=int(images.shape[0]) // batch_size, batch_size=batch_size,
                    **_schedule_params(mode, offset_steps, window_steps, steps_per_sample, frames))
        self.s_out = OutPort(shape=batched(shape, batch_size))
        self.images = Var(shape=images.shape, init=images.astype(np.uint8))


class _Synapse(AbstractProcess):
    """Common ports, checks and proc_params of the event-driven synapses; subclasses check their op."""

    def __init__(self, *, weight: np.ndarray, weight_exp: int, in_shape, steps_per_sample: int, max_input: int,
                 batch_size: int, log_paths: ty.Optional[ty.Mapping[str, str]], name: ty.Optional[str], **op_params):
        super().__init__(name=name)
        weight, in_shape = np.asarray(weight, dtype=np.float64), tuple(int(s) for s in in_shape)
        if not np.all(np.isfinite(weight)):
            raise ValueError("weight has NaN or infinite values")
        if isinstance(weight_exp, bool) or int(weight_exp) != weight_exp:
            raise ValueError(f"weight_exp must be an integer, got {weight_exp!r}")
        steps_per_sample = _integer_at_least(steps_per_sample, "steps_per_sample")
        max_input = _integer_at_least(max_input, "max_input")
        batch_size = _integer_at_least(batch_size, "batch_size")
        out_shape, op_params = self.checked_op(weight, in_shape, **op_params)
        _add_params(self, weight=weight, weight_exp=int(weight_exp), in_shape=in_shape, out_shape=out_shape,
                    steps_per_sample=steps_per_sample, max_input=max_input, batch_size=batch_size,
                    log_paths=_log_paths("synapse", log_paths), **op_params)
        self.s_in = InPort(shape=batched(in_shape, batch_size))
        self.a_out = OutPort(shape=batched(out_shape, batch_size))

    @staticmethod
    def checked_op(weight: np.ndarray, in_shape: ty.Tuple[int, ...], **op_params) -> ty.Tuple[tuple, dict]:
        """``(out_shape, normalised op_params)``; ``ValueError`` if the op does not fit ``in_shape``."""
        raise NotImplementedError


class EventDense(_Synapse):
    """Fully connected synapse on the source flattened in (C, H, W) order, event-driven.

    Delivers ``(weight * 2**weight_exp) @ s`` of the spikes (or pixels) ``s`` received at step t on
    step t + 1, as Lava's Dense does (:data:`bsnn_lava.dynamics.SYNAPSE_DELAY_STEPS`).

    Args:
        weight: (out_features, in_features) mantissas (integers for ``fixed_pt``).
        weight_exp: power-of-two exponent of the weights (>= 0 for ``fixed_pt``).
        in_shape: the source's shape (its product is ``in_features``); ``s_in`` has this shape.
        steps_per_sample: steps per image; nothing is delivered on a sample's first step.
        max_input: the largest value the source sends (255 for pixels, 1 for binary spikes, the
            largest payload for graded spikes).
        batch_size: images run at once; ``s_in`` and ``a_out`` are batched (module docstring).
        log_paths: ``{"synops": path}`` (module docstring), or ``None``.
    """

    def __init__(self, *, weight: np.ndarray, in_shape, steps_per_sample: int, weight_exp: int = 0,
                 max_input: int = 255, batch_size: int = 1, log_paths: ty.Optional[ty.Mapping[str, str]] = None,
                 name: ty.Optional[str] = None):
        super().__init__(weight=weight, weight_exp=weight_exp, in_shape=in_shape, steps_per_sample=steps_per_sample,
                         max_input=max_input, batch_size=batch_size, log_paths=log_paths, name=name)

    @staticmethod
    def checked_op(weight, in_shape, **op_params):
        if weight.ndim != 2 or weight.shape[1] != int(np.prod(in_shape)):
            raise ValueError(f"weight must be (out_features, {int(np.prod(in_shape))}), got {weight.shape}")
        return (weight.shape[0],), {}


class EventConv(_Synapse):
    """2-D cross-correlation synapse (torch semantics: zero padding, groups = 1), event-driven.

    Args:
        weight: (out_channels, in_channels, kernel_h, kernel_w) mantissas.
        in_shape: the source's (C, H, W); the output shape follows torch's ``conv2d``.
        stride, padding: (h, w) in pixels.
        weight_exp, steps_per_sample, max_input, batch_size, log_paths: as for :class:`EventDense`
            (same one-step delivery).
    """

    def __init__(self, *, weight: np.ndarray, in_shape, steps_per_sample: int, stride=(1, 1), padding=(0, 0),
                 weight_exp: int = 0, max_input: int = 255, batch_size: int = 1,
                 log_paths: ty.Optional[ty.Mapping[str, str]] = None, name: ty.Optional[str] = None):
        super().__init__(weight=weight, weight_exp=weight_exp, in_shape=in_shape, steps_per_sample=steps_per_sample,
                         max_input=max_input, batch_size=batch_size, log_paths=log_paths, name=name, stride=stride,
                         padding=padding)

    @staticmethod
    def checked_op(weight, in_shape, stride=(1, 1), padding=(0, 0)):
        stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
        if weight.ndim != 4 or len(in_shape) != 3 or weight.shape[1] != in_shape[0]:
            raise ValueError(f"weight (out, in, kh, kw) {weight.shape} does not fit input (C, H, W) {in_shape}")
        if len(stride) != 2 or len(padding) != 2 or min(stride) < 1 or min(padding) < 0:
            raise ValueError(f"stride must be two integers >= 1 and padding two integers >= 0, got {stride}, {padding}")
        out_hw = [(in_shape[1 + i] + 2 * padding[i] - weight.shape[2 + i]) // stride[i] + 1 for i in range(2)]
        if min(out_hw) < 1:
            raise ValueError(f"kernel {weight.shape[2:]} does not fit input {in_shape} with padding {padding}")
        return (weight.shape[0], *out_hw), dict(stride=stride, padding=padding)


class EventCount(AbstractProcess):
    """A probe: counts the nonzero messages (spikes, graded spikes, deltas) it receives on each step
    into its ``counts`` log, ``(steps_per_sample,)`` int64. Connect any process's output port to
    ``s_in`` (an output port may feed several inputs) to count its events without changing it.

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
