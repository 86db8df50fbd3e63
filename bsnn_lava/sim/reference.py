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

from typing import Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import check_images, is_streamed, network_batch
from ..distributed import rank_device, run_sharded, use_ranks
from ..dynamics import SYNAPSE_DELAY_STEPS, frame_starts, gated_if_step, phase, window_payload, window_spike_count
from ..interrupts import Interrupted, note_progress
from ..ir import GatedIF, Network
from .ann import ann_forward
from .kernels import NetworkKernels
from .result import SimResult


def simulate(network: Network, images, labels=None, steps: int = 128, batch_size: int = 100,
             device: str = "cpu", method: str = "auto", dtype: Optional[torch.dtype] = None,
             record: bool = False, progress: bool = False, distributed: Optional[bool] = None) -> SimResult:
    """Simulate ``network`` on raw uint8 ``images`` for ``steps`` steps.

    Args:
        images: (N, H, W, C), (N, C, H, W) or (N, H, W) raw pixels, or an
            :class:`~bsnn_lava.datasets.ImageFolder` (decoded one batch at a time).
        labels: (N,) class indices; enables ``accuracy`` (one value per step) and ``ann_accuracy``.
        method: ``step``, ``window`` (bistable only) or ``auto`` (window where it applies).
        record: keep every spike and the readout potential of every step (step path only; memory
            n_steps x n_samples x n_neurons): ``result.extras["spikes"][layer]`` is a bool array
            (n_steps, n_samples, *shape), int32 payloads for a graded layer,
            ``result.extras["readout_v"]`` (n_steps, n_samples, classes).
        dtype: arithmetic dtype; default float32 for float networks, float64 for integer networks
            (exact for integers below 2**53; state saturates at 24 bits). With the default, the
            window path of an integer network computes in float32 where that is exact (every
            synapse's partial sums below 2**24; the state stays within 2**23), which is faster; the
            ANN rates and the windows integrated step by step stay float64. ``result.extras`` then
            says ``window_arithmetic`` and ``n_windows_stepwise`` (layer-windows integrated step by
            step because their partial sums could saturate).
        distributed: shard the images over the ranks of a ``torchrun`` launch and return the merged
            result, equal to a one-process run's, on every rank (:mod:`bsnn_lava.distributed`;
            progress on rank 0 only; ``device="cuda"`` means each rank's ``cuda:LOCAL_RANK``).
            Default: when this process was launched as one of several ranks.
    Returns:
        A :class:`SimResult`; ``result.predictions_per_step[t, i]`` is the class predicted for image
        ``i`` after ``t + 1`` steps.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method not in ("auto", "step", "window"):
        raise ValueError(f"method must be auto, step or window, got {method!r}")
    if method == "auto":
        method = "window" if window_path_applies(network) and not record else "step"
    if record and method != "step":
        raise ValueError("record=True needs method='step' (the window path does not visit every step)")
    elif method == "window" and not window_path_applies(network):
        raise ValueError("the window path needs a bistable network whose layers are synchronised "
                         "(offset = source offset + P + synaptic delay, one offset per layer's sources)")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_device(device)
    streamed = is_streamed(images)
    if streamed:  # decoded batch by batch below
        x_all, y_all = images, check_images(images, labels, network.input.shape, network.readout.shape[0])
    else:
        x_all, y_all = network_batch(images, labels, network.input.shape, network.readout.shape[0])
    requested_dtype = dtype
    if use_ranks(distributed):
        device = rank_device(device)
        return run_sharded(lambda part, show: simulate(
            network, x_all[part], None if y_all is None else y_all[part], steps, batch_size, device, method,
            requested_dtype, record, progress and show, distributed=False), x_all.shape[0], y_all, device)
    y_all = None if y_all is None else torch.as_tensor(y_all)
    dtype = dtype or (torch.float64 if network.numeric == "int" else torch.float32)
    state_bits = network.state_bits
    kernels = NetworkKernels(network, dtype, device)
    window_kernels = kernels
    if requested_dtype is None and method == "window" and network.numeric == "int":
        fast = NetworkKernels(network, torch.float32, device)
        if all(k.exact_in_float32 for _, k in fast.all_synapses()):
            window_kernels = fast
    run = _Run(network, kernels, int(steps), state_bits, record, window_kernels)
    n_images = x_all.shape[0]
    with tqdm(total=n_images, desc=f"simulate ({method} path)", disable=not progress, bar_format=PROGRESS_FORMAT) as bar:
        start = 0
        try:
            for start in range(0, n_images, batch_size):
                x = x_all[start:start + batch_size]
                if streamed:
                    x = network_batch(x, None, network.input.shape, network.readout.shape[0])[0]
                x = x.to(device=device)
                y = None if y_all is None else y_all[start:start + batch_size].to(device)
                run.on_steps = _advance(bar, start, x.shape[0], int(steps))
                (run.window_batch if method == "window" else run.step_batch)(x, y)
        except Interrupted as err:
            note_progress(err, start, n_images)
            raise
    result = run.result(x_all.shape[0], method, y_all is not None)
    if method == "window":
        result.extras["n_windows_stepwise"] = run.n_windows_stepwise
        result.extras["window_arithmetic"] = str(window_kernels.dtype).replace("torch.", "")
    if record:
        result.extras["spikes"] = {name: np.concatenate(chunks, axis=1) for name, chunks in run.records.items()
                                   if name != network.readout.name}
        result.extras["readout_v"] = np.concatenate(run.records[network.readout.name], axis=1)
    return result


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
    """Accumulates counts over batches. ``kernels`` serve the step path and the ANN rates,
    ``window_kernels`` (the same, or an exact float32 copy) the window path."""

    def __init__(self, network: Network, kernels: NetworkKernels, n_steps: int, state_bits, record: bool = False,
                 window_kernels: Optional[NetworkKernels] = None):
        self.network = network
        self.records = {layer.name: [] for layer in network.layers[1:]} if record else None
        self.kernels = kernels
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
        self.counters["sin"] = {layer.name: 0 for layer in self.spiking if layer.role == "neuron"}
        self.ann_correct = 0
        self.predictions = []  # per batch: (n_steps, batch) predicted classes
        self.ann_predictions = []  # per batch: (batch,) the ANN's classes
        self.batch_predictions = None  # (n_steps, batch) of the batch being simulated
        self.n_windows_stepwise = 0  # layer-windows the window path integrated step by step
        self.on_steps = lambda steps_done: None  # told how many steps of the current batch are done

    def _count_events(self, t: int, source: str, active: torch.Tensor, spikes: bool = True) -> torch.Tensor:
        """Count the spikes (``spikes=True``) and synaptic operations of the events a source sends at
        step t (``active``: a boolean ``(batch, *shape)``, or its per-neuron sum over the batch); return
        the number of events (a 0-d tensor on the run's device: reading it is the caller's choice, as
        it waits for the device). A graded spike is one event whatever its payload."""
        per_neuron = (active.sum(dim=0) if active.dtype == torch.bool else active).to(torch.float64)
        n_events = per_neuron.sum()
        if spikes:
            self.spikes_per_step[t, self.index[source]] += n_events
            self.spikes_per_neuron[source] += per_neuron
        for index, fan_out in self.kernels.outgoing[source]:
            self.synops_per_step[t, index] += (per_neuron * fan_out).sum()
        return n_events

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

    def _integrate_stepwise(self, kernels: NetworkKernels, name: str, v: torch.Tensor, bias, step_input, n_steps: int):
        """Integrate ``n_steps`` steps one at a time with :func:`gated_if_step`, saturating after
        each as the step path does (in float64, exact; ``step_input(j)``: the sources' outputs on
        step j); yields ``v`` after each step (in float64: a clipped state converts back to float32
        exactly)."""
        self.n_windows_stepwise += 1
        v, bias = v.to(torch.float64), bias.to(torch.float64)
        for j in range(n_steps):
            drive = kernels.synaptic_input(name, step_input(j))
            _, v, _, n_saturated = gated_if_step(v, None if drive is None else drive.to(torch.float64), bias, None,
                                                 True, False, self.state_bits)
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

    def _finish_batch(self, x, y, v_readout, spiked: Dict[str, torch.Tensor]) -> None:
        """``spiked``: per layer, a boolean ``(batch, *shape)``, true where a neuron sent a spike."""
        logits, pre = ann_forward(self.network, x.to(self.kernels.dtype), self.kernels)
        for name in self.counters["sin"]:  # relays repeat their source's spikes: not counted twice
            self.counters["sin"][name] += int(((pre[name] <= 0) & spiked[name]).sum())
        ann_predicted = logits.argmax(dim=1)
        if y is not None:
            self.ann_correct += int((ann_predicted == y).sum())
        self.predictions.append(self.batch_predictions.cpu().numpy())
        self.ann_predictions.append(ann_predicted.cpu().numpy())
        self.on_steps(self.n_steps)

    def _start_batch(self, batch: int) -> None:
        self.batch_predictions = torch.zeros(self.n_steps, batch, dtype=torch.int16, device=self.kernels.device)

    # --- step path ----------------------------------------------------------------------------
    @torch.no_grad()
    def step_batch(self, x: torch.Tensor, y) -> None:
        net, kernels = self.network, self.kernels
        x = x.to(kernels.dtype)
        self._start_batch(x.shape[0])
        state = self._initial_state(kernels, x.shape[0])
        spiked = {name: torch.zeros_like(state[name], dtype=torch.bool) for name in self.names}
        pending: Dict[str, Optional[torch.Tensor]] = {}
        readout = net.readout.name
        input_active = (x != 0).sum(dim=0).to(torch.float64)
        raster = None
        if self.records is not None:
            raster = {layer.name: torch.zeros(self.n_steps, *state[layer.name].shape,
                                              dtype=torch.bool if layer.payload_max == 1 else torch.int32)
                      for layer in self.spiking}
            raster[readout] = torch.zeros(self.n_steps, *state[readout].shape, dtype=torch.float64)
        for t in range(self.n_steps):
            outputs = {net.input.name: x if phase(t, *_sched(net.input))[1] else None}
            if outputs[net.input.name] is not None:
                self._count_events(t, net.input.name, input_active, spikes=False)
            for layer in net.layers[1:]:
                integrate, fire = phase(t, *_sched(layer))
                params = kernels.params[layer.name]
                restart = params["v_init"] if getattr(layer, "frame_reset", False) and frame_starts(t, *_sched(layer)) else None
                spikes, state[layer.name], n_lost, n_sat = gated_if_step(
                    state[layer.name], pending.get(layer.name), params["bias"], params.get("threshold"),
                    integrate, fire and layer.name != readout, self.state_bits, restart,
                    getattr(layer, "payload_max", 1))
                self.counters["lost"][layer.name] += n_lost
                self.counters["saturated"][layer.name] += n_sat
                events = None if spikes is None else spikes if spikes.dtype == torch.bool else spikes != 0
                if events is not None and bool(self._count_events(t, layer.name, events)):
                    spiked[layer.name] |= events
                    outputs[layer.name] = spikes.to(kernels.dtype)
                    if raster is not None:
                        raster[layer.name][t] = spikes.cpu()
            if raster is not None:
                raster[readout][t] = state[readout].cpu()
            self._score(t, state[readout], y)
            self.on_steps(t + 1)
            pending = {layer.name: kernels.synaptic_input(layer.name, outputs) for layer in net.layers[1:]}
        if raster is not None:
            for name, values in raster.items():
                self.records[name].append(values.numpy())
        self._finish_batch(x, y, state[readout], spiked)

    # --- window path --------------------------------------------------------------------------
    @torch.no_grad()
    def window_batch(self, x: torch.Tensor, y) -> None:
        net, kernels, n_steps = self.network, self.window_kernels, self.n_steps
        window = net.window_steps
        x = x.to(kernels.dtype)
        self._start_batch(x.shape[0])
        state = self._initial_state(kernels, x.shape[0])
        spiked = {name: torch.zeros_like(state[name], dtype=torch.bool) for name in self.names}
        readout = net.readout
        input_counts = {net.input.name: x * window}
        input_drive = {layer.name: kernels.synaptic_input(layer.name, input_counts) for layer in net.layers[1:]
                       if all(s.source == net.input.name for s in layer.synapses)}
        input_active = (x != 0).sum(dim=0).to(torch.float64)
        for t in range(n_steps):
            if phase(t, *_sched(net.input))[1]:
                self._count_events(t, net.input.name, input_active, spikes=False)
        readout_sources = {s.source for s in readout.synapses}

        def step_input(counts, target):  # the target's sources' outputs on step j: pixels, or payloads
            sources = {source for source, _ in kernels.synapses[target]}
            return lambda j: {name: x if name == net.input.name else (
                None if counts.get(name) is None else window_payload(counts[name], j, net[name].payload_max))
                for name in sources}

        first_offset = net.layers[1].schedule.offset_steps
        predicted_until = 0  # steps before this one have been scored
        n_frames = (n_steps - first_offset + 2 * window - 1) // (2 * window)
        if net.input.schedule.frames is not None:
            n_frames = min(n_frames, net.input.schedule.frames)
        for k in range(n_frames):
            self.on_steps(min(n_steps, max(0, first_offset + 2 * k * window)))
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
                                                          step_input(counts, layer.name), n_in):
                            pass
                    continue
                if self._may_saturate(kernels, state[layer.name], params["bias"], counts, layer.name, window):
                    *_, v = self._integrate_stepwise(kernels, layer.name, state[layer.name], params["bias"],
                                                     step_input(counts, layer.name), window)
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
                n_observed = min(window, n_steps - fire_start)
                payload = layer.payload_max  # step j of the window sends a spike where count > j * payload
                spiked[layer.name] |= count > 0
                for j in range(n_observed):
                    self._count_events(fire_start + j, layer.name, count > j * payload)
                counts[layer.name] = count if float(count.amax()) > 0 else None
            integrate_start = readout.schedule.offset_steps + 2 * k * window
            if integrate_start >= n_steps:
                continue
            v_before = state[readout.name]
            for t in range(predicted_until, integrate_start):
                self._score(t, v_before, y)
            bias = kernels.params[readout.name]["bias"]
            n_observed = min(window, n_steps - integrate_start)
            if self._may_saturate(kernels, v_before, bias, counts, readout.name, window):
                steps = self._integrate_stepwise(kernels, readout.name, v_before, bias, step_input(counts, readout.name), n_observed)
                for j, v in enumerate(steps):
                    state[readout.name] = v.to(kernels.dtype)
                    self._score(integrate_start + j, state[readout.name], y)
            else:
                for j in range(n_observed):
                    partial = {name: None if counts.get(name) is None
                               else counts[name].clamp(max=(j + 1) * net[name].payload_max)
                               for name in readout_sources}
                    drive = kernels.synaptic_input(readout.name, partial)
                    state[readout.name] = v_before + (j + 1) * bias + (0 if drive is None else drive)
                    self._score(integrate_start + j, state[readout.name], y)
            predicted_until = integrate_start + n_observed
        for t in range(predicted_until, n_steps):
            self._score(t, state[readout.name], y)
        self._finish_batch(x, y, state[readout.name], spiked)

    def result(self, n_samples: int, method: str, has_labels: bool) -> SimResult:
        as_int = lambda d: {k: int(v) for k, v in d.items()}
        predictions_per_step = np.concatenate(self.predictions, axis=1)
        return SimResult(
            n_steps=self.n_steps, n_samples=n_samples, layer_names=self.names,
            n_spikes_per_step=self.spikes_per_step.cpu().numpy().astype(np.int64),
            synapse_names=tuple(self.kernels.synapse_names),
            n_synops_per_step=self.synops_per_step.cpu().numpy().astype(np.int64),
            n_spikes_per_neuron={k: v.cpu().numpy().astype(np.int64) for k, v in self.spikes_per_neuron.items()},
            n_sin=as_int(self.counters["sin"]), n_lost_input=as_int(self.counters["lost"]),
            n_saturated=as_int(self.counters["saturated"]),
            n_neurons={layer.name: int(np.prod(layer.shape)) for layer in self.network.layers[1:]},
            predictions=predictions_per_step[-1].astype(np.int64),
            predictions_per_step=predictions_per_step, ann_predictions=np.concatenate(self.ann_predictions),
            accuracy=(self.correct / n_samples).cpu().numpy() if has_labels else None,
            ann_accuracy=self.ann_correct / n_samples if has_labels else None,
            method=method)


def _sched(layer):
    s = layer.schedule
    return s.mode, s.offset_steps, s.window_steps, s.frames
