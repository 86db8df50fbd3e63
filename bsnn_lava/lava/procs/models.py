"""CPU process models of the BSNN processes: ``fixed_pt`` (bit-accurate, int64) and ``floating_pt`` (float64).

Every neuron update is :func:`bsnn_lava.dynamics.gated_if_step` with the gates of
:func:`bsnn_lava.dynamics.phase`, exactly as in the torch reference simulator; ``fixed_pt`` saturates
the state at the layer's ``state_bits``, ``floating_pt`` never (``state_bits=None``).

Timing (the reference simulator assumes the same): a synapse sends, on step t + 1, what the spikes
(or pixels) it received on step t produce, like Lava's Dense and Conv (it sends its buffer first and
receives afterwards, so recurrent graphs cannot deadlock). On the first step of every sample it sends
zeros, so nothing crosses from one image to the next. Several synapses into one ``a_in`` are summed
by Lava's InPort (the residual add).

Batches (``batch_size`` B): every model works on arrays with a leading axis of the B images
(``layout``), reshaped from and to the ports' shapes (unbatched for B = 1), so one code path serves
both; the images of a batch share the step and therefore the schedule.

Synapses are event-driven: an all-zero input costs one scan for nonzeros and sends a cached zero array;
otherwise only the columns of the inputs active in some image of the batch of a sparse (CSC) matrix,
built once when the model is created, are touched. The matrix holds ``mantissa * 2**weight_exp`` (exact integers for
``fixed_pt``, where ``weight_exp >= 0``), so the output equals the reference's
``conv(s, mantissa) * 2**weight_exp``.

This module must never import torch (torch hangs in Lava's forked workers); Lava's compiler executes
it on its own, so it uses absolute imports only.
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from scipy import sparse

from bsnn_lava.dynamics import frame_starts, gated_if_step, phase
from bsnn_lava.lava.procs.process import EventConv, EventCount, EventDense, GatedIF, PixelInput, Readout, batched

#: Above this fraction of active inputs (active in some image of the batch) a synapse multiplies the
#: whole matrix instead of slicing columns: for one image, and for a batch, where slicing costs the
#: same per column but the product grows with the batch (scipy, ResNet20's 16-channel 3x3 convolution).
DENSE_INPUT_FRACTION = {"image": 0.25, "batch": 0.75}


class _SampleClockModel(PyLoihiProcessModel):
    """``sample_step()``: the 0-based step within the current sample (image) of ``steps_per_sample``."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.steps_per_sample = proc_params["steps_per_sample"]

    def sample_step(self) -> int:
        return (self.time_step - 1) % self.steps_per_sample  # Lava's time_step is 1 on the first step


class _ScheduledModel(_SampleClockModel):
    """Also reads the schedule (mode, offset_steps, window_steps) for :func:`phase`, and the batch size."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.schedule = (proc_params["mode"], proc_params["offset_steps"], proc_params["window_steps"],
                         proc_params["frames"])
        self.batch_size = proc_params["batch_size"]
        self.io_shape = batched(proc_params["shape"], self.batch_size)  # of the ports and batched Vars


def _open_logs(log_paths):
    """The activity log files as writable memory maps (``{}`` without logs)."""
    return {key: np.load(path, mmap_mode="r+") for key, path in (log_paths or {}).items()}


# --- neurons -----------------------------------------------------------------------------------------

class _NeuronModel(_ScheduledModel):
    """State width (``state_bits`` where the model ``saturates``, else unbounded) and activity logs."""
    saturates = True

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.state_bits = proc_params["state_bits"] if self.saturates else None
        self.logs = _open_logs(proc_params["log_paths"])
        self.layout = (self.batch_size, *proc_params["shape"])

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


class _GatedIFModel(_NeuronModel):
    """One :func:`gated_if_step` per step; counters and logs updated in place."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.silent = np.zeros(self.layout, dtype=bool)
        self.frame_reset = proc_params["frame_reset"]
        self.payload_max = proc_params["payload_max"]

    def run_spk(self):
        a_in = self.a_in.recv().reshape(self.layout)
        t = self.sample_step()
        if t == 0:
            self.v = np.broadcast_to(self.v_init, self.v.shape).copy()
            self.start_sample()
        integrate, fire = phase(t, *self.schedule)
        restart = self.v_init if self.frame_reset and frame_starts(t, *self.schedule) else None
        spikes, v, n_lost, n_saturated = gated_if_step(self.v.reshape(self.layout), a_in, self.bias, self.threshold,
                                                        integrate, fire, self.state_bits, restart, self.payload_max,
                                                        per_sample=True)
        self.v = v.reshape(self.v.shape)
        self.count(n_lost, n_saturated)
        spikes = self.silent if spikes is None else spikes
        self.s_out.send(spikes.reshape(self.io_shape))  # binary: 0/1; graded: the payloads
        events = spikes != 0  # a graded spike is one event whatever its payload
        per_image = np.count_nonzero(events.reshape(self.batch_size, -1), axis=1)
        if per_image.any():
            self.n_spikes += events.reshape(self.n_spikes.shape)
        if self.logs:
            self.logs["counts"][:, t] = per_image
            if per_image.any():
                self.logs["totals"] += events
            if "raster" in self.logs:
                self.logs["raster"][:, t] = spikes


