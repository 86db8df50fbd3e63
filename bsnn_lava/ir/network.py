"""The network: an ordered, validated list of layers plus provenance."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from .nodes import GatedIF, Input, IRError, Layer, Readout, replace

NUMERIC_KINDS = ("float", "int")


@dataclass(frozen=True, eq=False)
class Network:
    """A converted spiking network.

    ``layers``: topological order, the :class:`Input` first and the :class:`Readout` last; every
    synapse refers to an earlier layer, so the graph has no cycles. ``numeric``: ``float`` or ``int``
    (every weight, threshold, bias and initial potential an integer, for fixed-point hardware).
    ``provenance``: JSON-compatible facts about where the network came from (source model, converter
    settings, calibration, quantization profile).
    """
    layers: Tuple[Layer, ...]
    numeric: str = "float"
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "provenance", dict(self.provenance))
        problems = validate_layers(self.layers, self.numeric)
        if problems:
            raise IRError("invalid network:\n  " + "\n  ".join(problems))

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}")

    @property
    def input(self) -> Input:
        return self.layers[0]

    @property
    def readout(self) -> Readout:
        return self.layers[-1]

    @property
    def spiking_layers(self) -> Tuple[GatedIF, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, GatedIF))

    @property
    def mode(self) -> str:
        """The neuron preset of the network's spiking layers."""
        return self.readout.schedule.mode

    @property
    def state_bits(self):
        """Signed width of the neuron state for an integer network (``None`` for float networks)."""
        if self.numeric != "int":
            return None
        return int(self.provenance.get("quantization", {}).get("state_bits", 24))

    @property
    def window_steps(self) -> int:
        return self.readout.schedule.window_steps

    @property
    def frame_reset(self) -> bool:
        """True when the spiking layers restart every frame (see :class:`GatedIF`)."""
        return any(layer.frame_reset for layer in self.spiking_layers)

    @property
    def spikes(self) -> str:
        """``graded`` when the neuron layers send graded spikes (``payload_max > 1``), else ``binary``
        (relays of the pixels carry pixel values whatever the neurons send: :attr:`pixel_relays`)."""
        return "graded" if any(layer.payload_max > 1 for layer in self.spiking_layers if layer.role == "neuron") \
            else "binary"

    @property
    def levels(self) -> int:
        """The largest count one neuron sends in a window: P (binary spikes) or the graded payload L."""
        neurons = [layer for layer in self.spiking_layers if layer.role == "neuron"]
        return max(layer.payload_max for layer in neurons) if self.spikes == "graded" else self.window_steps

    @property
    def pixel_relays(self) -> Tuple[GatedIF, ...]:
        """The relays that carry the pixels to a deeper layer (a chain from the input): graded, each
        spike a pixel value (0..255), so the image reaches the layer exactly, in its window."""
        carried, relays = {self.input.name}, []
        for layer in self.spiking_layers:
            if layer.role == "relay" and layer.synapses[0].source in carried:
                carried.add(layer.name)
                relays.append(layer)
        return tuple(relays)

    def complete_frames(self, n_steps: int) -> range:
        """The run lengths T (steps, pipeline fill included) after which the readout of a bistable
        network has integrated 1, 2, ... complete windows, up to ``n_steps`` (and the schedule's
        ``frames``): ``offset + P + 2Pk``. A ``range`` (indexes, slices, has a length; ``list()`` it for
        JSON), so a large ``n_steps`` costs no memory; the first is :attr:`latency_steps`."""
        if self.mode != "bistable":
            raise ValueError(f"frames are defined for bistable networks, this one is {self.mode!r}")
        frames = range(self.latency_steps, n_steps + 1, self.frame_steps)
        limit = self.readout.schedule.frames
        return frames if limit is None else frames[:limit]

    @property
    def frame_steps(self) -> int:
        """Steps of one frame (an integrate and a fire window) of a bistable network: ``2 P``; in a
        streamed run, the steps between two images."""
        return 2 * self.window_steps

    @property
    def latency_steps(self) -> int:
        """Steps from an image's first input step to its prediction in a bistable network: the
        readout's first complete frame, ``offset + P`` (pipeline fill included)."""
        if self.mode != "bistable":
            raise ValueError(f"latency in frames is defined for bistable networks, this one is {self.mode!r}")
        return self.readout.schedule.offset_steps + self.window_steps

    def with_frames(self, frames: Optional[int]) -> "Network":
        """The same network with every layer's frame limit set to ``frames`` (``None``: no limit)."""
        if self.mode != "bistable":
            raise ValueError(f"a frame limit needs a bistable network, this one is {self.mode!r}")
        return self.with_layers(replace(layer, schedule=dataclasses.replace(layer.schedule, frames=frames))
                                for layer in self.layers)

    def for_run(self, frames: Union[int, str, None] = None, stream_rounds: Optional[int] = None) -> "Network":
        """The network as a run uses it: its frame limit is a choice of the run, not only of the file.

        One image at a time (``stream_rounds`` ``None``): ``frames`` ``None`` keeps the file's limit,
        except that a frame-reset network without one stops each layer after its first frame (every
        later frame would repeat it: the prediction is final from the first complete frame, and no
        spike is spent after it); an integer sets the limit, ``"all"`` removes it.

        Streamed (``stream_rounds`` rounds of images, one per frame): needs a bistable network with
        frame reset (each frame of a layer is then a function of its sources' same frame only), and
        every layer runs one frame per round. ``ValueError`` (one line) for anything else.
        """
        if stream_rounds is not None:
            if self.mode != "bistable":
                raise ValueError(f"a streamed run needs a bistable network with frame reset; this one is {self.mode!r}"
                                 f"{' (IF networks have no frames)' if self.mode == 'if' else ''}: convert it with "
                                 "neuron='bistable' (bsnn convert --neuron bistable --frame-reset)")
            if not self.frame_reset:
                raise ValueError("a streamed run needs frame reset (every frame of a layer a function of its sources' "
                                 "same frame only); this network carries its potentials from frame to frame: convert it "
                                 "with frame_reset=True (bsnn convert --frame-reset), and a post-training network then "
                                 "streams its P-level quantized ANN")
            if frames is not None:
                raise ValueError(f"frames={frames!r}: a streamed run gives every layer one frame per round of images "
                                 "(its length follows from the number of images); a frame limit applies to runs of "
                                 "one image at a time")
            return self.with_frames(int(stream_rounds))
        if frames is None:
            if self.mode == "bistable" and self.frame_reset and self.readout.schedule.frames is None:
                return self.with_frames(1)
            return self
        if frames == "all":
            return self.with_frames(None) if self.mode == "bistable" else self
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
            raise ValueError(f"frames must be a positive integer, 'all' or None, got {frames!r}")
        return self.with_frames(int(frames))

    def replace(self, **changes) -> "Network":
        return dataclasses.replace(self, **changes)

    def with_layers(self, layers) -> "Network":
        return dataclasses.replace(self, layers=tuple(layers))


