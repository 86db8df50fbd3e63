"""Batched reference simulator (torch, CPU or CUDA): the network's exact step semantics.

Two paths give identical spike trains and readouts:

- ``step``: every layer every step, as Lava runs it: at step t each layer applies
  :func:`bsnn_lava.dynamics.gated_if_step` to the synaptic input computed from the spikes of step
  t - 1 (one-step synaptic delay); silent sources cost nothing.
- ``window`` (bistable networks only): one synapse evaluation per layer per window of P steps. A
  fire-only window emits ``count = clip(floor(v / theta), 0, P g)`` (g: the largest payload of a
  spike, 1 for binary spikes) on its first steps (:func:`bsnn_lava.dynamics.window_payload`), so the
  counts of the source's fire window are everything a layer integrates; the readout's partial sums
  inside its windows are rebuilt from ``min(count, (j + 1) g)``. Exact for
  integer-valued arithmetic (integer networks, or float64 with integer-valued weights). Where a
  window's partial sums could reach the state's limits (integer networks), that layer integrates
  that window step by step with saturation after every step, as the step path does.
"""
from __future__ import annotations

from typing import Collection, Dict, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import check_images, network_batch
from ..distributed import rank_device, run_lane_sharded, run_sharded, use_ranks
from ..dynamics import (SYNAPSE_DELAY_STEPS, StreamPlan, frame_starts, gated_if_step, phase, stream_frame,
                        stream_prediction_step, stream_steps, window_payload, window_spike_count)
from ..interrupts import Interrupted, note_progress
from ..ir import GatedIF, Network
from .ann import ReferenceANN
from .kernels import NetworkKernels
from .result import SimResult, StreamRecord


