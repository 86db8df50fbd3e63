"""Network IR (or a bsnn netx HDF5 file) -> Lava process graph of :mod:`bsnn_lava.lava.procs`.

One process per layer: a :class:`~bsnn_lava.lava.procs.PixelInput` for the input layer, one
:class:`~bsnn_lava.lava.procs.GatedIF` per spiking layer (neurons and relays alike) and one
:class:`~bsnn_lava.lava.procs.Readout`, each holding its incoming IR synapses
(:func:`~bsnn_lava.lava.procs.conv_synapse`, :func:`~bsnn_lava.lava.procs.dense_synapse`): synapse k
of a layer is wired source ``s_out`` -> layer ``s_in<k>``, and the layer sums what its synapses
deliver (the residual add). Every port and Var keeps the IR's torch (C, H, W) order; nothing is
transposed to Lava's (W, H, C).

Process names are the layer names, so Lava's messages name the layer; :func:`synapse_name` names the
k-th synapse of a layer in the activity counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from bsnn_lava.dynamics import StreamPlan
from bsnn_lava.interrupts import children_shielded
from bsnn_lava.ir import Conv2d, GatedIF, Network, Readout

#: Process model tags of :mod:`bsnn_lava.lava.procs.models`, and the network numeric each one runs.
SELECT_TAGS = {"fixed_pt": "int", "floating_pt": "float"}


@dataclass(frozen=True, eq=False)
class LavaNetwork:
    """The built process graph. ``layers`` maps every non-input layer name to its neuron (or readout)
    process, in IR order. A sample is ``batch_size`` images run at once
    (:mod:`bsnn_lava.lava.procs.process`)."""
    network: Network
    input: object
    layers: Dict[str, object]
    steps_per_sample: int
    batch_size: int = 1

    @property
    def readout(self):
        return self.layers[self.network.readout.name]

    @property
    def n_processes(self) -> int:
        return 1 + len(self.layers)

    def start(self, run_cfg, compile_config: Optional[Mapping] = None) -> None:
        """Compile the graph for ``run_cfg`` and start Lava's runtime (its worker processes).

        The workers are forked with SIGINT and SIGTERM blocked (:func:`children_shielded`), so a signal
        sent to the whole process group (Ctrl-C) reaches only this process, which then stops them
        (:meth:`abort`). Multiprocessing's resource tracker is started first, from here, so that no
        worker starts one of its own with the signals unblocked.
        """
        from multiprocessing import resource_tracker

        executable = self.input.compile(run_cfg, dict(compile_config or {}))
        resource_tracker.ensure_running()  # outside the shield: it unblocks SIGINT and SIGTERM when it returns
        with children_shielded():
            self.input.create_runtime(executable=executable)

    def stop(self) -> None:
        """Stop Lava's runtime and end its worker processes (nothing to do if none was created).

        Lava's own ``stop`` joins the workers; workers of a runtime that was created but never ran
        (a model failed to build, say) wait for commands forever, so those are ended first. If the
        stop itself is interrupted, :meth:`abort` ends everything.
        """
        runtime = self.input.runtime
        if runtime is None:
            return
        try:
            if not runtime._is_started:
                self.abort()
            runtime.stop()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """End Lava's runtime now, whatever state its workers are in (an interrupted run).

        Kills and reaps every worker process (they block SIGTERM, see :meth:`start`), then shuts down
        Lava's shared-memory manager, whose server unlinks every ``/dev/shm`` segment of the run's
        channels. Signals are held back meanwhile, so a second Ctrl-C cannot cut the clean-up short.
        """
        runtime = self.input.runtime
        infrastructure = getattr(runtime, "_messaging_infrastructure", None)
        if infrastructure is None:
            return
        with children_shielded():
            workers = [w for w in infrastructure.actors if not w._is_done]
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
            for worker in workers:
                worker.join()
            if infrastructure.smm is not None:
                infrastructure.smm.shutdown()
            # Runtime.stop (called by Runtime.__del__ too) would otherwise wait for the dead workers
            runtime._is_started = runtime._is_running = False


def synapse_name(layer_name: str, source: str, k: int) -> str:
    """Name of synapse ``k`` of a layer: ``"<layer><-<source>#<k>"``."""
    return f"{layer_name}<-{source}#{k}"


def outgoing_synapses(network: Network) -> Dict[str, List[str]]:
    """Per sending layer (the input, every spiking layer), the :func:`synapse_name` of the synapses it
    feeds, in IR order: the columns of its ``synops`` log."""
    outgoing: Dict[str, List[str]] = {layer.name: [] for layer in network.layers if not isinstance(layer, Readout)}
    for layer in network.layers[1:]:
        for k, synapse in enumerate(layer.synapses):
            outgoing[synapse.source].append(synapse_name(layer.name, synapse.source, k))
    return outgoing


def load_network(network_or_path: Union[Network, str, Path]) -> Network:
    """A :class:`Network`, or the network read from a bsnn netx HDF5 file."""
    if isinstance(network_or_path, Network):
        return network_or_path
    import netx_export

    return netx_export.read(network_or_path)


def check_runnable(network: Network, select_tag: str) -> None:
    """``ValueError`` (naming the layer) for what the ``select_tag`` models cannot run exactly."""
    from bsnn_lava.lava.procs import MAX_INPUTS

    for layer in network.layers[1:]:
        if len(layer.synapses) > MAX_INPUTS:
            raise ValueError(f"layer {layer.name!r} has {len(layer.synapses)} incoming synapses; the Lava layer "
                             f"processes take at most {MAX_INPUTS}")
    if select_tag not in SELECT_TAGS:
        raise ValueError(f"select_tag must be one of {', '.join(SELECT_TAGS)}, got {select_tag!r}")
    if network.numeric != SELECT_TAGS[select_tag]:
        hint = ("quantize it first (bsnn_lava.quantize.quantize)" if select_tag == "fixed_pt"
                else "integer networks run bit-accurately, with saturation, under select_tag='fixed_pt'")
        raise ValueError(f"select_tag {select_tag!r} runs {SELECT_TAGS[select_tag]} networks; this one is "
                         f"{network.numeric}: {hint}")
    if select_tag == "fixed_pt":
        for layer in network.layers[1:]:
            for synapse in layer.synapses:
                if synapse.op.weight_exp < 0:
                    raise ValueError(f"layer {layer.name!r}: synapse from {synapse.source!r} has weight_exp "
                                     f"{synapse.op.weight_exp}; the fixed-point synapses need weight_exp >= 0 "
                                     "(a negative exponent would drop fractions the reference keeps)")


#: Memory of the CPU models, in bytes, as :func:`memory_estimate` counts it per Lava process.
#: ``WORKER_BYTES``: one Lava worker process's own pages (its heap and the copy-on-write copies of the
#: forked parent's pages it touches), the same for every process; Lava adds ``RUNTIME_PROCESSES``
#: processes of its own (the runtime service and the shared-memory manager). Measured with
#: ``/proc/<pid>/smaps_rollup`` (the private pages of every worker, sampled while running, torch
#: imported in the parent): 5-10 MiB per worker for tests/test_lava_procs.py's 3-layer
#: ``tiny_network``; for ResNet-34 at 224x224, one image, read from its netx file: 6-250 MiB per
#: process (the small ones mostly their weights), 2.0 GiB in all, against 2.7 GiB estimated by
#: :func:`memory_estimate` (the whole tree's peak: bench/results/resnet34_lava.md).
WORKER_BYTES, RUNTIME_PROCESSES = 16 * 2 ** 20, 2
#: Per neuron and image: ``v`` and ``n_spikes`` (int64), what the layer sends (int32, float64 in
#: ``floating_pt``) and the two slots of its channel (``run.CHANNEL_SLOTS``), ``gated_if_step``'s
#: temporaries and the parent's initial ``v``; per neuron: ``threshold``, ``bias`` and ``v_init`` in the
#: model (int64) and in the parent (float64). Per value a synapse receives, per image: the received
#: copy and its float conversion.
NEURON_BYTES, PARAMETER_BYTES, RECEIVED_BYTES = 64, 48, 16
#: A convolution (in either form, ``procs.models.KernelConv``): per weight, its kernel's two layouts
#: (float64 at most); per image, each value of its correlation's im2col columns (in_channels x kH x kW
#: x output positions), of its padded input and, three times, of its output (the product, int64, the
#: sum), float64 or int64 at most.
KERNEL_BYTES_PER_WEIGHT, SCRATCH_BYTES_PER_VALUE = 16, 8
#: A synapse matrix (a convolution in the matrix form): per nonzero weight, a value and a row index (up
#: to 8 + 4 bytes), per input its column pointer and weight count (4 + 8 bytes), and while building it
#: index arrays (``conv_matrix``'s peak, measured with tracemalloc: 46 bytes per weight for a 32-channel
#: 3x3 convolution of a 28x28 input, 57 for the identity map of a 256-channel 56x56 relay), in every
#: such process at once (Lava's workers all build their models when the runtime starts). A dense
#: synapse: its mantissas (:func:`mantissa_dtype`'s bytes per weight) and a chunk of its rows, gathered
#: and converted (``DENSE_CHUNK_VALUES``, twice 8 bytes each at most). A max pool: per pooled value its
#: taps (int64) and, per image, the pooled message.
MATRIX_BYTES_PER_WEIGHT, MATRIX_BYTES_PER_INPUT, BUILD_BYTES_PER_WEIGHT, POOL_BYTES_PER_VALUE = 12, 12, 64, 8


def synapse_memory(synapse, source_shape, batch_size: int = 1, integer: bool = True) -> Tuple[int, int]:
    """The bytes a synapse (:class:`bsnn_lava.ir.Synapse`) from a source of ``source_shape`` needs in
    its target's process, in the form the CPU models give it (:func:`~bsnn_lava.lava.procs.process.conv_form`),
    for ``batch_size`` images (``integer``: of an integer network): (kept, built), ``built`` being a
    matrix's extra while it is built."""
    from bsnn_lava.lava.procs.process import DENSE_CHUNK_VALUES, conv_form, mantissa_dtype

    op, in_shape = synapse.op, synapse.input_shape(source_shape)
    need = RECEIVED_BYTES * batch_size * int(np.prod(source_shape))
    if synapse.pool is not None:
        need += POOL_BYTES_PER_VALUE * int(np.prod(in_shape)) * (int(np.prod(synapse.pool.kernel)) + batch_size)
    if isinstance(op, Conv2d):
        matrix_weights = int(op.fan_out(in_shape).sum())
        out_channels, out_h, out_w = op.output_shape(in_shape)
        columns = in_shape[0] * op.weight.shape[2] * op.weight.shape[3] * out_h * out_w
        padded = in_shape[0] * (in_shape[1] + 2 * op.padding[0]) * (in_shape[2] + 2 * op.padding[1])
        scratch = columns + padded + 3 * out_channels * out_h * out_w
        need += KERNEL_BYTES_PER_WEIGHT * op.weight.size + SCRATCH_BYTES_PER_VALUE * batch_size * scratch
        if conv_form(matrix_weights) == "kernel":
            return need, 0
        matrix = MATRIX_BYTES_PER_WEIGHT * matrix_weights + MATRIX_BYTES_PER_INPUT * int(np.prod(in_shape))
        return need + matrix, BUILD_BYTES_PER_WEIGHT * matrix_weights
    bytes_per_weight = np.dtype(mantissa_dtype(op.weight, integer)).itemsize
    return need + bytes_per_weight * op.weight.size + 2 * 8 * min(DENSE_CHUNK_VALUES, op.weight.size), 0


