"""Batched reference simulator (torch, CPU or CUDA): the network's exact step semantics.

Two paths give identical spike trains and readouts:

- ``step``: every layer every step, as Lava runs it: at step t each layer applies
  :func:`bsnn_lava.dynamics.gated_if_step` to the synaptic input computed from the spikes of step
  t - 1 (one-step synaptic delay); silent sources cost nothing.
- ``window`` (bistable networks only): one synapse evaluation per layer per window of P steps. A
  fire-only window emits ``count = clip(floor(v / theta), 0, P)`` spikes on its first ``count``
  steps, so the spike counts of the source's fire window are everything a layer integrates; the
  readout's partial sums inside its windows are rebuilt from ``min(count, j + 1)``. Exact for
  integer-valued arithmetic (integer networks, or float64 with integer-valued weights).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import as_nchw
from ..dynamics import SYNAPSE_DELAY_STEPS, gated_if_step, phase, window_spike_count
from ..ir import GatedIF, Network
from .ann import ann_forward
from .kernels import NetworkKernels
from .result import SimResult


def simulate(network: Network, images, labels=None, steps: int = 128, batch_size: int = 100,
             device: str = "cpu", method: str = "auto", dtype: Optional[torch.dtype] = None,
             record: bool = False, progress: bool = False) -> SimResult:
    """Simulate ``network`` on raw uint8 ``images`` for ``steps`` steps.

    Args:
        images: (N, H, W, C), (N, C, H, W) or (N, H, W) raw pixels.
        labels: (N,) class indices; enables ``accuracy`` (one value per step) and ``ann_accuracy``.
        method: ``step``, ``window`` (bistable only) or ``auto`` (window where it applies).
        record: keep every spike and the readout potential of every step (step path only; memory
            n_steps x n_samples x n_neurons): ``result.extras["spikes"][layer]`` is a bool array
            (n_steps, n_samples, *shape), ``result.extras["readout_v"]`` (n_steps, n_samples, classes).
        dtype: arithmetic dtype; default float32 for float networks, float64 for integer networks
            (exact for integers below 2**53; state saturates at 24 bits).
    Returns:
        A :class:`SimResult`.
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
    x_all = as_nchw(images, network.input.shape[0])
    if tuple(x_all.shape[1:]) != network.input.shape:
        raise ValueError(f"images have shape {tuple(x_all.shape[1:])} (C, H, W); the network expects "
                         f"{network.input.shape}")
    y_all = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    if y_all is not None and y_all.shape[0] != x_all.shape[0]:
        raise ValueError(f"{x_all.shape[0]} images but {y_all.shape[0]} labels")
    dtype = dtype or (torch.float64 if network.numeric == "int" else torch.float32)
    state_bits = network.state_bits
    kernels = NetworkKernels(network, dtype, device)
    run = _Run(network, kernels, int(steps), state_bits, record)
    n_fallback = 0
    for start in tqdm(range(0, x_all.shape[0], batch_size), desc=f"simulate ({method})", disable=not progress):
        x = x_all[start:start + batch_size].to(device=device, dtype=dtype)
        y = None if y_all is None else y_all[start:start + batch_size].to(device)
        if method == "window":
            snapshot = run.snapshot()
            try:
                run.window_batch(x, y)
                continue
            except _StepPathNeeded:
                run.restore(snapshot)
                n_fallback += 1
        run.step_batch(x, y)
    result = run.result(x_all.shape[0], method, y_all is not None)
    result.extras["n_batches_on_step_path"] = n_fallback
    if record:
        result.extras["spikes"] = {name: np.concatenate(chunks, axis=1) for name, chunks in run.records.items()
                                   if name != network.readout.name}
        result.extras["readout_v"] = np.concatenate(run.records[network.readout.name], axis=1)
    return result


class _StepPathNeeded(Exception):
    """A window's partial sums might saturate the state: only the step path is exact there."""


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
        layer.schedule.window_steps == window for layer in network.layers)