def simulate(network: Network, images, labels=None, steps: Optional[int] = None, batch_size: int = 100,
             device: str = "cpu", method: str = "auto", dtype: Optional[torch.dtype] = None,
             record: Union[bool, Collection[str]] = False, progress: bool = False,
             distributed: Optional[bool] = None,
             stream: bool = False, frames: Union[int, str, None] = None, ann: bool = True) -> SimResult:
    """Simulate ``network`` on raw uint8 ``images`` for ``steps`` steps, or streamed.

    Args:
        images: (N, H, W, C), (N, C, H, W) or (N, H, W) raw pixels, or an
            :class:`~bsnn_lava.datasets.ImageFolder`; converted to the arithmetic (a folder: decoded)
            one batch at a time, so a run holds no copy of the whole set.
        labels: (N,) class indices; enables ``accuracy`` (one value per step) and ``ann_accuracy``.
        steps: steps per image, pipeline fill included (default 128); a streamed run takes none.
        batch_size: images simulated at once; in a streamed run, the lanes (images entering per frame).
        method: ``step``, ``window`` (bistable only) or ``auto`` (window where it applies).
        record: keep every spike and the readout potential of every step (step path only; memory
            n_steps x n_samples x n_neurons): ``result.extras["spikes"][layer]`` is a bool array
            (n_steps, n_samples, *shape), int32 payloads for a graded layer,
            ``result.extras["readout_v"]`` (n_steps, n_samples, classes); streamed: n_samples are the lanes.
            ``True`` records every spiking layer, a collection of spiking layer names only those.
        dtype: arithmetic dtype; default float32 for float networks, float64 for integer networks
            (exact for integers below 2**53; state saturates at 24 bits). With the default, the
            window path of an integer network computes in float32 where that is exact (every
            synapse's partial sums below 2**24; the state stays within 2**23), which is faster; the
            ANN rates and the windows integrated step by step stay float64. ``result.extras`` then
            says ``window_arithmetic`` and ``n_windows_stepwise`` (layer-windows integrated step by
            step because their partial sums could saturate).
        distributed: shard the images over the ranks of a ``torchrun`` launch and return the merged
            result, equal to a one-process run's, on every rank (:mod:`bsnn_lava.distributed`;
            progress on rank 0 only; ``device="cuda"`` means each rank's ``cuda:LOCAL_RANK``; a
            streamed run shards its lanes). Default: when this process was launched as one of several ranks.
        stream: a new round of ``batch_size`` images enters every frame (bistable networks with frame
            reset, :meth:`Network.for_run`): each layer holds a different round, each image's prediction
            is read at the end of its readout frame (the readout restarts every frame), and the run lasts
            the latency plus one frame period per further round (:class:`bsnn_lava.dynamics.StreamPlan`).
            ``result.stream`` holds the timing, every image's prediction step and readout potentials.
        frames: the run's frame limit (:meth:`Network.for_run`): ``None`` (a frame-reset network stops
            each layer after its first frame), an integer, or ``"all"``; not for streamed runs.
        ann: compare with the equivalent ANN (:class:`~bsnn_lava.sim.ann.ReferenceANN`: ``ann_predictions``,
            ``ann_accuracy``, ``n_sin``). ``False`` leaves those ``None`` and skips the ANN, which a
            streamed run of a large network otherwise spends most of its time in (two float64
            passes per entering round); spikes, predictions and every other count are the same.
    Returns:
        A :class:`SimResult`; ``result.predictions_per_step[t, i]`` is the class predicted for image
        ``i`` after ``t + 1`` steps (one image at a time), ``result.stream`` (streamed).
    """
    if stream and steps is not None:
        raise ValueError(f"steps={steps!r}: a streamed run lasts the latency plus one frame period per further "
                         "round of images; give no steps")
    steps = 128 if steps is None and not stream else steps
    if not stream and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method not in ("auto", "step", "window"):
        raise ValueError(f"method must be auto, step or window, got {method!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_device(device)
    # checked here, converted (a folder: decoded) one batch at a time below
    x_all, y_all = images, check_images(images, labels, network.input.shape, network.readout.shape[0])
    n_images = len(x_all)
    plan = StreamPlan(n_images, min(int(batch_size), n_images)) if stream else None
    network = network.for_run(frames, None if plan is None else plan.n_rounds)
    if stream:
        steps = stream_steps(plan.n_rounds, network.latency_steps, network.window_steps)
    record = _recorded_layers(network, record)
    if method == "auto":
        method = "window" if window_path_applies(network) and not record else "step"
    if record and method != "step":
        raise ValueError("record=True needs method='step' (the window path does not visit every step)")
    elif method == "window" and not window_path_applies(network):
        raise ValueError("the window path needs a bistable network whose layers are synchronised "
                         "(offset = source offset + P + synaptic delay, one offset per layer's sources)")
    run = lambda part_plan, x, y, show, dev: _simulate_here(network, x, y, int(steps), batch_size, dev, method, dtype,
                                                          record, progress and show, part_plan, ann)
    if use_ranks(distributed):
        device = rank_device(device)
        if plan is not None:
            return run_lane_sharded(lambda lanes, show: run(lanes, x_all, y_all, show, device), plan, y_all, device)
        return run_sharded(lambda part, show: run(None, x_all[part], None if y_all is None else y_all[part], show,
                                                  device), n_images, y_all, device)
    return run(plan, x_all, y_all, True, device)


def _simulate_here(network: Network, x_all, y_all, steps: int, batch_size: int, device: str, method: str,
                   requested_dtype: Optional[torch.dtype], record: Optional[frozenset], progress: bool,
                   plan: Optional[StreamPlan], ann: bool = True) -> SimResult:
    """:func:`simulate` in this process (``network`` already :meth:`~Network.for_run`): one image at
    a time in batches, or streamed through the lanes of ``plan``."""
    y_all = None if y_all is None else torch.as_tensor(y_all)
    dtype = requested_dtype or (torch.float64 if network.numeric == "int" else torch.float32)
    kernels = NetworkKernels(network, dtype, device)
    window_kernels = kernels
    if requested_dtype is None and method == "window" and network.numeric == "int":
        fast = NetworkKernels(network, torch.float32, device)
        if all(k.exact_in_float32 for _, k in fast.all_synapses()):
            window_kernels = fast
    run = _Run(network, kernels, steps, network.state_bits, record, window_kernels, plan, ann)
    n_images = len(x_all) if plan is None else len(plan.image_indices())
    start = 0
    with tqdm(total=n_images, desc=f"simulate ({method} path{', streamed' if plan else ''})", disable=not progress,
              bar_format=PROGRESS_FORMAT) as bar:
        try:
            if plan is not None:
                run.on_images = lambda done: bar.update(done - bar.n)
                run.simulate(_StreamSource(plan, x_all, y_all, network, device), method)
            else:
                for start in range(0, n_images, batch_size):
                    x = network_batch(x_all[start:start + batch_size], None, network.input.shape,
                                      network.readout.shape[0])[0]
                    y = None if y_all is None else y_all[start:start + batch_size].to(device)
                    run.on_steps = _advance(bar, start, x.shape[0], steps)
                    run.simulate(_BatchSource(x.to(device=device), y), method)
        except Interrupted as err:
            note_progress(err, run.images_done if plan is not None else start, n_images)
            raise
    result = run.result(n_images, method, y_all is not None)
    result.frame_limit = network.readout.schedule.frames
    if plan is not None and y_all is not None:
        result.final_correct = int((torch.as_tensor(result.predictions) == y_all[result.stream.image_index]).sum())
    result.extras["ann"] = None if run.ann is None else run.ann.kind
    if method == "window":
        result.extras["n_windows_stepwise"] = run.n_windows_stepwise
        result.extras["window_arithmetic"] = str(window_kernels.dtype).replace("torch.", "")
    if record:
        result.extras["spikes"] = {name: np.concatenate(chunks, axis=1) for name, chunks in run.records.items()
                                   if name != network.readout.name}
        result.extras["readout_v"] = np.concatenate(run.records[network.readout.name], axis=1)
    return result


class _BatchSource:
    """One image at a time: a batch of images shown in every frame (on every input fire step)."""
    plan = None

    def __init__(self, x: torch.Tensor, y):
        self.x, self.y, self.lanes = x, y, x.shape[0]

    def round(self, k: int):
        """``(images, labels, n_active)`` of round ``k``: always the batch."""
        return self.x, self.y, self.lanes


class _StreamSource:
    """A streamed run's rounds: the images of round k in the first lanes, blank images in the rest."""

    def __init__(self, plan: StreamPlan, x_all, y_all, network: Network, device):
        self.plan, self.x_all, self.y_all, self.network, self.device = plan, x_all, y_all, network, device
        self.lanes = plan.run_lanes
        self.cached = (None, None)

    def round(self, k: int):
        if self.cached[0] != k:
            start, stop = self.plan.round_images(k)
            x = self.x_all[start:stop]
            if stop > start:
                x = network_batch(x, None, self.network.input.shape, self.network.readout.shape[0])[0]
            blank = torch.zeros(self.lanes - (stop - start), *self.network.input.shape)
            x = torch.cat([torch.as_tensor(x, dtype=torch.float32).reshape(-1, *self.network.input.shape), blank])
            y = None if self.y_all is None else self.y_all[start:stop].to(self.device)
            self.cached = (k, (x.to(self.device), y, stop - start))
        return self.cached[1]


def _recorded_layers(network: Network, record) -> Optional[frozenset]:
    """The spiking layers a run records (``record``: a bool, or a collection of layer names);
    ``None`` for none. ``ValueError`` naming a name that is no spiking layer."""
    if isinstance(record, bool) or record is None:
        return frozenset(layer.name for layer in network.spiking_layers) if record else None
    names = frozenset(record)
    unknown = sorted(names - {layer.name for layer in network.spiking_layers})
    if unknown:
        raise ValueError(f"record: {unknown[0]!r} is not a spiking layer of this network")
    return names or None


def check_device(device) -> None:
    """``ValueError`` (one line) when torch cannot place tensors on ``device`` here."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"device {device!r} cannot be used here ({reason}); use 'cpu'"
                         + (" or install a CUDA build of torch" if str(device).startswith("cuda") else "")) from None


#: A progress bar in images that moves within a batch, step by step (fractions shown as whole images).
PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} images [{elapsed}<{remaining}]"


def _advance(bar, start: int, batch: int, n_steps: int):
    """``on_steps(t)`` for one batch: moves ``bar`` to ``start + batch * t / n_steps`` images."""
    def on_steps(steps_done: int) -> None:
        bar.update(start + batch * steps_done / n_steps - bar.n)
    return on_steps


def window_path_applies(network: Network) -> bool:
    """True when every layer is bistable and synchronised, so the window path is exact."""
    if any(layer.schedule.mode != "bistable" for layer in network.layers):
        return False
    window = network.window_steps
    offsets = {layer.name: layer.schedule.offset_steps for layer in network.layers}
    for layer in network.layers[1:]:
        sources = {offsets[s.source] for s in layer.synapses}
        if len(sources) != 1 or offsets[layer.name] != sources.pop() + window + SYNAPSE_DELAY_STEPS:
            return False
    return network.input.schedule.offset_steps == -window and all(
        layer.schedule.window_steps == window and layer.schedule.frames == network.input.schedule.frames
        for layer in network.layers)


class _Run:
    """Accumulates counts over batches (one image at a time) or over the rounds of a stream.
    ``kernels`` serve the step path and the ANN rates, ``window_kernels`` (the same, or an exact
    float32 copy) the window path.

    SIN is counted per *frame* of a round: a neuron layer's spikes within its frame k (streamed), or
    within the whole run (one image at a time: the run is one round), are compared with the ANN
    pre-activations of round k, computed when the round enters (:meth:`_open_round`)."""

    def __init__(self, network: Network, kernels: NetworkKernels, n_steps: int, state_bits,
                 record: Optional[frozenset] = None,
                 window_kernels: Optional[NetworkKernels] = None, plan: Optional[StreamPlan] = None,
                 ann: bool = True):
        self.network = network
        self.plan = plan
        self.records = {name: [] for name in (*sorted(record), network.readout.name)} if record else None
        self.kernels = kernels
        self.ann = ReferenceANN(network, kernels) if ann else None  # None: no ANN, no SIN
        self.window_kernels = window_kernels or kernels
        self.n_steps = n_steps
        self.state_bits = state_bits
        self.spiking = network.spiking_layers
        self.names = tuple(layer.name for layer in self.spiking)
        self.index = {name: i for i, name in enumerate(self.names)}
        device = kernels.device
        self.spikes_per_step = torch.zeros(n_steps, len(self.names), dtype=torch.float64, device=device)
        self.synops_per_step = torch.zeros(n_steps, len(kernels.synapse_names), dtype=torch.float64, device=device)
        self.spikes_per_neuron = {layer.name: torch.zeros(layer.shape, dtype=torch.float64, device=device)
                                  for layer in self.spiking}
        self.correct = torch.zeros(n_steps, dtype=torch.float64, device=device)
        self.counters = {key: {layer.name: 0 for layer in network.layers[1:]} for key in ("lost", "saturated")}
        self.counters["sin"] = {layer.name: 0 for layer in self.spiking if layer.role == "neuron" and ann}
        self.ann_correct = 0
        self.predictions = []  # per batch: (n_steps, batch) predicted classes (one image at a time)
        self.ann_predictions = []  # per batch or round: the ANN's classes
        self.rounds = []  # streamed, per round: (predictions, readout potentials, prediction step)
        self.inactive: Dict[int, Dict[str, torch.Tensor]] = {}  # round -> layer -> ANN pre-activation <= 0
        self.batch_predictions = None  # (n_steps, batch) of the batch being simulated
        self.n_windows_stepwise = 0  # layer-windows the window path integrated step by step
        self.images_done = 0
        self.on_steps = lambda steps_done: None  # told how many steps of the current batch are done
        self.on_images = lambda images_done: None  # streamed: told how many images have their prediction

    def simulate(self, source, method: str) -> None:
        """Run a batch (``_BatchSource``) or a whole stream (``_StreamSource``) on one path."""
        (self.window_batch if method == "window" else self.step_batch)(source)

    def _count_events(self, t: int, source: str, active: torch.Tensor, spikes: bool = True) -> torch.Tensor:
        """Count the spikes (``spikes=True``) and synaptic operations of the events a source sends at
        step t (``active``: a boolean ``(batch, *shape)``); return the number of events (a 0-d tensor on
        the run's device: reading it is the caller's choice, as it waits for the device). A graded
        spike is one event whatever its payload."""
        per_neuron = active.sum(dim=0).to(torch.float64)
        n_events = per_neuron.sum()
        if spikes:
            self.spikes_per_step[t, self.index[source]] += n_events
            self.spikes_per_neuron[source] += per_neuron
        for outgoing in self.kernels.outgoing[source]:
            self.synops_per_step[t, outgoing.index] += outgoing.synops(active, per_neuron)
        return n_events

    def _count_input(self, t: int, x: torch.Tensor) -> None:
        """The synaptic operations of the pixels the input shows at step t (nonzero pixels are events)."""
        self._count_events(t, self.network.input.name, x != 0, spikes=False)

    def _open_round(self, source, k: int) -> None:
        """Round k enters: the ANN on its images gives their ANN predictions and, per neuron layer,
        the neurons whose pre-activation is <= 0 (for SIN); nothing without the ANN."""
        if self.ann is None:
            return
        x, y, n = source.round(k)
        if n == 0:  # a lane share of a stream whose last round has no image for it
            self.inactive[k] = {name: torch.zeros(0, *self.network[name].shape, dtype=torch.bool)
                                for name in self.counters["sin"]}
            self.ann_predictions.append(np.zeros(0, dtype=np.int64))
            return
        logits, pre = self.ann(x[:n])
        self.inactive[k] = {name: pre[name] <= 0 for name in self.counters["sin"]}
        ann_predicted = logits.argmax(dim=1)
        if y is not None:
            self.ann_correct += int((ann_predicted == y).sum())
        self.ann_predictions.append(ann_predicted.cpu().numpy())

    def _close_frame(self, name: str, k: int, spiked: torch.Tensor) -> None:
        """SIN of neuron layer ``name`` in round k: ``spiked`` (lanes, *shape) says which neurons sent
        at least one spike in its frame k (the whole run, one image at a time)."""
        inactive = self.inactive[k].pop(name)
        self.counters["sin"][name] += int((inactive & spiked[:inactive.shape[0]]).sum())
        if not self.inactive[k]:
            del self.inactive[k]

    def _may_saturate(self, kernels: NetworkKernels, v: torch.Tensor, bias, counts, name: str,
                      n_steps_in: int) -> bool:
        """False when ``|v| + n|bias| + |W| counts`` fits the state: then no partial sum of the
        window can saturate and one synapse evaluation on the window's counts is exact. The per-layer
        bound ``kernels.drive_bound`` (every source at its largest count) settles most windows
        without a second synapse evaluation."""
        if self.state_bits is None:
            return False
        limit = 2 ** (self.state_bits - 1) - 1
        v_min, v_max = torch.aminmax(v)
        peak = max(-float(v_min), float(v_max)) + n_steps_in * float(bias.abs().amax())
        if peak + kernels.drive_bound[name] <= limit:
            return False
        bound = v.abs() + n_steps_in * bias.abs()
        drive = kernels.synaptic_input(name, counts, absolute=True)
        if drive is not None:
            bound = bound + drive
        return bool((bound > limit).any())

    def _integrate_stepwise(self, kernels: NetworkKernels, name: str, v: torch.Tensor, bias, step_input, n_steps: int,
                            active_lanes: Optional[int] = None):
        """Integrate ``n_steps`` steps one at a time with :func:`gated_if_step`, saturating after
        each as the step path does (in float64, exact; ``step_input(j)``: the sources' outputs on
        step j; ``active_lanes``: as for :func:`gated_if_step`); yields ``v`` after each step (in
        float64: a clipped state converts back to float32 exactly)."""
        self.n_windows_stepwise += 1
        v, bias = v.to(torch.float64), bias.to(torch.float64)
        for j in range(n_steps):
            drive = kernels.synaptic_input(name, step_input(j))
            _, v, _, n_saturated = gated_if_step(v, None if drive is None else drive.to(torch.float64), bias, None,
                                                 True, False, self.state_bits, active_lanes=active_lanes)
            self.counters["saturated"][name] += int(n_saturated)
            yield v

    def _initial_state(self, kernels: NetworkKernels, batch: int) -> Dict[str, torch.Tensor]:
        state = {}
        for layer in self.network.layers[1:]:
            start = kernels.params[layer.name].get("v_init", torch.zeros((), dtype=kernels.dtype, device=kernels.device))
            state[layer.name] = start.expand(batch, *layer.shape).clone()
        return state

    def _score(self, t: int, v_readout: torch.Tensor, y) -> None:
        predicted = v_readout.argmax(dim=1)
        self.batch_predictions[t] = predicted
        if y is not None:
            self.correct[t] += (predicted == y).sum()

    def _predict_round(self, k: int, t: int, v_readout: torch.Tensor) -> None:
        """Streamed: the readout holds round k's prediction after step t (the end of its frame k)."""
        n = self.plan.active_lanes(k)
        v = v_readout[:n]
        self.rounds.append((v.argmax(dim=1).cpu().numpy(), v.to(torch.float64).cpu().numpy(), t))
        self.images_done += n
        self.on_images(self.images_done)

    def _finish_batch(self, y, spiked: Dict[str, torch.Tensor]) -> None:
        """One image at a time: the batch's predictions, and its SIN (the run is its one frame)."""
        for name in self.counters["sin"]:
            self._close_frame(name, 0, spiked[name])
        self.predictions.append(self.batch_predictions.cpu().numpy())
        self.on_steps(self.n_steps)

    def _start_batch(self, source) -> Dict[str, torch.Tensor]:
        """Per neuron layer, an all-false ``spiked`` mask; one image at a time, the batch's ANN."""
        if self.plan is None:
            self.batch_predictions = torch.zeros(self.n_steps, source.lanes, dtype=torch.int16,
                                                 device=self.kernels.device)
            self._open_round(source, 0)
        return {name: torch.zeros(source.lanes, *self.network[name].shape, dtype=torch.bool, device=self.kernels.device)
                for name in self.counters["sin"]}

    def _frame(self, t: int, layer) -> Optional[int]:
        """Streamed: the round that step t of ``layer`` belongs to (:func:`stream_frame`); else ``None``."""
        s = layer.schedule
        return None if self.plan is None else stream_frame(t, s.offset_steps, s.window_steps)

    # --- step path ----------------------------------------------------------------------------
    @torch.no_grad()
    def step_batch(self, source) -> None:
        net, kernels, plan = self.network, self.kernels, self.plan
        spiked = self._start_batch(source)
        state = self._initial_state(kernels, source.lanes)
        pending: Dict[str, Optional[torch.Tensor]] = {}
        readout = net.readout.name
        window = net.window_steps
        raster = None
        if self.records is not None:
            raster = {layer.name: torch.zeros(self.n_steps, *state[layer.name].shape,
                                              dtype=torch.bool if layer.payload_max == 1 else torch.int32)
                      for layer in self.spiking if layer.name in self.records}
            raster[readout] = torch.zeros(self.n_steps, *state[readout].shape, dtype=torch.float64)
        shown = (None, None)  # (round, its images in the arithmetic dtype)
        for t in range(self.n_steps):
            outputs = {}
            if phase(t, *_sched(net.input))[1]:
                k = self._frame(t, net.input) or 0
                if shown[0] != k:
                    if plan is not None:
                        self._open_round(source, k)
                    shown = (k, source.round(k)[0].to(kernels.dtype))
                outputs[net.input.name] = shown[1]
                self._count_input(t, shown[1])
            for layer in net.layers[1:]:
                sched = _sched(layer)
                integrate, fire = phase(t, *sched)
                params = kernels.params[layer.name]
                k = self._frame(t, layer)
                restart = None
                if frame_starts(t, *sched) and (getattr(layer, "frame_reset", False) or (plan and layer.name == readout)):
                    restart = params.get("v_init", 0)  # the readout restarts from 0 every frame of a stream
                spikes, state[layer.name], n_lost, n_sat = gated_if_step(
                    state[layer.name], pending.get(layer.name), params["bias"], params.get("threshold"),
                    integrate, fire and layer.name != readout, self.state_bits, restart,
                    getattr(layer, "payload_max", 1), active_lanes=None if k is None else plan.active_lanes(k))
                self.counters["lost"][layer.name] += n_lost
                self.counters["saturated"][layer.name] += n_sat
                events = None if spikes is None else spikes if spikes.dtype == torch.bool else spikes != 0
                if events is not None and bool(self._count_events(t, layer.name, events)):
                    if layer.name in spiked:
                        spiked[layer.name] |= events
                    outputs[layer.name] = spikes.to(kernels.dtype)
                    if raster is not None and layer.name in raster:
                        raster[layer.name][t] = spikes.cpu()
                if (k is not None and layer.name in spiked and 0 <= k < plan.n_rounds
                        and (t - sched[1]) % (2 * window) == 2 * window - 1):  # the end of its frame k
                    self._close_frame(layer.name, k, spiked[layer.name])
                    spiked[layer.name].zero_()
            if raster is not None:
                raster[readout][t] = state[readout].cpu()
            if plan is None:
                self._score(t, state[readout], source.y)
                self.on_steps(t + 1)
            else:
                k = self._frame(t, net.readout)
                if 0 <= k < plan.n_rounds and t == stream_prediction_step(k, net.latency_steps, window):
                    self._predict_round(k, t, state[readout])
            pending = {layer.name: kernels.synaptic_input(layer.name, outputs) for layer in net.layers[1:]}
        if raster is not None:
            for name, values in raster.items():
                self.records[name].append(values.numpy())
        if plan is None:
            self._finish_batch(source.y, spiked)

    # --- window path --------------------------------------------------------------------------
    @torch.no_grad()
    def window_batch(self, source) -> None:
        net, kernels, n_steps, plan = self.network, self.window_kernels, self.n_steps, self.plan
        window = net.window_steps
        spiked = self._start_batch(source)
        state = self._initial_state(kernels, source.lanes)
        readout = net.readout
        readout_sources = {s.source for s in readout.synapses}
        input_fed = [layer.name for layer in net.layers[1:] if all(s.source == net.input.name for s in layer.synapses)]

        def step_input(x, counts, target):  # the target's sources' outputs on step j: pixels, or payloads
            sources = {source for source, _ in kernels.synapses[target]}
            return lambda j: {name: x if name == net.input.name else (
                None if counts.get(name) is None else window_payload(counts[name], j, net[name].payload_max))
                for name in sources}

        first_offset = net.layers[1].schedule.offset_steps
        predicted_until = 0  # steps before this one have been scored (one image at a time)
        n_frames = (n_steps - first_offset + 2 * window - 1) // (2 * window)
        if net.input.schedule.frames is not None:
            n_frames = min(n_frames, net.input.schedule.frames)
        input_fires = [t for t in range(n_steps) if phase(t, *_sched(net.input))[1]]
        shown = (None, None)
        for k in range(n_frames):
            self.on_steps(min(n_steps, max(0, first_offset + 2 * k * window)))
            x, _, n_active = source.round(k if plan else 0)
            if shown[0] != (k if plan else 0):
                if plan is not None:
                    self._open_round(source, k)
                x = x.to(kernels.dtype)
                input_counts = {net.input.name: x * window}
                input_drive = {name: kernels.synaptic_input(name, input_counts) for name in input_fed}
                shown = (k if plan else 0, x)
            x = shown[1]
            for t in input_fires:  # the input's fire steps of its frame k
                if (self._frame(t, net.input) if plan else stream_frame(t, net.input.schedule.offset_steps, window)) == k:
                    self._count_input(t, x)
            active = n_active if plan else None
            counts: Dict[str, Optional[torch.Tensor]] = dict(input_counts)
            for layer in self.spiking:
                fire_start = layer.schedule.offset_steps + (2 * k + 1) * window
                if fire_start - window >= n_steps:
                    continue
                params = kernels.params[layer.name]
                if layer.frame_reset:
                    state[layer.name] = torch.zeros_like(state[layer.name]) + params["v_init"]
                if fire_start >= n_steps:  # the run ends while integrating: only saturation is observable
                    n_in = n_steps - (fire_start - window)
                    if self._may_saturate(kernels, state[layer.name], params["bias"], counts, layer.name, n_in):
                        for _ in self._integrate_stepwise(kernels, layer.name, state[layer.name], params["bias"],
                                                          step_input(x, counts, layer.name), n_in, active):
                            pass
                    continue
                if self._may_saturate(kernels, state[layer.name], params["bias"], counts, layer.name, window):
                    *_, v = self._integrate_stepwise(kernels, layer.name, state[layer.name], params["bias"],
                                                     step_input(x, counts, layer.name), window, active)
                    count, v = window_spike_count(v, params["threshold"].to(torch.float64), layer.window_count_max)
                    count, state[layer.name] = count.to(kernels.dtype), v.to(kernels.dtype)
                else:
                    drive = input_drive.get(layer.name)
                    if drive is None:
                        drive = kernels.synaptic_input(layer.name, counts)
                    v = state[layer.name] + window * params["bias"]
                    if drive is not None:
                        v += drive
                    count, state[layer.name] = window_spike_count(v, params["threshold"], layer.window_count_max)
                if active is not None:
                    count[active:] = 0  # idle lanes send nothing
                n_observed = min(window, n_steps - fire_start)
                payload = layer.payload_max  # step j of the window sends a spike where count > j * payload
                if layer.name in spiked:
                    if plan is None:
                        spiked[layer.name] |= count > 0
                    else:
                        self._close_frame(layer.name, k, count > 0)
                for j in range(n_observed):
                    self._count_events(fire_start + j, layer.name, count > j * payload)
                counts[layer.name] = count if float(count.amax()) > 0 else None
            integrate_start = readout.schedule.offset_steps + 2 * k * window
            if integrate_start >= n_steps:
                continue
            bias = kernels.params[readout.name]["bias"]
            if plan is not None:  # streamed: the readout restarts every frame; the prediction after its window
                v_start = torch.zeros_like(state[readout.name])
                if self._may_saturate(kernels, v_start, bias, counts, readout.name, window):
                    *_, v = self._integrate_stepwise(kernels, readout.name, v_start, bias,
                                                     step_input(x, counts, readout.name), window, active)
                else:
                    drive = kernels.synaptic_input(readout.name, counts)
                    v = v_start + window * bias + (0 if drive is None else drive)
                state[readout.name] = v.to(kernels.dtype)
                self._predict_round(k, integrate_start + window - 1, state[readout.name])
                continue
            v_before = state[readout.name]
            for t in range(predicted_until, integrate_start):
                self._score(t, v_before, source.y)
            n_observed = min(window, n_steps - integrate_start)
            if self._may_saturate(kernels, v_before, bias, counts, readout.name, window):
                steps = self._integrate_stepwise(kernels, readout.name, v_before, bias,
                                                 step_input(x, counts, readout.name), n_observed)
                for j, v in enumerate(steps):
                    state[readout.name] = v.to(kernels.dtype)
                    self._score(integrate_start + j, state[readout.name], source.y)
            else:
                for j in range(n_observed):
                    partial = {name: None if counts.get(name) is None
                               else counts[name].clamp(max=(j + 1) * net[name].payload_max)
                               for name in readout_sources}
                    drive = kernels.synaptic_input(readout.name, partial)
                    state[readout.name] = v_before + (j + 1) * bias + (0 if drive is None else drive)
                    self._score(integrate_start + j, state[readout.name], source.y)
            predicted_until = integrate_start + n_observed
        if plan is None:
            for t in input_fires:  # fire steps of input frames that no layer reached
                if stream_frame(t, net.input.schedule.offset_steps, window) >= n_frames:
                    self._count_input(t, shown[1] if shown[1] is not None else source.round(0)[0].to(kernels.dtype))
            for t in range(predicted_until, n_steps):
                self._score(t, state[readout.name], source.y)
            self._finish_batch(source.y, spiked)

    def result(self, n_samples: int, method: str, has_labels: bool) -> SimResult:
        as_int = lambda d: {k: int(v) for k, v in d.items()}
        counts = dict(
            n_steps=self.n_steps, n_samples=n_samples, layer_names=self.names,
            n_spikes_per_step=self.spikes_per_step.cpu().numpy().astype(np.int64),
            synapse_names=tuple(self.kernels.synapse_names),
            n_synops_per_step=self.synops_per_step.cpu().numpy().astype(np.int64),
            n_spikes_per_neuron={k: v.cpu().numpy().astype(np.int64) for k, v in self.spikes_per_neuron.items()},
            n_sin=as_int(self.counters["sin"]) if self.ann is not None else None, n_lost_input=as_int(self.counters["lost"]),
            n_saturated=as_int(self.counters["saturated"]),
            n_neurons={layer.name: int(np.prod(layer.shape)) for layer in self.network.layers[1:]},
            ann_predictions=np.concatenate(self.ann_predictions) if self.ann is not None else None,
            ann_accuracy=self.ann_correct / n_samples if has_labels and self.ann is not None else None, method=method)
        if self.plan is not None:
            predictions = np.concatenate([r[0] for r in self.rounds]).astype(np.int64)
            return SimResult(**counts, predictions=predictions, predictions_per_step=None, stream=StreamRecord(
                lanes=self.plan.lanes, n_rounds=self.plan.n_rounds, latency_steps=self.network.latency_steps,
                frame_steps=self.network.frame_steps, image_index=np.asarray(self.plan.image_indices(), dtype=np.int64),
                prediction_step=np.concatenate([np.full(len(r[0]), r[2], dtype=np.int64) for r in self.rounds]),
                readout=np.concatenate([r[1] for r in self.rounds])))
        predictions_per_step = np.concatenate(self.predictions, axis=1)
        return SimResult(**counts, predictions=predictions_per_step[-1].astype(np.int64),
                         predictions_per_step=predictions_per_step,
                         accuracy=(self.correct / n_samples).cpu().numpy() if has_labels else None)


def _sched(layer):
    s = layer.schedule
    return s.mode, s.offset_steps, s.window_steps, s.frames