def memory_estimate(network: Network, batch_size: int = 1) -> Tuple[Dict[str, int], int]:
    """What the CPU models of ``network`` need for ``batch_size`` images at once, in bytes: per
    Lava process (by layer name: its worker, states, messages and incoming synapses), and the
    extra of building the synapse matrices (all at once, as Lava's workers start together)."""
    need, building = {}, 0
    for layer in network.layers:
        size = int(np.prod(layer.shape))
        need[layer.name] = WORKER_BYTES + (NEURON_BYTES * batch_size + PARAMETER_BYTES) * size
        for synapse in getattr(layer, "synapses", ()):
            kept, built = synapse_memory(synapse, network[synapse.source].shape, batch_size, network.numeric == "int")
            need[layer.name] += kept
            building += built
    return need, building


def available_memory_bytes() -> Optional[int]:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``None``."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(network: Network, available: Optional[int] = None, batch_size: int = 1) -> int:
    """The bytes the CPU models of ``network`` need for ``batch_size`` images at once: every Lava
    process (:func:`memory_estimate`) and Lava's own ``RUNTIME_PROCESSES``; ``ValueError``, naming the
    largest process, when more than ``available`` (default: the memory available now)."""
    per_process, building = memory_estimate(network, batch_size)
    need = sum(per_process.values()) + RUNTIME_PROCESSES * WORKER_BYTES + building
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        largest = max(per_process, key=per_process.get)
        raise ValueError(f"the Lava CPU models of this network need about {need / 2 ** 30:.1f} GiB for "
                         f"{len(per_process)} processes of {batch_size} image(s) at once (the largest, {largest!r}, "
                         f"{per_process[largest] / 2 ** 30:.2f} GiB), more than the {available / 2 ** 30:.1f} GiB "
                         "available here; run it with the reference simulator (bsnn simulate --backend torch), or "
                         "in Lava on a machine with more memory")
    return need


