"""Image batches: layout handling for raw uint8 pixels."""
from __future__ import annotations

import numpy as np
import torch


def as_nchw(images, channels: int | None = None) -> torch.Tensor:
    """Raw pixel images as a float32 torch tensor (N, C, H, W), values unchanged.

    Accepts numpy arrays or tensors shaped (N, H, W) (one channel), (N, C, H, W) or (N, H, W, C);
    ``channels`` (the network's input channels) resolves the layout where both readings fit.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {tuple(x.shape)}")
    channels_first = x.shape[1] == channels if channels else x.shape[1] in (1, 3)
    channels_last = x.shape[3] == channels if channels else x.shape[3] in (1, 3)
    if channels_last and not channels_first:
        x = x.permute(0, 3, 1, 2)
    elif not channels_first:
        raise ValueError(f"images of shape {tuple(x.shape)} have no axis of {channels or '1 or 3'} channels")
    return x.contiguous().to(torch.float32)
