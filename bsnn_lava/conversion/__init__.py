"""PyTorch ReLU network -> spiking network IR (bistable, plain IF or warm-up neurons)."""
from __future__ import annotations

import hashlib
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..data import as_nchw
from ..dynamics import MODES
from ..ir import Network
from ..training.activation import ClipFloorShift
from ..training.folded import FoldedNetwork
from .calibrate import calibrate
from .passes import apply_thresholds, assign_schedules, insert_relays, set_spiking_fields
from .trace import ConversionError, lower

__all__ = ["convert", "lower", "calibrate", "ConversionError", "model_fingerprint", "clip_floor_shift_layers"]


def convert(model: nn.Module, calibration_images, neuron: str = "bistable", window: Optional[int] = None,
            v_init: float = 0.5, percentile: float = 99.9, channelwise: bool = False,
            mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), pixel_max: float = 255.0,
            relays: Optional[bool] = None, frame_reset: Optional[bool] = None, frames: Optional[int] = None,
            spikes: Optional[str] = None, levels: Optional[int] = None, batch_size: int = 100,
            progress: bool = False) -> Network:
    """Convert a trained ReLU (or clip-floor-shift) network into a spiking network that consumes raw pixels.

    A :class:`~bsnn_lava.training.folded.FoldedNetwork` (what ``finetune(..., hw=..., energy=...)``
    returns: a converted network trained as such) gives its network as trained; settings that would
    change it (another neuron, window, spikes or levels, no frame reset or relays) are refused, the
    calibration, normalisation and threshold arguments do not apply (everything is folded in), and
    ``frames`` stores a frame limit as for any network.

    Args:
        model: a VGG- or ResNet-style ``nn.Module`` (conv/BN/ReLU, average pooling, linear, residual
            adds, option-A or option-B shortcuts), ending in a linear layer.
        calibration_images: raw uint8 pixels (N, H, W, C), (N, C, H, W) or (N, H, W); a few hundred
            training images.
        neuron: ``bistable`` (BSNN), ``if`` (plain IF baseline) or ``warmup``.
        window: window length P in steps (bistable and warmup); default: the levels of the model's
            :class:`~bsnn_lava.training.ClipFloorShift` layers (a different value is refused for
            bistable and warmup neurons), else 2.
        v_init: initial membrane potential as a fraction of the threshold (0.5 = theta/2; the only
            value that reproduces a clip-floor-shift layer).
        percentile: threshold = this percentile of the layer's positive ANN activations (layers
            that are ClipFloorShift modules take their learned threshold instead).
        channelwise: one threshold per channel instead of per layer.
        mean, std: the normalisation the model expects on pixels scaled to [0, 1].
        relays: put synchronous relays on shortcuts (default: yes unless ``neuron="if"``).
        frame_reset: bistable neurons restart from ``v_init`` at every integrate window, so every
            frame equals the first (default: yes for a fine-tuned clip-floor-shift model, else no).
        frames: bistable networks only: every layer stops after this many frames (``None``: runs as
            long as it is simulated). With frame reset, ``frames=1`` processes each image exactly
            once: the prediction is final at the first complete frame and nothing fires after it.
        spikes: ``binary`` (the default; one spike per step, a window of P steps carries a count up to P) or
            ``graded`` (bistable only, Loihi 2): every layer integrates for one step, then sends its
            count ``clip(floor(v / theta), 0, levels)`` as one spike's payload in one step, with
            ``theta = lambda / levels``; a layer costs 2 steps instead of P + 1.
        levels: the largest payload of a graded spike, L (the levels of a fine-tuned model's
            :class:`~bsnn_lava.training.ClipFloorShift` layers by default; a different value is refused).
    """
    if isinstance(model, FoldedNetwork):
        return _trained_network(model, neuron, window, v_init, relays, frame_reset, frames, spikes, levels)
    spikes = "binary" if spikes is None else spikes
    if neuron not in MODES:
        raise ValueError(f"neuron must be one of {', '.join(MODES)}, got {neuron!r}")
    if window is not None and (int(window) != window or window < 1):
        raise ValueError(f"window must be a positive integer number of steps, got {window!r}")
    if not 0 <= v_init < 1:
        raise ValueError(f"v_init is a fraction of the threshold in [0, 1), got {v_init!r}")
    relays = neuron != "if" if relays is None else relays
    first = next(iter(model.parameters()), None)
    channels = first.shape[1] if first is not None and first.ndim == 4 else None
    images = as_nchw(calibration_images, channels)
    if images.shape[0] == 0:
        raise ValueError("calibration_images is empty")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, images.shape[1]):
            raise ValueError(f"{name} has {len(values)} values; the model's input has {images.shape[1]} channel(s): "
                             f"give 1 or {images.shape[1]} (one per channel, for pixels scaled to [0, 1])")
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"std must be positive, got {list(std)}")
    real = lower(model, tuple(images.shape[1:]), mean, std, pixel_max)
    if neuron != "bistable":
        _refuse_max_pooling(real, neuron)
    learned = clip_floor_shift_layers(model, real)
    if spikes == "graded":
        levels = _graded_levels(learned, levels, neuron, window, v_init)
        window = 1
    elif spikes == "binary":
        if levels is not None:
            raise ValueError(f"levels={levels!r} is for graded spikes (spikes='graded'); binary spikes count "
                             "up to the window P")
        window = _window_for(learned, window, neuron, v_init)
    else:
        raise ValueError(f"spikes must be 'binary' or 'graded', got {spikes!r}")
    frame_reset = bool(learned) and neuron == "bistable" if frame_reset is None else bool(frame_reset)
    if frame_reset and neuron != "bistable":
        raise ValueError(f"frame_reset needs bistable neurons, not {neuron!r}")
    if frames is not None and (neuron != "bistable" or isinstance(frames, bool) or int(frames) != frames or frames < 1):
        raise ValueError(f"frames must be a positive integer, for bistable neurons only (got {frames!r}, {neuron!r})")
    scales = {}
    if len(learned) < len(real.spiking_layers):
        scales = calibrate(real, images.to(torch.float64), percentile, channelwise, batch_size, progress)
    scales.update({name: m.threshold.detach().double().cpu().numpy() for name, m in learned.items()})
    if spikes == "graded":  # a payload unit is worth lambda / L
        scales = {name: value / levels for name, value in scales.items()}
    network = apply_thresholds(real, scales, v_init)
    if relays:
        network = insert_relays(network)
    network = assign_schedules(network, neuron, int(window), frames)
    if frame_reset:
        network = set_spiking_fields(network, frame_reset=True)
    if spikes == "graded":
        network = set_spiking_fields(network, payload_max=levels)
    provenance = {
        "source_model": type(model).__name__,
        "source_model_sha256": model_fingerprint(model),
        "converter": {"neuron": neuron, "window_steps": int(window), "spikes": spikes, "levels": levels,
                      "v_init_fraction": float(v_init),
                      "relays": bool(relays), "frame_reset": frame_reset, "frames": frames, "mean": list(map(float, mean)),
                      "std": list(map(float, std)), "pixel_max": float(pixel_max)},
        "calibration": {"n_images": int(images.shape[0]) if len(learned) < len(real.spiking_layers) else 0,
                        "percentile": float(percentile), "channelwise": bool(channelwise),
                        "learned_thresholds": len(learned)},
    }
    return network.replace(provenance=provenance)


