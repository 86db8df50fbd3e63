"""CPU process models of the BSNN processes: ``fixed_pt`` (bit-accurate, int64) and ``floating_pt`` (float64).

Every neuron update is :func:`bsnn_lava.dynamics.gated_if_step` with the gates of
:func:`bsnn_lava.dynamics.phase`, exactly as in the torch reference simulator; ``fixed_pt`` saturates
the state at the layer's ``state_bits``, ``floating_pt`` never (``state_bits=None``).

Timing (the reference simulator assumes the same): every sending model first sends what it computed
on the previous step (zeros on the first step of a sample, so nothing crosses from one sample to the
next), then receives and computes this step. A layer's synapses therefore deliver on step t what its
sources' spikes (or pixels) of step t - 1 produce, like Lava's Dense and Conv, and no model waits for
another within a step. The outputs of a layer's synapses are summed (the residual add).

Batches (``batch_size`` B): every model works on arrays with a leading axis of the B images
(``layout``), reshaped from and to the ports' shapes (unbatched for B = 1), so one code path serves
both; the images of a batch share the step and therefore the schedule.

Synapses (:class:`SynapticInput`) are event-driven: an all-zero input costs one scan for nonzeros.
A dense synapse keeps its mantissas, one row per input, in the smallest integer type that holds them
(:class:`DenseSynapse`), and multiplies only the rows of the inputs active in some image of the
batch; a small convolution is a sparse (CSC) matrix of ``mantissa * 2**weight_exp`` built once when
the model is created (:class:`MatrixSynapse`), of which only the active inputs' columns are touched; a
larger convolution keeps its kernel (:class:`KernelConv`) and scatters the active inputs or
correlates densely, whichever costs less.
Both are exact for ``fixed_pt`` (``weight_exp >= 0``): the output equals the reference's
``conv(s, mantissa) * 2**weight_exp``. The synaptic operations of what a model sends are counted by
the sender, from the fan-outs of its outgoing synapses (the IR's ``Conv2d.fan_out``/``Dense.fan_out``).

This module must never import torch (torch hangs in Lava's forked workers); Lava's compiler executes
it on its own, so it uses absolute imports only.
"""
from __future__ import annotations

import functools
import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from numpy.lib.stride_tricks import sliding_window_view
from scipy import sparse

from bsnn_lava.dynamics import StreamPlan, frame_starts, gated_if_step, max_pool, phase, stream_frame
from bsnn_lava.lava.procs.process import (DENSE_CHUNK_VALUES, MAX_INPUTS, EventCount, GatedIF, PixelInput, Readout,
                                         batched, mantissa_dtype)

#: Above this fraction of active inputs (active in some image of the batch) a synapse multiplies the
#: whole matrix instead of slicing columns: for one image, and for a batch, where slicing costs the
#: same per column but the product grows with the batch (scipy, ResNet20's 16-channel 3x3 convolution).
DENSE_INPUT_FRACTION = {"image": 0.25, "batch": 0.75}
#: Integers below these magnitudes are exact in float32 and in float64, so a sum of integer products
#: whose partial sums all stay below them is exact in that type, in any order (BLAS included).
EXACT_INTEGERS = ((np.float32, 2 ** 24), (np.float64, 2 ** 53))
#: Each step a convolution takes the cheapest of its paths, costed in multiply-adds of its dense
#: correlation (im2col and BLAS: ``KernelConv.macs`` per image); fitted on bench/results/lava_kernel.md.
#: The kernel's scatter: per call, and per active input and kernel tap its index arithmetic plus its
#: out_channels / groups multiply-adds (scipy's sparse product on random rows of the weights).
SCATTER_CALL_COST, SCATTER_TAP_COST, SCATTER_MAC_COST = 2 ** 23, 128, 16
#: The matrix form's active columns: per call, and per nonzero weight in them, plus per weight and image.
MATRIX_CALL_COST, MATRIX_WEIGHT_COST, MATRIX_MAC_COST = 2 ** 20, 32, 2


