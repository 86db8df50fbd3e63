"""Run a network in Lava (CPU simulator, or Loihi 2 where Intel's lava-loihi is installed).

:func:`run_lava` builds the process graph once for all images (:func:`bsnn_lava.lava.build.build`),
then runs ``steps`` steps per image, or per batch of ``batch_size`` images run at once on the CPU;
every process restarts its state on the first step of a sample (see
:mod:`bsnn_lava.lava.procs.process`), so no Var is written between samples and nothing is
recompiled. All activity (spikes, synaptic operations, readout potentials, lost input, saturation)
comes back per image through the activity log files the models write (memory maps, read after each
sample); the blank images that fill the last batch are left out. It returns the reference
simulator's :class:`bsnn_lava.sim.SimResult`, same fields and meanings.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from bsnn_lava.data import check_images, network_batch
from bsnn_lava.distributed import run_lane_sharded, run_sharded, use_ranks
from bsnn_lava.dynamics import StreamPlan, stream_prediction_step, stream_steps
from bsnn_lava.interrupts import Interrupted, note_progress
from bsnn_lava.ir import GatedIF, Network
from bsnn_lava.lava.compat import LavaNotInstalled
from bsnn_lava.lava.compat import ensure_lava_importable
from bsnn_lava.lava.build import LavaNetwork, build, check_runnable, load_network, outgoing_synapses, synapse_name
from bsnn_lava.sim import SimResult, StreamRecord
from bsnn_lava.sim.ann import ReferenceANN
from bsnn_lava.sim.kernels import NetworkKernels

BACKENDS = ("cpu", "loihi2")
#: Images per batch of the ANN forward pass (pre-activations for SIN, ANN accuracy).
ANN_BATCH = 100
#: Messages each Lava channel buffers (Lava's default is 64). In lockstep every channel holds at most
#: one message per step, and a short ring keeps its shared memory warm in the cache (ResNet20 on two
#: cores: about 20% less time per step than with 64).
CHANNEL_SLOTS = 2


class LoihiUnavailableError(LavaNotInstalled):
    """``backend="loihi2"`` cannot run here; the message says what is missing (see docs/loihi.md)."""


def run_lava(network_or_path, images, labels=None, steps: Optional[int] = None, backend: str = "cpu",
             select_tag: str = "fixed_pt", record: bool = False, progress: bool = True,
             batch_size: int = 1, distributed: Optional[bool] = None, stream: bool = False,
             frames: Union[int, str, None] = None) -> SimResult:
    """Run ``network_or_path`` (IR or bsnn netx HDF5 path) on raw uint8 ``images`` in Lava.

    Args:
        images: (N, H, W, C), (N, C, H, W) or (N, H, W) raw pixels 0..255, shown one at a time.
        labels: (N,) class indices; enables ``accuracy`` and ``ann_accuracy``.
        steps: steps per image (T), pipeline fill included (default 128); a streamed run takes none.
        backend: ``cpu`` (Lava's CPU simulator, ``Loihi2SimCfg``) or ``loihi2`` (``Loihi2HwCfg``;
            needs lava-loihi and microcode models of the custom neurons, see docs/loihi.md).
        select_tag: ``fixed_pt`` (integer networks, bit-accurate) or ``floating_pt`` (float networks).
        record: also return every spike and readout potential, as :func:`bsnn_lava.sim.simulate` does:
            ``extras["spikes"][layer]`` (n_steps, n_samples, *shape) bool for every spiking layer,
            ``extras["readout_v"]`` (n_steps, n_samples, classes) float64.
        batch_size: images run at once, in lockstep, by the CPU models (every port and Var gets a
            batch axis; Lava's messaging cost per step is paid once per batch); the last batch is
            filled with blank images whose activity is not counted. 1 (the default) is the layout
            of one image per core mapping that Loihi 2 runs; ``backend="loihi2"`` takes only 1.
        distributed: shard the images over the ranks of a ``torchrun`` launch, one Lava runtime per
            rank, and return the merged result on every rank (:mod:`bsnn_lava.distributed`; Lava's
            ``timing`` per rank in ``extras["timing_per_rank"]``; a streamed run shards its lanes).
            Default: when this process was launched as one of several ranks.
        stream: show a new round of ``batch_size`` images every frame, as
            :func:`bsnn_lava.sim.simulate` does (one Lava sample of the whole stream, run in chunks);
            the result equals the reference's streamed run, spike for spike.
        frames: the run's frame limit (:meth:`bsnn_lava.ir.Network.for_run`; not for streamed runs).
    Returns:
        A :class:`SimResult` (``method="lava"``); ``extras["timing"]`` holds ``compile_start_s`` (compile,
        worker start-up, model set-up) and ``run_s`` (Lava's run calls, all steps) in seconds,
        ``ms_per_step`` (per Lava step, one batch), ``image_steps_per_s`` (of the real images),
        ``batch_size`` and ``n_processes`` (Lava processes); also ``backend``, ``select_tag``.
    Raises:
        ValueError: bad arguments, or a network the models cannot run (names the layer).
        LoihiUnavailableError: ``backend="loihi2"`` where lava-loihi or chip models are missing.
    """
    if stream and steps is not None:
        raise ValueError(f"steps={steps!r}: a streamed run lasts the latency plus one frame period per further "
                         "round of images; give no steps")
    steps = 128 if steps is None and not stream else steps
    if not stream and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if backend == "loihi2" and batch_size != 1:
        raise ValueError(f"batch_size {batch_size}: batches are a CPU-simulator layout; backend 'loihi2' runs one "
                         "image at a time (batch_size 1)")
    network = load_network(network_or_path)
    check_runnable(network, select_tag)
    if backend == "loihi2":
        _require_lava_loihi()
    if stream:
        network.for_run(frames, 1)  # refuses what cannot stream before anything is built
        run = lambda plan, show: _run_stream(network, images, labels, plan, backend, select_tag, record,
                                             progress and show)
        plan = StreamPlan(len(images), min(int(batch_size), len(images)))
        if use_ranks(distributed):
            return run_lane_sharded(run, plan, check_images(images, labels, network.input.shape,
                                                            network.readout.shape[0]))
        return run(plan, True)
    if use_ranks(distributed):
        y = check_images(images, labels, network.input.shape, network.readout.shape[0])
        return run_sharded(lambda part, show: run_lava(
            network, images[part], None if y is None else y[part], steps, backend, select_tag, record,
            progress and show, batch_size, distributed=False, frames=frames), len(images), y)
    network = network.for_run(frames)
    # Lava's input process holds every image: a streamed source is decoded here, all at once
    x, y = network_batch(images, labels, network.input.shape, network.readout.shape[0])
    steps, batch_size = int(steps), min(int(batch_size), len(x))
    tally = _Tally(network, x, y, steps, record)
    with tempfile.TemporaryDirectory(prefix="bsnn-lava-") as folder:
        logs = ActivityLogs(network, steps, Path(folder), record, integer=select_tag == "fixed_pt",
                            batch_size=batch_size)
        blank = (-len(x)) % batch_size  # images that fill the last batch
        padded = np.concatenate([x.numpy(), np.zeros((blank, *x.shape[1:]), dtype=np.uint8)])
        lava_net = build(network, padded, steps, select_tag, logs.paths, batch_size=batch_size)
        finished = False
        try:
            timing = _run_all(lava_net, logs, tally, _run_config(lava_net, backend, select_tag), progress)
            finished = True
        finally:  # an error or an interrupt (Ctrl-C, SIGTERM) kills the workers: they may be mid-step
            lava_net.stop() if finished else lava_net.abort()
    result = tally.result(logs.synapse_columns)
    result.frame_limit = network.readout.schedule.frames
    timing["n_processes"] = lava_net.n_processes
    result.extras.update(timing=timing, backend=backend, select_tag=select_tag, ann=tally.ann.kind)
    return result


#: A streamed run calls Lava's run every this many frames (reading the rounds predicted meanwhile).
STREAM_CHUNK_FRAMES = 16


def _run_stream(network: Network, images, labels, plan: StreamPlan, backend: str, select_tag: str, record: bool,
                progress: bool) -> SimResult:
    """:func:`run_lava` streamed through the lanes of ``plan``: one Lava sample of the whole stream."""
    x, y = network_batch(images, labels, network.input.shape, network.readout.shape[0])
    network = network.for_run(None, plan.n_rounds)
    steps = stream_steps(plan.n_rounds, network.latency_steps, network.window_steps)
    lanes = plan.run_lanes
    rounds = np.zeros((plan.n_rounds * lanes, *network.input.shape), dtype=np.uint8)
    for k in range(plan.n_rounds):
        start, stop = plan.round_images(k)
        rounds[k * lanes:k * lanes + stop - start] = x[start:stop].numpy()
    ring = -(-network.latency_steps // network.frame_steps) + STREAM_CHUNK_FRAMES + 3  # frames a slot outlives
    tally = _StreamTally(network, x, y, plan, steps, ring)
    with tempfile.TemporaryDirectory(prefix="bsnn-lava-") as folder:
        logs = ActivityLogs(network, steps, Path(folder), record, integer=select_tag == "fixed_pt",
                            batch_size=lanes, frame_ring=ring)
        lava_net = build(network, rounds, steps, select_tag, logs.paths, batch_size=lanes, stream=plan)
        finished = False
        try:
            timing = _run_chunks(lava_net, logs, tally, _run_config(lava_net, backend, select_tag), progress,
                                 STREAM_CHUNK_FRAMES * network.frame_steps)
            finished = True
        finally:
            lava_net.stop() if finished else lava_net.abort()
        result = tally.result(logs, record)
    timing["n_processes"] = lava_net.n_processes
    result.extras.update(timing=timing, backend=backend, select_tag=select_tag, ann=tally.ann.kind)
    return result


class _StreamTally:
    """A streamed run's results from its logs: each round's prediction, readout potentials, ANN
    comparison and SIN as soon as the readout has predicted it (:meth:`read_rounds`), the per-step
    counts at the end."""

    def __init__(self, network: Network, x: torch.Tensor, y, plan: StreamPlan, steps: int, ring: int):
        self.network, self.x, self.y, self.plan, self.steps, self.ring = network, x, y, plan, steps, ring
        self.kernels = NetworkKernels(network, torch.float64 if network.numeric == "int" else torch.float32, "cpu")
        self.ann = ReferenceANN(network, self.kernels)
        self.n_sin = {layer.name: 0 for layer in network.spiking_layers if layer.role == "neuron"}
        self.rows: List[tuple] = []  # per round: (predictions, readout, prediction step, ANN predictions)
        self.images_done = 0

    def read_rounds(self, logs: "ActivityLogs", steps_done: int) -> int:
        """Read every round whose prediction step is before ``steps_done``; returns the images read so far."""
        net = self.network
        while len(self.rows) < self.plan.n_rounds:
            k = len(self.rows)
            t = stream_prediction_step(k, net.latency_steps, net.window_steps)
            if t >= steps_done:
                break
            n = self.plan.active_lanes(k)
            v = np.array(logs.maps[net.readout.name]["v"][:n, t])
            start, stop = self.plan.round_images(k)
            ann_predicted = np.zeros(0, dtype=np.int64)
            if n:  # (a lane share of a stream may have no image in the last round)
                logits, pre = self.ann(self.x[start:stop])
                ann_predicted = logits.argmax(dim=1).numpy()
                for name in self.n_sin:
                    spiked = logs.maps[name]["frame_spiked"][:n, k % self.ring]
                    self.n_sin[name] += int(((pre[name].numpy() <= 0) & spiked).sum())
            self.rows.append((v.argmax(axis=1), v, t, ann_predicted))
            self.images_done += n
        return self.images_done

    def result(self, logs: "ActivityLogs", record: bool) -> SimResult:
        net, maps = self.network, logs.maps
        spiking = [layer.name for layer in net.spiking_layers]
        total = lambda name, key: maps[name][key].sum(axis=0)
        predictions = np.concatenate([r[0] for r in self.rows]).astype(np.int64)
        ann_predictions = np.concatenate([r[3] for r in self.rows]).astype(np.int64)
        index = np.asarray(self.plan.image_indices(), dtype=np.int64)
        columns = logs.synapse_columns
        y = None if self.y is None else np.asarray(self.y)[index]
        result = SimResult(
            n_steps=self.steps, n_samples=len(index), layer_names=tuple(spiking),
            n_spikes_per_step=np.stack([total(name, "counts") for name in spiking], axis=1).astype(np.int64),
            synapse_names=tuple(self.kernels.synapse_names),
            n_synops_per_step=np.stack([total(sender, "synops")[:, j] for sender, j in columns], axis=1)
            if columns else np.zeros((self.steps, 0), dtype=np.int64),
            n_spikes_per_neuron={name: total(name, "totals") for name in spiking}, n_sin=self.n_sin,
            n_lost_input={l.name: int(total(l.name, "lost_input")) for l in net.layers[1:]},
            n_saturated={l.name: int(total(l.name, "saturated")) for l in net.layers[1:]},
            n_neurons={layer.name: int(np.prod(layer.shape)) for layer in net.layers[1:]},
            predictions=predictions, predictions_per_step=None, ann_predictions=ann_predictions,
            ann_accuracy=None if y is None else float((ann_predictions == y).mean()), method="lava",
            frame_limit=net.readout.schedule.frames,
            final_correct=None if y is None else int((predictions == y).sum()),
            stream=StreamRecord(lanes=self.plan.lanes, n_rounds=self.plan.n_rounds, latency_steps=net.latency_steps,
                                frame_steps=net.frame_steps, image_index=index,
                                prediction_step=np.concatenate([np.full(len(r[0]), r[2], dtype=np.int64)
                                                                for r in self.rows]),
                                readout=np.concatenate([r[1] for r in self.rows]).astype(np.float64)))
        if record:
            result.extras["spikes"] = {name: np.swapaxes(np.array(maps[name]["raster"]), 0, 1) for name in spiking}
            result.extras["readout_v"] = np.swapaxes(np.array(maps[net.readout.name]["v"]), 0, 1).astype(np.float64)
        return result


class ActivityLogs:
    """The ``.npy`` files the models write (one sample's worth each: ``batch_size`` images), and what
    was read from them.

    Per image of the sample, per spiking layer: ``counts`` (steps,) int64, ``totals`` (*shape) int64,
    ``raster`` (steps, *shape) bool (int32 payloads for graded spikes) when recording; readout: ``v``
    (steps, classes), int64 or float64; both: ``lost_input`` and ``saturated`` () int64 neuron-steps;
    per sending layer (the input too): ``synops`` (steps, its outgoing synapses) int64; with
    ``frame_ring`` R (a stream), per neuron layer ``frame_spiked`` (R, *shape) bool (the process
    module's docstring). The files have a leading batch axis. ``synapse_columns``: per synapse in IR
    order, its (sender, column).
    """

    def __init__(self, network: Network, steps: int, folder: Path, record: bool, integer: bool, batch_size: int = 1,
                 frame_ring: Optional[int] = None):
        fields: Dict[str, Dict[str, tuple]] = {}
        errors = {"lost_input": ((), np.int64), "saturated": ((), np.int64)}
        outgoing = outgoing_synapses(network)
        column = {name: (sender, j) for sender, names in outgoing.items() for j, name in enumerate(names)}
        self.synapse_columns = [column[synapse_name(layer.name, synapse.source, k)]
                                for layer in network.layers[1:] for k, synapse in enumerate(layer.synapses)]
        for layer in network.layers:
            if isinstance(layer, GatedIF):
                fields[layer.name] = {"counts": ((steps,), np.int64), "totals": (layer.shape, np.int64), **errors}
                if record:
                    fields[layer.name]["raster"] = ((steps, *layer.shape), np.bool_ if layer.payload_max == 1 else np.int32)
                if frame_ring is not None and layer.role == "neuron":
                    fields[layer.name]["frame_spiked"] = ((frame_ring, *layer.shape), np.bool_)
            elif layer is network.readout:
                fields[layer.name] = {"v": ((steps, *layer.shape), np.int64 if integer else np.float64), **errors}
            if outgoing.get(layer.name):
                fields.setdefault(layer.name, {})["synops"] = ((steps, len(outgoing[layer.name])), np.int64)
        self.paths = {name: {key: str(folder / f"{index:05d}_{key}.npy") for key in kinds}
                      for index, (name, kinds) in enumerate(fields.items())}
        self.maps = {name: {key: np.lib.format.open_memmap(self.paths[name][key], mode="w+", dtype=dtype,
                                                           shape=(batch_size, *shape))
                            for key, (shape, dtype) in kinds.items()} for name, kinds in fields.items()}

    def read(self, n_images: int) -> List[Dict[str, Dict[str, np.ndarray]]]:
        """Copies of the logs of the first ``n_images`` images of the sample just run (the next sample
        overwrites the files), one dict per image."""
        copies = {name: {key: np.array(values[:n_images]) for key, values in maps.items()}
                  for name, maps in self.maps.items()}
        return [{name: {key: values[i] for key, values in fields.items()} for name, fields in copies.items()}
                for i in range(n_images)]


class _Tally:
    """Sums the logs over images into the reference's counts; SIN per batch of images via the ANN."""

    def __init__(self, network: Network, x: torch.Tensor, y, steps: int, record: bool):
        self.network, self.x, self.y, self.steps, self.record = network, x, y, steps, record
        dtype = torch.float64 if network.numeric == "int" else torch.float32  # the reference's arithmetic
        self.kernels = NetworkKernels(network, dtype, "cpu")
        self.ann = ReferenceANN(network, self.kernels)
        self.spiking = [layer.name for layer in network.spiking_layers]
        self.sums: Dict[str, Dict[str, np.ndarray]] = {}
        self.n_sin = {layer.name: 0 for layer in network.spiking_layers if layer.role == "neuron"}
        self.ann_correct = 0
        self.ann_predictions = []  # per batch of images: the ANN's classes
        self.predictions_per_step = []  # per image: argmax of the readout after every step
        self.pending_totals = []  # per-neuron spike totals of the images not yet compared with the ANN
        self.records = []

    def add(self, sample: Dict[str, Dict[str, np.ndarray]]) -> None:
        """One image's logs."""
        for name, fields in sample.items():
            for key in ("counts", "totals", "synops", "lost_input", "saturated"):
                if key in fields:
                    total = self.sums.setdefault(name, {}).get(key)
                    self.sums[name][key] = fields[key] if total is None else total + fields[key]
        v = sample[self.network.readout.name]["v"]
        self.predictions_per_step.append(v.argmax(axis=1))  # first index on ties, as torch's argmax
        self.pending_totals.append({name: sample[name]["totals"] for name in self.n_sin})
        if self.record:
            self.records.append(({name: sample[name]["raster"] for name in self.spiking}, v))
        if len(self.pending_totals) == ANN_BATCH:
            self._compare_with_ann()

    def _compare_with_ann(self) -> None:
        start = len(self.predictions_per_step) - len(self.pending_totals)
        images = self.x[start:start + len(self.pending_totals)]
        logits, pre = self.ann(images)
        for name in self.n_sin:
            totals = np.stack([sample[name] for sample in self.pending_totals])
            self.n_sin[name] += int(((pre[name].numpy() <= 0) & (totals > 0)).sum())
        ann_predicted = logits.argmax(dim=1).numpy()
        self.ann_predictions.append(ann_predicted)
        if self.y is not None:
            self.ann_correct += int((ann_predicted == self.y[start:start + len(images)]).sum())
        self.pending_totals = []

    def result(self, synapse_columns) -> SimResult:
        if self.pending_totals:
            self._compare_with_ann()
        n_samples, y = len(self.predictions_per_step), self.y
        predictions_per_step = np.stack(self.predictions_per_step)  # (n_samples, steps)
        per_step = lambda names, key: np.array([self.sums[name][key] for name in names],
                                               dtype=np.int64).reshape(len(names), self.steps).T
        result = SimResult(
            n_steps=self.steps, n_samples=n_samples, layer_names=tuple(self.spiking),
            n_spikes_per_step=per_step(self.spiking, "counts"),
            synapse_names=tuple(self.kernels.synapse_names),
            n_synops_per_step=np.stack([self.sums[sender]["synops"][:, j] for sender, j in synapse_columns], axis=1)
            if synapse_columns else np.zeros((self.steps, 0), dtype=np.int64),
            n_spikes_per_neuron={name: self.sums[name]["totals"] for name in self.spiking},
            n_sin=self.n_sin, n_lost_input=self.counter("lost_input"), n_saturated=self.counter("saturated"),
            n_neurons={layer.name: int(np.prod(layer.shape)) for layer in self.network.layers[1:]},
            predictions=predictions_per_step[:, -1], predictions_per_step=predictions_per_step.T,
            ann_predictions=np.concatenate(self.ann_predictions),
            accuracy=(predictions_per_step == y[:, None]).mean(axis=0) if y is not None else None,
            ann_accuracy=self.ann_correct / n_samples if y is not None else None, method="lava")
        if self.record:
            result.extras["spikes"] = {name: np.stack([r[0][name] for r in self.records], axis=1)
                                       for name in self.spiking}
            result.extras["readout_v"] = np.stack([r[1] for r in self.records], axis=1).astype(np.float64)
        return result


    def counter(self, key: str) -> Dict[str, int]:
        """Per non-input layer, the sum of a per-image count over the images."""
        return {layer.name: int(self.sums[layer.name][key]) for layer in self.network.layers[1:]}


def _run_config(lava_net: LavaNetwork, backend: str, select_tag: str):
    if backend == "cpu":
        from lava.magma.core.run_configs import Loihi2SimCfg

        return Loihi2SimCfg(select_tag=select_tag)
    _require_chip_models(lava_net)
    from lava.magma.core.run_configs import Loihi2HwCfg

    return Loihi2HwCfg()  # no tag: Lava prefers NcProcessModels (chip), then C, then Python ones


def _start(lava_net: LavaNetwork, run_cfg) -> float:
    """Compile and start the runtime; the seconds it took."""
    started = time.perf_counter()
    try:
        lava_net.start(run_cfg, {"pypy_channel_size": CHANNEL_SLOTS})
    except Exception as err:  # Lava raises AssertionError, NoProcessModelFound, ...; name the layer
        raise _compile_error(lava_net, err) from err
    return time.perf_counter() - started


def _run_chunks(lava_net: LavaNetwork, logs: ActivityLogs, tally: _StreamTally, run_cfg, progress: bool,
                chunk_steps: int) -> Dict[str, float]:
    """A stream: compile and start once, then Lava's run ``chunk_steps`` at a time, reading the rounds
    predicted after each chunk; seconds as for :func:`_run_all`."""
    from lava.magma.core.run_conditions import RunSteps

    compile_start_s, run_s = _start(lava_net, run_cfg), 0.0
    steps, done = lava_net.steps_per_sample, 0
    n_images = len(tally.plan.image_indices())
    try:
        with tqdm(total=n_images, desc="lava (streamed)", unit="image", disable=not progress) as bar:
            while done < steps:
                chunk = min(chunk_steps, steps - done)
                started = time.perf_counter()
                lava_net.input.run(condition=RunSteps(num_steps=chunk))
                run_s += time.perf_counter() - started
                done += chunk
                bar.update(tally.read_rounds(logs, done) - bar.n)
    except Interrupted as err:
        note_progress(err, tally.images_done, n_images)
        raise
    return {"compile_start_s": compile_start_s, "run_s": run_s, "ms_per_step": 1000.0 * run_s / steps,
            "image_steps_per_s": tally.plan.run_lanes * steps / run_s,
            "batch_size": tally.plan.run_lanes, "images_per_s": n_images / run_s}


def _run_all(lava_net: LavaNetwork, logs: ActivityLogs, tally: _Tally, run_cfg, progress: bool) -> Dict[str, float]:
    """Compile and start once, then ``steps_per_sample`` steps per sample (a batch of images); seconds
    spent in Lava (``run_s`` counts Lava's run calls only, not reading the logs or the ANN comparison)."""
    from lava.magma.core.run_conditions import RunSteps

    compile_start_s, run_s = _start(lava_net, run_cfg), 0.0
    n_images, batch_size = len(tally.x), lava_net.batch_size
    done = 0
    try:
        with tqdm(total=n_images, desc="lava", unit="image", disable=not progress) as bar:
            while done < n_images:
                started = time.perf_counter()
                lava_net.input.run(condition=RunSteps(num_steps=lava_net.steps_per_sample))
                run_s += time.perf_counter() - started
                images = logs.read(min(batch_size, n_images - done))
                for image in images:
                    tally.add(image)
                done += len(images)
                bar.update(len(images))
    except Interrupted as err:
        note_progress(err, done, n_images)
        raise
    n_lava_steps = -(-n_images // batch_size) * lava_net.steps_per_sample
    return {"compile_start_s": compile_start_s, "run_s": run_s, "ms_per_step": 1000.0 * run_s / n_lava_steps,
            "image_steps_per_s": n_images * lava_net.steps_per_sample / run_s, "batch_size": batch_size}


def _compile_error(lava_net: LavaNetwork, err: Exception) -> ValueError:
    """A ValueError naming the layer whose process Lava's message names (as ``'name'`` or ``name::``)."""
    message = " ".join(str(err).split()) or type(err).__name__
    names = [*lava_net.layers, lava_net.network.input.name]
    named = [name for name in names if f"'{name}'" in message or f"{name}::" in message]
    if named:
        return ValueError(f"Lava could not compile or start layer {max(named, key=len)!r}: {message}")
    return ValueError(f"Lava could not compile or start the network: {message}")


def _require_lava_loihi() -> None:
    ensure_lava_importable()
    from lava.utils import loihi

    if not loihi.is_installed():
        raise LoihiUnavailableError(
            "backend 'loihi2' needs Intel's lava-loihi package (Loihi2HwCfg, the chip compiler and the "
            "embedded-I/O adapters), which is distributed only to members of Intel's Neuromorphic Research "
            "Community (INRC) and is not installed here; the custom neurons also need microcode "
            "(NcProcessModel) versions on the chip. See docs/loihi.md; Lava's CPU simulator runs the same network "
            "bit-accurately: `bsnn simulate ... --backend lava`, or run_lava(..., backend='cpu').")


def _require_chip_models(lava_net: LavaNetwork) -> None:
    """Refuse to run on 'loihi2' when a process has no chip model (Lava would quietly use the Python one)."""
    from lava.magma.compiler.compiler_graphs import ProcGroupDiGraphs
    from lava.magma.core.resources import Loihi2NeuroCore, NeuroCore

    processes = {type(p).__name__: p for p in [lava_net.input, *lava_net.layers.values()]}
    missing = [name for name, proc in sorted(processes.items())
               if not any({NeuroCore, Loihi2NeuroCore} & set(model.required_resources)
                          for model in ProcGroupDiGraphs._find_proc_models(proc))]
    if missing:
        raise LoihiUnavailableError(
            f"lava-loihi is installed, but no Loihi 2 process model (NcProcessModel, microcode) exists for "
            f"{', '.join(missing)}: without them Lava would run these processes in Python on the host, not on "
            "the chip. See docs/loihi.md for what they must implement.")