def _trained_network(model: FoldedNetwork, neuron: str, window: Optional[int], v_init: float,
                     relays: Optional[bool], frame_reset: Optional[bool], frames: Optional[int],
                     spikes: Optional[str], levels: Optional[int]) -> Network:
    """:func:`convert` of a folded network: its network as trained, ``frames`` applied; ``ValueError``
    (one line) for a setting that would change it."""
    network = model.network()
    kind, count = network.spikes, network.levels
    asked = {"neuron": (neuron, "bistable"), "spikes": (spikes, kind), "v_init": (v_init, 0.5),
             "window": (window, None if kind == "graded" else count), "levels": (levels, count if kind == "graded"
                                                                               else None),
             "frame_reset": (frame_reset, True), "relays": (relays, True)}
    for name, (value, trained) in asked.items():
        if value is not None and value != trained and not (name == "window" and kind == "graded" and value == 1):
            raise ValueError(f"the network was trained folded ({kind} spikes, {'L' if kind == 'graded' else 'P'}="
                             f"{count}, bistable neurons with frame reset and relays): {name}={value!r} would change "
                             f"it ({name} {trained!r} as trained)")
    if frames is not None:
        if isinstance(frames, bool) or int(frames) != frames or frames < 1:
            raise ValueError(f"frames must be a positive integer, got {frames!r}")
        network = network.with_frames(int(frames))
    provenance = dict(network.provenance)
    record = getattr(model, "finetune_record", None) or {}
    provenance["converter"] = dict(provenance.get("converter", {}), frames=frames)
    provenance["folded_training"] = {key: record.get(key) for key in ("fold", "fold_epochs", "epochs")}
    return network.replace(provenance=provenance)


