"""Spikes, synaptic operations and energy per inference, per layer and in total.

Counts come from a :class:`~bsnn_lava.sim.SimResult` (reference or Lava run: identical counts).
Energy uses a hardware profile's per-operation figures, each reported with its source:

    E_snn(T) = synops(T) x E_synop + neurons x T x E_neuron_update + spikes(T) x E_spike

(every neuron is updated every step, as on Loihi). A streamed run (one image per frame, every
layer busy with a different image) charges each image one frame period of neuron updates instead of
the whole latency; its spikes and synaptic operations per image are those of one frame, as in a run
of one image at a time with a one-frame limit. Where the profile gives a time per step and a static
power per chip, the profile adds throughput (images per second) and the static energy per image
(static power x chips x steps per image x time per step), one image at a time and streamed.
Synaptic operations of graded events (pixels, and
spikes of layers with graded payloads) are counted apart and priced at the profile's graded figure
(an estimate on Loihi 2, marked; the binary figure where the profile has none). The ANN comparison counts the converted
network's multiply-accumulates (nonzero weights times the outputs they reach; relays excluded,
shortcut branches counted as additions) at Horowitz's 45 nm figures. The common "0.9 pJ per synop"
SNN estimate (synops x FP32 add, graded input synapses as FP32 MACs) is reported beside it. A
max-pooled synapse's synaptic operations include its pooling stage's events, priced as synaptic
operations (an estimate, named in ``sources["max_pool"]``).

Several networks profiled on the same images are compared by :func:`comparison` (a row per network
taken from its profile) and :func:`format_comparison` (the table ``bsnn profile A B ...`` prints).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from hw_profiles import HardwareProfile, load_ann_reference, load_profile

from .ir import GatedIF, Network
from .resources import check_resources
from .sim.result import SimResult


@dataclass
class LayerProfile:
    """Per-inference counts of one layer: a spiking layer (``role`` neuron or relay) or the readout
    (``role`` readout: it never spikes). ``synops_out``: synaptic operations its spikes cause in the
    layers it feeds (outgoing)."""
    name: str
    role: str
    n_neurons: int
    spikes: float
    spikes_per_neuron: float
    synops_out: float
    sin: float
    lost_input: float
    saturated: float


@dataclass
class Profile:
    """Everything ``bsnn profile`` reports; all counts per inference (averaged over samples).

    ``streamed``: the run streamed its images (one per frame); ``neuron_updates`` and the energy are
    then per image of the stream (one frame period of updates), ``energy_nj_vs_steps`` is empty.
    ``throughput``: ``one_at_a_time`` and ``streamed`` (``None`` where the network cannot stream, or
    the run's counts are not one frame per image), each with ``steps_per_image``, ``images_per_s``
    and ``energy_nj`` per image (``dynamic``, ``static``, ``total``; ``None`` where the profile lacks
    the figure) and ``static_share``; ``throughput_sources`` cites the time per step and static power."""
    hardware: str
    n_steps: int
    n_samples: int
    accuracy: Optional[float]
    ann_accuracy: Optional[float]
    layers: List[LayerProfile]
    spikes: float
    synops: float
    synops_by_kind: Dict[str, float]
    synops_graded: float
    neuron_updates: float
    energy_nj: Dict[str, Optional[float]]
    energy_sources: Dict[str, str]
    ann_macs: float
    ann_adds: float
    ann_energy_nj: Dict[str, float]
    snn_energy_nj_at_0p9pj: float
    energy_nj_vs_steps: List[float] = field(repr=False)
    frames: Optional[Dict[str, object]] = None
    accuracy_vs_steps: Optional[List[float]] = field(default=None, repr=False)
    streamed: bool = False
    throughput: Dict[str, Optional[Dict[str, Optional[float]]]] = field(default_factory=dict)
    throughput_sources: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def synapse_kinds(network: Network) -> Dict[str, str]:
    """``target<-source`` -> ``input`` (from pixels), ``shortcut`` (from a relay), ``relay`` (into a
    relay) or ``main``; names as in :attr:`SimResult.synapse_names`."""
    kinds, seen = {}, set()
    for layer in network.layers[1:]:
        for s in layer.synapses:
            name = f"{layer.name}<-{s.source}"
            while name in seen:
                name += "'"
            seen.add(name)
            source = network[s.source]
            if s.source == network.input.name:
                kinds[name] = "input"
            elif isinstance(source, GatedIF) and source.role == "relay":
                kinds[name] = "shortcut"
            elif isinstance(layer, GatedIF) and layer.role == "relay":
                kinds[name] = "relay"
            else:
                kinds[name] = "main"
    return kinds


def ann_operations(network: Network) -> Dict[str, float]:
    """MACs and additions of one ANN inference of the converted network (relays excluded; a
    shortcut branch, identity or option A, is additions)."""
    kinds = synapse_kinds(network)
    macs = adds = 0.0
    names = iter(kinds)
    for layer in network.layers[1:]:
        for s in layer.synapses:
            kind = kinds[next(names)]
            n = float(s.op.fan_out(s.input_shape(network[s.source].shape)).sum())  # a max pool: comparisons
            if kind == "shortcut":
                adds += n
            elif kind != "relay":
                macs += n
    return {"macs": macs, "adds": adds}


def profile_run(network: Network, result: SimResult, hardware: Union[str, HardwareProfile] = "loihi2") -> Profile:
    """Per-inference profile of a run of ``network`` (one image at a time, or streamed), with energy
    under ``hardware``."""
    hw = hardware if isinstance(hardware, HardwareProfile) else load_profile(hardware)
    streamed = result.stream is not None
    if network.mode == "bistable":
        network = network.with_frames(result.frame_limit)  # the limit the run used (a choice of the run)
    ann = load_ann_reference()
    n = result.n_samples
    kinds = synapse_kinds(network)
    synops_per_step = result.n_synops_per_step / n
    spikes_per_step = result.n_spikes_per_step.sum(axis=1) / n
    synops_by_source: Dict[str, float] = {}
    sources = [s.source for layer in network.layers[1:] for s in layer.synapses]  # same order as the names
    graded = {network.input.name} | {l.name for l in network.spiking_layers if l.payload_max > 1}
    is_graded = np.array([source in graded for source in sources], dtype=bool)
    for source, total in zip(sources, synops_per_step.sum(axis=0)):
        synops_by_source[source] = synops_by_source.get(source, 0.0) + float(total)
    layers = []
    for layer in network.spiking_layers:
        spikes = float(result.n_spikes.get(layer.name, 0)) / n
        n_neurons = int(np.prod(layer.shape))
        layers.append(LayerProfile(layer.name, layer.role, n_neurons, spikes, spikes / n_neurons,
                                   synops_by_source.get(layer.name, 0.0), (result.n_sin or {}).get(layer.name, 0) / n,
                                   result.n_lost_input.get(layer.name, 0) / n, result.n_saturated.get(layer.name, 0) / n))
    readout = network.readout
    layers.append(LayerProfile(readout.name, "readout", int(np.prod(readout.shape)), 0.0, 0.0, 0.0, 0.0,
                               result.n_lost_input.get(readout.name, 0) / n, result.n_saturated.get(readout.name, 0) / n))
    by_kind = {k: 0.0 for k in ("input", "main", "relay", "shortcut")}
    for kind, total in zip(kinds.values(), synops_per_step.sum(axis=0)):
        by_kind[kind] += float(total)
    n_updating = sum(int(np.prod(l.shape)) for l in network.layers[1:])
    steps_per_image = network.frame_steps if streamed else result.n_steps
    steps = np.arange(1, result.n_steps + 1)
    cum_synops = np.cumsum(synops_per_step.sum(axis=1))
    cum_graded = np.cumsum(synops_per_step[:, is_graded].sum(axis=1))
    cum_spikes = np.cumsum(spikes_per_step)
    graded_pj = hw.synop_energy_pj if hw.graded_synop_energy_pj is None else hw.graded_synop_energy_pj
    per_op = {"synop": hw.synop_energy_pj, "neuron_update": hw.neuron_update_energy_pj, "spike": hw.spike_energy_pj}
    synop_curve_pj = (cum_synops - cum_graded) * (per_op["synop"] or 0.0) + cum_graded * (graded_pj or 0.0)
    curve_pj = (synop_curve_pj + n_updating * steps * (per_op["neuron_update"] or 0.0)
                + cum_spikes * (per_op["spike"] or 0.0))
    energy = {
        "synops": None if per_op["synop"] is None else float(synop_curve_pj[-1]) / 1e3,
        "neuron_updates": _nj(n_updating * steps_per_image, per_op["neuron_update"]),
        "spikes": _nj(cum_spikes[-1], per_op["spike"]),
    }
    energy["total"] = sum(v for v in energy.values() if v is not None) if streamed else float(curve_pj[-1]) / 1e3
    sources = {f"{k}_energy_pj": hw.sources.get(f"{k}_energy_pj", "not published") for k in
               ("synop", "graded_synop", "neuron_update", "spike")}
    sources.update({"ann": ann.source, "estimates": ", ".join(sorted(hw.estimates)) or "none"})
    if any(s.pool is not None for layer in network.layers[1:] for s in layer.synapses):
        sources["max_pool"] = ("estimate: a max-pooled synapse's pooling-stage events (each event times the windows "
                               "reading it) are priced as synaptic operations; no Loihi figure for a dendritic join "
                               "is published")
    ops = ann_operations(network)
    ann_energy = {"fp32": (ops["macs"] * ann.fp32_mac_pj + ops["adds"] * ann.fp32_add_pj) / 1e3,
                  "int8": (ops["macs"] * ann.int8_mac_pj + ops["adds"] * ann.int8_add_pj) / 1e3}
    convention = ((cum_synops[-1] - by_kind["input"]) * ann.fp32_add_pj + by_kind["input"] * ann.fp32_mac_pj) / 1e3
    frames = None
    if network.mode == "bistable" and not streamed:
        complete = network.complete_frames(result.n_steps)
        first = complete[0] if complete else None
        frames = {"first_complete_frame_steps": first, "frame_reset": network.frame_reset,
                  "frame_limit": network.readout.schedule.frames,
                  "energy_nj_at_first_frame": None if first is None else float(curve_pj[first - 1]) / 1e3,
                  "accuracy_at_first_frame": None if first is None or result.accuracy is None
                  else float(result.accuracy[first - 1])}
    one_frame = streamed or (network.mode == "bistable" and network.frame_reset
                             and network.readout.schedule.frames == 1 and result.n_steps >= network.latency_steps)
    events_nj = energy["total"] - (energy["neuron_updates"] or 0.0)  # synops and spikes: the same either way
    chips = check_resources(network, hw).n_chips
    throughput = {
        "one_at_a_time": _throughput(network.latency_steps if streamed else result.n_steps, events_nj, n_updating,
                                     chips, hw),
        "streamed": _throughput(network.frame_steps, events_nj, n_updating, chips, hw) if one_frame else None}
    return Profile(
        hardware=hw.name, frames=frames, n_steps=result.n_steps, n_samples=n,
        accuracy=result.final_accuracy, ann_accuracy=result.ann_accuracy,
        layers=layers, spikes=float(cum_spikes[-1]), synops=float(cum_synops[-1]), synops_by_kind=by_kind,
        synops_graded=float(cum_graded[-1]),
        neuron_updates=float(n_updating * steps_per_image), energy_nj=energy, energy_sources=sources,
        ann_macs=ops["macs"], ann_adds=ops["adds"], ann_energy_nj=ann_energy, snn_energy_nj_at_0p9pj=float(convention),
        energy_nj_vs_steps=[] if streamed else [float(e) / 1e3 for e in curve_pj],
        accuracy_vs_steps=None if result.accuracy is None else [float(a) for a in result.accuracy],
        streamed=streamed, throughput=throughput,
        throughput_sources={k: hw.sources.get(k, "not published") for k in ("step_time_us", "static_power_w")})


def frame_energy(network: Network, synops: float, synops_graded: float, spikes: float,
                 hardware: Union[str, HardwareProfile] = "loihi2") -> Dict[str, Optional[float]]:
    """Dynamic energy per image in uJ of a bistable network with frame reset whose frame makes
    ``synops`` synaptic operations (``synops_graded`` of them by graded events) and ``spikes``
    spikes: the events priced as :func:`profile_run` prices them, plus every neuron's updates for
    the latency (``one_at_a_time``) or one frame period (``streamed``). ``profile``: the profile's
    name; the figures are the profile's (estimates where it marks them)."""
    hw = hardware if isinstance(hardware, HardwareProfile) else load_profile(hardware)
    graded_pj = hw.synop_energy_pj if hw.graded_synop_energy_pj is None else hw.graded_synop_energy_pj
    events_nj = ((synops - synops_graded) * (hw.synop_energy_pj or 0.0) + synops_graded * (graded_pj or 0.0)
                 + spikes * (hw.spike_energy_pj or 0.0)) / 1e3
    n_updating = sum(int(np.prod(l.shape)) for l in network.layers[1:])
    return {"profile": hw.name, **{mode: _throughput(steps, events_nj, n_updating, 1, hw)["energy_nj"]["dynamic"] / 1e3
                                   for mode, steps in (("one_at_a_time", network.latency_steps),
                                                       ("streamed", network.frame_steps))}}


def _throughput(steps_per_image: int, events_nj: float, n_updating: int, chips: int,
                hw: HardwareProfile) -> Dict[str, Optional[float]]:
    """Per image at ``steps_per_image`` steps: images per second, and the energy: dynamic (the events'
    ``events_nj`` plus ``steps_per_image`` updates of every neuron), static (the static power of the
    network's ``chips`` for the image's share of time)."""
    dynamic = events_nj + (n_updating * steps_per_image * (hw.neuron_update_energy_pj or 0.0)) / 1e3
    seconds = None if hw.step_time_us is None else steps_per_image * hw.step_time_us * 1e-6
    static = None if seconds is None or hw.static_power_w is None else hw.static_power_w * chips * seconds * 1e9
    return {"steps_per_image": float(steps_per_image), "images_per_s": None if seconds is None else 1.0 / seconds,
            "chips": float(chips), "energy_nj": {"dynamic": dynamic, "static": static,
                                                 "total": None if static is None else dynamic + static},
            "static_share": None if static is None else static / (dynamic + static)}


def _nj(count: float, pj: Optional[float]) -> Optional[float]:
    return None if pj is None else float(count) * pj / 1e3


def format_profile(p: Profile) -> str:
    """A text table per layer and the totals, with the energy constants' sources."""
    rows = [f"{'layer':<28} {'role':<7} {'neurons':>8} {'spikes/inf':>11} {'spk/neuron':>10} {'synops out/inf':>14} "
            f"{'SIN':>8} {'lost':>5} {'sat':>5}"]
    for l in p.layers:
        rows.append(f"{l.name[:28]:<28} {l.role:<7} {l.n_neurons:>8} {l.spikes:>11.0f} {l.spikes_per_neuron:>10.3f} "
                    f"{l.synops_out:>14.0f} {l.sin:>8.1f} {l.lost_input:>5.0f} {l.saturated:>5.0f}")
    rows.append("(per inference; synops out: synaptic operations the layer's spikes cause in the layers it feeds, "
                "JSON synops_out; SIN: neurons with ANN pre-activation <= 0 that spiked; lost: neuron-steps of "
                "discarded input; sat: saturated neuron-steps)")
    acc = "" if p.accuracy is None else f", accuracy {100 * p.accuracy:.2f}% (ANN {100 * p.ann_accuracy:.2f}%)"
    over = (f"streamed over {p.n_steps} steps (neuron updates: one frame period per image)" if p.streamed
            else f"over {p.n_steps} steps")
    rows += ["", f"per inference {over} ({p.n_samples} samples{acc}):",
             f"  spikes {p.spikes:.4g}, synaptic ops {p.synops:.4g} (" +
             ", ".join(f"{k} {v:.3g}" for k, v in p.synops_by_kind.items()) + f"; of graded events {p.synops_graded:.3g})"
             f", neuron updates {p.neuron_updates:.4g}",
             f"  ANN: {p.ann_macs:.4g} MACs + {p.ann_adds:.4g} adds; synops / MACs = {p.synops / max(p.ann_macs, 1):.2f}",
             f"  energy on {p.hardware}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4g} nJ'}"
                                                     for k, v in p.energy_nj.items()),
             f"  ANN energy (45 nm): FP32 {p.ann_energy_nj['fp32']:.4g} nJ, INT8 {p.ann_energy_nj['int8']:.4g} nJ; "
             f"SNN at 0.9 pJ/synop convention: {p.snn_energy_nj_at_0p9pj:.4g} nJ"]
    for mode, t in p.throughput.items():
        if t is None:
            continue
        e = t["energy_nj"]
        speed = "" if t["images_per_s"] is None else f", {t['images_per_s']:.4g} images/s"
        static = "static n/a" if e["static"] is None else \
            f"+ {e['static'] / 1e3:.4g} uJ static = {e['total'] / 1e3:.4g} uJ ({100 * t['static_share']:.0f}% static)"
        rows.append(f"  {mode.replace('_', ' ')}: {t['steps_per_image']:.0f} steps per image{speed}; energy per image "
                    f"{e['dynamic'] / 1e3:.4g} uJ dynamic {static}")
    if p.frames and p.frames["first_complete_frame_steps"] is not None:
        f = p.frames
        limit = f"stops after {f['frame_limit']} frame(s)" if f["frame_limit"] else "no frame limit"
        acc = "" if f["accuracy_at_first_frame"] is None else f", accuracy {100 * f['accuracy_at_first_frame']:.2f}%"
        rows.append(f"  first complete frame at T={f['first_complete_frame_steps']} (frame reset "
                    f"{'on' if f['frame_reset'] else 'off'}, {limit}): energy up to it "
                    f"{f['energy_nj_at_first_frame']:.4g} nJ{acc}")
    rows.append("sources:")
    rows += [f"  {k}: {v}" for k, v in {**p.energy_sources, **p.throughput_sources}.items()]
    return "\n".join(rows)