def per_neuron(values: np.ndarray, shape) -> np.ndarray:
    """An IR parameter (scalar, per channel or per neuron) repeated to the layer's full ``shape``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1 and len(shape) == 3:
        values = values.reshape(-1, 1, 1)
    return np.broadcast_to(values, shape).copy()


def build(network_or_path: Union[Network, str, Path], images: np.ndarray, steps_per_sample: int,
          select_tag: str = "fixed_pt", log_paths: Optional[Mapping[str, Mapping[str, str]]] = None,
          batch_size: int = 1, stream: Optional[StreamPlan] = None) -> LavaNetwork:
    """Build the process graph of a network for ``images`` shown ``steps_per_sample`` steps each.

    Args:
        network_or_path: the IR, or a path to a file written by ``netx_export.write`` (bsnn mode).
        images: (n_images, C, H, W) integer pixels 0..255, in the network's input shape; ``n_images``
            a multiple of ``batch_size``.
        steps_per_sample: steps per sample (T); states restart at every sample.
        select_tag: ``fixed_pt`` (integer networks) or ``floating_pt`` (float networks); checked here
            so that the compiler cannot fail on it later.
        log_paths: per layer name, the activity log files of its process (see
            :mod:`bsnn_lava.lava.procs.process`; ``synops`` columns: :func:`outgoing_synapses`);
            ``None``: no logs.
        batch_size: images per sample, run at once (CPU models; every port and Var gets a batch axis).
        stream: a streamed run (:class:`bsnn_lava.dynamics.StreamPlan`, its ``run_lanes`` the
            ``batch_size``): one sample of ``steps_per_sample`` steps, ``images`` its rounds one after
            another (blank images where a round has fewer), round k shown in the input's frame k.
    Raises:
        ValueError: images of the wrong shape, a network the models cannot run (names the layer), or
            one whose CPU models would not fit the memory available (:func:`check_memory`).
    """
    from bsnn_lava.lava.procs import GatedIF as GatedIFProcess, PixelInput, Readout as ReadoutProcess
    from bsnn_lava.lava.procs import conv_synapse, dense_synapse, pooled_fan_out, pooled_synapse
    from bsnn_lava.lava.procs.process import conv_form

    network = load_network(network_or_path)
    check_runnable(network, select_tag)
    check_memory(network, batch_size=batch_size)
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != network.input.shape:
        raise ValueError(f"images must be (n_samples, {', '.join(map(str, network.input.shape))}) for input "
                         f"{network.input.name!r}, got {images.shape}")
    log_paths = log_paths or {}
    source = network.input
    incoming: Dict[str, list] = {}
    fan_outs: Dict[str, list] = {layer.name: [] for layer in network.layers}
    for layer in network.layers[1:]:  # the synapses, and each sender's fan-outs in outgoing_synapses order
        incoming[layer.name] = []
        for synapse in layer.synapses:
            op, source_shape = synapse.op, network[synapse.source].shape
            in_shape = synapse.input_shape(source_shape)
            max_input = 255 if synapse.source == source.name else network[synapse.source].payload_max
            fan_out = op.fan_out(in_shape)
            spec = (conv_synapse(op.weight, in_shape, op.stride, op.padding, op.weight_exp, max_input, op.dilation,
                                 op.groups, conv_form(int(fan_out.sum())))
                    if isinstance(op, Conv2d) else dense_synapse(op.weight, in_shape, op.weight_exp, max_input))
            if synapse.pool is None:
                incoming[layer.name].append(spec)
                fan_outs[synapse.source].append(fan_out)
            else:
                taps = synapse.pool.taps(source_shape)
                incoming[layer.name].append(pooled_synapse(spec, source_shape, taps))
                fan_outs[synapse.source].append(pooled_fan_out(synapse.pool.coverage(source_shape), taps, fan_out))

    def common(layer):
        s = layer.schedule
        return dict(mode=s.mode, offset_steps=s.offset_steps, window_steps=s.window_steps, frames=s.frames,
                    steps_per_sample=steps_per_sample, batch_size=batch_size, log_paths=log_paths.get(layer.name),
                    name=layer.name, stream=None if stream is None else dict(
                        n_images=stream.n_images, lanes=stream.lanes, lane_start=stream.lane_start,
                        lane_stop=stream.lane_stop))

    processes = {source.name: PixelInput(images=images, fan_outs=fan_outs[source.name], **common(source))}
    for layer in network.layers[1:]:
        if isinstance(layer, GatedIF):
            process = GatedIFProcess(shape=layer.shape, synapses=incoming[layer.name],
                                     threshold=per_neuron(layer.threshold, layer.shape),
                                     bias=per_neuron(layer.bias, layer.shape),
                                     v_init=per_neuron(layer.v_init, layer.shape), frame_reset=layer.frame_reset,
                                     payload_max=layer.payload_max, state_bits=network.state_bits,
                                     fan_outs=fan_outs[layer.name], **common(layer))
        else:
            process = ReadoutProcess(shape=layer.shape, synapses=incoming[layer.name],
                                     bias=per_neuron(layer.bias, layer.shape), state_bits=network.state_bits,
                                     **common(layer))
        for k, synapse in enumerate(layer.synapses):
            processes[synapse.source].s_out.connect(getattr(process, f"s_in{k}"))
        processes[layer.name] = process
    layers = {name: process for name, process in processes.items() if name != source.name}
    return LavaNetwork(network, processes[source.name], layers, int(steps_per_sample), int(batch_size))