class _Run:
    """Accumulates counts over batches."""

    def __init__(self, network: Network, kernels: NetworkKernels, n_steps: int, state_bits, record: bool = False):
        self.network = network
        self.records = {layer.name: [] for layer in network.layers[1:]} if record else None
        self.kernels = kernels
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
        self.predictions = []

    def snapshot(self):
        return (self.spikes_per_step.clone(), self.synops_per_step.clone(), self.correct.clone(),
                {k: v.clone() for k, v in self.spikes_per_neuron.items()},
                {k: dict(v) for k, v in self.counters.items()}, self.ann_correct, len(self.predictions))

    def restore(self, snapshot) -> None:  # (records are only kept on the step path, never restored)
        (self.spikes_per_step, self.synops_per_step, self.correct, self.spikes_per_neuron, self.counters,
         self.ann_correct, n_batches) = snapshot
        del self.predictions[n_batches:]

    def _count_synops(self, t: int, source: str, events: torch.Tensor) -> None:
        """Synaptic operations of the events a source sends at step t (nonzero entries of ``events``)."""
        active = (events != 0).to(self.kernels.dtype)
        for index, fan_out in self.kernels.outgoing[source]:
            self.synops_per_step[t, index] += (active * fan_out).sum()

    def _check_no_saturation(self, v: torch.Tensor, bias, counts, name: str, n_steps_in: int) -> None:
        """Raise :class:`_StepPathNeeded` unless ``|v| + n|bias| + |W| counts`` fits the state: then no
        partial sum of the window can saturate, and the window path is exact."""
        if self.state_bits is None:
            return
        bound = v.abs() + n_steps_in * bias.abs()
        drive = self.kernels.synaptic_input(name, counts, absolute=True)
        if drive is not None:
            bound = bound + drive
        if bool((bound > 2 ** (self.state_bits - 1) - 1).any()):
            raise _StepPathNeeded(name)

    def _initial_state(self, batch: int) -> Dict[str, torch.Tensor]:
        state = {}
        for layer in self.network.layers[1:]:
            start = self.kernels.params[layer.name].get("v_init", torch.zeros((), dtype=self.kernels.dtype,
                                                                               device=self.kernels.device))
            state[layer.name] = start.expand(batch, *layer.shape).clone()
        return state

    def _score(self, t: int, v_readout: torch.Tensor, y) -> None:
        if y is not None:
            self.correct[t] += (v_readout.argmax(dim=1) == y).sum()

    def _finish_batch(self, x, y, v_readout, spike_totals: Dict[str, torch.Tensor]) -> None:
        for name, total in spike_totals.items():
            self.spikes_per_neuron[name] += total.sum(dim=0)
        logits, pre = ann_forward(self.network, x, self.kernels)
        for name in self.counters["sin"]:  # relays repeat their source's spikes: not counted twice
            self.counters["sin"][name] += int(((pre[name] <= 0) & (spike_totals[name] > 0)).sum())
        if y is not None:
            self.ann_correct += int((logits.argmax(dim=1) == y).sum())
        self.predictions.append(v_readout.argmax(dim=1).cpu().numpy())

    # --- step path ----------------------------------------------------------------------------
    @torch.no_grad()
    def step_batch(self, x: torch.Tensor, y) -> None:
        net, kernels = self.network, self.kernels
        state = self._initial_state(x.shape[0])
        totals = {name: torch.zeros_like(state[name]) for name in self.names}
        pending: Dict[str, Optional[torch.Tensor]] = {}
        readout = net.readout.name
        raster = None
        if self.records is not None:
            raster = {name: torch.zeros(self.n_steps, *state[name].shape, dtype=torch.bool) for name in self.names}
            raster[readout] = torch.zeros(self.n_steps, *state[readout].shape, dtype=torch.float64)
        for t in range(self.n_steps):
            outputs = {net.input.name: x if phase(t, *_sched(net.input))[1] else None}
            if outputs[net.input.name] is not None:
                self._count_synops(t, net.input.name, x)
            for layer in net.layers[1:]:
                integrate, fire = phase(t, *_sched(layer))
                params = kernels.params[layer.name]
                spikes, state[layer.name], n_lost, n_sat = gated_if_step(
                    state[layer.name], pending.get(layer.name), params["bias"], params.get("threshold"),
                    integrate, fire and layer.name != readout, self.state_bits)
                self.counters["lost"][layer.name] += n_lost
                self.counters["saturated"][layer.name] += n_sat
                if spikes is not None and bool(spikes.any()):
                    s = spikes.to(kernels.dtype)
                    totals[layer.name] += s
                    self.spikes_per_step[t, self.index[layer.name]] += s.sum()
                    self._count_synops(t, layer.name, s)
                    outputs[layer.name] = s
                    if raster is not None:
                        raster[layer.name][t] = spikes.cpu()
            if raster is not None:
                raster[readout][t] = state[readout].cpu()
            self._score(t, state[readout], y)
            pending = {layer.name: kernels.synaptic_input(layer.name, outputs) for layer in net.layers[1:]}
        if raster is not None:
            for name, values in raster.items():
                self.records[name].append(values.numpy())
        self._finish_batch(x, y, state[readout], totals)

    # --- window path --------------------------------------------------------------------------
    @torch.no_grad()
    def window_batch(self, x: torch.Tensor, y) -> None:
        net, kernels, n_steps = self.network, self.kernels, self.n_steps
        window = net.window_steps
        state = self._initial_state(x.shape[0])
        totals = {name: torch.zeros_like(state[name]) for name in self.names}
        readout = net.readout
        input_counts = {net.input.name: x * window}
        input_drive = {layer.name: kernels.synaptic_input(layer.name, input_counts) for layer in net.layers[1:]
                       if all(s.source == net.input.name for s in layer.synapses)}
        for t in range(n_steps):
            if phase(t, *_sched(net.input))[1]:
                self._count_synops(t, net.input.name, x)
        first_offset = net.layers[1].schedule.offset_steps
        predicted_until = 0  # steps before this one have been scored
        for k in range((n_steps - first_offset + 2 * window - 1) // (2 * window)):
            counts: Dict[str, Optional[torch.Tensor]] = dict(input_counts)
            for layer in self.spiking:
                fire_start = layer.schedule.offset_steps + (2 * k + 1) * window
                if fire_start >= n_steps:
                    continue
                params = kernels.params[layer.name]
                self._check_no_saturation(state[layer.name], params["bias"], counts, layer.name, window)
                drive = input_drive.get(layer.name)
                if drive is None:
                    drive = kernels.synaptic_input(layer.name, counts)
                v = state[layer.name] + window * params["bias"]
                if drive is not None:
                    v = v + drive
                count, state[layer.name] = window_spike_count(v, params["threshold"], window)
                observed = count.clamp(max=n_steps - fire_start)
                totals[layer.name] += observed
                for j in range(min(window, n_steps - fire_start)):
                    self.spikes_per_step[fire_start + j, self.index[layer.name]] += (count > j).sum()
                    self._count_synops(fire_start + j, layer.name, count > j)
                counts[layer.name] = count if bool(count.any()) else None
            integrate_start = readout.schedule.offset_steps + 2 * k * window
            if integrate_start >= n_steps:
                continue
            v_before = state[readout.name]
            for t in range(predicted_until, integrate_start):
                self._score(t, v_before, y)
            bias = kernels.params[readout.name]["bias"]
            self._check_no_saturation(v_before, bias, counts, readout.name, window)
            n_observed = min(window, n_steps - integrate_start)
            for j in range(n_observed):
                partial = {name: None if c is None else c.clamp(max=j + 1) for name, c in counts.items()}
                drive = kernels.synaptic_input(readout.name, partial)
                state[readout.name] = v_before + (j + 1) * bias + (0 if drive is None else drive)
                self._score(integrate_start + j, state[readout.name], y)
            predicted_until = integrate_start + n_observed
        for t in range(predicted_until, n_steps):
            self._score(t, state[readout.name], y)
        self._finish_batch(x, y, state[readout.name], totals)

    def result(self, n_samples: int, method: str, has_labels: bool) -> SimResult:
        as_int = lambda d: {k: int(v) for k, v in d.items()}
        return SimResult(
            n_steps=self.n_steps, n_samples=n_samples, layer_names=self.names,
            n_spikes_per_step=self.spikes_per_step.cpu().numpy().astype(np.int64),
            synapse_names=tuple(self.kernels.synapse_names),
            n_synops_per_step=self.synops_per_step.cpu().numpy().astype(np.int64),
            n_spikes_per_neuron={k: v.cpu().numpy().astype(np.int64) for k, v in self.spikes_per_neuron.items()},
            n_sin=as_int(self.counters["sin"]), n_lost_input=as_int(self.counters["lost"]),
            n_saturated=as_int(self.counters["saturated"]),
            n_neurons={layer.name: int(np.prod(layer.shape)) for layer in self.network.layers[1:]},
            predictions=np.concatenate(self.predictions),
            accuracy=(self.correct / n_samples).cpu().numpy() if has_labels else None,
            ann_accuracy=self.ann_correct / n_samples if has_labels else None,
            method=method)


def _sched(layer):
    s = layer.schedule
    return s.mode, s.offset_steps, s.window_steps