#: The hardware constants each per-image column of a comparison rests on; a column is marked an
#: estimate where the hardware profile flags any of them (``HardwareProfile.estimates``).
COLUMN_CONSTANTS = {
    "dynamic": ("synop_energy_pj", "graded_synop_energy_pj", "neuron_update_energy_pj", "spike_energy_pj"),
    "static": ("static_power_w", "step_time_us"),
    "images_per_s": ("step_time_us",),
}
COLUMN_CONSTANTS["total"] = COLUMN_CONSTANTS["dynamic"] + COLUMN_CONSTANTS["static"]
#: The two ways a network is run in a comparison, as in :attr:`Profile.throughput`.
MODES = ("one_at_a_time", "streamed")


def comparison_row(name: str, p: Profile) -> Dict[str, object]:
    """One network's line of a comparison of profiles, every number taken from ``p``: ``accuracy``,
    ``ann_accuracy`` and, one image at a time, ``first_frame_steps`` and ``accuracy_at_first_frame``
    (fractions); ``spikes_per_image`` and ``synops_per_image``; per mode of :data:`MODES` (``None``
    where the network cannot stream): ``energy_nj`` per image (``dynamic``, ``static``, ``total``)
    and ``images_per_s``; ``chips``."""
    frames = p.frames or {}
    return {"file": name, "accuracy": p.accuracy, "ann_accuracy": p.ann_accuracy,
            "first_frame_steps": frames.get("first_complete_frame_steps"),
            "accuracy_at_first_frame": frames.get("accuracy_at_first_frame"),
            "spikes_per_image": p.spikes, "synops_per_image": p.synops,
            "energy_nj": {mode: None if p.throughput.get(mode) is None else dict(p.throughput[mode]["energy_nj"])
                          for mode in MODES},
            "images_per_s": {mode: None if p.throughput.get(mode) is None else p.throughput[mode]["images_per_s"]
                             for mode in MODES},
            "chips": int(p.throughput["one_at_a_time"]["chips"])}