@implements(proc=GatedIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGatedIFModelFixed(_GatedIFModel):
    """Bit-accurate: int64 state saturated to ``state_bits``."""
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
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
class PyGatedIFModelFloat(_GatedIFModel):
    """float64 state, unbounded."""
    saturates = False
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)  # 0/1, or graded payloads
    v: np.ndarray = LavaPyType(np.ndarray, np.float64)
    threshold: np.ndarray = LavaPyType(np.ndarray, np.float64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.float64)
    v_init: np.ndarray = LavaPyType(np.ndarray, np.float64)
    n_spikes: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


class _ReadoutModel(_NeuronModel):
    """:func:`gated_if_step` that never fires; logs ``v`` after every step."""

    def run_spk(self):
        a_in = self.a_in.recv().reshape(self.layout)
        t = self.sample_step()
        if t == 0:
            self.v = np.zeros_like(self.v)
            self.start_sample()
        integrate, _ = phase(t, *self.schedule)
        _, v, n_lost, n_saturated = gated_if_step(self.v.reshape(self.layout), a_in, self.bias, None, integrate, False,
                                                  self.state_bits, per_sample=True)
        self.v = v.reshape(self.v.shape)
        self.count(n_lost, n_saturated)
        if self.logs:
            self.logs["v"][:, t] = v


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyReadoutModelFixed(_ReadoutModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
    v: np.ndarray = LavaPyType(np.ndarray, np.int64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyReadoutModelFloat(_ReadoutModel):
    saturates = False
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    v: np.ndarray = LavaPyType(np.ndarray, np.float64)
    bias: np.ndarray = LavaPyType(np.ndarray, np.float64)
    n_lost_input: np.ndarray = LavaPyType(np.ndarray, np.int64)
    n_saturated: np.ndarray = LavaPyType(np.ndarray, np.int64)


# --- input -------------------------------------------------------------------------------------------

class _PixelInputModel(_ScheduledModel):
    """Sends sample ``(time_step - 1) // steps_per_sample`` (cyclically; its ``batch_size`` images) on
    its fire steps, else zeros."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.n_samples = proc_params["n_samples"]
        self.silent = np.zeros(self.io_shape, dtype=np.uint8)

    def run_spk(self):
        sample = (self.time_step - 1) // self.steps_per_sample % self.n_samples
        _, fire = phase(self.sample_step(), *self.schedule)
        images = self.images[sample * self.batch_size:(sample + 1) * self.batch_size]
        self.s_out.send(images.reshape(self.io_shape) if fire else self.silent)


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


# --- synapses ----------------------------------------------------------------------------------------

def conv_matrix(weight: np.ndarray, in_shape, stride, padding) -> sparse.csc_matrix:
    """The (C_out*H_out*W_out, C_in*H*W) matrix of torch's ``conv2d`` (zero padding, groups 1), CSC.

    Rows and columns are flattened in (C, H, W) order; entries that fall into the padding or whose
    weight is zero are left out.
    """
    n_out_ch, n_in_ch, kernel_h, kernel_w = weight.shape
    _, height, width = in_shape
    out_h = (height + 2 * padding[0] - kernel_h) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel_w) // stride[1] + 1
    o, c, oy, ky, ox, kx = np.ix_(np.arange(n_out_ch), np.arange(n_in_ch), np.arange(out_h), np.arange(kernel_h),
                                  np.arange(out_w), np.arange(kernel_w))
    iy, ix = oy * stride[0] - padding[0] + ky, ox * stride[1] - padding[1] + kx
    shape6 = (n_out_ch, n_in_ch, out_h, kernel_h, out_w, kernel_w)
    values = np.broadcast_to(weight[o, c, ky, kx], shape6)
    keep = np.broadcast_to((iy >= 0) & (iy < height) & (ix >= 0) & (ix < width), shape6) & (values != 0)
    rows = np.broadcast_to((o * out_h + oy) * out_w + ox, shape6)[keep]
    cols = np.broadcast_to((c * height + iy) * width + ix, shape6)[keep]
    shape = (n_out_ch * out_h * out_w, n_in_ch * height * width)
    return sparse.csc_matrix((values[keep], (rows, cols)), shape=shape)


class _EventSynapseModel(_SampleClockModel):
    """Sends last step's product, then computes this step's from the active inputs only.

    ``fixed_pt`` multiplies in int32 where no output can exceed it (``max_input``, the largest value
    the source sends, times the largest row sum of ``|weight|`` below 2**31; the channel widens to
    int64), else in int64: exact either way.
    """
    dtype = np.int64

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.batch_size = proc_params["batch_size"]
        self.out_shape = batched(proc_params["out_shape"], self.batch_size)  # of a_out
        self.dense_fraction = DENSE_INPUT_FRACTION["image" if self.batch_size == 1 else "batch"]
        self.silent = np.zeros(self.out_shape, dtype=self.dtype)
        self.pending = self.silent
        matrix = self.weight_matrix(proc_params).tocsc()
        row_sum = abs(matrix).sum(axis=1).max() if matrix.nnz else 0
        narrow = self.dtype == np.int64 and proc_params["max_input"] * row_sum < 2 ** 31
        self.compute_dtype = np.int32 if narrow else self.dtype
        self.matrix = matrix.astype(self.compute_dtype)
        self.fan_out = np.diff(self.matrix.indptr)  # nonzero weights of each input (synaptic operations)
        self.logs = _open_logs(proc_params["log_paths"])

    def weight_matrix(self, proc_params) -> sparse.spmatrix:
        raise NotImplementedError

    def effective_weight(self, proc_params) -> np.ndarray:
        """``mantissa * 2**weight_exp``; ``ValueError`` where ``fixed_pt`` could not be exact."""
        weight, weight_exp = proc_params["weight"], proc_params["weight_exp"]
        if self.dtype == np.int64 and (weight_exp < 0 or not np.array_equal(weight, np.round(weight))):
            raise ValueError(f"process {proc_params['name']!r}: fixed_pt needs integer weight mantissas and "
                             f"weight_exp >= 0, got weight_exp {weight_exp}")
        return weight * 2.0 ** weight_exp

    def run_spk(self):
        t = self.sample_step()
        self.a_out.send(self.pending if t else self.silent)
        s = self.s_in.recv().reshape(self.batch_size, -1)
        nonzero = s != 0
        if self.logs:
            self.logs["synops"][:, t] = nonzero @ self.fan_out
        active = np.flatnonzero(nonzero.any(axis=0))
        if active.size == 0:
            self.pending = self.silent
            return
        if active.size >= self.dense_fraction * s.shape[1]:
            product = self.matrix @ s.T.astype(self.compute_dtype)
        else:
            product = self.matrix[:, active] @ s[:, active].T.astype(self.compute_dtype)
        self.pending = np.ascontiguousarray(product.T).reshape(self.out_shape)


class _EventDenseModel(_EventSynapseModel):
    def weight_matrix(self, proc_params):
        return sparse.csc_matrix(self.effective_weight(proc_params))


class _EventConvModel(_EventSynapseModel):
    def weight_matrix(self, proc_params):
        return conv_matrix(self.effective_weight(proc_params), proc_params["in_shape"], proc_params["stride"],
                           proc_params["padding"])


@implements(proc=EventDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyEventDenseModelFixed(_EventDenseModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)  # pixels, spikes or payloads
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int64)


@implements(proc=EventDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyEventDenseModelFloat(_EventDenseModel):
    dtype = np.float64
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)


@implements(proc=EventConv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyEventConvModelFixed(_EventConvModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)  # pixels, spikes or payloads
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int64)


@implements(proc=EventConv, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyEventConvModelFloat(_EventConvModel):
    dtype = np.float64
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.float64)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.float64)


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