# --- synapses ----------------------------------------------------------------------------------------

def conv_matrix(weight: np.ndarray, in_shape, stride, padding, dilation=(1, 1), groups: int = 1) -> sparse.csc_matrix:
    """The (C_out*H_out*W_out, C_in*H*W) matrix of torch's ``conv2d`` (zero padding), CSC.

    ``weight``: (C_out, C_in / groups, kH, kW). Rows and columns are flattened in (C, H, W) order;
    entries that fall into the padding or whose weight is zero are left out (so a grouped or
    depthwise convolution stores only its own weights). Built from the nonzero weights only, each
    at every output position (memory in proportion to the matrix, whatever the kernel's zeros: an
    identity map of 2048 channels is 2048 weights, not 2048 x 2048).
    """
    n_out_ch, per_group, kernel_h, kernel_w = weight.shape
    _, height, width = in_shape
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    o, c, ky, kx = np.nonzero(weight)  # one entry per nonzero weight, (K,)
    values = weight[o, c, ky, kx]
    oy, ox = np.arange(out_h), np.arange(out_w)
    iy = oy * stride[0] - padding[0] + ky[:, None] * dilation[0]  # (K, H_out)
    ix = ox * stride[1] - padding[1] + kx[:, None] * dilation[1]  # (K, W_out)
    in_channel = (o // (n_out_ch // groups)) * per_group + c  # output group g reads input group g
    keep = ((iy >= 0) & (iy < height))[:, :, None] & ((ix >= 0) & (ix < width))[:, None, :]  # (K, H_out, W_out)
    rows = np.broadcast_to((o[:, None, None] * out_h + oy[None, :, None]) * out_w + ox, keep.shape)[keep]
    cols = np.broadcast_to((in_channel[:, None, None] * height + iy[:, :, None]) * width + ix[:, None, :],
                           keep.shape)[keep]
    shape = (n_out_ch * out_h * out_w, per_group * groups * height * width)
    return sparse.csc_matrix((np.broadcast_to(values[:, None, None], keep.shape)[keep], (rows, cols)), shape=shape)


def exact_dtype(bound: float, integer: bool):
    """The type to multiply in: for ``integer`` inputs and weights whose partial sums stay within
    ``+-bound``, the fastest exact one (float32, float64, else int64); otherwise float64."""
    if not integer:
        return np.float64
    return next((dtype for dtype, limit in EXACT_INTEGERS if bound < limit), np.int64)


class MatrixSynapse:
    """A convolution synapse as a sparse (CSC) matrix of ``mantissa * 2**weight_exp``: the events' path
    of a convolution in the ``matrix`` form (:func:`conv_matrix`, one entry per nonzero weight and
    output position). Multiplies only the columns of the inputs active in some image of the batch, or
    the whole matrix above ``dense_fraction`` of them."""

    def __init__(self, synapse: dict, integer: bool, dense_fraction: float):
        effective = synapse["weight"] * 2.0 ** synapse["weight_exp"]
        matrix = conv_matrix(effective, synapse["in_shape"], synapse["stride"], synapse["padding"],
                             synapse["dilation"], synapse["groups"])
        row_sum = abs(matrix).sum(axis=1).max() if matrix.nnz else 0
        self.dtype = np.int64 if integer else np.float64
        self.matrix = matrix.tocsc().astype(exact_dtype(synapse["max_input"] * row_sum, integer))
        self.dense_fraction = dense_fraction
        #: nonzero weights per input (column)
        self.column_weights = np.diff(self.matrix.indptr)

    def __call__(self, s: np.ndarray, active: ty.Optional[np.ndarray] = None) -> ty.Optional[np.ndarray]:
        """(B, n_out) from the inputs ``s`` (B, n_in), or ``None`` when all are zero; ``active``: the
        inputs active in some image, where known."""
        active = np.flatnonzero((s != 0).any(axis=0)) if active is None else active
        if active.size == 0:
            return None
        if active.size >= self.dense_fraction * s.shape[1]:
            product = self.matrix @ s.T.astype(self.matrix.dtype)
        else:
            product = self.matrix[:, active] @ s[:, active].T.astype(self.matrix.dtype)
        return product.astype(self.dtype, copy=False).T  # exact: integer-valued where float32


class DenseSynapse:
    """A dense synapse held as its mantissas, transposed: row i (``by_input``, (in_features,
    out_features)) holds the weights input i drives, in :func:`mantissa_dtype` (one byte per weight
    for 8-bit mantissas, where a sparse matrix would keep 12; ResNet-50's readout, 1000 x 100,352
    weights with the average pool folded in, needs 96 MiB).

    Event-driven: only the rows of the inputs active in some image of the batch are multiplied,
    converted :data:`DENSE_CHUNK_VALUES` at a time to the :func:`exact_dtype` of ``max_input`` times the
    largest ``|mantissa|`` sum of an output, summed in int64, then multiplied by ``2**weight_exp``
    (exact for integer networks).
    """

    def __init__(self, synapse: dict, integer: bool):
        weight = np.asarray(synapse["weight"])
        self.by_input = np.ascontiguousarray(weight.T, dtype=mantissa_dtype(weight, integer))
        row_sums = [np.abs(weight[i:i + 64]).sum(axis=1).max() for i in range(0, weight.shape[0], 64)]  # no full copy
        bound = synapse["max_input"] * float(max(row_sums, default=0.0))
        self.compute = exact_dtype(bound, integer)
        self.dtype = np.int64 if integer else np.float64
        self.scale = 2 ** synapse["weight_exp"] if integer else 2.0 ** synapse["weight_exp"]
        self.chunk_rows = max(1, DENSE_CHUNK_VALUES // max(1, self.by_input.shape[1]))

    def __call__(self, s: np.ndarray) -> ty.Optional[np.ndarray]:
        """(B, n_out) from the inputs ``s`` (B, n_in), or ``None`` when all are zero."""
        active = np.flatnonzero((s != 0).any(axis=0))
        if active.size == 0:
            return None
        total = np.zeros((s.shape[0], self.by_input.shape[1]), dtype=self.dtype)
        for start in range(0, active.size, self.chunk_rows):
            rows = active[start:start + self.chunk_rows]
            product = s[:, rows].astype(self.compute, copy=False) @ self.by_input[rows].astype(self.compute, copy=False)
            total += product.astype(self.dtype, copy=False)  # exact: integer-valued where float
        return total if self.scale == 1 else total * self.scale


class KernelConv:
    """A convolution synapse, held as its kernel: the mantissas once, (out, in / groups, kH, kW)
    (memory in proportion to the weights, not to weights x output positions).

    Event-driven, each step by the cheapest path (:meth:`path_costs`): each active input scatters its
    kernel into the outputs it reaches (a sparse matrix of the active inputs' taps times the
    weights), or a dense correlation (im2col, then one matrix product per group), or, in the
    ``matrix`` form, the active inputs' columns of its sparse matrix (a :class:`MatrixSynapse`,
    which also skips zero weights: the identity maps of relays and shortcuts). Sums are
    exact for integer networks: the products are taken on the mantissas, in the :func:`exact_dtype`
    of ``max_input`` times the largest ``|mantissa|`` sum of an output channel, converted to int64,
    then multiplied by ``2**weight_exp``.
    """

    def __init__(self, synapse: dict, integer: bool, dense_fraction: float = DENSE_INPUT_FRACTION["image"]):
        #: the matrix form's sparse matrix (a path for its events), or ``None`` (the kernel form)
        self.matrix = MatrixSynapse(synapse, integer, dense_fraction) if synapse["form"] == "matrix" else None
        weight = np.asarray(synapse["weight"])
        out_channels, per_group, kernel_h, kernel_w = weight.shape
        self.groups, self.kernel = synapse["groups"], (kernel_h, kernel_w)
        self.stride, self.padding, self.dilation = synapse["stride"], synapse["padding"], synapse["dilation"]
        self.in_shape, self.out_shape = tuple(synapse["in_shape"]), tuple(synapse["out_shape"])
        bound = synapse["max_input"] * float(np.abs(weight).reshape(out_channels, -1).sum(axis=1).max())
        self.compute = exact_dtype(bound, integer)
        self.dtype = np.int64 if integer else np.float64
        self.scale = 2 ** synapse["weight_exp"] if integer else 2.0 ** synapse["weight_exp"]
        taps = per_group * kernel_h * kernel_w
        #: multiply-adds of the dense correlation per image
        self.macs = taps * int(np.prod(self.out_shape))
        #: (groups, out / groups, in / groups * kH * kW): the dense correlation's matrices
        self.grouped = weight.reshape(self.groups, out_channels // self.groups, taps).astype(self.compute)
        #: (in * kH * kW, out / groups): row (input channel, tap) holds the weights it drives
        self.by_input = np.ascontiguousarray(self.grouped.transpose(0, 2, 1)).reshape(-1, out_channels // self.groups)

    def __call__(self, s: np.ndarray) -> ty.Optional[np.ndarray]:
        """(B, n_out) from the inputs ``s`` (B, n_in), or ``None`` when all are zero."""
        n_active = np.count_nonzero(s)
        if n_active == 0:
            return None
        active = None if self.matrix is None else np.flatnonzero((s != 0).any(axis=0))
        costs = self.path_costs(s.shape[0], n_active, active)
        path = min(costs, key=costs.get)
        if path == "matrix":
            return self.matrix(s, active)
        x = s.reshape(s.shape[0], *self.in_shape)
        out = (self.scattered(x) if path == "scatter" else self.correlated(x)).astype(self.dtype, copy=False)
        return out if self.scale == 1 else out * self.scale

    def path_costs(self, batch_size: int, n_active: int, active: ty.Optional[np.ndarray] = None) -> dict:
        """What each path costs for ``n_active`` nonzero inputs in a batch, in multiply-adds of the
        dense correlation; ``active``: the inputs active in some image (the matrix form)."""
        costs = {"correlate": batch_size * self.macs,
                 "scatter": SCATTER_CALL_COST + n_active * self.kernel[0] * self.kernel[1]
                 * (SCATTER_TAP_COST + SCATTER_MAC_COST * self.by_input.shape[1])}
        if self.matrix is not None:
            weights = int(self.matrix.column_weights[active].sum())
            costs["matrix"] = MATRIX_CALL_COST + weights * (MATRIX_WEIGHT_COST + MATRIX_MAC_COST * batch_size)
        return costs

    def correlated(self, x: np.ndarray) -> np.ndarray:
        """Dense: the im2col columns of ``x`` (B, C, H, W) times each group's weights; (B, n_out)."""
        batch, channels, height, width = x.shape
        (ph, pw), (dy, dx), (sy, sx) = self.padding, self.dilation, self.stride
        padded = np.zeros((batch, channels, height + 2 * ph, width + 2 * pw), dtype=self.compute)
        padded[:, :, ph:ph + height, pw:pw + width] = x
        extent = (dy * (self.kernel[0] - 1) + 1, dx * (self.kernel[1] - 1) + 1)
        windows = sliding_window_view(padded, extent, axis=(2, 3))[:, :, ::sy, ::sx, ::dy, ::dx]
        _, out_h, out_w = self.out_shape
        columns = windows.reshape(batch, self.groups, channels // self.groups, out_h, out_w, *self.kernel)
        columns = columns.transpose(0, 1, 2, 5, 6, 3, 4).reshape(batch, self.groups, -1, out_h * out_w)
        return np.matmul(self.grouped, columns).reshape(batch, -1)

    @functools.cached_property
    def reached(self) -> np.ndarray:
        """(H * W, kH * kW): the output position (flat) that each tap of an input position reaches,
        or -1 (padding, stride); built on the first scatter."""
        axes = []
        for i in range(2):  # per axis, (input size, taps): stride * output position where it divides
            offset = (np.arange(self.in_shape[1 + i])[:, None] + self.padding[i]
                      - self.dilation[i] * np.arange(self.kernel[i]))
            valid = (offset >= 0) & (offset % self.stride[i] == 0) & (offset < self.stride[i] * self.out_shape[1 + i])
            axes.append(np.where(valid, offset // self.stride[i], -1))
        rows, cols = axes[0][:, None, :, None], axes[1][None, :, None, :]
        reached = np.where((rows >= 0) & (cols >= 0), rows * self.out_shape[2] + cols, -1)
        return reached.reshape(self.in_shape[1] * self.in_shape[2], -1)

    def scattered(self, x: np.ndarray) -> np.ndarray:
        """Event-driven: every active input of ``x`` (B, C, H, W) adds its weights times its value to
        the outputs it reaches: a sparse (B * groups * output positions, C * kH * kW) matrix of the
        active inputs' taps (plus one row collecting the taps that reach no output) times
        :attr:`by_input`; (B, n_out)."""
        batch, channels, height, width = x.shape
        out_channels, out_h, out_w = self.out_shape
        positions, taps = out_h * out_w, self.reached.shape[1]
        flat = np.flatnonzero(x)
        values = x.reshape(-1)[flat].astype(self.compute)
        image_channel, position = np.divmod(flat, height * width)
        image, channel = np.divmod(image_channel, channels)
        first_row = (image * self.groups + channel // (channels // self.groups)) * positions
        reached = self.reached[position]  # (events, taps)
        nowhere = batch * self.groups * positions
        rows = np.where(reached >= 0, first_row[:, None] + reached, nowhere)
        cols = channel[:, None] * taps + np.arange(taps)
        events = sparse.csr_matrix((np.repeat(values, taps), (rows.reshape(-1), cols.reshape(-1))),
                                   shape=(nowhere + 1, self.by_input.shape[0]))
        out = (events @ self.by_input)[:-1].reshape(batch, self.groups, positions, out_channels // self.groups)
        return out.transpose(0, 1, 3, 2).reshape(batch, -1)


class SynapticInput:
    """A layer's incoming synapses: what they deliver from the messages their sources sent.

    Each synapse is a :class:`DenseSynapse` (dense synapses) or a :class:`KernelConv` (convolutions;
    in the ``matrix`` form, as its spec's ``form`` says, with a :class:`MatrixSynapse` for its
    events: :func:`bsnn_lava.lava.procs.process.conv_form`). All are exact for ``fixed_pt``
    (``integer``): products in float32 where every partial sum is an integer float32 holds exactly
    (``max_input``, the largest value its source sends, times the largest row sum of ``|weight|``
    below 2**24; scipy's float32 product is 2-3x faster than its int32 or int64 one), else in
    float64 below 2**53, else in int64 (:func:`exact_dtype`), sums in int64. ``floating_pt``
    computes in float64.
    """

    def __init__(self, synapses: ty.Sequence[dict], batch_size: int, integer: bool, layer: str):
        self.batch_size = batch_size
        dense_fraction = DENSE_INPUT_FRACTION["image" if batch_size == 1 else "batch"]
        self.pool_taps = [synapse.get("pool_taps") for synapse in synapses]
        self.synapses = []
        for k, synapse in enumerate(synapses):
            weight, weight_exp = synapse["weight"], synapse["weight_exp"]
            if integer and (weight_exp < 0 or not np.array_equal(weight, np.round(weight))):
                raise ValueError(f"process {layer!r}, synapse {k}: fixed_pt needs integer weight mantissas and "
                                 f"weight_exp >= 0, got weight_exp {weight_exp}")
            self.synapses.append(KernelConv(synapse, integer, dense_fraction) if synapse["kind"] == "conv"
                                 else DenseSynapse(synapse, integer))

    def deliver(self, received: ty.Sequence[np.ndarray]) -> ty.Optional[np.ndarray]:
        """The summed input (B, n_out) of the messages ``received`` (one per synapse), or ``None``
        when every message was all zeros."""
        total = None
        for synapse, message, taps in zip(self.synapses, received, self.pool_taps):
            s = message.reshape(self.batch_size, -1)
            if taps is not None:
                s = max_pool(s, taps, np.maximum)
            product = synapse(s)
            if product is not None:
                total = product if total is None else total + product
        return total


# --- common parts ------------------------------------------------------------------------------------

def _open_logs(log_paths):
    """The activity log files as writable memory maps (``{}`` without logs)."""
    return {key: np.load(path, mmap_mode="r+") for key, path in (log_paths or {}).items()}


class _SampleClockModel(PyLoihiProcessModel):
    """``sample_step()``: the 0-based step within the current sample of ``steps_per_sample``."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.steps_per_sample = proc_params["steps_per_sample"]

    def sample_step(self) -> int:
        return (self.time_step - 1) % self.steps_per_sample  # Lava's time_step is 1 on the first step


class _ScheduledModel(_SampleClockModel):
    """Also reads the schedule (mode, offset_steps, window_steps) for :func:`phase`, the batch size
    and the logs."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.schedule = (proc_params["mode"], proc_params["offset_steps"], proc_params["window_steps"],
                         proc_params["frames"])
        self.plan = None if proc_params["stream"] is None else StreamPlan(**proc_params["stream"])
        self.batch_size = proc_params["batch_size"]
        self.io_shape = batched(proc_params["shape"], self.batch_size)  # of the ports and batched Vars
        self.layout = (self.batch_size, *proc_params["shape"])
        self.logs = _open_logs(proc_params["log_paths"])

    def frame(self, t: int) -> int:
        """The frame (a stream's round) that step ``t`` belongs to (:func:`stream_frame`)."""
        return stream_frame(t, self.schedule[1], self.schedule[2])

    def active_lanes(self, t: int) -> ty.Optional[int]:
        """In a stream, the lanes (a prefix) that hold an image in this step's frame; else ``None``."""
        return None if self.plan is None else self.plan.active_lanes(self.frame(t))


class _SenderModel(_ScheduledModel):
    """Sends, at the start of each step, what it computed on the previous one (:meth:`send_previous`),
    and counts the synaptic operations of what it computes (:meth:`keep`)."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        entries = proc_params["fan_outs"]
        columns = [e["coverage"] if isinstance(e, dict) else e for e in entries]
        self.fan_outs = np.stack(columns, axis=1) if columns else None
        self.pooled = [(j, e["taps"], e["fan_out"]) for j, e in enumerate(entries) if isinstance(e, dict)]
        self.silent = np.zeros(self.io_shape, dtype=self.message_dtype)
        self.outgoing = self.silent

    def send_previous(self, t: int) -> None:
        self.s_out.send(self.outgoing if t else self.silent)

    def keep(self, t: int, message: np.ndarray) -> None:
        """``message`` (``layout``) goes out on the next step; its synaptic operations into the log."""
        self.outgoing = message.reshape(self.io_shape)
        if "synops" in self.logs and self.fan_outs is not None:
            events = message.reshape(self.batch_size, -1) != 0
            self.logs["synops"][:, t] = events @ self.fan_outs
            for j, taps, fan_out in self.pooled:  # the events the pool passes on (:class:`Outgoing`)
                self.logs["synops"][:, t, j] += max_pool(events, taps, np.maximum) @ fan_out


class _LayerModel(_ScheduledModel):
    """State width (``state_bits`` where the model ``saturates``, else unbounded), the synapses, the
    per-sample logs and counters."""
    saturates = True

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.state_bits = proc_params["state_bits"] if self.saturates else None
        self.synapses = SynapticInput(proc_params["synapses"], self.batch_size, self.saturates, proc_params["name"])
        self.input_ports = [f"s_in{k}" for k in range(len(proc_params["synapses"]))]

    def synaptic_input(self) -> ty.Optional[np.ndarray]:
        """This step's input (``layout``), or ``None`` when nothing arrived."""
        total = self.synapses.deliver([getattr(self, port).recv() for port in self.input_ports])
        return None if total is None else total.reshape(self.layout)

    def start_sample(self) -> None:
        """Zero the per-sample logs that accumulate over the sample's steps."""
        for key in ("totals", "lost_input", "saturated"):
            if key in self.logs:
                self.logs[key][...] = 0

    def count(self, n_lost, n_saturated) -> None:
        """Add one step's per-image lost-input and saturation counts to the counters and logs."""
        self.n_lost_input += n_lost
        self.n_saturated += n_saturated
        for key, n in (("lost_input", n_lost), ("saturated", n_saturated)):
            if key in self.logs:
                self.logs[key] += n


def _with_inputs(port_type: LavaPyType):
    """Class decorator: the model's ``s_in0`` .. ``s_in<MAX_INPUTS - 1>`` ports, all of ``port_type``."""
    def decorate(cls):
        for k in range(MAX_INPUTS):
            setattr(cls, f"s_in{k}", port_type)
        return cls
    return decorate


FIXED_INPUT = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)  # pixels, spikes or payloads
FLOAT_INPUT = LavaPyType(PyInPort.VEC_DENSE, np.float64)


# --- neurons -----------------------------------------------------------------------------------------

class _GatedIFModel(_LayerModel, _SenderModel):
    """One :func:`gated_if_step` per step; counters and logs updated in place."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.frame_reset = proc_params["frame_reset"]
        self.payload_max = proc_params["payload_max"]
        self.no_spikes = np.zeros(self.layout, dtype=bool)

    def run_spk(self):
        t = self.sample_step()
        self.send_previous(t)
        a_in = self.synaptic_input()
        if t == 0:
            self.v = np.broadcast_to(self.v_init, self.v.shape).copy()
            self.start_sample()
        integrate, fire = phase(t, *self.schedule)
        starts = frame_starts(t, *self.schedule)
        restart = self.v_init if self.frame_reset and starts else None
        spikes, v, n_lost, n_saturated = gated_if_step(self.v.reshape(self.layout), a_in, self.bias, self.threshold,
                                                        integrate, fire, self.state_bits, restart, self.payload_max,
                                                        per_sample=True, active_lanes=self.active_lanes(t))
        self.v = v.reshape(self.v.shape)
        self.count(n_lost, n_saturated)
        spikes = self.no_spikes if spikes is None else spikes
        self.keep(t, spikes)  # binary: 0/1; graded: the payloads
        events = spikes != 0  # a graded spike is one event whatever its payload
        per_image = np.count_nonzero(events.reshape(self.batch_size, -1), axis=1)
        if per_image.any():
            self.n_spikes += events.reshape(self.n_spikes.shape)
        if "counts" in self.logs:
            self.logs["counts"][:, t] = per_image
            if per_image.any():
                self.logs["totals"] += events
        if "raster" in self.logs:
            self.logs["raster"][:, t] = spikes
        if "frame_spiked" in self.logs:
            ring = self.logs["frame_spiked"]
            slot = self.frame(t) % ring.shape[1]
            if starts:
                ring[:, slot] = False
            if per_image.any():
                ring[:, slot] |= events


@implements(proc=GatedIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
@_with_inputs(FIXED_INPUT)
class PyGatedIFModelFixed(_GatedIFModel):
    """Bit-accurate: int64 state saturated to ``state_bits``."""
    message_dtype = np.int32
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)  # 0/1, or graded payloads
    v: np.ndarray = LavaPyType(np.ndarray, np.int64)
    threshold: np.ndarray = LavaPyType(np.ndarray, np.int64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int64)
    v_init: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_spikes: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


@implements(proc=GatedIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
@_with_inputs(FLOAT_INPUT)
class PyGatedIFModelFloat(_GatedIFModel):
    """float64 state, unbounded."""
    saturates = False
    message_dtype = np.float64
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)  # 0/1, or graded payloads
    v: np.ndarray = LavaPyType(np.ndarray, np.float64)
    threshold: np.ndarray = LavaPyType(np.ndarray, np.float64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.float64)
    v_init: np.ndarray = LavaPyType(np.ndarray, np.float64)
    n_spikes: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


class _ReadoutModel(_LayerModel):
    """:func:`gated_if_step` that never fires; logs ``v`` after every step."""

    def run_spk(self):
        t = self.sample_step()
        a_in = self.synaptic_input()
        if t == 0:
            self.v = np.zeros_like(self.v)
            self.start_sample()
        integrate, _ = phase(t, *self.schedule)
        restart = 0 if self.plan is not None and frame_starts(t, *self.schedule) else None  # a stream: every frame
        _, v, n_lost, n_saturated = gated_if_step(self.v.reshape(self.layout), a_in, self.bias, None, integrate, False,
                                                  self.state_bits, restart, per_sample=True,
                                                  active_lanes=self.active_lanes(t))
        self.v = v.reshape(self.v.shape)
        self.count(n_lost, n_saturated)
        if "v" in self.logs:
            self.logs["v"][:, t] = v


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
@_with_inputs(FIXED_INPUT)
class PyReadoutModelFixed(_ReadoutModel):
    v: np.ndarray = LavaPyType(np.ndarray, np.int64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
@_with_inputs(FLOAT_INPUT)
class PyReadoutModelFloat(_ReadoutModel):
    saturates = False
    v: np.ndarray = LavaPyType(np.ndarray, np.float64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.float64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


# --- input -------------------------------------------------------------------------------------------

class _PixelInputModel(_SenderModel):
    """Shows sample ``(time_step - 1) // steps_per_sample`` (cyclically; its ``batch_size`` images)
    on its fire steps, else zeros (sent one step later, as every sender); in a stream, round k in its
    frame k."""
    message_dtype = np.uint8

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.n_samples = proc_params["n_samples"]

    def run_spk(self):
        t = self.sample_step()
        self.send_previous(t)
        sample = (self.time_step - 1) // self.steps_per_sample % self.n_samples if self.plan is None else \
            min(max(self.frame(t), 0), self.n_samples - 1)  # fires only in frames 0 .. rounds - 1
        _, fire = phase(t, *self.schedule)
        images = self.images[sample * self.batch_size:(sample + 1) * self.batch_size]
        self.keep(t, images if fire else self.silent)


@implements(proc=PixelInput, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPixelInputModelFixed(_PixelInputModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=8)  # graded 8-bit spikes
    images: np.ndarray = LavaPyType(np.ndarray, np.uint8, precision=8)


@implements(proc=PixelInput, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPixelInputModelFloat(_PixelInputModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)
    images: np.ndarray = LavaPyType(np.ndarray, np.uint8, precision=8)


# --- probes ------------------------------------------------------------------------------------------

class _EventCountModel(_SampleClockModel):
    """Writes the number of nonzero entries of every received message to the ``counts`` log."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.logs = _open_logs(proc_params["log_paths"])

    def run_spk(self):
        self.logs["counts"][self.sample_step()] = np.count_nonzero(self.s_in.recv())


@implements(proc=EventCount, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyEventCountModelFixed(_EventCountModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)


@implements(proc=EventCount, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyEventCountModelFloat(_EventCountModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