def estimated_columns(hw: HardwareProfile) -> List[str]:
    """The per-image columns of a comparison (:data:`COLUMN_CONSTANTS`) that rest on an estimate of ``hw``."""
    return [column for column, constants in COLUMN_CONSTANTS.items() if set(constants) & hw.estimates]


def format_comparison(rows: List[Dict[str, object]], hw: HardwareProfile) -> str:
    """The table of :func:`comparison_row` rows: per network its accuracies, per-image spikes and
    synaptic operations, and per image one at a time / streamed: dynamic, static and total energy (uJ)
    and images per second; columns resting on an estimate of ``hw`` marked ``*``."""
    estimated = set(estimated_columns(hw))
    mark = lambda column: "*" if column in estimated else ""
    percent = lambda value: "-" if value is None else f"{100 * value:.2f}%"

    def pair(values, scale=1.0, style="{:.3g}"):
        return " / ".join("-" if v is None else style.format(v / scale) for v in values)

    header = ["file", "accuracy", "ANN", "first frame", "spikes", "synops", f"dynamic uJ{mark('dynamic')}",
              f"static uJ{mark('static')}", f"total uJ{mark('total')}", f"images/s{mark('images_per_s')}", "chips"]
    lines = []
    for row in rows:
        energy = [row["energy_nj"][mode] or {} for mode in MODES]
        frame = "-" if row["first_frame_steps"] is None else \
            f"{percent(row['accuracy_at_first_frame'])} (T={row['first_frame_steps']})"
        lines.append([str(row["file"]), percent(row["accuracy"]), percent(row["ann_accuracy"]), frame,
                      f"{row['spikes_per_image']:.4g}", f"{row['synops_per_image']:.4g}",
                      *(pair([e.get(kind) for e in energy], 1e3) for kind in ("dynamic", "static", "total")),
                      pair([row["images_per_s"][mode] for mode in MODES], style="{:.4g}"), str(row["chips"])])
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in [header, *lines]]
    notes = [f"per image on {hw.name}; pairs: one image at a time / streamed (one image per frame); -: none (the "
             "network cannot stream, or the hardware profile lacks the figure); first frame: accuracy at the first "
             "complete frame (one image at a time)"]
    if estimated:
        notes.append(f"* rests on estimates of {hw.name}: " + ", ".join(
            sorted(set().union(*(COLUMN_CONSTANTS[c] for c in estimated)) & hw.estimates)))
    return "\n".join(text + notes)


def comparison(files: Sequence[str], profiles: Sequence[Profile], hw: HardwareProfile) -> Dict[str, object]:
    """Several networks profiled on the same data under ``hw``: ``hardware``, ``estimated_columns``
    (:func:`estimated_columns`), ``table`` (one :func:`comparison_row` per file) and ``profiles`` (each
    :meth:`Profile.to_dict` with its ``file``), in the order of ``files``."""
    return {"hardware": hw.name, "estimated_columns": estimated_columns(hw),
            "table": [comparison_row(f, p) for f, p in zip(files, profiles)],
            "profiles": [{"file": f, **p.to_dict()} for f, p in zip(files, profiles)]}