def _refuse_max_pooling(network: Network, neuron: str) -> None:
    """Max pooling of spiking layers is exact only for bistable neurons: name the first pooled layer."""
    for layer in network.layers[1:]:
        for s in layer.synapses:
            if s.pool is not None and s.source != network.input.name:
                raise ConversionError(
                    f"layer {layer.name!r} reads a max pool of layer {s.source!r} ({network[s.source].origin}): max "
                    f"pooling converts only with bistable neurons, whose window sends a count c on its first c "
                    f"steps, so the max of the spikes is the max of the counts; {neuron!r} spikes have no such "
                    "order. Use neuron='bistable'")


def clip_floor_shift_layers(model: nn.Module, real: Network) -> Dict[str, ClipFloorShift]:
    """Layer name -> module, for every spiking layer of ``real`` (from :func:`lower`) that is a
    :class:`ClipFloorShift` of ``model`` (its threshold is learned, in activation units)."""
    modules = dict(model.named_modules())
    return {layer.name: modules[layer.origin] for layer in real.spiking_layers
            if isinstance(modules.get(layer.origin), ClipFloorShift)}


def _learned_levels(learned: Dict[str, ClipFloorShift], v_init: float) -> Optional[int]:
    """The one level count of a fine-tuned model's clip-floor-shift layers (``None`` for a ReLU model)."""
    if not learned:
        return None
    levels = sorted({m.levels for m in learned.values()})
    if len(levels) > 1:
        raise ValueError(f"the model's ClipFloorShift layers have different levels {levels}: one window P (or "
                         "graded levels L) fits only one level count")
    if v_init != 0.5:
        raise ValueError(f"a ClipFloorShift model converts exactly only with v_init=0.5 (its shift of 1/2), "
                         f"not {v_init}")
    return levels[0]


def _window_for(learned: Dict[str, ClipFloorShift], window: Optional[int], neuron: str, v_init: float) -> int:
    """The window P: the levels of a fine-tuned model's clip-floor-shift layers, else ``window`` or 2."""
    fine_tuned = _learned_levels(learned, v_init)
    if fine_tuned is None:
        return 2 if window is None else int(window)
    if window is not None and window != fine_tuned and neuron != "if":
        raise ValueError(f"the model was fine-tuned for a window of {fine_tuned} steps (ClipFloorShift levels); "
                         f"convert it with window {fine_tuned}, not {window}")
    return fine_tuned if window is None else int(window)


def _graded_levels(learned: Dict[str, ClipFloorShift], levels: Optional[int], neuron: str, window: Optional[int],
                   v_init: float) -> int:
    """The payload levels L of a graded conversion (checked against a fine-tuned model's levels)."""
    if neuron != "bistable":
        raise ValueError(f"graded spikes need bistable neurons (integrate one step, send the count), not {neuron!r}")
    if window not in (None, 1):
        raise ValueError(f"graded spikes send a window's count as one payload, so the window is 1 step; "
                         f"got window={window!r}")
    if levels is not None and (isinstance(levels, bool) or int(levels) != levels or levels < 1):
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    fine_tuned = _learned_levels(learned, v_init)
    if fine_tuned is not None and levels is not None and levels != fine_tuned:
        raise ValueError(f"the model was fine-tuned for {fine_tuned} levels (ClipFloorShift levels); convert it "
                         f"with levels {fine_tuned}, not {levels}")
    if fine_tuned is None and levels is None:
        raise ValueError("graded spikes need levels=L (the largest payload of a spike), or a model fine-tuned "
                         "with bsnn_lava.finetune(..., window=L)")
    return int(levels or fine_tuned)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, shapes and float32 values, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