def validate_layers(layers, numeric: str) -> List[str]:
    """Every structural problem of a layer list, one message per problem (empty when valid)."""
    problems: List[str] = []
    if numeric not in NUMERIC_KINDS:
        problems.append(f"numeric must be one of {NUMERIC_KINDS}, got {numeric!r}")
    if not layers or not isinstance(layers[0], Input):
        problems.append("the first layer must be the Input")
    if not layers or not isinstance(layers[-1], Readout):
        problems.append("the last layer must be the Readout")
    shapes: Dict[str, Tuple[int, ...]] = {}
    modes: Dict[str, str] = {}  # spiking layer -> schedule mode (a max pool needs bistable spikes)
    for position, layer in enumerate(layers):
        if not isinstance(layer, (Input, GatedIF, Readout)):
            problems.append(f"layer {position}: unknown layer type {type(layer).__name__}")
            continue
        if layer.name in shapes:
            problems.append(f"layer {layer.name!r}: duplicate name")
        if isinstance(layer, Input) and position != 0:
            problems.append(f"layer {layer.name!r}: only the first layer may be an Input")
        if isinstance(layer, Readout) and position != len(layers) - 1:
            problems.append(f"layer {layer.name!r}: only the last layer may be a Readout")
        for synapse in layer.synapses:
            if synapse.source not in shapes:
                known = "an earlier layer" if any(l.name == synapse.source for l in layers) else "no layer"
                problems.append(f"layer {layer.name!r}: synapse source {synapse.source!r} is {known}"
                                " (sources must come earlier: no dangling edges, no cycles)")
                continue
            if synapse.source == layers[-1].name:
                problems.append(f"layer {layer.name!r}: the readout cannot be a synapse source")
            if synapse.pool is not None and modes.get(synapse.source, "bistable") != "bistable":
                problems.append(f"layer {layer.name!r}: synapse from {synapse.source!r} max-pools the spikes of a "
                                f"{modes[synapse.source]!r} layer: only bistable windows (a neuron with count c fires "
                                "on the first c steps) give the max of the counts step by step")
            try:
                out_shape = synapse.op.output_shape(synapse.input_shape(shapes[synapse.source]))
            except IRError as err:
                problems.append(f"layer {layer.name!r}: synapse from {synapse.source!r}: {err}")
                continue
            if out_shape != layer.shape:
                problems.append(f"layer {layer.name!r}: synapse from {synapse.source!r} gives shape "
                                f"{out_shape}, layer shape is {layer.shape}")
        if numeric == "int":
            problems.extend(_integer_problems(layer))
        shapes[layer.name] = layer.shape
        if isinstance(layer, GatedIF):
            modes[layer.name] = layer.schedule.mode
    return problems


def _integer_problems(layer: Layer) -> List[str]:
    arrays = {f"synapse from {s.source!r} weight": s.op.weight for s in layer.synapses}
    for name in ("threshold", "bias", "v_init"):
        if hasattr(layer, name):
            arrays[name] = getattr(layer, name)
    return [f"layer {layer.name!r}: {name} is not integer-valued in an integer network"
            for name, arr in arrays.items() if not np.array_equal(arr, np.round(arr))]
