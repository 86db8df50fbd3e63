"""PyTorch ReLU network -> spiking network IR (bistable, plain IF or warm-up neurons)."""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..data import as_nchw
from ..dynamics import MODES
from ..ir import Network
from .calibrate import calibrate
from .passes import apply_thresholds, assign_schedules, insert_relays
from .trace import ConversionError, lower

__all__ = ["convert", "lower", "calibrate", "ConversionError", "model_fingerprint"]


def convert(model: nn.Module, calibration_images, neuron: str = "bistable", window: int = 2,
            v_init: float = 0.5, percentile: float = 99.9, channelwise: bool = False,
            mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), pixel_max: float = 255.0,
            relays: Optional[bool] = None, batch_size: int = 100, progress: bool = False) -> Network:
    """Convert a trained ReLU network into a spiking network that consumes raw pixels.

    Args:
        model: a VGG- or ResNet-style ``nn.Module`` (conv/BN/ReLU, average pooling, linear, residual
            adds, option-A or option-B shortcuts), ending in a linear layer.
        calibration_images: raw uint8 pixels (N, H, W, C), (N, C, H, W) or (N, H, W); a few hundred
            training images.
        neuron: ``bistable`` (BSNN), ``if`` (plain IF baseline) or ``warmup``.
        window: window length P in steps (bistable and warmup).
        v_init: initial membrane potential as a fraction of the threshold (0.5 = theta/2).
        percentile: threshold = this percentile of the layer's positive ANN activations.
        channelwise: one threshold per channel instead of per layer.
        mean, std: the normalisation the model expects on pixels scaled to [0, 1].
        relays: put synchronous relays on shortcuts (default: yes unless ``neuron="if"``).
    """
    if neuron not in MODES:
        raise ValueError(f"neuron must be one of {', '.join(MODES)}, got {neuron!r}")
    if int(window) != window or window < 1:
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
    scales = calibrate(real, images.to(torch.float64), percentile, channelwise, batch_size, progress)
    network = apply_thresholds(real, scales, v_init)
    if relays:
        network = insert_relays(network)
    network = assign_schedules(network, neuron, int(window))
    provenance = {
        "source_model": type(model).__name__,
        "source_model_sha256": model_fingerprint(model),
        "converter": {"neuron": neuron, "window_steps": int(window), "v_init_fraction": float(v_init),
                      "relays": bool(relays), "mean": list(map(float, mean)), "std": list(map(float, std)),
                      "pixel_max": float(pixel_max)},
        "calibration": {"n_images": int(images.shape[0]), "percentile": float(percentile),
                        "channelwise": bool(channelwise)},
    }
    return network.replace(provenance=provenance)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, shapes and float32 values, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
